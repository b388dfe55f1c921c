"""The web server (kuosan.web) over HTTP: a real uvicorn on a free loopback port, the tiny
text-to-image run as its model. Every refusal of docs/web.md, the jobs life cycle, the event
stream, cancel (also by leaving), the history after a restart, the command's errors."""

from __future__ import annotations

import base64
import http.client
import io
import json
import logging
import socket
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from PIL import Image

from kuosan import Pipeline
from kuosan.cli import main
from kuosan.limits import WEB
from kuosan.scenes import ScenePipeline
from kuosan.web import Policy, check_listen, create_app
from kuosan.web.app import uvicorn_server
from kuosan.web.guard import MAX_BODY
from kuosan.web.parse import SEED_MAX

WAIT = 60.0  # seconds a job may take on a busy 2-core CPU (a tiny model: well under 1 s alone)


class Server:
    """kuosan's app on uvicorn in a thread, on a free loopback port."""

    def __init__(self, pipe: Pipeline, outputs: Path, token: str | None = None,
                 queue_size: int = 8, body_seconds: float = 30.0, idle_seconds: float = 10.0,
                 max_body: int = MAX_BODY, name: str = "tiny"):
        sock = check_listen("127.0.0.1", 0, token)
        self.port = sock.getsockname()[1]
        self.app = create_app(pipe, name, outputs, Policy("127.0.0.1", self.port, token),
                              queue_size, body_seconds, max_body)
        self.jobs = self.app.state.jobs
        self.server: uvicorn.Server = uvicorn_server(self.app, sock, idle_seconds)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]},
                                       daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.server.started

    def request(self, method: str, path: str, body: object = None,
                headers: dict | None = None, raw: bytes | None = None) -> tuple[int, dict, dict]:
        """(status, headers, JSON answer)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=WAIT)
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        head = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, path, data, {**head, **(headers or {})})
        answer = conn.getresponse()
        content = answer.read()
        conn.close()
        kind = answer.getheader("Content-Type", "")
        return answer.status, dict(answer.getheaders()), (
            json.loads(content) if kind.startswith("application/json") else {"raw": content})

    def submit(self, body: dict) -> str:
        status, _, answer = self.request("POST", "/api/jobs", body)
        assert status == 202, answer
        return answer["id"]

    def wait(self, job_id: str, states=("done", "failed", "cancelled")) -> dict:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            _, _, job = self.request("GET", f"/api/jobs/{job_id}")
            if job["state"] in states:
                return job
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} still {job['state']} after {WAIT} s")

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.jobs.close()


@pytest.fixture(scope="module")
def pipe(tiny_text_run):
    return Pipeline.load(tiny_text_run, limits=WEB)


@pytest.fixture(scope="module")
def server(pipe, tmp_path_factory):
    s = Server(pipe, tmp_path_factory.mktemp("outputs"))
    yield s
    s.close()


def data_url(img: Image.Image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


def bomb_png(width: int, height: int) -> str:
    """A PNG whose header claims width×height (its data: a few bytes): a decompression bomb's
    shape, refused from the header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    raw = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
           + chunk(b"IEND", b""))
    return "data:image/png;base64," + base64.b64encode(raw).decode()


def test_page_info_and_removed_routes(server):
    status, _, answer = server.request("GET", "/")
    assert status == 200 and b"/api/jobs" in answer["raw"]
    status, headers, info = server.request("GET", "/api/info")
    assert status == 200 and info["size"] == [32, 32] and info["text"]
    assert info["attribution"] is None  # a model without one (a credit is set by kuosan export)
    assert info["styles"] == []  # a ShapesWorld model has no art styles
    assert info["scene_sizes"] == []  # nor scenes of emoji (the API takes them all the same)
    assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff"
    # every limit the server enforces, the seed range among them
    assert {k: info["limits"][k] for k in WEB.as_dict()} == WEB.as_dict()
    assert info["limits"]["seed"] == [0, SEED_MAX] and info["defaults"]["seed"] is None
    for path in ("/api/generate", "/api/edit"):
        status, _, answer = server.request("POST", path, {})
        assert status == 410 and "/api/jobs" in answer["error"]


def test_job_life_cycle_matches_the_pipeline(server, pipe):
    job_id = server.submit({"prompt": "a red circle", "num": 2, "steps": 2, "seed": 5,
                            "guidance": 2})
    job = server.wait(job_id)
    assert job["state"] == "done" and job["progress"] == 1.0 and len(job["images"]) == 2
    assert job["parameters"]["seed"] == 5 and job["parameters"]["sampler"] == pipe.default_sampler
    # made side by side in this test, on the same threads: bit-exact
    expected = pipe.generate("a red circle", num_images_per_prompt=2, num_inference_steps=2,
                             seed=5, guidance_scale=2.0)
    for i, (url, want) in enumerate(zip(job["images"], expected, strict=True)):
        status, headers, answer = server.request("GET", url)
        assert status == 200 and headers["content-type"] == "image/png"
        img = Image.open(io.BytesIO(answer["raw"]))
        assert np.array_equal(np.asarray(img.convert("RGB")), np.asarray(want))
        params = json.loads(img.text["kuosan"])
        assert params["seed"] == 5 + i and params["command"] == "generate"


def test_enhance_rewrites_the_prompt_and_keeps_what_was_typed(server, pipe):
    typed = "a crimson ball"
    job = server.wait(server.submit({"prompt": typed, "enhance": True, "steps": 1, "seed": 1}))
    rewrite = pipe.enhance_prompt(typed)
    assert rewrite != typed and job["state"] == "done"
    assert job["parameters"]["prompt"] == rewrite and job["parameters"]["user_prompt"] == typed
    _, _, answer = server.request("GET", job["images"][0])
    params = json.loads(Image.open(io.BytesIO(answer["raw"])).text["kuosan"])
    assert params["prompt"] == rewrite and params["user_prompt"] == typed
    status, _, answer = server.request("POST", "/api/jobs", {"prompt": typed, "enhance": "yes"})
    assert status == 422 and answer["error"].startswith("enhance:")


def test_a_scene_job_draws_each_emoji_in_its_place(server, pipe):
    caption = "a red apple to the left of a fox face, flat style"
    job = server.wait(server.submit({"prompt": caption, "scene": 64, "num": 2, "steps": 2,
                                     "seed": 3}))
    assert job["state"] == "done" and job["progress"] == 1.0 and job["parameters"]["scene"] == 64
    expected = ScenePipeline(pipe, 64).generate(caption, num_images_per_prompt=2,
                                                num_inference_steps=2, seed=3)
    for url, want in zip(job["images"], expected, strict=True):
        _, _, answer = server.request("GET", url)
        img = Image.open(io.BytesIO(answer["raw"]))
        assert img.size == (64, 64) and np.array_equal(np.asarray(img.convert("RGB")), np.asarray(want))
        assert json.loads(img.text["kuosan"])["scene"] == 64
    row = "a red apple, a fox face and a dog in a row, flat style"
    for body, says in (({"prompt": caption, "scene": 40}, "scene: scene size must be a multiple of 16"),
                       ({"prompt": caption, "scene": 64, "task": "vary", "image": WHITE},
                        "scene: only task generate"),
                       ({"prompt": "a red apple near a fox", "scene": 64}, "prompt: cannot parse"),
                       # three emoji a scene: 16 × 25 × 3·32² is past the work limit (16 × 25 × 32² is not)
                       ({"prompt": row, "scene": 64, "num": 16, "steps": 25}, "16×25×3072")):
        status, _, answer = server.request("POST", "/api/jobs", body)
        assert status == 422 and says in answer["error"], answer


def test_seed_random_by_default_and_the_maximum_accepted(server):
    seeds = {server.wait(server.submit({"steps": 1}))["parameters"]["seed"] for _ in range(2)}
    assert len(seeds) == 2 and all(0 <= s <= SEED_MAX for s in seeds)  # 2 equal: p = 2⁻³²
    job = server.wait(server.submit({"steps": 1, "num": 2, "seed": SEED_MAX}))
    assert job["state"] == "done" and job["parameters"]["seed"] == SEED_MAX


def test_edits_with_uploads_of_any_size(server):
    rng = np.random.default_rng(0)
    big = Image.fromarray(rng.integers(0, 255, (75, 120, 3), dtype=np.uint8))
    for task in ("vary", "img2img"):  # resized to the model's 32×32
        job = server.wait(server.submit({"task": task, "image": data_url(big, "JPEG"),
                                         "steps": 2}))
        assert job["state"] == "done", job
        _, _, answer = server.request("GET", job["images"][0])
        assert Image.open(io.BytesIO(answer["raw"])).size == (32, 32)
    image = Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))  # another size than the image's: resized to it
    job = server.wait(server.submit({"task": "inpaint", "image": data_url(image),
                                     "mask": data_url(mask), "steps": 2, "resample": 2}))
    assert job["state"] == "done" and job["parameters"]["resample"] == 2, job
    job = server.wait(server.submit({"task": "outpaint", "image": data_url(image), "right": 8,
                                     "steps": 2}))
    assert job["state"] == "done", job
    _, _, answer = server.request("GET", job["images"][0])
    assert Image.open(io.BytesIO(answer["raw"])).size == (40, 32)
    job = server.wait(server.submit({"task": "outpaint", "image": data_url(image.crop((0, 0, 20, 32))),
                                     "right": 12, "steps": 2}))  # smaller than the model: fine
    assert job["state"] == "done", job


def read_event(response: http.client.HTTPResponse) -> tuple[str, dict]:
    """The next named event of a server-sent event stream (comment lines skipped)."""
    name, data = None, None
    while True:
        line = response.fp.readline().decode().rstrip("\n")
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data = json.loads(line[6:])
        elif line == "" and name is not None:
            return name, data


def open_events(server: Server, job_id: str) -> tuple[http.client.HTTPConnection,
                                                      http.client.HTTPResponse]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=WAIT)
    conn.request("GET", f"/api/jobs/{job_id}/events")
    response = conn.getresponse()
    assert response.status == 200 and response.getheader("content-type") == "text/event-stream"
    return conn, response


def test_events_then_done(server):
    job_id = server.submit({"steps": 30, "sampler": "euler"})
    conn, response = open_events(server, job_id)
    seen = []
    while (event := read_event(response))[0] == "progress":
        seen.append(event[1]["progress"])
    conn.close()
    assert event[0] == "done" and event[1]["state"] == "done" and event[1]["images"]
    assert seen == sorted(seen) and all(0 <= p < 1 for p in seen)  # monotone, 1 only when done


def test_cancel_stops_within_one_evaluation(server):
    job_id = server.submit({"steps": 200, "sampler": "euler"})  # ~200 evaluations
    conn, response = open_events(server, job_id)
    while read_event(response)[1]["progress"] == 0:
        pass
    status, _, _ = server.request("DELETE", f"/api/jobs/{job_id}")
    job = server.jobs.get(job_id)
    evaluations = job.evaluations
    name, final = read_event(response)
    conn.close()
    assert status == 200 and name == "done" and final["state"] == "cancelled"
    assert not final["images"] and final["progress"] < 1
    # the one evaluation running when DELETE came in may finish; no other
    assert job.evaluations <= evaluations + 1


def test_a_client_that_leaves_cancels_its_job(server, caplog):
    # uvicorn's loggers do not propagate to the root logger that caplog watches: listen on them
    uvicorn_logger = logging.getLogger("uvicorn.error")
    uvicorn_logger.addHandler(caplog.handler)
    uvicorn_logger.setLevel(logging.INFO)
    job_id = server.submit({"steps": 200, "sampler": "euler"})
    conn, response = open_events(server, job_id)
    read_event(response)
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    try:
        assert server.wait(job_id)["state"] == "cancelled"
        time.sleep(0.5)  # the event stream's next look at its client
    finally:
        uvicorn_logger.removeHandler(caplog.handler)
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def test_queue_full_is_429_with_retry_after(pipe, tmp_path):
    s = Server(pipe, tmp_path, queue_size=1)
    try:
        first = s.submit({"steps": 200, "sampler": "euler"})
        s.wait(first, ("running",))
        s.submit({"steps": 1})  # the one place in the queue
        status, headers, answer = s.request("POST", "/api/jobs", {"steps": 1})
        assert status == 429 and int(headers["retry-after"]) > 0 and "queue" in answer["error"]
        s.request("DELETE", f"/api/jobs/{first}")
    finally:
        s.close()


def test_history_survives_a_restart(pipe, tmp_path):
    s = Server(pipe, tmp_path)
    try:
        older = s.wait(s.submit({"prompt": "a blue square", "steps": 1, "seed": 3}))
        newer = s.wait(s.submit({"steps": 1, "num": 2, "seed": 7}))
    finally:
        s.close()
    s = Server(pipe, tmp_path)  # a new server reads the folder
    try:
        _, _, history = s.request("GET", "/api/history")
        assert [j["id"] for j in history["jobs"]] == [newer["id"], older["id"]]
        assert history["jobs"][0]["images"] == newer["images"]
        assert history["jobs"][1]["parameters"]["prompt"] == "a blue square"
        assert history["jobs"][1]["parameters"]["seed"] == 3
        assert s.request("GET", newer["images"][1])[0] == 200
        assert s.request("GET", f"/api/jobs/{older['id']}")[2]["state"] == "done"
    finally:
        s.close()
    assert not list(tmp_path.glob(".tmp-*"))  # atomic writes leave no temporary file


NESTED = b"[" * 100_000
WHITE = data_url(Image.new("L", (32, 32), 255))
SURROGATE = b'{"prompt": "\\ud800"}'


@pytest.mark.parametrize("headers, raw, status, says", [
    ({"Host": "evil.example:80"}, b"{}", 403, "Host"),
    ({"Origin": "http://evil.example"}, b"{}", 403, "origin"),
    ({"Sec-Fetch-Site": "cross-site"}, b"{}", 403, "cross-site"),
    ({"Content-Type": "text/plain"}, b"{}", 415, "application/json"),
    ({"Content-Type": "application/x-www-form-urlencoded"}, b"a=1", 415, "application/json"),
    ({}, NESTED, 400, "nested"),
    ({}, b'{"prompt": "\xff\xfe"}', 400, "UTF-8"),
    ({}, SURROGATE, 400, "prompt"),
    ({}, b'{"guidance": NaN}', 400, "NaN"),
    ({}, b'{"num": 1' + b"0" * 5000 + b"}", 400, "JSON"),
    ({}, b"[]", 422, "object"),
    ({}, b'{"num": "3"}', 422, "num"),
    ({}, b'{"num": true}', 422, "num"),
    ({}, b'{"num": 17}', 422, "num"),
    ({}, b'{"steps": 0}', 422, "steps"),
    ({}, b'{"steps": 201}', 422, "steps"),
    ({}, b'{"num": 16, "steps": 100}', 422, "num × steps"),
    ({}, b'{"seed": -1}', 422, "seed"),
    ({}, b'{"seed": 4294967296}', 422, "seed"),
    ({}, b'{"guidance": 1e400}', 422, "guidance"),
    ({}, b'{"sampler": "nope"}', 422, "sampler"),
    ({}, b'{"task": "paint"}', 422, "task"),
    ({}, b'{"prompt": 3}', 422, "prompt"),
    ({}, b'{"colour": "red"}', 422, "colour"),
    ({}, json.dumps({"prompt": "a" * 501}).encode(), 422, "prompt"),
    ({}, json.dumps({"prompt": " AND ".join("abcde")}).encode(), 422, "AND"),
    ({}, b'{"task": "vary"}', 422, "image"),
    ({}, b'{"task": "vary", "image": "data:image/png;base64,AAAA"}', 422, "image"),
    ({}, b'{"task": "vary", "image": "data:text/html;base64,AAAA"}', 422, "image"),
    ({}, json.dumps({"task": "vary", "image": bomb_png(13000, 13000)}).encode(), 413, "image"),
    ({}, json.dumps({"task": "inpaint", "image": bomb_png(257, 256),
                     "mask": WHITE}).encode(), 413, "image"),
    ({}, json.dumps({"task": "outpaint", "image": WHITE, "left": 129}).encode(),
     422, "left"),
    ({}, json.dumps({"task": "outpaint", "image": data_url(Image.new("RGB", (20, 20))),
                     "right": 4}).encode(), 422, "extended to 24×20, still smaller"),
    ({}, json.dumps({"task": "inpaint", "image": WHITE, "steps": 2, "sampler": "euler",
                     "resample": 3, "mask": WHITE}).encode(),
     422, "sampler"),
])
def test_refusals_name_the_field(server, headers, raw, status, says):
    got, _, answer = server.request("POST", "/api/jobs", raw=raw, headers=headers)
    assert got == status and says in answer["error"], answer


ODD_VALUES = [None, True, -1, 0, 1.5, 1e308, -1e308, "", "x" * 10, [], {}, "\u0000", 2**70,
              "data:image/png;base64,", WHITE]


@pytest.mark.parametrize("task", ["generate", "inpaint", "outpaint", "vary"])
def test_no_500_for_odd_values_of_any_field(server, task):
    from kuosan.web.parse import FIELDS

    for field in sorted(FIELDS):
        for value in ODD_VALUES:
            body = {"task": task, "image": WHITE, "mask": WHITE, "right": 4, "steps": 1,
                    field: value}
            status, _, answer = server.request("POST", "/api/jobs", body)
            assert status in (202, 400, 413, 422, 429), (field, value, status, answer)
            if status == 202:
                server.request("DELETE", f"/api/jobs/{answer['id']}")  # keep the queue free
            else:
                assert answer["error"], answer


def test_body_size_announced_or_streamed(pipe, tmp_path):
    cap = 4096  # a small cap: the whole body is sent before the server answers
    s = Server(pipe, tmp_path, max_body=cap)
    try:
        big = b'{"prompt": "' + b"a" * cap + b'"}'
        status, _, answer = s.request("POST", "/api/jobs", raw=big)  # Content-Length
        assert status == 413 and "bytes" in answer["error"]
        # streamed in chunks: too large, 413; a small one is read whole (its num is checked)
        for chunks, want, says in (([big[:cap // 2], big[cap // 2:]], 413, "bytes"),
                                   ([b'{"num": ', b"99}"], 422, "num")):
            conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=WAIT)
            conn.request("POST", "/api/jobs", iter(chunks), {"Content-Type": "application/json"},
                         encode_chunked=True)
            answer = conn.getresponse()
            assert answer.status == want and says in json.loads(answer.read())["error"]
            conn.close()
    finally:
        s.close()


def test_slow_body_and_half_sent_requests(pipe, tmp_path):
    s = Server(pipe, tmp_path, body_seconds=1.0, idle_seconds=1.0)
    try:
        slow = socket.create_connection(("127.0.0.1", s.port))
        slow.sendall(b"POST /api/jobs HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: "
                     b"application/json\r\nContent-Length: 100\r\n\r\n{" % s.port)
        slow.settimeout(WAIT)
        assert b" 408 " in slow.recv(4096).split(b"\r\n")[0] + b" "
        slow.close()
        half = [socket.create_connection(("127.0.0.1", s.port)) for _ in range(300)]
        for sock in half:
            sock.sendall(b"GET /api/info HTTP/1.1\r\nHost: 127.0")
            sock.settimeout(WAIT)
        assert all(sock.recv(1) == b"" for sock in half)  # closed by the server, idle
        for sock in half:
            sock.close()
        assert s.request("GET", "/api/info")[0] == 200
    finally:
        s.close()


def test_token(pipe, tmp_path):
    s = Server(pipe, tmp_path, token="s3cret")
    try:
        assert s.request("GET", "/")[0] == 200  # the page holds no secret; it asks for it
        assert s.request("GET", "/api/info")[0] == 401
        assert s.request("GET", "/api/info", headers={"Authorization": "Bearer wrong"})[0] == 401
        assert s.request("GET", "/api/info", headers={"Authorization": "Bearer s3cret"})[0] == 200
    finally:
        s.close()


def test_serve_command_errors(capsys, tmp_path):
    taken = check_listen("127.0.0.1", 0, None)
    taken.listen()
    port = taken.getsockname()[1]
    cases = [["--port", "70000"], ["--port", str(port)], ["--host", "0.0.0.0"],
             ["--port", "0", "--model", str(tmp_path / "nothing")]]
    try:
        for args in cases:
            assert main(["serve", *args]) == 2, args
            err = capsys.readouterr().err.strip()
            assert err.startswith("kuosan: error: ") and "\n" not in err, err
    finally:
        taken.close()
