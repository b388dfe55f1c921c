"""Samplers: from noise to data through a trained model.

``sample()`` is the one entry point (the DESIGN's Sampling contract). A model is any callable
``model(x_t, t) -> output`` with ``t`` a float tensor (B,) of (possibly fractional) timesteps in
[0, T−1]; ``prediction`` says whether the output is ε, x_0 or v. Every sampler sees the model
through :class:`Denoiser`, which answers in the σ view: D(x; σ) = x̂_0 for x = x_0 + σ·ε.

Except DDPM (ancestral on integer timesteps, kept as in the paper), each sampler is a plain
function ``sample_<name>(denoiser, x, sigmas, *, ...)`` over a σ grid of n + 1 values, decreasing,
ending at exactly 0. The last step, from σ_min to σ = 0, is :func:`final_step`: x̂_0 ("denoise")
or the trapezoid rule, per sampler (:data:`DEFAULT_FINAL_STEP`); it costs no model evaluation. Multistep memory is a local
variable.

Notation (DPM-Solver's λ is half the package's log-SNR):

    sigma   σ = √((1 − ᾱ)/ᾱ)        x = x_t/√ᾱ = x_0 + σ·ε      (VE view, k-diffusion / EDM)
    lam     λ = −log σ               DPM-Solver's half log-SNR; h = λ_next − λ is a step in λ
    D       D(x; σ) = x̂_0           the data prediction every solver is written in

Model evaluations per call (``n`` = number of steps = len(sigmas) − 1):

    ddpm, ddim, euler, dpmpp_2m, dpmpp_3m, dpmpp_2m_sde, unipc:  n
    heun:                                                         2n − 1
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .errors import KuosanError
from .schedule import (
    NoiseSchedule,
    Prediction,
    expand_as,
    posterior_coefficients,
    x0_eps_from_output,
)

ModelFn = Callable[[Tensor, Tensor], Tensor]
DenoiserFn = Callable[[Tensor, Tensor], Tensor]


class Denoiser:
    """D(x; σ) = x̂_0 for the VE-scaled x = x_t/√ᾱ = x_0 + σ·ε, over a model of DDPM timesteps.

    The only place where a model output is turned into an x_0 estimate: x_t = x/√(1 + σ²),
    t = schedule.t_from_sigma(σ), then the ε/x_0/v conversion of :mod:`kuosan.schedule`.
    ``calls`` counts model evaluations (one per call, whatever the batch).
    """

    def __init__(
        self,
        model: ModelFn,
        schedule: NoiseSchedule,
        prediction: Prediction = "eps",
        clip_x0: bool = False,
    ) -> None:
        self.model, self.schedule, self.prediction, self.clip_x0 = model, schedule, prediction, clip_x0
        self.calls = 0

    def at_timestep(self, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(x̂_0, ε̂) for the VP variable x_t at float timesteps t of shape (B,)."""
        self.calls += 1
        alpha_bar = self.schedule.alpha_bar_at(t).to(x_t.device)
        output = self.model(x_t, t.to(device=x_t.device, dtype=torch.float32))
        x0, eps = x0_eps_from_output(output.to(x_t.dtype), x_t, alpha_bar, self.prediction)
        if self.clip_x0:
            x0 = x0.clamp(-1, 1)
            eps = (x_t - expand_as(alpha_bar.sqrt(), x_t) * x0) / expand_as((1 - alpha_bar).sqrt(), x_t)
        return x0, eps

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        """x̂_0 for x = x_0 + σ·ε; ``sigma`` is a scalar or (B,)."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64).expand(x.shape[0])
        x_t = x / expand_as((1 + sigma**2).sqrt(), x)
        return self.at_timestep(x_t, self.schedule.t_from_sigma(sigma))[0]


# ---- timestep and σ grids ----------------------------------------------------------------------


def timesteps_uniform(schedule: NoiseSchedule, steps: int) -> Tensor:
    """``steps`` integer timesteps from T−1 down to 0, evenly spaced (both ends included)."""
    if steps < 1 or steps > schedule.T:
        raise KuosanError(f"steps must be in [1, {schedule.T}], got {steps}")
    if steps == 1:
        return torch.tensor([schedule.T - 1])
    return torch.linspace(schedule.T - 1, 0, steps, dtype=torch.float64).round().long()


def _check_steps(steps: int) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise KuosanError(f"steps must be a positive integer, got {steps!r}")


def _append_zero(sigmas: Tensor) -> Tensor:
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def sigmas_uniform_t(schedule: NoiseSchedule, steps: int) -> Tensor:
    """σ(t) at ``steps`` timesteps uniform in t from T−1 down to 0, then 0 (DDIM's "linspace")."""
    _check_steps(steps)
    t = torch.linspace(schedule.T - 1, 0, steps, dtype=torch.float64)
    return _append_zero(schedule.sigma_at(t))


def sigmas_log_snr(
    schedule: NoiseSchedule, steps: int, sigma_min: float | None = None
) -> Tensor:
    """``steps`` levels uniform in log-SNR λ = −2·log σ from σ_max down to σ_min, then 0.

    DPM-Solver's "logSNR" spacing: every step has the same h = λ_next − λ (in its half-λ).
    """
    _check_steps(steps)
    lo = schedule.sigma_min if sigma_min is None else sigma_min
    log_sigma = torch.linspace(math.log(schedule.sigma_max), math.log(lo), steps, dtype=torch.float64)
    return _append_zero(log_sigma.exp())


def sigmas_karras(
    schedule: NoiseSchedule, steps: int, rho: float = 7.0, sigma_min: float | None = None
) -> Tensor:
    """Karras et al. 2022 (eq. 5): σ_i = (σ_max^{1/ρ} + i/(n−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, then 0."""
    _check_steps(steps)
    lo = schedule.sigma_min if sigma_min is None else sigma_min
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    inv_max, inv_min = schedule.sigma_max ** (1 / rho), lo ** (1 / rho)
    return _append_zero((inv_max + ramp * (inv_min - inv_max)) ** rho)


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
# The last step each sampler takes unless ``final_step=`` says otherwise (its function's default):
# "trapezoid" where it gave the lower KL at both 10 and 20 evaluations on every mixture of the
# exact benchmark (benchmarks/samplers.py, docs/samplers.md), "denoise" elsewhere.
DEFAULT_FINAL_STEP: dict[str, str] = {
    "ddim": "denoise",
    "euler": "denoise",
    "heun": "denoise",
    "dpmpp_2m": "denoise",
    "dpmpp_3m": "denoise",
    "unipc": "trapezoid",
}
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


# ---- samplers over a σ grid ----------------------------------------------------------------------


def _pairs(sigmas: Tensor, desc: str, progress: bool) -> list[tuple[float, float]]:
    check_sigmas(sigmas)
    values = [float(s) for s in sigmas]
    return list(tqdm(list(itertools.pairwise(values)), disable=not progress,
                     desc=desc, leave=False))


Generators = torch.Generator | Sequence[torch.Generator] | None


def randn(shape: Sequence[int], generator: Generators, dtype: torch.dtype = torch.float32) -> Tensor:
    """Standard normal noise of ``shape``, drawn on the CPU. ``generator`` may be a list with one
    generator per batch row: row i is then drawn from generator i alone, so a sample does not
    depend on the batch it is drawn in (DESIGN: "image i is the same whatever the batch size")."""
    shape = tuple(shape)
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator, dtype=dtype)
    if len(generator) != shape[0]:
        raise KuosanError(f"{len(generator)} generators for a batch of {shape[0]}")
    return torch.stack([torch.randn(shape[1:], generator=g, dtype=dtype) for g in generator])


def _randn_like(x: Tensor, generator: Generators) -> Tensor:
    return randn(x.shape, generator, x.dtype).to(x.device)


def sample_euler(
    denoiser: DenoiserFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    final: str = "denoise",
    progress: bool = False,
) -> Tensor:
    """Euler steps on the probability-flow ODE dx/dσ = (x − D(x; σ))/σ (Karras et al. 2022,
    Algorithm 2 with S_churn = 0). Order 1; model evaluations: n (one per step).

    The last step (to σ = 0) is :func:`final_step` with rule ``final``. In the σ view this is
    exactly DDIM with η = 0 (Song et al. 2021).
    """
    check_final_step(final)
    for sigma, sigma_next in _pairs(sigmas, "euler", progress):
        x0 = denoiser(x, torch.tensor(sigma))
        if sigma_next == 0:
            return final_step(x, x0, sigma, final)
        d = (x - x0) / sigma  # dx/dσ
        x = x + d * (sigma_next - sigma)
    return x


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
    for sigma, sigma_next in _pairs(sigmas, "ddim", progress):
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
        x = x + sigma_up * _randn_like(x, generator)
    return x


def sample_heun(
    denoiser: DenoiserFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    final: str = "denoise",
    progress: bool = False,
) -> Tensor:
    """Heun's method on the probability-flow ODE (Karras et al. 2022, Algorithm 1, S_churn = 0):
    an Euler step, then the trapezoid rule with the slope at its end. Order 2.

    The last step (to σ = 0) evaluates no slope at its end: it is :func:`final_step` with rule
    ``final`` (the trapezoid rule with end slope 0, or Karras et al.'s Euler step, "denoise"),
    so model evaluations: 2n − 1.
    """
    check_final_step(final)
    for sigma, sigma_next in _pairs(sigmas, "heun", progress):
        x0 = denoiser(x, torch.tensor(sigma))
        if sigma_next == 0:
            return final_step(x, x0, sigma, final)
        d = (x - x0) / sigma
        x_euler = x + d * (sigma_next - sigma)
        d_next = (x_euler - denoiser(x_euler, torch.tensor(sigma_next))) / sigma_next
        x = x + (d + d_next) / 2 * (sigma_next - sigma)
    return x


def sample_dpmpp_2m(
    denoiser: DenoiserFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    final: str = "denoise",
    progress: bool = False,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) in data-prediction form, λ = −log σ:
    x' = (σ_next/σ)·x − (e^{−h} − 1)·D̃, D̃ = (1 + 1/(2r))·D_i − 1/(2r)·D_{i−1}, r = h_{i−1}/h.

    Order 2. The first step is first order; the last step (to σ = 0) is :func:`final_step` with
    rule ``final``. Model evaluations: n.
    """
    check_final_step(final)
    old_x0, h_last = None, None
    for sigma, sigma_next in _pairs(sigmas, "dpmpp_2m", progress):
        x0 = denoiser(x, torch.tensor(sigma))
        if sigma_next == 0:
            return final_step(x, x0, sigma, final)
        h = math.log(sigma / sigma_next)
        if old_x0 is None:
            x0_d = x0
        else:
            r = h_last / h
            x0_d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * old_x0
        x = (sigma_next / sigma) * x - math.expm1(-h) * x0_d
        old_x0, h_last = x0, h
    return x


def sample_dpmpp_3m(
    denoiser: DenoiserFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    lower_order_final: bool = True,
    final: str = "denoise",
    progress: bool = False,
) -> Tensor:
    """DPM-Solver++(3M) (Lu et al. 2022, multistep order 3, k-diffusion's ``dpmpp_3m_sde`` at
    η = 0): x' = (σ_next/σ)·x + (1 − e^{−h})·D_i + φ₂·D'_i − φ₃·D''_i with divided differences
    of the last three D, φ₂ = (e^{−h} − 1)/h + 1, φ₃ = φ₂/h − 1/2.

    Order 3; steps 1 and 2 warm up at orders 1 and 2. With ``lower_order_final`` the step before
    the last is second order when n < 15 (as diffusers does); the last step (to σ = 0) is
    :func:`final_step` with rule ``final``. Model evaluations: n.
    """
    check_final_step(final)
    n = sigmas.numel() - 1
    x0_1 = x0_2 = h_1 = h_2 = None
    for i, (sigma, sigma_next) in enumerate(_pairs(sigmas, "dpmpp_3m", progress)):
        x0 = denoiser(x, torch.tensor(sigma))
        if sigma_next == 0:
            return final_step(x, x0, sigma, final)
        h = math.log(sigma / sigma_next)
        x = (sigma_next / sigma) * x - math.expm1(-h) * x0
        phi_2 = math.expm1(-h) / h + 1
        lower = lower_order_final and n < 15 and i == n - 2
        if h_2 is not None and not lower:
            r0, r1 = h_1 / h, h_2 / h
            d1_0 = (x0 - x0_1) / r0
            d1_1 = (x0_1 - x0_2) / r1
            d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            phi_3 = phi_2 / h - 0.5
            x = x + phi_2 * d1 - phi_3 * d2
        elif h_1 is not None:
            x = x + phi_2 * (x0 - x0_1) / (h_1 / h)
        x0_1, x0_2, h_1, h_2 = x0, x0_1, h, h_1
    return x


def sample_dpmpp_2m_sde(
    denoiser: DenoiserFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    eta: float = 1.0,
    generator: Generators = None,
    progress: bool = False,
) -> Tensor:
    """DPM-Solver++(2M) SDE (Lu et al. 2022, §5; k-diffusion's ``dpmpp_2m_sde``, midpoint form):
    x' = (σ_next/σ)·e^{−ηh}·x + (1 − e^{−(1+η)h})·D_i + ½(1 − e^{−(1+η)h})·(D_i − D_{i−1})/r
         + σ_next·√(1 − e^{−2ηh})·z.

    η = 0 is DPM-Solver++(2M) in its midpoint variant. Order 2 for the ODE, ~1 as an SDE
    solver. Model evaluations: n; one ``torch.randn`` per step except on the last one.
    """
    if eta < 0:
        raise KuosanError(f"dpmpp_2m_sde's eta must be >= 0, got {eta}")
    old_x0, h_last = None, None
    for sigma, sigma_next in _pairs(sigmas, "dpmpp_2m_sde", progress):
        x0 = denoiser(x, torch.tensor(sigma))
        if sigma_next == 0:
            return x0
        h = math.log(sigma / sigma_next)
        eta_h = eta * h
        one_minus = -math.expm1(-h - eta_h)
        x = (sigma_next / sigma) * math.exp(-eta_h) * x + one_minus * x0
        if old_x0 is not None:
            r = h_last / h
            x = x + 0.5 * one_minus * (x0 - old_x0) / r
        if eta > 0:
            x = x + sigma_next * math.sqrt(-math.expm1(-2 * eta_h)) * _randn_like(x, generator)
        old_x0, h_last = x0, h
    return x


def _unipc_update(
    x: Tensor, sigma: float, sigma_next: float, x0s: list[Tensor], lams: list[float],
    x0_new: Tensor | None,
) -> Tensor:
    """One UniPC-bh2 update (Zhao et al. 2023, data prediction) from σ to σ_next.

    ``x0s``/``lams``: D and λ at σ (last) and at earlier levels; with ``x0_new`` (D at σ_next)
    it is the corrector UniC, otherwise the predictor UniP. B(h) = e^{h} − 1 in −h.
    """
    h = math.log(sigma / sigma_next)
    hh = -h
    h_phi_1 = math.expm1(hh)
    m0 = x0s[-1]
    rks, d1s = [], []
    for m, lam in zip(reversed(x0s[:-1]), reversed(lams[:-1]), strict=True):
        rk = (lam - lams[-1]) / h
        rks.append(rk)
        d1s.append((m - m0) / rk)
    rks.append(1.0)
    order = len(rks)
    b_h = math.expm1(hh)
    h_phi_k, factorial = h_phi_1 / hh - 1, 1
    rows, b = [], []
    for i in range(1, order + 1):
        rows.append([rk ** (i - 1) for rk in rks])
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    x_new = (sigma_next / sigma) * x - h_phi_1 * m0
    if x0_new is None:  # predictor: uses only the past
        if d1s:
            if order == 2:
                rhos = [0.5]
            else:
                rhos = torch.linalg.solve(torch.tensor(rows)[:-1, :-1].double(),
                                          torch.tensor(b[:-1]).double()).tolist()
            x_new = x_new - b_h * sum(r * d for r, d in zip(rhos, d1s, strict=True))
        return x_new
    if order == 1:
        rhos = [0.5]
    else:
        rhos = torch.linalg.solve(torch.tensor(rows).double(), torch.tensor(b).double()).tolist()
    corr = rhos[-1] * (x0_new - m0)
    for r, d in zip(rhos[:-1], d1s, strict=True):
        corr = corr + r * d
    return x_new - b_h * corr


def sample_unipc(
    denoiser: DenoiserFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    order: int = 2,
    final: str = "trapezoid",
    progress: bool = False,
) -> Tensor:
    """UniPC (Zhao et al. 2023), B(h) = e^h − 1 ("bh2"), data prediction: a multistep predictor
    UniP of ``order`` and the corrector UniC, which reuses the next step's model evaluation,
    raising the order by one (UniPC-2: order 3). Lower orders at the start and the end.

    The last step (to σ = 0) is :func:`final_step` with rule ``final``, from the corrected x.
    Model evaluations: n (the corrector costs none).
    """
    if order not in (1, 2, 3):
        raise KuosanError(f"UniPC order must be 1, 2 or 3, got {order}")
    check_final_step(final)
    pairs = _pairs(sigmas, "unipc", progress)
    n = len(pairs)
    x0s: list[Tensor] = []
    lams: list[float] = []
    x_prev, prev_order = None, 0
    for i, (sigma, sigma_next) in enumerate(pairs):
        x0 = denoiser(x, torch.tensor(sigma))
        if x_prev is not None:  # UniC: correct x with D at the (uncorrected) x
            x = _unipc_update(x_prev, float(sigmas[i - 1]), sigma, x0s[-prev_order:],
                              lams[-prev_order:], x0)
        x0s, lams = (x0s + [x0])[-order:], (lams + [-math.log(sigma)])[-order:]
        if sigma_next == 0:
            return final_step(x, x0, sigma, final)
        this_order = min(order, len(x0s), n - i)
        x_prev, prev_order = x, this_order
        x = _unipc_update(x, sigma, sigma_next, x0s[-this_order:], lams[-this_order:], None)
    return x


# ---- DDPM: ancestral sampling on integer timesteps -----------------------------------------------


@torch.no_grad()
def sample_ddpm(
    denoiser: Denoiser,
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
        x0, _ = denoiser.at_timestep(x, torch.full((x.shape[0],), float(t), dtype=torch.float64))
        if s < 0:
            return x0
        c_x0, c_xt, var = posterior_coefficients(ab_t, ab_s)  # the respaced step's posterior
        if variance != "beta_tilde":
            var = 1 - ab_t / ab_s  # the step's β'
        noise = _randn_like(x, generator)
        x = float(c_x0) * x0 + float(c_xt) * x + float(var.sqrt()) * noise
    return x


# ---- the entry points ----------------------------------------------------------------------------

SAMPLERS: tuple[str, ...] = (
    "ddpm", "ddim", "euler", "heun", "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde", "unipc",
)
DETERMINISTIC: tuple[str, ...] = ("ddim", "euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc")
# Samplers whose last step is :func:`final_step` (``final_step=``); ddpm and dpmpp_2m_sde return x̂_0.
WITH_FINAL_STEP: tuple[str, ...] = DETERMINISTIC

# The σ grid each sampler uses unless ``spacing=`` says otherwise (chosen on the exact
# Gaussian-mixture benchmark, benchmarks/samplers.py; see docs/samplers.md).
DEFAULT_SPACING: dict[str, str] = {
    "ddim": "log_snr",
    "euler": "log_snr",
    "heun": "log_snr",
    "dpmpp_2m": "log_snr",
    "dpmpp_3m": "log_snr",
    "dpmpp_2m_sde": "log_snr",
    "unipc": "log_snr",
}

_SIGMA_SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "ddim": sample_ddim,
    "euler": sample_euler,
    "heun": sample_heun,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_3m": sample_dpmpp_3m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "unipc": sample_unipc,
}


def model_evaluations(sampler: str, steps: int) -> int:
    """How many times ``sample(sampler=…, steps=steps)`` calls the model (as each docstring states)."""
    return 2 * steps - 1 if sampler == "heun" else steps


def sigmas_for(schedule: NoiseSchedule, sampler: str, steps: int, spacing: str | None = None) -> Tensor:
    """The σ grid (steps + 1 values, ending at 0) for ``sampler`` with the named ``spacing``;
    for "ddpm", σ at its integer timesteps (:func:`timesteps_uniform`), then 0."""
    if sampler == "ddpm":
        if spacing not in (None, "uniform_t"):
            raise KuosanError(f"the ddpm sampler runs on uniform integer timesteps, not spacing {spacing!r}")
        return _append_zero(schedule.sigma_at(timesteps_uniform(schedule, steps).double()))
    spacing = DEFAULT_SPACING.get(sampler, "uniform_t") if spacing is None else spacing
    if spacing not in SPACINGS:
        raise KuosanError(f"unknown spacing {spacing!r}: expected one of {', '.join(SPACINGS)}")
    return SPACINGS[spacing](schedule, steps)


@torch.no_grad()
def sample(
    model: ModelFn,
    shape: Sequence[int],
    *,
    schedule: NoiseSchedule,
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

    The initial noise is the first thing drawn: ``torch.randn(shape, generator=generator)`` on the
    CPU (or one row per generator when ``generator`` is a list of them, see :func:`randn`), then moved to ``device`` (so a seed gives the same samples on every device), unless
    ``x_T`` is given. x_T is the VP variable at t = T−1; the σ samplers start from
    x = x_T·√(1 + σ_max²). ``steps`` defaults to T for "ddpm" and 20 for the others; ``spacing``
    ("uniform_t", "log_snr", "karras") defaults per sampler (:data:`DEFAULT_SPACING`; "ddpm" only
    takes "uniform_t"). ``eta`` is DDIM's η (default 0) or the SDE's η (default 1).
    ``final_step`` ("trapezoid" or "denoise", default per sampler: :data:`DEFAULT_FINAL_STEP`) is
    the last step from σ_min to 0 of the samplers in :data:`WITH_FINAL_STEP` (:func:`final_step`).
    ``clip_x0`` clamps x̂_0 to [−1, 1]. Model evaluations: :func:`model_evaluations`.

    ``start_step`` = k > 0 skips the grid's first k steps (SDEdit, image-to-image): the sampler
    runs the last ``steps − k`` steps from level σ_k = ``sigmas_for(…)[k]``, and ``x_T`` (required)
    is the VP variable at that level, x_t = (x_0 + σ_k·ε)/√(1 + σ_k²).
    """
    if sampler not in SAMPLERS:
        raise KuosanError(f"unknown sampler {sampler!r}: expected one of {', '.join(SAMPLERS)}")
    if eta is not None and sampler not in ("ddim", "dpmpp_2m_sde"):
        raise KuosanError(f"eta applies to the ddim and dpmpp_2m_sde samplers, not {sampler!r}")
    if sampler == "ddpm" and spacing not in (None, "uniform_t"):
        raise KuosanError(f"the ddpm sampler runs on uniform integer timesteps, not spacing {spacing!r}")
    if final_step is not None:
        if sampler not in WITH_FINAL_STEP:
            raise KuosanError(f"final_step applies to the {', '.join(WITH_FINAL_STEP)} samplers, "
                              f"not {sampler!r}")
        check_final_step(final_step)
    steps = (schedule.T if sampler == "ddpm" else 20) if steps is None else steps
    _check_steps(steps)
    if isinstance(start_step, bool) or not isinstance(start_step, int) or not 0 <= start_step < steps:
        raise KuosanError(f"start_step must be an integer in [0, {steps - 1}], got {start_step!r}")
    if x_T is None:
        if start_step:
            raise KuosanError("start_step > 0 needs x_T, the noisy start at that level")
        x_T = randn(shape, generator)
    elif tuple(x_T.shape) != tuple(shape):
        raise KuosanError(f"x_T has shape {tuple(x_T.shape)}, expected {tuple(shape)}")
    x = x_T.to(device) if device is not None else x_T
    denoiser = Denoiser(model, schedule, prediction, clip_x0)
    if sampler == "ddpm":
        return sample_ddpm(denoiser, x, timesteps_uniform(schedule, steps)[start_step:],
                           generator=generator, progress=progress)
    sigmas = sigmas_for(schedule, sampler, steps, spacing)[start_step:]
    kwargs: dict = {"progress": progress}
    if final_step is not None:
        kwargs["final"] = final_step
    if sampler in ("ddim", "dpmpp_2m_sde"):
        kwargs["generator"] = generator
        if eta is not None:
            kwargs["eta"] = eta
    x = x * math.sqrt(1 + float(sigmas[0]) ** 2)
    return _SIGMA_SAMPLERS[sampler](denoiser, x, sigmas, **kwargs)


@torch.no_grad()
def invert(
    model: ModelFn,
    x0: Tensor,
    *,
    schedule: NoiseSchedule,
    steps: int = 50,
    prediction: Prediction = "eps",
    spacing: str | None = None,
    final_step: str | None = None,
    fixed_point_iters: int = 0,
    clip_x0: bool = False,
    progress: bool = False,
) -> Tensor:
    """DDIM inversion: the x_T that ``sample(sampler="ddim", eta=0, x_T=x_T)`` (same ``steps``,
    ``spacing`` and ``final_step``, defaults ``DEFAULT_SPACING["ddim"]`` and
    ``DEFAULT_FINAL_STEP["ddim"]``) decodes back to about ``x0``; editing starts from it.

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
    final_step = DEFAULT_FINAL_STEP["ddim"] if final_step is None else final_step
    check_final_step(final_step)
    denoiser = Denoiser(model, schedule, prediction, clip_x0)
    sigmas = sigmas_for(schedule, "ddim", steps, spacing).flip(0).tolist()  # 0, σ_min, …, σ_max
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
