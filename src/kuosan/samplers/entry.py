"""The entry points: :func:`sample` (the DESIGN's Sampling contract) and DDIM :func:`invert`."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..errors import KuosanError, is_int
from ..schedule import NoiseSchedule, Prediction
from .denoiser import BaseDenoiser, Generators, ModelFn, as_denoiser, randn
from .grids import check_final_step, check_steps, final_weight, timesteps_uniform
from .table import SAMPLERS, check_spacing, sampler_entry, samplers_where, sigmas_for


@torch.no_grad()
def sample(
    model: ModelFn | BaseDenoiser,
    shape: Sequence[int],
    *,
    schedule: NoiseSchedule | None = None,
    sampler: str = "ddpm",
    steps: int | None = None,
    generator: Generators = None,
    prediction: Prediction = "eps",
    x_T: Tensor | None = None,
    eta: float | None = None,
    spacing: str | None = None,
    final_step: str | None = None,
    clip_x0: bool = False,
    device: torch.device | str | None = None,
    progress: bool = False,
    start_step: int = 0,
) -> Tensor:
    """Draw samples of ``shape`` from ``model`` and return the final x_0 estimate.

    ``model`` is a model ``model(x_t, t)`` predicting ``prediction`` over ``schedule`` (the
    :class:`Denoiser` over it is built here, clamping x̂_0 to [−1, 1] when ``clip_x0``), or a
    denoiser (:class:`BaseDenoiser`, which holds its schedule, prediction and clipping).

    The initial noise is the first thing drawn: ``torch.randn(shape, generator=generator)`` on the
    CPU (or one row per generator when ``generator`` is a list of them, see :func:`randn`), then
    moved to ``device`` (so a seed gives the same samples on every device), unless ``x_T`` is
    given. x_T is the VP variable at t = T−1; the σ samplers start from x = x_T·√(1 + σ_max²).
    ``steps`` defaults to T for "ddpm" and 20 for the others. The sampler's entry in
    :data:`SAMPLERS` gives the defaults of ``spacing`` ("uniform_t", "log_snr", "karras"; "ddpm"
    only takes "uniform_t"), ``eta`` (DDIM's η, 0, or the SDE's η, 1) and ``final_step``
    ("trapezoid" or "denoise", the last step from σ_min to 0, :func:`final_step`) where it
    takes them. Model evaluations: :func:`model_evaluations`.

    ``start_step`` = k > 0 skips the grid's first k steps (SDEdit, image-to-image): the sampler
    runs the last ``steps − k`` steps from level σ_k = ``sigmas_for(…)[k]``, and ``x_T`` (required)
    is the VP variable at that level, x_t = (x_0 + σ_k·ε)/√(1 + σ_k²).
    """
    entry = sampler_entry(sampler)
    if eta is not None and entry.eta is None:
        takers = " and ".join(samplers_where(lambda e: e.eta is not None))
        raise KuosanError(f"eta applies to the {takers} samplers, not {sampler!r}")
    check_spacing(sampler, spacing)
    if final_step is not None:
        if entry.final_step is None:
            takers = ", ".join(samplers_where(lambda e: e.final_step is not None))
            raise KuosanError(f"final_step applies to the {takers} samplers, not {sampler!r}")
        check_final_step(final_step)
    denoiser = as_denoiser(model, schedule, prediction, clip_x0)
    schedule = denoiser.schedule
    steps = (schedule.T if entry.timesteps else 20) if steps is None else steps
    check_steps(steps)
    if not is_int(start_step) or not 0 <= start_step < steps:
        raise KuosanError(f"start_step must be an integer in [0, {steps - 1}], got {start_step!r}")
    if x_T is None:
        if start_step:
            raise KuosanError("start_step > 0 needs x_T, the noisy start at that level")
        x_T = randn(shape, generator)
    elif tuple(x_T.shape) != tuple(shape):
        raise KuosanError(f"x_T has shape {tuple(x_T.shape)}, expected {tuple(shape)}")
    x = x_T.to(device) if device is not None else x_T
    options: dict = {"progress": progress}
    if entry.noise:
        options["generator"] = generator
    if entry.eta is not None:
        options["eta"] = entry.eta if eta is None else eta
    if entry.final_step is not None:
        options["final"] = entry.final_step if final_step is None else final_step
    if entry.timesteps:
        return entry.run(denoiser, x, timesteps_uniform(schedule, steps)[start_step:], **options)
    sigmas = sigmas_for(schedule, sampler, steps, spacing)[start_step:]
    x = x * math.sqrt(1 + float(sigmas[0]) ** 2)
    return entry.run(denoiser, x, sigmas, **options)


@torch.no_grad()
def invert(
    model: ModelFn | BaseDenoiser,
    x0: Tensor,
    *,
    schedule: NoiseSchedule | None = None,
    steps: int = 50,
    prediction: Prediction = "eps",
    spacing: str | None = None,
    final_step: str | None = None,
    fixed_point_iters: int = 0,
    clip_x0: bool = False,
    progress: bool = False,
) -> Tensor:
    """DDIM inversion: the x_T that ``sample(sampler="ddim", eta=0, x_T=x_T)`` (same ``steps``,
    ``spacing`` and ``final_step``, defaults those of ``SAMPLERS["ddim"]``) decodes back to about
    ``x0``; editing starts from it. ``model`` is a model (with ``schedule``, ``prediction``,
    ``clip_x0``) or a denoiser.

    The decoder's Euler steps run backwards, each from σ_a up to σ_b:
    x_b = x_a + (σ_b − σ_a)·(x_b − D(x_b; σ_b))/σ_b, an implicit equation (the decoder's step
    from σ_b to σ_a, solved for x_b). The usual inversion evaluates D at the current point
    (x_b ≈ x_a + (σ_b − σ_a)·ε̂(x_a)); ``fixed_point_iters`` > 0 refines each step by fixed-point
    iteration towards the exact inverse. The first step inverts the decoder's last one,
    x_0 = x_b − (1 − w)·(x_b − D(x_b; σ_min)) (:func:`final_step`): the same equation with
    σ_b − σ_a replaced by (1 − w)·σ_min. Model evaluations: steps·(1 + fixed_point_iters).
    Returns the VP variable x_T = x/√(1 + σ_max²).
    """
    if fixed_point_iters < 0:
        raise KuosanError(f"fixed_point_iters must be >= 0, got {fixed_point_iters}")
    final_step = SAMPLERS["ddim"].final_step if final_step is None else final_step
    check_final_step(final_step)
    denoiser = as_denoiser(model, schedule, prediction, clip_x0)
    sigmas = sigmas_for(denoiser.schedule, "ddim", steps, spacing).flip(0).tolist()  # 0, σ_min, …, σ_max
    x = x0
    for sigma_a, sigma_b in tqdm(list(itertools.pairwise(sigmas)),
                                 disable=not progress, desc="invert", leave=False):
        # D(·; 0) does not exist: from the data, ε̂ is read at x_0 with level σ_b
        level = sigma_a if sigma_a > 0 else sigma_b
        step = sigma_b - sigma_a
        if sigma_a == 0:  # the decoder's last step: x_0 = x_b − (1 − w)·(x_b − D(x_b; σ_b))
            step = (1 - final_weight(sigma_b, final_step)) * sigma_b
        eps = (x - denoiser(x, torch.tensor(level))) / level
        x_b = x + step * eps
        for _ in range(fixed_point_iters):
            x_b = x + step * (x_b - denoiser(x_b, torch.tensor(sigma_b))) / sigma_b
        x = x_b
    return x / math.sqrt(1 + sigmas[-1] ** 2)
