"""Training losses and the variational bound (NLL in bits/dim).

Training (Ho et al. 2020, eq. 14, generalised): draw t uniformly, x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε,
regress the model output on its target (ε, x_0 or v) with a per-timestep weight:

    uniform     w = 1                       (DDPM's "simple" loss for the chosen target)
    min_snr     w = min(snr, γ)/snr  (ε),  min(snr, γ) (x_0),  min(snr, γ)/(snr + 1) (v)
                with snr = ᾱ/(1 − ᾱ)  (Hang et al. 2023, "Min-SNR-γ"); all three give the same
                weight, min(snr, γ), on the x_0 error.

On the x_0 error, "uniform" weighs snr (ε), 1 (x_0) and snr + 1 (v). The ε target and min_snr
therefore put almost no weight (snr → 0) on the noisiest steps, where a caption decides *where*
things go: shapes-32 trained that way ignored position words, and learnt them only with the v target
and more of the noisiest steps drawn (`TrainConfig.optim.high_noise`; docs/shapes-32.md).

The variational bound (Ho et al. 2020, eq. 5; Sohl-Dickstein et al. 2015):

    −log p(x_0) ≤ L_prior + Σ_{t≥1} L_t + L_0
    L_prior = KL(q(x_{T−1} | x_0) ‖ N(0, I))
    L_t     = KL(q(x_{t−1} | x_t, x_0) ‖ p_θ(x_{t−1} | x_t)),  p_θ = N(μ̃_t(x_t, x̂_0), σ_t²)
    L_0     = −log p_θ(x_0 | x_0-level noisy x), a discretised Gaussian over 256 levels

(timestep indices as in :mod:`kuosan.schedule`: index 0 is DDPM's t = 1). Divided by
D·ln 2 it is the NLL in bits per dimension of 8-bit data.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .errors import KuosanError
from .schedule import NoiseSchedule, Prediction, expand_as, target_for, x0_eps_from_output

ModelFn = Callable[[Tensor, Tensor], Tensor]
Weighting = Literal["uniform", "min_snr"]
ReverseVariance = Literal["beta", "beta_tilde"]
Decoder = Literal["discretized", "gaussian"]


def snr(alpha_bar: Tensor) -> Tensor:
    """Signal-to-noise ratio ᾱ/(1 − ᾱ)."""
    return alpha_bar / (1 - alpha_bar)


def loss_weight(
    prediction: Prediction, alpha_bar: Tensor, weighting: Weighting = "uniform", gamma: float = 5.0
) -> Tensor:
    """Per-example weight of the squared error in the target's own space (see the module table)."""
    if weighting == "uniform":
        return torch.ones_like(alpha_bar)
    if weighting != "min_snr":
        raise KuosanError(f"unknown loss weighting {weighting!r}: expected uniform or min_snr")
    s = snr(alpha_bar)
    clipped = s.clamp(max=gamma)
    if prediction == "eps":
        return clipped / s
    if prediction == "x0":
        return clipped
    if prediction == "v":
        return clipped / (s + 1)
    raise KuosanError(f"unknown prediction type {prediction!r}: expected eps, x0 or v")


def training_loss(
    model: ModelFn,
    x0: Tensor,
    schedule: NoiseSchedule,
    *,
    prediction: Prediction = "eps",
    weighting: Weighting = "uniform",
    gamma: float = 5.0,
    t: Tensor | None = None,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per-example loss w(t)·mean‖model(x_t, t) − target‖², shape (B,).

    t ~ Uniform{0, …, T−1} and ε ~ N(0, I) are drawn from ``generator`` (on the CPU, so the same
    seed gives the same draws on every device) unless given.
    """
    b = x0.shape[0]
    if t is None:
        t = torch.randint(0, schedule.T, (b,), generator=generator).to(x0.device)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    alpha_bar = schedule.alpha_bar_at(t).to(device=x0.device, dtype=torch.float32)
    x_t = schedule.q_sample(x0, t, noise)
    output = model(x_t, t.to(torch.float32))
    target = target_for(prediction, x0, noise, alpha_bar)
    mse = (output.float() - target.float()).pow(2).flatten(1).mean(dim=1)
    return loss_weight(prediction, alpha_bar, weighting, gamma) * mse


# ---- the variational bound -------------------------------------------------------------------


class Bound(NamedTuple):
    """Terms of the variational bound per example, in nats (summed over dimensions)."""

    prior: Tensor  # (B,) KL(q(x_{T−1}|x_0) ‖ N(0, I))
    diffusion: Tensor  # (B,) Σ_{t≥1} L_t (exact sum, or an unbiased estimate)
    decoder: Tensor  # (B,) L_0
    total: Tensor  # (B,)
    bits_per_dim: Tensor  # (B,) total / (D·ln 2)


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2).pow(2) * torch.exp(-logvar2)
    )


def discretized_gaussian_log_likelihood(
    x: Tensor, mean: Tensor, log_scale: Tensor, bins: int = 256
) -> Tensor:
    """log P(x) for x on the grid {−1, −1 + 2/(bins−1), …, 1} under N(mean, e^{2·log_scale})
    integrated over each bin; the end bins extend to ±∞ (Ho et al. 2020, eq. 13). Elementwise."""
    half = 1.0 / (bins - 1)
    inv_std = torch.exp(-log_scale)
    upper = inv_std * (x - mean + half)
    lower = inv_std * (x - mean - half)
    log_cdf_upper = torch.special.log_ndtr(upper)
    log_sf_lower = torch.special.log_ndtr(-lower)
    # log(Φ(upper) − Φ(lower)), computed on the side of the tail where it does not cancel
    mid = torch.where(
        lower > 0,
        log_sf_lower + torch.log(-torch.expm1(torch.special.log_ndtr(-upper) - log_sf_lower)),
        log_cdf_upper + torch.log(-torch.expm1(torch.special.log_ndtr(lower) - log_cdf_upper)),
    )
    edge = 1 - half / 2
    return torch.where(x < -edge, log_cdf_upper, torch.where(x > edge, log_sf_lower, mid))


def prior_kl(x0: Tensor, schedule: NoiseSchedule) -> Tensor:
    """KL(q(x_{T−1} | x_0) ‖ N(0, I)) per example, in nats."""
    t_last = torch.full((x0.shape[0],), schedule.T - 1)
    mean, var = schedule.q_mean_variance(x0.double(), t_last)
    kl = normal_kl(mean, var.log(), torch.zeros_like(mean), torch.zeros_like(mean))
    return kl.flatten(1).sum(dim=1)


def bound_term(
    model: ModelFn,
    x0: Tensor,
    t: int,
    schedule: NoiseSchedule,
    *,
    prediction: Prediction = "eps",
    variance: ReverseVariance = "beta_tilde",
    decoder: Decoder = "discretized",
    clip_x0: bool = False,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """L_t per example (nats) at one integer timestep t: the KL for t ≥ 1, the decoder NLL for t = 0.

    x_t is drawn from q(x_t | x_0) with ``noise`` (or fresh noise from ``generator``).
    ``clip_x0`` clamps x̂_0 to [−1, 1] (valid for image data).
    """
    b = x0.shape[0]
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    tt = torch.full((b,), t, dtype=torch.long)
    x_t = schedule.q_sample(x0, tt, noise)
    output = model(x_t, tt.to(device=x0.device, dtype=torch.float32))
    alpha_bar = schedule.alpha_bar[tt].to(x0.device)
    x0_hat, _ = x0_eps_from_output(output.double(), x_t.double(), alpha_bar, prediction)
    if clip_x0:
        x0_hat = x0_hat.clamp(-1, 1)
    c_x0, c_xt, _ = schedule.posterior_coefficients(tt)
    x0d, x_td = x0.double(), x_t.double()
    model_mean = expand_as(c_x0, x0d) * x0_hat + expand_as(c_xt, x0d) * x_td
    model_logvar = expand_as(torch.log(schedule.reverse_variance(tt, variance)), x0d)
    if t == 0:
        if decoder == "discretized":
            ll = discretized_gaussian_log_likelihood(x0d, model_mean, 0.5 * model_logvar)
        elif decoder == "gaussian":
            ll = -0.5 * (math.log(2 * math.pi) + model_logvar + (x0d - model_mean).pow(2) / model_logvar.exp())
        else:
            raise KuosanError(f"unknown decoder {decoder!r}: expected discretized or gaussian")
        return -ll.flatten(1).sum(dim=1)
    posterior = schedule.q_posterior(x0d, x_td, tt)
    kl = normal_kl(posterior.mean, posterior.log_variance, model_mean, model_logvar)
    return kl.flatten(1).sum(dim=1)


@torch.no_grad()
def variational_bound(
    model: ModelFn,
    x0: Tensor,
    schedule: NoiseSchedule,
    *,
    prediction: Prediction = "eps",
    variance: ReverseVariance = "beta_tilde",
    decoder: Decoder = "discretized",
    clip_x0: bool = False,
    timesteps: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Bound:
    """The variational bound per example: L_prior + Σ_{t≥1} L_t + L_0, and bits/dim.

    ``timesteps=None`` sums all T − 1 KL terms (T model calls per batch). ``timesteps=K`` draws K
    distinct t from {1, …, T−1} and uses the unbiased estimate (T−1)/K·Σ_k L_{t_k}; the decoder
    term is always exact. With the discretised decoder, x_0 must lie on the 8-bit grid in [−1, 1].
    """
    kwargs = {"prediction": prediction, "variance": variance, "decoder": decoder, "clip_x0": clip_x0,
                  "generator": generator}
    if timesteps is None:
        ts, scale = list(range(1, schedule.T)), 1.0
    else:
        if not 1 <= timesteps <= schedule.T - 1:
            raise KuosanError(f"timesteps must be in [1, {schedule.T - 1}], got {timesteps}")
        perm = torch.randperm(schedule.T - 1, generator=generator)[:timesteps] + 1
        ts, scale = sorted(perm.tolist()), (schedule.T - 1) / timesteps
    diffusion = torch.zeros(x0.shape[0], dtype=torch.float64, device=x0.device)
    for t in tqdm(ts, disable=not progress, desc="bound", leave=False):
        diffusion += bound_term(model, x0, t, schedule, **kwargs)
    diffusion = diffusion * scale
    decoder_nll = bound_term(model, x0, 0, schedule, **kwargs)
    prior = prior_kl(x0, schedule).to(x0.device)
    total = prior + diffusion + decoder_nll
    dims = x0[0].numel()
    return Bound(prior, diffusion, decoder_nll, total, total / (dims * math.log(2)))
