"""Editing with a trained denoiser: inpainting, outpainting, variations and image-to-image.

Everything here works in model space (images in [−1, 1], shape (B, C, H, W)) over any
``model(x_t, t) -> output`` that :func:`kuosan.samplers.sample` takes, guided or not; the
:class:`kuosan.pipeline.Pipeline` methods wrap it for PIL images and captions.

- **Inpainting** (mask m, 1 = repaint): :class:`PinnedDenoiser` wraps the denoiser so that at
  every call the known region of its input is the known image re-noised to the current level,
  x̃_t = m·x_t + (1 − m)·(√ᾱ·x_known + √(1 − ᾱ)·z) with fresh z (Song et al. 2021, RePaint's
  base step), and its x̂_0 is the known image there, m·x̂_0 + (1 − m)·x_known, so every sampler's
  state stays consistent with the known pixels. It works with every sampler.
  ``resample`` r > 1 adds RePaint's resampling (Lugmayr et al. 2022, jump length 1): each step
  is taken r times, jumping back to its start level in between (x ← x + √(σ² − σ_next²)·z),
  which lets the repainted region settle with its surroundings; it needs a single-step sampler,
  "ddpm" (ancestral, as in RePaint) or "ddim" (with its η).
- **Outpainting** is inpainting on a larger canvas: :func:`window_plan` covers the pixels to
  paint with model-sized windows, each placed where it sees the most known pixels, and each
  window is inpainted in turn (what it paints is known to the next).
- **Variations and image-to-image** (SDEdit, Meng et al. 2022): noise the image to the level
  σ_k of step k = steps − ⌊strength·steps + ½⌋ of the sampler's grid and run the remaining
  steps (:func:`sdedit`). strength 0 returns the image, strength 1 starts from pure noise
  exactly as sampling does (the image is ignored).

The final pictures keep the given pixels outside the mask bit for bit: :func:`composite` works
on the 8-bit pixels, and ``feather`` softens the seam only inside the mask.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch import Tensor
from tqdm.auto import tqdm

from .errors import KuosanError, is_int
from .samplers import (
    BaseDenoiser,
    Denoiser,
    Generators,
    ModelFn,
    ddim_step,
    randn,
    sample,
    sigmas_for,
)
from .schedule import NoiseSchedule, Prediction, expand_as

RESAMPLE_SAMPLERS = ("ddpm", "ddim")  # samplers RePaint's resampling runs with


# ---- masks -----------------------------------------------------------------------------------


def mask_from_image(mask_image: Image.Image, size: tuple[int, int], what: str = "mask") -> Tensor:
    """A PIL mask (white = repaint, black = keep) as a bool tensor (1, H, W), True = repaint.

    Any mode is read as gray levels (alpha ignored) and thresholded at 128, so an anti-aliased
    mask is fine; ``size`` (W, H) is the image's, and a mask of another size, a mask that is
    not black-and-white (over a quarter of its pixels mid-gray, 16..239) or one with nothing to
    repaint raises KuosanError naming ``what``.
    """
    if mask_image.size != tuple(size):
        raise KuosanError(f"{what} is {mask_image.size[0]}×{mask_image.size[1]} but the image is "
                          f"{size[0]}×{size[1]}: they must be the same size")
    gray = np.asarray(mask_image.convert("L"), dtype=np.uint8)
    mid = float(((gray > 15) & (gray < 240)).mean())
    if mid > 0.25:
        raise KuosanError(f"{what} is not black-and-white: {mid:.0%} of its pixels are gray "
                          f"(white = repaint, black = keep)")
    mask = torch.from_numpy(gray >= 128)[None]
    if not mask.any():
        raise KuosanError(f"{what} is all black: nothing to repaint (white = repaint)")
    return mask


def feather_mask(mask: Tensor, radius: float) -> Tensor:
    """A soft mask in [0, 1] (1, H, W) from a bool one: 0 outside the mask, rising to 1 about
    ``radius`` pixels inside its edge (a Gaussian blur of radius/2, rescaled from its value 1/2 at
    the edge); radius 0 gives the mask itself. The blend never reaches outside the mask."""
    if radius < 0 or not math.isfinite(radius):
        raise KuosanError(f"feather must be a number of pixels >= 0, got {radius}")
    hard = mask.float()
    if radius == 0:
        return hard
    img = Image.fromarray((hard[0].numpy() * 255).astype(np.uint8))
    blurred = np.asarray(img.filter(ImageFilter.GaussianBlur(radius / 2)), dtype=np.float32) / 255
    soft = torch.from_numpy(((blurred - 0.5) * 2).clip(0, 1))[None]
    return soft * hard


def composite(original: Tensor, generated: Tensor, soft_mask: Tensor) -> Tensor:
    """8-bit pixels: round(original + m·(generated − original)); uint8 (…, C, H, W) in and out.
    Where m = 0 the result is ``original`` exactly."""
    o, g = original.float(), generated.float()
    out = (o + soft_mask * (g - o)).round().clamp(0, 255).to(torch.uint8)
    return torch.where(soft_mask > 0, out, original)


# ---- inpainting --------------------------------------------------------------------------------


class PinnedDenoiser(BaseDenoiser):
    """A denoiser with the known region pinned (module docstring), over ``inner``: at (x_t, t)
    the input is x̃_t = m·x_t + (1 − m)·(√ᾱ·x_known + √(1 − ᾱ)·z), z fresh from ``generator``,
    and the answer m·D(x̃_t) + (1 − m)·x_known. ``known`` (B, C, H, W) in model space, ``mask``
    broadcastable to it, 1 = repaint (float, or bool)."""

    def __init__(self, inner: BaseDenoiser, known: Tensor, mask: Tensor,
                 generator: Generators = None) -> None:
        self.inner, self.schedule, self.generator = inner, inner.schedule, generator
        self.known, self.mask = known, mask.to(known.dtype)

    @property
    def calls(self) -> int:
        return self.inner.calls

    def at_timestep(self, x_t: Tensor, t: Tensor) -> Tensor:
        ab = expand_as(self.schedule.alpha_bar_at(t), x_t).to(x_t.device, x_t.dtype)
        z = randn(x_t.shape, self.generator, x_t.dtype).to(x_t.device)
        k, m = self.known.to(x_t.device, x_t.dtype), self.mask.to(x_t.device)
        x_in = m * x_t + (1 - m) * (ab.sqrt() * k + (1 - ab).sqrt() * z)
        return m * self.inner.at_timestep(x_in, t) + (1 - m) * k


@torch.no_grad()
def inpaint(model: ModelFn, known: Tensor, mask: Tensor, *, schedule: NoiseSchedule,
            prediction: Prediction = "eps", sampler: str = "dpmpp_2m", steps: int = 20,
            generator: Generators = None, resample: int = 1, eta: float | None = None,
            spacing: str | None = None, clip_x0: bool = True,
            device: torch.device | str | None = None, progress: bool = False,
            **sampler_kwargs) -> Tensor:
    """Repaint ``mask`` (1 = repaint, broadcastable to ``known``) of ``known`` (B, C, H, W) and
    return the sampler's x_0 (the known region is ≈ known; :func:`composite` makes it exact).

    ``resample`` = 1 runs ``sample()`` on the pinned denoiser (any sampler and its options, e.g.
    ``final_step``; model evaluations as ``sample``). ``resample`` = r > 1 is RePaint (module
    docstring), for "ddpm" (η = 1) and "ddim" (η = ``eta``, default 0): about steps·r model
    evaluations, the last step x̂_0. The initial noise is drawn first, as in ``sample``, so a
    seed gives the same result on every device.
    """
    if not is_int(resample) or resample < 1:
        raise KuosanError(f"resample must be an integer >= 1, got {resample!r}")
    pinned = PinnedDenoiser(Denoiser(model, schedule, prediction, clip_x0), known, mask, generator)
    if resample == 1:
        return sample(pinned, tuple(known.shape), sampler=sampler, steps=steps,
                      generator=generator, eta=eta, spacing=spacing, device=device,
                      progress=progress, **sampler_kwargs)
    if sampler not in RESAMPLE_SAMPLERS:
        raise KuosanError(f"resampling (resample={resample}) needs a single-step sampler: "
                          f"{' or '.join(RESAMPLE_SAMPLERS)}, not {sampler!r}")
    if sampler_kwargs:
        raise KuosanError(f"resampling takes no {', '.join(sorted(sampler_kwargs))} "
                          f"(its last step is x̂_0)")
    if sampler == "ddpm" and eta is not None:
        raise KuosanError("eta applies to the ddim sampler, not 'ddpm' (ancestral: η = 1)")
    eta = 1.0 if sampler == "ddpm" else (0.0 if eta is None else eta)
    if eta < 0:
        raise KuosanError(f"DDIM's eta must be >= 0, got {eta}")
    sigmas = sigmas_for(schedule, sampler, steps, spacing).tolist()
    x = randn(known.shape, generator).to(device or known.device) * math.sqrt(1 + sigmas[0] ** 2)
    return repaint_loop(pinned, x, sigmas, resample=resample, eta=eta, generator=generator,
                        progress=progress)


def repaint_loop(denoiser: Callable[[Tensor, Tensor], Tensor], x: Tensor, sigmas: list[float], *,
                 resample: int, eta: float, generator: Generators, progress: bool = False) -> Tensor:
    """DDIM steps over the σ grid ``sigmas`` (ending at 0) from the VE x, each step taken
    ``resample`` times with a jump back to its start level between tries,
    x ← x + √(σ² − σ_next²)·z; the last step returns x̂_0."""
    pairs = list(itertools.pairwise(sigmas))
    for sigma, sigma_next in tqdm(pairs, disable=not progress, desc="repaint", leave=False):
        for attempt in range(resample):
            x0 = denoiser(x, torch.tensor(sigma))
            if sigma_next == 0:
                return x0
            x = ddim_step(x, x0, sigma, sigma_next, eta, generator)
            if attempt + 1 < resample:
                jump = math.sqrt(sigma**2 - sigma_next**2)
                x = x + jump * randn(x.shape, generator, x.dtype).to(x.device)
    return x


# ---- windows over a larger canvas ------------------------------------------------------------


def window_plan(todo: Tensor, window: int, stride: int | None = None, context: float = 0.5
                ) -> list[tuple[int, int]]:
    """Top-left corners of ``window``×``window`` windows that together cover every True pixel of
    ``todo`` (H, W), in the order to paint them. Each next window is, among those holding pixels
    still to paint and seeing at least the fraction ``context`` of known pixels, the one with
    the most to paint (fewer windows); when none sees that much, the one that sees the most
    known pixels. Ties: top to bottom, left to right. Corners lie on a grid of ``stride``
    (default window/4) plus the far edges."""
    h, w = todo.shape
    if h < window or w < window:
        raise KuosanError(f"the canvas ({w}×{h}) is smaller than the model's {window}×{window} images")
    stride = stride or max(1, window // 4)
    tops = sorted({*range(0, h - window + 1, stride), h - window})
    lefts = sorted({*range(0, w - window + 1, stride), w - window})
    left_to_paint = todo.clone()
    plan = []
    while left_to_paint.any():
        best, best_key = None, None
        for top in tops:
            for left in lefts:
                cell = left_to_paint[top:top + window, left:left + window]
                n_todo = int(cell.sum())
                if n_todo == 0:
                    continue
                known = window * window - n_todo
                enough = known >= context * window * window
                key = (enough, n_todo if enough else known, -top, -left)
                if best_key is None or key > best_key:
                    best, best_key = (top, left), key
        assert best is not None
        plan.append(best)
        top, left = best
        left_to_paint[top:top + window, left:left + window] = False
    return plan


@torch.no_grad()
def inpaint_windows(model: ModelFn, canvas: Tensor, mask: Tensor, window: int, **inpaint_kwargs
                    ) -> Tensor:
    """Inpaint ``mask`` (B or 1, 1, H, W) bool of ``canvas`` (B, C, H, W) of any size ≥
    ``window`` with model-sized windows, planned on the union of the masks
    (:func:`window_plan`); each window repaints only its pixels still to paint, seeing
    everything painted or known before it. Returns the canvas (model space)."""
    canvas = canvas.clone()
    todo = mask.expand(canvas.shape[0], 1, *mask.shape[2:]).clone()
    for top, left in window_plan(todo.any(0)[0], window):
        rows, cols = slice(top, top + window), slice(left, left + window)
        cell_mask = todo[:, :, rows, cols].float()
        painted = inpaint(model, canvas[:, :, rows, cols], cell_mask, **inpaint_kwargs).cpu()
        canvas[:, :, rows, cols] = cell_mask * painted.float() + (1 - cell_mask) * canvas[:, :, rows, cols]
        todo[:, :, rows, cols] = False
    return canvas


# ---- variations and image-to-image -------------------------------------------------------------


def strength_start(strength: float, steps: int) -> int:
    """The grid step SDEdit starts from: k = steps − n with n = ⌊strength·steps + ½⌋ steps to
    run, at least 1 for any strength > 0 (k = steps: none, the image itself)."""
    if not is_int(steps) or steps < 1:
        raise KuosanError(f"steps must be a positive integer, got {steps!r}")
    if isinstance(strength, bool) or not (isinstance(strength, (int, float)) and 0.0 <= strength <= 1.0):
        raise KuosanError(f"strength must be in [0, 1], got {strength!r}")
    run = math.floor(strength * steps + 0.5)
    return steps - (max(run, 1) if strength > 0 else 0)


@torch.no_grad()
def sdedit(model: ModelFn, x0: Tensor, strength: float, *, schedule: NoiseSchedule,
           prediction: Prediction = "eps", sampler: str = "dpmpp_2m", steps: int = 20,
           generator: Generators = None, spacing: str | None = None, clip_x0: bool = True,
           device: torch.device | str | None = None, progress: bool = False, **sampler_kwargs
           ) -> Tensor:
    """SDEdit (module docstring): x0 (B, C, H, W) noised to step k = :func:`strength_start` of the
    grid, x_t = (x_0 + σ_k·z)/√(1 + σ_k²), then the last steps − k steps of ``sampler``. Returns
    x0 itself for k = steps (strength 0) and ``sample()``'s result for k = 0 (strength 1: the
    same noise, the image ignored). Model evaluations: those of steps − k steps."""
    k = strength_start(strength, steps)
    if k == steps:
        return x0.clone()
    x_T = None
    if k > 0:
        sigma = float(sigmas_for(schedule, sampler, steps, spacing)[k])
        z = randn(x0.shape, generator)
        x_T = (x0.cpu().float() + sigma * z) / math.sqrt(1 + sigma**2)
    return sample(model, tuple(x0.shape), schedule=schedule, sampler=sampler, steps=steps,
                  generator=generator, prediction=prediction, x_T=x_T, start_step=k,
                  spacing=spacing, clip_x0=clip_x0, device=device, progress=progress,
                  **sampler_kwargs)
