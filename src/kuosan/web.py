"""The local web page: `kuosan serve` — text to image and editing in the browser.

A small HTTP server from the standard library (no web framework to install): one page (HTML,
CSS and JavaScript in `kuosan/static/index.html`) and a JSON API over one loaded `Pipeline`.

    GET  /                the page
    GET  /api/info        the model: name, image size, text or not, default sampler and guidance
    POST /api/generate    {"prompt", "negative_prompt", "num", "steps", "guidance", "seed", "sampler"}
    POST /api/edit        {"mode": "inpaint" | "outpaint" | "vary" | "img2img", "image": PNG data URL,
                           "mask" (inpaint): PNG data URL, white = repaint, "left", "top", "right",
                           "bottom" (outpaint), "strength" (vary, img2img), "resample", plus
                           generate's fields}

Answers are JSON: {"images": [PNG data URLs], "parameters": "...", "seconds": s}; each PNG carries
its generation parameters like the CLI's (`kuosan generate --from-png` reads them). A request a
user got wrong (a bad value, an image that does not decode, a mask of the wrong size) answers
400 with {"error": "..."} naming the field. One generation runs at a time (a lock), and the
server listens on 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import base64
import io
import json
import math
import threading
import time
import traceback
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

from PIL import Image

from . import __version__
from .defaults import STRENGTH
from .errors import KuosanError
from .metadata import png_text
from .pipeline import Pipeline
from .result import Result

MAX_BODY = 16 << 20  # bytes of one request
MAX_IMAGES = 16  # images of one request
MAX_STEPS = 1000
EDIT_MODES = ("inpaint", "outpaint", "vary", "img2img")


def page() -> bytes:
    """The HTML of the page (package data)."""
    return resources.files("kuosan").joinpath("static/index.html").read_bytes()


# ---- reading requests -----------------------------------------------------------------------------


def _number(body: dict, name: str, default: Any, kind: type, lo: float, hi: float) -> Any:
    """body[name] (or default) as an int or a float in [lo, hi]; KuosanError naming it."""
    value = body.get(name, default)
    if value is None or value == "":
        value = default
    if value is None:
        return None
    try:
        number = kind(value)
        if isinstance(value, bool) or (kind is int and number != float(value)):
            raise ValueError(value)
    except (TypeError, ValueError, OverflowError):
        raise KuosanError(f"{name} must be {'an integer' if kind is int else 'a number'}, "
                          f"got {value!r}") from None
    if not (lo <= number <= hi) or (kind is float and not math.isfinite(number)):
        raise KuosanError(f"{name} must be between {lo:g} and {hi:g}, got {number:g}")
    return number


def _text(body: dict, name: str, default: str | None = "") -> str | None:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise KuosanError(f"{name} must be text, got {type(value).__name__}")
    return value.strip()


def decode_image(data: Any, name: str) -> Image.Image:
    """A PNG/JPEG/… given as a data URL ("data:image/png;base64,…") or bare base64."""
    if not isinstance(data, str) or not data:
        raise KuosanError(f"{name}: expected an image (a data URL), got {type(data).__name__}")
    payload = data.split(",", 1)[1] if data.startswith("data:") else data
    try:
        raw = base64.b64decode(payload, validate=True)
        img = Image.open(io.BytesIO(raw))
        img.load()
    except (ValueError, OSError, Image.DecompressionBombError) as err:
        raise KuosanError(f"{name}: cannot decode the image ({err})") from None
    return img


def encode_png(img: Image.Image, text: dict[str, str]) -> str:
    """The image as a PNG data URL carrying the text chunks."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for k, v in text.items():
        info.add_text(k, v)
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# ---- the application ------------------------------------------------------------------------------


@dataclass
class WebApp:
    """The API over one pipeline; `handle(method, path, body)` -> (status, content type, bytes)."""

    pipe: Pipeline
    model_name: str
    lock: threading.Lock = field(default_factory=threading.Lock)

    def info(self) -> dict:
        from .samplers import SAMPLERS

        c, h, w = self.pipe.info.shape
        return {"model": self.model_name, "size": [w, h], "channels": c,
                "text": self.pipe.is_text_conditioned, "image": self.pipe.info.kind == "image",
                "sampler": self.pipe.default_sampler, "guidance": self.pipe.default_guidance,
                "samplers": list(SAMPLERS), "modes": list(EDIT_MODES), "version": __version__,
                "strength": dict(STRENGTH)}

    def _common(self, body: dict) -> dict:
        from .samplers import SAMPLERS

        sampler = _text(body, "sampler", None) or None
        if sampler is not None and sampler not in SAMPLERS:
            raise KuosanError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        return {
            "prompt": _text(body, "prompt"),
            "negative_prompt": _text(body, "negative_prompt", None) or None,
            "num": _number(body, "num", 1, int, 1, MAX_IMAGES),
            "steps": _number(body, "steps", 20, int, 1, MAX_STEPS),
            "guidance": _number(body, "guidance", self.pipe.default_guidance, float, 0, 50),
            "seed": _number(body, "seed", 0, int, 0, 2**63 - 1),
            "sampler": sampler,
        }

    def generate(self, body: dict) -> dict:
        p = self._common(body)
        p["sampler"] = p["sampler"] or self.pipe.default_sampler
        with self.lock:
            images = self.pipe.generate(p["prompt"], num_images_per_prompt=p["num"],
                                        num_inference_steps=p["steps"], guidance_scale=p["guidance"],
                                        seed=p["seed"], sampler=p["sampler"],
                                        negative_prompt=p["negative_prompt"])
        return self._answer(images, p, {"command": "generate"})

    def edit(self, body: dict) -> dict:
        mode = _text(body, "mode")
        if mode not in EDIT_MODES:
            raise KuosanError(f"mode must be one of {', '.join(EDIT_MODES)}, got {mode!r}")
        p = self._common(body)
        image = decode_image(body.get("image"), "image")
        kw = {"num_inference_steps": p["steps"], "guidance_scale": p["guidance"], "seed": p["seed"],
              "negative_prompt": p["negative_prompt"]}
        extra: dict[str, Any] = {"command": mode}
        with self.lock:
            if mode == "inpaint":
                mask = decode_image(body.get("mask"), "mask")
                resample = _number(body, "resample", None, int, 1, 50)
                sampler, resample = self.pipe.inpaint_sampling(p["sampler"], resample)
                p["sampler"] = sampler
                extra["resample"] = resample
                images = self.pipe.inpaint(image, mask, p["prompt"], num_images_per_prompt=p["num"],
                                           sampler=sampler, resample=resample, **kw)
            elif mode == "outpaint":
                sides = {s: _number(body, s, 0, int, 0, 2**31) for s in ("left", "top", "right", "bottom")}
                extra.update(sides)
                p["sampler"] = p["sampler"] or self.pipe.default_sampler
                images = self.pipe.outpaint(image, prompt=p["prompt"], num_images_per_prompt=p["num"],
                                            sampler=p["sampler"], **sides, **kw)
            else:
                strength = _number(body, "strength", STRENGTH[mode], float, 0, 1)
                extra["strength"] = strength
                p["sampler"] = p["sampler"] or self.pipe.default_sampler
                if mode == "vary":
                    images = self.pipe.vary(image, num_images=p["num"], strength=strength,
                                            prompt=p["prompt"], sampler=p["sampler"], **kw)
                else:
                    images = self.pipe.img2img(image, p["prompt"], strength=strength,
                                               num_images_per_prompt=p["num"], sampler=p["sampler"], **kw)
        return self._answer(images, p, extra)

    def _answer(self, images: Result, p: dict, extra: dict) -> dict:
        texts = [png_text(images, i) for i in range(len(images))]
        return {"images": [encode_png(img, t) for img, t in zip(images, texts, strict=True)],
                "parameters": texts[0]["parameters"] if texts else ""}

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, str, bytes]:
        """One request: (HTTP status, content type, body)."""
        path = path.split("?", 1)[0]
        routes = {"/api/generate": self.generate, "/api/edit": self.edit}
        if method == "GET" and path in ("/", "/index.html"):
            return HTTPStatus.OK, "text/html; charset=utf-8", page()
        if method == "GET" and path == "/api/info":
            return _json(HTTPStatus.OK, self.info())
        if method != "POST" or path not in routes:
            known = path in routes or path in ("/", "/index.html", "/api/info")
            status = HTTPStatus.METHOD_NOT_ALLOWED if known else HTTPStatus.NOT_FOUND
            return _json(status, {"error": f"{method} {path}: " + ("not allowed" if known else "no such page")})
        try:
            request = json.loads(body or b"{}")
            if not isinstance(request, dict):
                raise KuosanError("the request must be a JSON object")
            start = time.monotonic()
            answer = routes[path](request)
            answer["seconds"] = round(time.monotonic() - start, 3)
        except json.JSONDecodeError as err:
            return _json(HTTPStatus.BAD_REQUEST, {"error": f"the request is not JSON: {err}"})
        except KuosanError as err:
            return _json(HTTPStatus.BAD_REQUEST, {"error": str(err)})
        except Exception as err:  # noqa: BLE001 (a bug of ours: say so, keep serving, log it)
            traceback.print_exc()
            return _json(HTTPStatus.INTERNAL_SERVER_ERROR,
                         {"error": f"internal error ({type(err).__name__}: {err}); please report it"})
        return _json(HTTPStatus.OK, answer)


def _json(status: int, obj: dict) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps(obj).encode()


def make_server(app: WebApp, host: str = "127.0.0.1", port: int = 7860) -> ThreadingHTTPServer:
    """A threading HTTP server for ``app`` (port 0: any free port; `server.server_address`)."""

    class Handler(BaseHTTPRequestHandler):
        server_version = f"kuosan/{__version__}"

        def _reply(self, status: int, kind: str, data: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._reply(*app.handle("GET", self.path, b""))

        def do_POST(self) -> None:
            try:
                length = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                length = -1
            if not 0 <= length <= MAX_BODY:
                self._reply(*_json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                   {"error": f"a request may hold at most {MAX_BODY >> 20} MiB"}))
                return
            self._reply(*app.handle("POST", self.path, self.rfile.read(length)))

        def log_message(self, format: str, *args: Any) -> None:  # one quiet line a request
            print(f"kuosan serve: {self.command} {self.path} {args[1] if len(args) > 1 else ''}",
                  flush=True)

    try:
        return ThreadingHTTPServer((host, port), Handler)
    except OSError as err:
        raise KuosanError(f"cannot listen on {host}:{port} ({err.strerror or err}); "
                          f"check --host and --port") from None
