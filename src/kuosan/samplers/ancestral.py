"""Ancestral samplers: DDPM on integer timesteps (VP variable), and DDIM with η over a σ grid.

DDIM's η = 0 is deterministic (the Euler step of the probability-flow ODE); η = 1 is DDPM's
ancestral step with variance β̃, in the σ view.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..errors import KuosanError
from ..schedule import posterior_coefficients
from .denoiser import BaseDenoiser, DenoiserFn, Generators, randn_like
from .grids import check_final_step, final_step, step_pairs


def ddim_sigma_up(sigma: float, sigma_next: float, eta: float) -> float:
    """DDIM's fresh-noise level in the σ view: σ_up = η·σ_next·√(1 − σ_next²/σ²).

    DDIM's σ_t(η) = η·√((1 − ᾱ_s)/(1 − ᾱ_t))·√(1 − ᾱ_t/ᾱ_s), divided by √ᾱ_s; η = 1 is
    DDPM's ancestral step with variance β̃ (k-diffusion's ``get_ancestral_step``).
    """
    if sigma_next == 0:
        return 0.0
    return min(sigma_next, eta * sigma_next * math.sqrt(1 - sigma_next**2 / sigma**2))


def sample_ddim(
    denoiser: DenoiserFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    eta: float = 0.0,
    generator: Generators = None,
    final: str = "denoise",
    progress: bool = False,
) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12) in the σ view:
    x' = x̂_0 + √(σ_next² − σ_up²)·ε̂ + σ_up·z, ε̂ = (x − x̂_0)/σ, σ_up from :func:`ddim_sigma_up`.

    η = 0 is deterministic (the Euler step of the probability-flow ODE, order 1); η = 1 is
    ancestral sampling. The last step (to σ = 0, noiseless for every η) is :func:`final_step`
    with rule ``final``. Model evaluations: n. One ``torch.randn`` per step when η > 0, except
    on the last step.
    """
    if eta < 0:
        raise KuosanError(f"DDIM's eta must be >= 0, got {eta}")
    check_final_step(final)
    for sigma, sigma_next in step_pairs(sigmas, "ddim", progress):
        x0 = denoiser(x, torch.tensor(sigma))
        if sigma_next == 0:
            return final_step(x, x0, sigma, final)
        x = ddim_step(x, x0, sigma, sigma_next, eta, generator)
    return x


def ddim_step(x: Tensor, x0: Tensor, sigma: float, sigma_next: float, eta: float,
              generator: Generators = None) -> Tensor:
    """One DDIM step from σ to σ_next > 0 given x̂_0 = D(x; σ):
    x' = x̂_0 + (σ_down/σ)·(x − x̂_0) + σ_up·z, σ_down = √(σ_next² − σ_up²), σ_up from
    :func:`ddim_sigma_up`; z is drawn only when σ_up > 0."""
    sigma_up = ddim_sigma_up(sigma, sigma_next, eta)
    sigma_down = math.sqrt(sigma_next**2 - sigma_up**2)
    x = x0 + (sigma_down / sigma) * (x - x0)
    if sigma_up > 0:
        x = x + sigma_up * randn_like(x, generator)
    return x


@torch.no_grad()
def sample_ddpm(
    denoiser: BaseDenoiser,
    x: Tensor,
    timesteps: Tensor,
    *,
    generator: Generators = None,
    variance: str = "beta_tilde",
    progress: bool = False,
) -> Tensor:
    """Ancestral sampling (DDPM, Algorithm 2) on the chain ``timesteps`` (decreasing, ending at 0).

    From x_t to x_s (s the next timestep, s = −1 is the data, ᾱ_{−1} = 1) with the respaced
    β' = 1 − ᾱ_t/ᾱ_s: x_s = μ̃(x_t, x̂_0) + σ·z, σ² = β̃' ("beta_tilde") or β' ("beta"); no noise
    on the last step, which returns x̂_0. With all T timesteps this is exactly Algorithm 2.
    Unlike the other samplers it works on the VP variable x_t. Model evaluations: len(timesteps).
    """
    schedule = denoiser.schedule
    ts = timesteps.tolist()
    for i, t in enumerate(tqdm(ts, disable=not progress, desc="ddpm", leave=False)):
        s = ts[i + 1] if i + 1 < len(ts) else -1
        ab_t = schedule.alpha_bar[t]
        ab_s = schedule.alpha_bar[s] if s >= 0 else torch.ones((), dtype=torch.float64)
        x0 = denoiser.at_timestep(x, torch.full((x.shape[0],), float(t), dtype=torch.float64))
        if s < 0:
            return x0
        c_x0, c_xt, var = posterior_coefficients(ab_t, ab_s)  # the respaced step's posterior
        if variance != "beta_tilde":
            var = 1 - ab_t / ab_s  # the step's β'
        noise = randn_like(x, generator)
        x = float(c_x0) * x0 + float(c_xt) * x + float(var.sqrt()) * noise
    return x
