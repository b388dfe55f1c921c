"""The local web page's API (kuosan.web), on the tiny text-to-image run."""

import base64
import inspect
import io
import json
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from kuosan import Pipeline
from kuosan.web import WebApp, decode_image, make_server


@pytest.fixture(scope="module")
def app(tiny_text_run):
    return WebApp(Pipeline.load(tiny_text_run), "tiny")


def post(app, path, body):
    status, kind, data = app.handle("POST", path, json.dumps(body).encode())
    assert kind == "application/json"
    return status, json.loads(data)


def png(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_page_and_info(app):
    status, kind, data = app.handle("GET", "/", b"")
    assert status == 200 and kind.startswith("text/html") and b"/api/generate" in data
    status, _, data = app.handle("GET", "/api/info", b"")
    info = json.loads(data)
    assert status == 200 and info["model"] == "tiny" and info["text"] and info["size"] == [32, 32]
    # the page's default strengths are the Python API's
    defaults = {m: inspect.signature(getattr(Pipeline, m)).parameters["strength"].default
                for m in ("vary", "img2img")}
    assert info["strength"] == defaults


def test_generate_matches_the_pipeline_and_carries_parameters(app):
    status, answer = post(app, "/api/generate", {"prompt": "a red circle", "num": 2, "steps": 2,
                                                 "seed": 5, "guidance": 2})
    assert status == 200 and len(answer["images"]) == 2
    expected = app.pipe.generate("a red circle", num_images_per_prompt=2, num_inference_steps=2,
                                 seed=5, guidance_scale=2.0)
    for i, (url, want) in enumerate(zip(answer["images"], expected, strict=True)):
        img = decode_image(url, "answer")
        assert np.array_equal(np.asarray(img.convert("RGB")), np.asarray(want))
        params = json.loads(img.text["kuosan"])
        assert params["seed"] == 5 + i and params["command"] == "generate" and params["steps"] == 2
    assert "Steps: 2" in answer["parameters"]


def test_inpaint_keeps_the_pixels_outside_the_mask(app):
    source = app.pipe.generate("a blue square", num_inference_steps=2)[0]
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (8, 8, 24, 24))
    status, answer = post(app, "/api/edit", {"mode": "inpaint", "image": png(source), "mask": png(mask),
                                             "prompt": "a red circle", "steps": 2, "resample": 2})
    assert status == 200, answer
    out = np.asarray(decode_image(answer["images"][0], "answer").convert("RGB"))
    keep = np.asarray(mask) == 0
    assert np.array_equal(out[keep], np.asarray(source)[keep])
    assert json.loads(decode_image(answer["images"][0], "a").text["kuosan"])["resample"] == 2


@pytest.mark.parametrize("mode, extra", [("outpaint", {"right": 8}), ("vary", {"strength": 0.3}),
                                         ("img2img", {"strength": 0.5})])
def test_other_edits(app, mode, extra):
    source = app.pipe.generate("a blue square", num_inference_steps=2)[0]
    status, answer = post(app, "/api/edit", {"mode": mode, "image": png(source), "steps": 2, "num": 2,
                                             **extra})
    assert status == 200, answer
    size = decode_image(answer["images"][0], "answer").size
    assert len(answer["images"]) == 2 and size == ((40, 32) if mode == "outpaint" else (32, 32))


@pytest.mark.parametrize("path, body, words", [
    ("/api/generate", {"steps": "many"}, "steps must be an integer"),
    ("/api/generate", {"steps": 0}, "steps must be between 1"),
    ("/api/generate", {"num": 1000}, "num must be between"),
    ("/api/generate", {"guidance": "nan"}, "guidance"),
    ("/api/generate", {"sampler": "magic"}, "sampler must be one of"),
    ("/api/generate", {"prompt": 3}, "prompt must be text"),
    ("/api/edit", {"mode": "paint"}, "mode must be one of"),
    ("/api/edit", {"mode": "vary", "image": "data:image/png;base64,AAAA"}, "image: cannot decode"),
    ("/api/edit", {"mode": "vary"}, "image: expected an image"),
])
def test_bad_requests_name_the_field(app, path, body, words):
    status, answer = post(app, path, body)
    assert status == 400 and words in answer["error"], answer


def test_bad_mask_and_body(app):
    source = png(Image.new("RGB", (32, 32), "white"))
    status, answer = post(app, "/api/edit", {"mode": "inpaint", "image": source,
                                             "mask": png(Image.new("L", (16, 16), 255))})
    assert status == 400 and "16×16 but the image is 32×32" in answer["error"]
    status, _, data = app.handle("POST", "/api/generate", b"{not json")
    assert status == 400 and b"not JSON" in data
    assert app.handle("GET", "/nowhere", b"")[0] == 404
    assert app.handle("GET", "/api/generate", b"")[0] == 405


def test_a_real_server_round_trip(app):
    server = make_server(app, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with urllib.request.urlopen(base + "/api/info", timeout=30) as r:
            assert json.loads(r.read())["model"] == "tiny"
        request = urllib.request.Request(base + "/api/generate", method="POST",
                                         data=json.dumps({"steps": 1, "prompt": "a cross"}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as r:
            assert len(json.loads(r.read())["images"]) == 1
        bad = urllib.request.Request(base + "/api/generate", method="POST", data=b'{"steps": -1}')
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(bad, timeout=30)
        assert err.value.code == 400 and "steps" in json.loads(err.value.read())["error"]
    finally:
        server.shutdown()
        server.server_close()


def test_serve_on_a_bad_address_is_a_clear_error(tiny_text_run, capsys):
    from kuosan.cli import main

    assert main(["serve", "--model", str(tiny_text_run), "--host", "999.1.1.1", "--port", "0"]) == 2
    assert "cannot listen on 999.1.1.1" in capsys.readouterr().err


def test_an_internal_error_answers_500_and_the_server_goes_on(app, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(app.pipe, "generate", broken)
    status, answer = post(app, "/api/generate", {"steps": 1})
    assert status == 500 and "RuntimeError: boom" in answer["error"]
    monkeypatch.undo()
    assert post(app, "/api/generate", {"steps": 1})[0] == 200
