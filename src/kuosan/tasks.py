"""The tasks of a :class:`~kuosan.pipeline.Pipeline`: each checks a
:class:`~kuosan.request.Request` whole (its inputs and :class:`~kuosan.limits.Limits`), then
returns a generator of its batches, each a :class:`~kuosan.result.Result`.

``TASKS`` maps ``Request.task`` to its function; :func:`batches` is the one batching and seeding
loop they all share (image i of a call is seeded ``seed + i`` whatever the batch size):

- ``generate``: sample from noise with the prompts (classifier-free guidance);
- ``inpaint`` / ``outpaint``: repaint a masked part, or a new border, and composite so that the
  pixels outside the mask come back exactly (:func:`kuosan.edit.inpaint_windows`);
- ``img2img`` / ``vary``: SDEdit from the given picture (:func:`kuosan.edit.sdedit`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import torch
from PIL import Image
from torch import Tensor

from .defaults import IMG2IMG_STRENGTH, VARY_STRENGTH
from .edit import composite, feather_mask, inpaint_windows, mask_from_image, sdedit
from .errors import KuosanError, is_int
from .limits import SIDES, check_count
from .request import Request
from .result import Result
from .samplers import Generators, sample

if TYPE_CHECKING:
    from .pipeline import Pipeline


def check(pipe: Pipeline, r: Request, edits: int, pixels: int, prompts: Sequence[str],
          resample: int = 1, names: dict[str, str] | None = None) -> None:
    """The call (``edits`` inputs, each made ``num_images_per_prompt`` times) is within
    ``pipe.limits`` (a non-integer steps or resample is left to the samplers' own checks, which
    come at the first batch, still before any work)."""
    n = check_count("num_images_per_prompt", r.num_images_per_prompt)
    outpaint = r.task == "outpaint"
    if outpaint:
        names = {"pixels": "image with left/top/right/bottom"}
    pipe.limits.check(images=edits * n, steps=r.num_inference_steps, resample=resample,
                      pixels=pixels, borders={s: getattr(r, s) for s in SIDES} if outpaint else None,
                      prompts=prompts, negative_prompt=r.negative_prompt, names=names)


def batches(pipe: Pipeline, r: Request, edits: int, make: Callable[[range, Generators], list],
            prompt_of: Callable[[int], str], sampler: str, **resolved) -> Iterator[Result]:
    """The one batching and seeding loop over image i of ``edits × num_images_per_prompt``
    (:meth:`~kuosan.request.Request.seeded_batches`); ``make(rows, generators)`` makes a batch's
    images; ``resolved``: the settings the task resolved, for the Result."""
    plan = r.seeded_batches(edits)  # checked now, before any work
    guidance = pipe.default_guidance if r.guidance_scale is None else float(r.guidance_scale)

    @torch.no_grad()
    def results() -> Iterator[Result]:
        for rows, gens, seeds in plan:
            yield Result(r.task, make(rows, gens), [prompt_of(i) for i in rows],
                         r.negative_prompt, seeds, sampler, r.num_inference_steps, guidance,
                         pipe.source, pipe.digest, precision=pipe.precision,
                         attribution=pipe.attribution, **resolved)

    return results()


def sampling(pipe: Pipeline, r: Request, sampler: str, generator: Generators) -> dict:
    """The keyword arguments of :func:`kuosan.samplers.sample` (and the edits built on it)."""
    return {"schedule": pipe.schedule, "prediction": pipe.prediction, "sampler": sampler,
            "steps": r.num_inference_steps, "generator": generator, "clip_x0": pipe.clip_x0,
            "device": pipe.device, "progress": r.progress, **r.sampler_kwargs}


def sample_batch(pipe: Pipeline, model: Callable, b: int, r: Request, sampler: str,
                 gens: Generators) -> Tensor:
    """``b`` samples of ``model`` in model space, (b, *shape), fp32 on the CPU."""
    return sample(model, (b, *pipe.info.shape), **sampling(pipe, r, sampler, gens)).float().cpu()


def watched(r: Request, model: Callable) -> Callable:
    """``model``, calling ``r.callback(x_t, t, output)`` after each evaluation (progress; an
    exception raised there, e.g. a cancel, stops the call)."""
    if r.callback is None:
        return model

    def model_and_callback(x_t: Tensor, t: Tensor) -> Tensor:
        output = model(x_t, t)
        r.callback(x_t, t, output)
        return output

    return model_and_callback


def generate(pipe: Pipeline, r: Request) -> Iterator[Result]:
    prompts = r.prompts()
    check(pipe, r, len(prompts), pipe.item_pixels, prompts)
    pipe.conditioned(prompts, r.negative_prompt)  # a model without text takes no prompt
    sampler, n = r.sampler or pipe.default_sampler, r.num_images_per_prompt

    def make(rows: range, gens: Generators) -> list[Image.Image]:
        model = watched(r, pipe.conditioned([prompts[i // n] for i in rows], r.negative_prompt,
                                            r.guidance_scale))
        return pipe.to_images(sample_batch(pipe, model, len(rows), r, sampler, gens))

    return batches(pipe, r, len(prompts), make, lambda i: prompts[i // n], sampler)


def inpaint(pipe: Pipeline, r: Request) -> Iterator[Result]:
    images = r.images()
    masks = r.images("mask_image")
    prompts = r.prompts()
    feather_mask(torch.zeros(1, 1, 1, dtype=torch.bool), r.feather)  # check it before any work
    count = max(len(images), len(masks), len(prompts))
    for what, items in (("image", images), ("mask_image", masks), ("prompt", prompts)):
        if len(items) not in (1, count):
            raise KuosanError(f"inpaint: {len(items)} {what}s for {count} edits: give one or {count}")
    if len({im.size for im in images}) > 1:
        raise KuosanError("inpaint: the images of one call must have one size")
    sampler, resample = pipe.inpaint_sampling(r.sampler, r.resample)
    check(pipe, r, count, math.prod(images[0].size), prompts, resample)
    pixels = torch.stack([pipe.pixels(im, "image", any_size=True) for im in images])
    mask = torch.stack([mask_from_image(m, images[0].size, "mask_image") for m in masks])
    return paint(pipe, r, pixels, mask, prompts, count, sampler, resample, {"feather": r.feather})


def outpaint(pipe: Pipeline, r: Request) -> Iterator[Result]:
    pads = {"left": r.left, "top": r.top, "right": r.right, "bottom": r.bottom}
    for name, value in pads.items():
        if not is_int(value) or value < 0:
            raise KuosanError(f"{name} must be a number of pixels >= 0, got {value!r}")
    if not any(pads.values()):
        raise KuosanError("outpaint: give at least one of left, top, right, bottom > 0")
    prompt = r.prompts()[0]
    sampler, resample = pipe.inpaint_sampling(r.sampler, 1 if r.resample is None else r.resample)
    image = r.images()[0]
    pixels = pipe.pixels(image, "image", any_size=True, smaller=True)
    w, h = image.size
    size = (h + r.top + r.bottom, w + r.left + r.right)
    window = pipe.info.shape[-1]
    if min(size) < window:
        raise KuosanError(f"outpaint: the extended image would be {size[1]}×{size[0]}, smaller "
                          f"than the model's {window}×{window} images: extend it further")
    check(pipe, r, 1, math.prod(size), [prompt], resample)
    canvas = torch.full((pixels.shape[0], *size), 128, dtype=torch.uint8)
    canvas[:, r.top:r.top + h, r.left:r.left + w] = pixels
    mask = torch.ones((1, *size), dtype=torch.bool)
    mask[:, r.top:r.top + h, r.left:r.left + w] = False
    return paint(pipe, r, canvas[None], mask[None], [prompt], 1, sampler, resample, pads)


def paint(pipe: Pipeline, r: Request, pixels: Tensor, mask: Tensor, prompts: list[str],
          count: int, sampler: str, resample: int, settings: dict) -> Iterator[Result]:
    """Inpaint uint8 ``pixels`` (E, C, H, W) where ``mask`` (E, 1, H, W) is True, edit e (of
    ``count``; E and the prompts: 1 or ``count``) made ``num_images_per_prompt`` times in a row
    with ``prompts[e]``; then composite, exact outside the mask."""
    n, window = r.num_images_per_prompt, pipe.info.shape[-1]

    def prompt_of(i: int) -> str:
        return prompts[(i // n) % len(prompts)]

    def make(rows: range, gens: Generators) -> list[Image.Image]:
        pix = pixels[[(i // n) % len(pixels) for i in rows]]
        msk = mask[[(i // n) % len(mask) for i in rows]]
        # a canvas larger than a window is planned per mask, so that image i does not depend on
        # the masks of its batch-mates (one window covers a model-sized canvas whatever the mask)
        whole = tuple(pix.shape[-2:]) == (window, window)
        out: dict[int, Tensor] = {}
        for group in [list(range(len(rows)))] if whole else same_masks(msk):
            g = [gens[j] for j in group] if isinstance(gens, list) else gens
            model = watched(r, pipe.conditioned([prompt_of(rows[j]) for j in group],
                                                r.negative_prompt, r.guidance_scale))
            painted = inpaint_windows(model, pix[group].float() / 127.5 - 1, msk[group], window,
                                      resample=resample, **sampling(pipe, r, sampler, g))
            generated = ((painted.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
            for j, gen in zip(group, generated, strict=True):
                out[j] = composite(pix[j], gen, feather_mask(msk[j], r.feather))
        return [uint8_to_pil(out[j]) for j in range(len(rows))]

    return batches(pipe, r, count, make, prompt_of, sampler, resample=resample, settings=settings)


def img2img(pipe: Pipeline, r: Request) -> Iterator[Result]:
    """img2img and vary (SDEdit; they differ in their default strength only)."""
    prompt = r.prompts()[0]
    strength = r.strength if r.strength is not None else (
        VARY_STRENGTH if r.task == "vary" else IMG2IMG_STRENGTH)
    sampler = r.sampler or pipe.default_sampler
    check(pipe, r, 1, pipe.item_pixels, [prompt])
    x0 = pipe.pixels(r.images()[0], "image").float() / 127.5 - 1

    def make(rows: range, gens: Generators) -> list[Image.Image]:
        model = watched(r, pipe.conditioned([prompt] * len(rows), r.negative_prompt,
                                            r.guidance_scale))
        x = sdedit(model, x0[None].expand(len(rows), -1, -1, -1).contiguous(), strength,
                   **sampling(pipe, r, sampler, gens))
        return pipe.to_images(x.float().cpu())

    return batches(pipe, r, 1, make, lambda i: prompt, sampler, strength=strength)


# the one table of tasks: Request.task → the function that checks it and makes its batches
TASKS: dict[str, Callable[[Pipeline, Request], Iterator[Result]]] = {
    "generate": generate, "inpaint": inpaint, "outpaint": outpaint, "vary": img2img,
    "img2img": img2img,
}


def uint8_to_pil(pixels: Tensor) -> Image.Image:
    """uint8 (C, H, W) → PIL ('L' or 'RGB')."""
    v = pixels.numpy()
    return Image.fromarray(v[0] if v.shape[0] == 1 else v.transpose(1, 2, 0))


def same_masks(mask: Tensor) -> list[list[int]]:
    """Row indices of ``mask`` grouped by equal masks (first appearance order)."""
    groups: list[list[int]] = []
    for i in range(len(mask)):
        for group in groups:
            if torch.equal(mask[group[0]], mask[i]):
                group.append(i)
                break
        else:
            groups.append([i])
    return groups
