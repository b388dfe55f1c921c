"""σ grids, integer timestep chains, and the last step from σ_min to 0.

A σ grid holds n + 1 values, strictly decreasing, ending at exactly 0; the samplers take n
steps over it. The last step, from σ_min to σ = 0, is :func:`final_step`: x̂_0 ("denoise") or
the trapezoid rule, per sampler (:mod:`kuosan.samplers.table`); it costs no model evaluation.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..errors import KuosanError, is_int
from ..schedule import NoiseSchedule


def timesteps_uniform(schedule: NoiseSchedule, steps: int) -> Tensor:
    """``steps`` integer timesteps from T−1 down to 0, evenly spaced (both ends included)."""
    if steps < 1 or steps > schedule.T:
        raise KuosanError(f"steps must be in [1, {schedule.T}], got {steps}")
    if steps == 1:
        return torch.tensor([schedule.T - 1])
    return torch.linspace(schedule.T - 1, 0, steps, dtype=torch.float64).round().long()


def check_steps(steps: int) -> None:
    """Raise unless ``steps`` is a positive integer."""
    if not is_int(steps) or steps < 1:
        raise KuosanError(f"steps must be a positive integer, got {steps!r}")


def append_zero(sigmas: Tensor) -> Tensor:
    """``sigmas`` followed by a 0."""
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def sigmas_uniform_t(schedule: NoiseSchedule, steps: int) -> Tensor:
    """σ(t) at ``steps`` timesteps uniform in t from T−1 down to 0, then 0 (DDIM's "linspace")."""
    check_steps(steps)
    t = torch.linspace(schedule.T - 1, 0, steps, dtype=torch.float64)
    return append_zero(schedule.sigma_at(t))


def sigmas_log_snr(
    schedule: NoiseSchedule, steps: int, sigma_min: float | None = None
) -> Tensor:
    """``steps`` levels uniform in log-SNR λ = −2·log σ from σ_max down to σ_min, then 0.

    DPM-Solver's "logSNR" spacing: every step has the same h = λ_next − λ (in its half-λ).
    """
    check_steps(steps)
    lo = schedule.sigma_min if sigma_min is None else sigma_min
    log_sigma = torch.linspace(math.log(schedule.sigma_max), math.log(lo), steps, dtype=torch.float64)
    return append_zero(log_sigma.exp())


def sigmas_karras(
    schedule: NoiseSchedule, steps: int, rho: float = 7.0, sigma_min: float | None = None
) -> Tensor:
    """Karras et al. 2022 (eq. 5): σ_i = (σ_max^{1/ρ} + i/(n−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, then 0."""
    check_steps(steps)
    lo = schedule.sigma_min if sigma_min is None else sigma_min
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    inv_max, inv_min = schedule.sigma_max ** (1 / rho), lo ** (1 / rho)
    return append_zero((inv_max + ramp * (inv_min - inv_max)) ** rho)


SPACINGS: dict[str, Callable[[NoiseSchedule, int], Tensor]] = {
    "uniform_t": sigmas_uniform_t,
    "log_snr": sigmas_log_snr,
    "karras": sigmas_karras,
}


def check_sigmas(sigmas: Tensor) -> None:
    """Raise unless ``sigmas`` has ≥ 2 values, strictly decreasing, ending at exactly 0."""
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise KuosanError(f"a σ grid needs at least 2 values, got shape {tuple(sigmas.shape)}")
    if not bool((sigmas[:-1] > sigmas[1:]).all()) or float(sigmas[-1]) != 0:
        raise KuosanError(f"sigmas must decrease and end at 0, got ...{sigmas[-3:].tolist()}")


# ---- the last step, from σ_min to 0 --------------------------------------------------------------

FINAL_STEPS: tuple[str, ...] = ("trapezoid", "denoise")
SIGMA_DATA = 0.5  # the data scale that tempers "trapezoid" at large σ (EDM's σ_data for images)


def check_final_step(rule: str) -> None:
    """Raise unless ``rule`` names a last step (:data:`FINAL_STEPS`)."""
    if rule not in FINAL_STEPS:
        raise KuosanError(f"unknown final_step {rule!r}: expected one of {', '.join(FINAL_STEPS)}")


def final_weight(sigma: float, rule: str) -> float:
    """w in the last step x_0 = x̂_0 + w·(x − x̂_0): 0 for "denoise"; for "trapezoid"
    w = √c/(1 + √c), c = σ_d²/(σ_d² + σ²) (EDM's c_skip, σ_d = :data:`SIGMA_DATA`)."""
    check_final_step(rule)
    if rule == "denoise":
        return 0.0
    root_c = SIGMA_DATA / math.sqrt(SIGMA_DATA**2 + sigma**2)
    return root_c / (1 + root_c)


def final_step(x: Tensor, x0: Tensor, sigma: float, rule: str) -> Tensor:
    """The last step from σ (σ_min on the built-in grids) to 0, given x and x̂_0 = D(x; σ), with
    no model evaluation: x_0 = x̂_0 + w·(x − x̂_0), w from :func:`final_weight`.

    "denoise" (w = 0): an Euler step of dx/dσ = (x − D)/σ, DDPM's and EDM's last step.
    "trapezoid": for σ ≪ σ_d, w → 1/2, (x + x̂_0)/2, the trapezoid rule with the slope at σ = 0
    taken as 0, its limit for a smooth density (dx/dσ = −σ·∇log p_σ(x)); the same as an Euler
    step in σ², whose slope (x − D)/(2σ²) → −½∇log p_0(x) stays finite. w is the exact flow for
    data N(μ, σ_d²·I), so a last step from a large σ (a 1-step grid) tends to x̂_0, not to x/2.
    Along a Gaussian direction of std s the exact flow multiplies x − μ by √r, r = s²/(s² + σ²):
    "denoise" gives r (error O(σ²/s²)), "trapezoid" about (1 + r)/2 (error O(σ⁴/s⁴)); for s ≪ σ
    "denoise" is the closer one (docs/samplers.md).
    """
    w = final_weight(sigma, rule)
    return x0 if w == 0 else x0 + w * (x - x0)


def step_pairs(sigmas: Tensor, desc: str, progress: bool) -> list[tuple[float, float]]:
    """The grid's (σ, σ_next) steps as floats, checked, shown as a tqdm bar when ``progress``."""
    check_sigmas(sigmas)
    values = [float(s) for s in sigmas]
    return list(tqdm(list(itertools.pairwise(values)), disable=not progress,
                     desc=desc, leave=False))
