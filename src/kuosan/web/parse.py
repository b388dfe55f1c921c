"""A job's JSON (POST /api/jobs) → a checked :class:`~kuosan.request.Request`, before it is
queued: every field's type and range, the images (pixel count read from the header before any
decoding), and the server's :class:`~kuosan.limits.Limits`; a :class:`Refused` (422, or 413 for
an image too large) naming the field otherwise."""

from __future__ import annotations

import base64
import binascii
import io
import math
import re
import secrets
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

from ..defaults import STRENGTH
from ..edit import RESAMPLE_SAMPLERS, mask_from_image, strength_start, window_plan
from ..errors import KuosanError, is_int
from ..limits import SIDES, LimitError
from ..pipeline import Pipeline
from ..request import TASKS, Request
from ..samplers import SAMPLERS
from ..samplers.table import model_evaluations
from ..scenes import SCENE_SIZES, ScenePipeline
from .guard import Refused

SEED_MAX = 2**32 - 1  # seeds 0 … 2³² − 1: exact in JavaScript numbers; image i is seeded seed + i
UPLOAD_PIXELS = 4096 * 4096  # the largest vary/img2img upload decoded (then resized)
GUIDANCE_MAX = 50.0
FEATHER_MAX = 64.0
FIELDS = {"task", "prompt", "enhance", "scene", "negative_prompt", "num", "steps", "guidance", "seed",
          "sampler", "image", "mask", "strength", "resample", "feather", *SIDES}
# what each limit is called in the JSON (Limits.check's names)
NAMES = {"images": "num", "steps": "steps", "resample": "resample", "pixels": "image",
         "work": "num × steps × resample × pixels", **{s: s for s in SIDES},
         "lift": "kuosan serve --no-limits lifts it"}
_DATA_URL = re.compile(r"data:image/(png|jpeg|webp);base64,", re.IGNORECASE)


@dataclass(frozen=True)
class Spec:
    """A checked job: the ``request`` to run, its ``parameters`` as the client may send them
    again (seed resolved), the model ``evaluations`` it is expected to take (progress) and the
    ``scene`` canvas side when the request is a scene of ``kuosan.scenes`` (else None)."""

    request: Request
    parameters: dict[str, Any]
    evaluations: int
    scene: int | None = None


def parse_job(body: object, pipe: Pipeline) -> Spec:
    """The job ``body`` asks for, checked against ``pipe`` and ``pipe.limits``."""
    if not isinstance(body, dict):
        raise Refused(422, f"the body must be a JSON object, not {type(body).__name__}")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise Refused(422, f"{unknown[0]}: no such field (fields: {', '.join(sorted(FIELDS))})")
    task = _choice(body, "task", TASKS, "generate")
    prompt = _text(body, "prompt") or ""
    negative = _text(body, "negative_prompt") or None
    if (prompt or negative) and not pipe.is_text_conditioned:
        raise Refused(422, f"prompt: '{pipe.name}' is not a text-to-image model: leave it empty")
    scene = _int(body, "scene", None, SCENE_SIZES.start, SCENE_SIZES.stop - 1)
    scenes = None
    if scene is not None:
        if task != "generate":
            raise Refused(422, f"scene: only task generate draws a scene, not {task}")
        try:
            scenes = ScenePipeline(pipe, scene)
        except KuosanError as err:
            raise Refused(422, f"scene: {err}") from None
    user_prompt = None
    enhance = _value(body, "enhance")
    if enhance is not None and not isinstance(enhance, bool):
        raise Refused(422, f"enhance: expected true or false, got {_show(enhance)}")
    if enhance:
        try:  # the free text in the model's caption language (docs/enhance.md)
            user_prompt, prompt = prompt, (scenes or pipe).enhance_prompt(prompt)
        except KuosanError as err:
            raise Refused(422, f"enhance: {err}") from None
    num = _int(body, "num", 1, 1)
    steps = _int(body, "steps", 20, 1)
    guidance = _number(body, "guidance", pipe.default_guidance, 0.0, GUIDANCE_MAX)
    seed = _int(body, "seed", None, 0, SEED_MAX)
    seed = secrets.randbelow(SEED_MAX + 1) if seed is None else seed
    sampler = _choice(body, "sampler", tuple(SAMPLERS), None)
    fields: dict[str, Any] = {}
    own: dict[str, Any] = {}
    pixels = pipe.item_pixels
    if task == "generate":
        resample = 1
        sampler = sampler or pipe.default_sampler
        evaluations = model_evaluations(sampler, steps)
    elif task in ("vary", "img2img"):
        resample = 1
        sampler = sampler or pipe.default_sampler
        strength = _number(body, "strength", STRENGTH[task], 0.0, 1.0)
        fields["strength"] = own["strength"] = strength
        _, h, w = pipe.info.shape
        fields["image"] = _image(body, "image", UPLOAD_PIXELS).resize((w, h), Image.LANCZOS)
        evaluations = model_evaluations(sampler, max(1, steps - strength_start(strength, steps)))
    else:
        limit = pipe.limits.pixels or UPLOAD_PIXELS
        image = _image(body, "image", min(limit, UPLOAD_PIXELS))
        window = pipe.info.shape[-1]
        if task == "inpaint" and min(image.size) < window:
            raise Refused(422, f"image: {image.width}×{image.height} is smaller than the model's "
                               f"{window}×{window} images")
        asked = _int(body, "resample", None, 1)
        if task == "inpaint":
            sampler, resample = pipe.inpaint_sampling(sampler, asked)
            feather = _number(body, "feather", 0.0, 0.0, FEATHER_MAX)
            mask_image = _image(body, "mask", min(limit, UPLOAD_PIXELS), "mask")
            if mask_image.size != image.size:
                mask_image = mask_image.resize(image.size, Image.NEAREST)
            try:
                mask = mask_from_image(mask_image, image.size, "mask")
            except KuosanError as err:
                raise Refused(422, str(err)) from None
            pixels = image.width * image.height
            fields.update(image=image, mask_image=mask_image, feather=feather)
            own.update(feather=feather)
        else:
            sampler, resample = pipe.inpaint_sampling(sampler, 1 if asked is None else asked)
            sides = {s: _int(body, s, 0, 0) for s in SIDES}
            if not any(sides.values()):
                raise Refused(422, "left: give at least one of left, top, right, bottom > 0")
            _check_limits(pipe, borders=sides)
            size = (image.height + sides["top"] + sides["bottom"],
                    image.width + sides["left"] + sides["right"])
            if min(size) < window:
                raise Refused(422, f"image: extended to {size[1]}×{size[0]}, still smaller than "
                                   f"the model's {window}×{window} images: extend it further")
            mask = torch.ones((1, *size), dtype=torch.bool)
            mask[:, sides["top"]:sides["top"] + image.height,
                 sides["left"]:sides["left"] + image.width] = False
            pixels = math.prod(size)
            fields.update(image=image, **sides)
            own.update(sides)
        if resample > 1 and sampler not in RESAMPLE_SAMPLERS:
            raise Refused(422, f"sampler: resampling (resample={resample}) needs "
                               f"{' or '.join(RESAMPLE_SAMPLERS)}, not {sampler!r}")
        fields["resample"] = own["resample"] = resample
        evaluations = (model_evaluations(sampler, steps) if resample == 1
                       else steps * resample - (resample - 1))
    _check_limits(pipe, images=num, steps=steps, resample=resample, pixels=pixels,
                  prompts=[prompt], negative_prompt=negative)
    if task in ("inpaint", "outpaint") and pixels > window * window:  # checked: not too large
        evaluations *= len(window_plan(mask[0], window))
    request = Request(task, prompt, negative, num, steps, guidance, seed, None, sampler, **fields)
    if scenes is not None:  # the caption parsed, the limits on its emoji (before any work)
        try:
            scenes.batches(request)
            emoji = num * len(scenes.layout(prompt, seed))
        except LimitError as err:
            raise Refused(422, str(err.named(NAMES))) from None
        except KuosanError as err:
            raise Refused(422, f"prompt: {err}") from None
        evaluations *= math.ceil(emoji / request.batch_size)  # the emoji's batches
        own["scene"] = scene
    parameters = {"task": task, "prompt": prompt, "negative_prompt": negative, "num": num,
                  "steps": steps, "guidance": guidance, "seed": seed, "sampler": sampler, **own}
    if user_prompt is not None:
        parameters["user_prompt"] = user_prompt
    return Spec(request, parameters, max(1, evaluations), scene)


def _check_limits(pipe: Pipeline, **asked: Any) -> None:
    try:
        pipe.limits.check(names=NAMES, **asked)
    except LimitError as err:
        raise Refused(422, str(err)) from None


def _value(body: dict, name: str) -> Any:
    value = body.get(name)
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise Refused(400, f"{name}: the text holds a lone surrogate (not Unicode)") from None
    return value


def _text(body: dict, name: str) -> str | None:
    value = _value(body, name)
    if value is not None and not isinstance(value, str):
        raise Refused(422, f"{name}: must be text, got {type(value).__name__}")
    return None if value is None else value.strip()


def _choice(body: dict, name: str, choices: tuple[str, ...], default: str | None) -> str | None:
    value = _text(body, name)
    if not value:
        return default
    if value not in choices:
        raise Refused(422, f"{name}: must be one of {', '.join(choices)}, got {value[:40]!r}")
    return value


def _int(body: dict, name: str, default: int | None, lo: int, hi: int | None = None
         ) -> int | None:
    value = _value(body, name)
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not is_int(value):
        raise Refused(422, f"{name}: must be an integer, got {_show(value)}")
    if value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi:,}" if hi is not None else f">= {lo}"
        raise Refused(422, f"{name}: must be {bound}, got {value}")
    return value


def _number(body: dict, name: str, default: float, lo: float, hi: float) -> float:
    value = _value(body, name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Refused(422, f"{name}: must be a number, got {_show(value)}")
    if not (math.isfinite(value) and lo <= value <= hi):
        raise Refused(422, f"{name}: must be between {lo:g} and {hi:g}, got {value:g}")
    return float(value)


def _show(value: Any) -> str:
    return repr(value)[:40] if isinstance(value, (str, int, float)) else type(value).__name__


def _image(body: dict, name: str, max_pixels: int, label: str | None = None) -> Image.Image:
    """A PNG, JPEG or WebP data URL, decoded only when its header says it has at most
    ``max_pixels`` pixels (413 otherwise)."""
    value = _value(body, name)
    if not isinstance(value, str) or not value:
        raise Refused(422, f"{name}: expected an image (a PNG, JPEG or WebP data URL)")
    match = _DATA_URL.match(value)
    if not match:
        raise Refused(422, f"{name}: expected a data URL data:image/png;base64,… (or jpeg, webp)")
    try:
        raw = base64.b64decode(value[match.end():], validate=True)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw), formats=["PNG", "JPEG", "WEBP"])
            if image.width * image.height > max_pixels:
                raise Refused(413, f"{name}: {image.width}×{image.height} is over the limit of "
                                   f"{max_pixels:,} pixels")
            image.load()
            if image.mode not in ("L", "RGB", "RGBA"):  # palette, 16-bit, CMYK, …: resizable
                image = image.convert("RGBA")
    except Refused:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):  # Pillow's own cap
        raise Refused(413, f"{name}: over the limit of {max_pixels:,} pixels") from None
    except UnidentifiedImageError:
        raise Refused(422, f"{label or name}: not a PNG, JPEG or WebP image") from None
    except (binascii.Error, ValueError, OSError, SyntaxError, EOFError) as err:
        raise Refused(422, f"{label or name}: cannot decode the image ({err})") from None
    return image
