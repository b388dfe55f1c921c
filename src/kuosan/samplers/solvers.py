"""Solvers of the probability-flow ODE (and its SDE) over a σ grid: Euler, Heun,
DPM-Solver++ (2M, 3M, 2M SDE) and UniPC.

Each is a plain function ``sample_<name>(denoiser, x, sigmas, *, ...)`` over a σ grid of n + 1
values, decreasing, ending at exactly 0 (:mod:`kuosan.samplers.grids`), written in the data
prediction D(x; σ) = x̂_0 of the VE variable x = x_0 + σ·ε. Multistep memory is a local
variable. Notation (DPM-Solver's λ is half the package's log-SNR):

    sigma   σ = √((1 − ᾱ)/ᾱ)        x = x_t/√ᾱ = x_0 + σ·ε      (VE view, k-diffusion / EDM)
    lam     λ = −log σ               DPM-Solver's half log-SNR; h = λ_next − λ is a step in λ
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import KuosanError
from .denoiser import DenoiserFn, Generators, randn_like
from .grids import check_final_step, final_step, step_pairs


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
    for sigma, sigma_next in step_pairs(sigmas, "euler", progress):
        x0 = denoiser(x, torch.tensor(sigma))
        if sigma_next == 0:
            return final_step(x, x0, sigma, final)
        d = (x - x0) / sigma  # dx/dσ
        x = x + d * (sigma_next - sigma)
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
    for sigma, sigma_next in step_pairs(sigmas, "heun", progress):
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
    for sigma, sigma_next in step_pairs(sigmas, "dpmpp_2m", progress):
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
    for i, (sigma, sigma_next) in enumerate(step_pairs(sigmas, "dpmpp_3m", progress)):
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
    for sigma, sigma_next in step_pairs(sigmas, "dpmpp_2m_sde", progress):
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
            x = x + sigma_next * math.sqrt(-math.expm1(-2 * eta_h)) * randn_like(x, generator)
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
    pairs = step_pairs(sigmas, "unipc", progress)
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
