"""Samplers: from noise to data through a trained model.

:func:`sample` is the one entry point (the DESIGN's Sampling contract). A model is any callable
``model(x_t, t) -> output`` with ``t`` a float tensor (B,) of (possibly fractional) timesteps in
[0, T−1]; ``prediction`` says whether the output is ε, x_0 or v. Every sampler sees the model
through a denoiser (:mod:`~kuosan.samplers.denoiser`), which answers in the σ view:
D(x; σ) = x̂_0 for x = x_0 + σ·ε; ``sample`` also takes a denoiser itself (a wrapper such as
editing's known-region pinning).

    denoiser    the denoiser over a model, and the noise the samplers draw
    grids       σ grids (uniform in t, log-SNR, Karras), DDPM's timesteps, the last step to σ = 0
    solvers     σ-space ODE/SDE solvers: euler, heun, dpmpp_2m, dpmpp_3m, dpmpp_2m_sde, unipc
    ancestral   ddpm (ancestral, integer timesteps, as in the paper) and ddim (η)
    table       SAMPLERS: one SamplerEntry per sampler (function, η, noise, last step, spacing,
                model evaluations per step)
    entry       sample() and DDIM invert()

Model evaluations per call (``n`` = number of steps = len(sigmas) − 1):

    ddpm, ddim, euler, dpmpp_2m, dpmpp_3m, dpmpp_2m_sde, unipc:  n
    heun:                                                         2n − 1
"""

from .ancestral import ddim_sigma_up, ddim_step, sample_ddim, sample_ddpm
from .denoiser import (
    BaseDenoiser,
    Denoiser,
    DenoiserFn,
    Generators,
    ModelFn,
    as_denoiser,
    randn,
    randn_like,
)
from .entry import invert, sample
from .grids import (
    FINAL_STEPS,
    SIGMA_DATA,
    SPACINGS,
    check_final_step,
    check_sigmas,
    final_step,
    final_weight,
    sigmas_karras,
    sigmas_log_snr,
    sigmas_uniform_t,
    timesteps_uniform,
)
from .solvers import (
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sample_dpmpp_3m,
    sample_euler,
    sample_heun,
    sample_unipc,
)
from .table import SAMPLERS, SamplerEntry, model_evaluations, sampler_entry, sigmas_for

__all__ = [
    "FINAL_STEPS", "SAMPLERS", "SIGMA_DATA", "SPACINGS", "BaseDenoiser", "Denoiser", "DenoiserFn",
    "Generators", "ModelFn", "SamplerEntry", "as_denoiser", "check_final_step", "check_sigmas",
    "ddim_sigma_up", "ddim_step", "final_step", "final_weight", "invert", "model_evaluations",
    "randn", "randn_like", "sample", "sample_ddim", "sample_ddpm", "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde", "sample_dpmpp_3m", "sample_euler", "sample_heun", "sample_unipc",
    "sampler_entry", "sigmas_for", "sigmas_karras", "sigmas_log_snr", "sigmas_uniform_t",
    "timesteps_uniform",
]
