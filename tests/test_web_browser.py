"""The page in a real browser: Playwright driving Debian's Chromium (`apt-get install chromium`,
`pip install playwright`; never `playwright install`), against a real server on loopback with
the tiny text model. Skipped, saying why, without either.

KUOSAN_SCREENSHOTS=DIR saves web_desktop.png and web_phone.png there (docs/images); the model
is the tiny one unless KUOSAN_WEB_MODEL names another (the docs' screenshots: shapes-32).
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin
from test_web import Server

from kuosan import Pipeline
from kuosan.limits import WEB

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright to run "
                                                                "the browser tests")
if not Path(CHROMIUM).exists():
    pytest.skip("no Chromium (apt-get install -y chromium) for the browser tests",
                allow_module_level=True)

TIMEOUT_MS = 60_000  # a job on a busy 2-core CPU (the tiny model: well under 1 s alone)


@pytest.fixture(scope="module")
def server(tiny_text_run, tmp_path_factory):
    model = os.environ.get("KUOSAN_WEB_MODEL")
    pipe = Pipeline.load(model or tiny_text_run, limits=WEB)
    s = Server(pipe, tmp_path_factory.mktemp("outputs"), name=model or "tiny")
    yield s
    s.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"http://127.0.0.1:{server.port}/")
    page.wait_for_function("document.querySelector('#sampler').options.length > 0")
    yield page
    context.close()


def png_bytes(img: Image.Image, text: dict[str, str] | None = None) -> bytes:
    info = PngImagePlugin.PngInfo()
    for k, v in (text or {}).items():
        info.add_text(k, v)
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def test_generate_with_progress_then_history_after_reload(page):
    assert not page.is_visible("#sceneBox")  # scenes are offered for emoji models
    page.fill("#prompt", "a red circle")
    page.fill("#num", "2")
    page.fill("#steps", "40")
    page.select_option("#sampler", "euler")
    page.click("#go")
    page.wait_for_function("document.querySelector('#bar').value > 0")
    page.wait_for_selector("#results figure img")
    assert page.locator("#results figure").count() == 2
    captions = page.locator("#results figcaption span").all_inner_texts()
    seeds = [int(c.split()[-1]) for c in captions]
    assert seeds[1] == seeds[0] + 1  # each image's own seed
    assert "done" in page.inner_text("#status")
    page.press("#prompt", "Enter")  # not busy: Enter starts a run
    page.wait_for_function("document.querySelector('#status').textContent.startsWith('done')")
    page.reload()
    page.wait_for_selector("#history .job")
    page.fill("#prompt", "")
    page.locator("#history .job button", has_text="reuse parameters").first.click()
    assert page.input_value("#prompt") == "a red circle"
    assert page.input_value("#steps") == "40"


def test_stop_with_escape(page):
    page.fill("#steps", "200")
    page.select_option("#sampler", "euler")
    page.fill("#num", "1")
    page.click("#go")
    page.wait_for_function("document.querySelector('#status').textContent.startsWith('running')")
    page.keyboard.press("Escape")
    page.wait_for_function("document.querySelector('#status').textContent === 'stopped'")
    assert page.is_disabled("#stop") and not page.is_disabled("#go")


def _choose_image(page, size=(32, 32)) -> None:
    page.set_input_files("#file", {"name": "in.png", "mimeType": "image/png",
                                   "buffer": png_bytes(Image.new("RGB", size, (200, 60, 60)))})


def test_paint_a_mask_and_inpaint(page):
    page.click("[role=tab][data-task=inpaint]")
    assert page.get_attribute("[role=tab][data-task=inpaint]", "aria-selected") == "true"
    _choose_image(page)
    page.fill("#steps", "2")
    box = page.locator("#maskCanvas").bounding_box()
    page.mouse.move(box["x"] + 20, box["y"] + 20)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] - 20, box["y"] + box["height"] - 20, steps=8)
    page.mouse.up()
    painted = "(() => { const d = document.querySelector('#maskCanvas').getContext('2d')" \
              ".getImageData(0, 0, 256, 256).data; let n = 0; for (let i = 3; i < d.length; " \
              "i += 4) n += d[i] > 127; return n; })()"
    stroke = page.evaluate(painted)
    assert stroke > 0
    page.click("#invert")
    assert page.evaluate(painted) == 256 * 256 - stroke
    page.click("#undo")
    assert page.evaluate(painted) == stroke
    page.click("#go")
    page.wait_for_function("document.querySelector('#status').textContent.startsWith('done')")


def test_outpaint(page):
    page.click("[role=tab][data-task=outpaint]")
    _choose_image(page)
    page.fill("#steps", "2")
    page.fill("#right", "8")
    page.click("#go")
    page.wait_for_function("document.querySelector('#status').textContent.startsWith('done')")
    src = page.get_attribute("#results figure img", "src")
    size = page.evaluate("(src) => new Promise((ok) => { const i = new Image(); i.onload = () => "
                         "ok([i.naturalWidth, i.naturalHeight]); i.src = src; })", src)
    assert size == [40, 32]


def test_drop_a_png_restores_its_settings(page):
    params = {"prompt": "a green triangle", "negative_prompt": None, "seed": 1234, "num": 1,
              "sampler": "heun", "steps": 7, "guidance": 2.5, "model": "tiny",
              "command": "generate"}
    data = base64.b64encode(png_bytes(Image.new("RGB", (32, 32)),
                                      {"kuosan": json.dumps(params)})).decode()
    page.evaluate("""(data) => {
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], "old.png", {type: "image/png"}));
        document.dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true}));
    }""", data)
    page.wait_for_function("document.querySelector('#prompt').value === 'a green triangle'")
    assert page.input_value("#seed") == "1234" and page.input_value("#sampler") == "heun"
    assert page.input_value("#steps") == "7"


def test_phone_layout(browser, server):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True,
                                  has_touch=True)
    page = context.new_page()
    page.goto(f"http://127.0.0.1:{server.port}/")
    page.wait_for_function("document.querySelector('#sampler').options.length > 0")
    # one column: nothing wider than the screen
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    shots = os.environ.get("KUOSAN_SCREENSHOTS")
    if shots:
        page.screenshot(path=str(Path(shots) / "web_phone.png"))
        desktop = browser.new_page(viewport={"width": 1280, "height": 860})
        desktop.goto(f"http://127.0.0.1:{server.port}/")
        desktop.wait_for_selector("#history .job img")
        desktop.screenshot(path=str(Path(shots) / "web_desktop.png"))
        desktop.close()
    context.close()


def test_an_emoji_model_offers_its_styles(browser, tmp_path):
    """The bundled emoji-32: a style list from /api/info's "styles", added to the prompt."""
    s = Server(Pipeline.load("emoji-32", limits=WEB), tmp_path, name="emoji-32")
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(f"http://127.0.0.1:{s.port}/")
        page.wait_for_function("document.querySelector('#style').options.length > 1")
        assert page.locator("#style option").all_inner_texts() == ["as the prompt says", "flat", "glossy"]
        assert page.get_attribute("#prompt", "placeholder") == "red apple, glossy style"
        page.fill("#prompt", "red apple")
        page.select_option("#style", "glossy")
        page.fill("#steps", "2")
        page.click("#go")
        page.wait_for_selector("#results figure img")
        alt = page.get_attribute("#results figure img", "alt")
        assert alt.startswith("red apple, glossy style"), alt
        # a scene: each emoji drawn in its place on a 64×64 canvas (kuosan.scenes)
        assert page.is_visible("#sceneBox")
        page.fill("#prompt", "a red apple to the left of a fox face")
        page.check("#scene")
        assert page.input_value("#sceneSize") == "64"
        page.select_option("#sceneSize", "96")
        page.fill("#num", "1")
        page.click("#go")
        page.wait_for_function("document.querySelector('#results figure img')?.alt"
                               ".startsWith('a red apple to the left of a fox face, glossy style')")
        page.wait_for_function("document.querySelector('#results figure img').naturalWidth > 0")
        assert page.evaluate("document.querySelector('#results figure img').naturalWidth") == 96
    finally:
        context.close()
        s.close()
