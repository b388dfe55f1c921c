"""The forward process of DDPM in one continuous-time view.

Notation (the papers disagree; this is the table the whole package uses):

    beta[t]       β_t                                   DDPM (Ho et al. 2020), per-step noise variance
    alpha_bar[t]  ᾱ_t = ∏_{s≤t} (1 − β_s)              DDPM; DDIM writes α_t; DPM-Solver's α_t is √ᾱ_t
    sigma         σ   = √((1 − ᾱ)/ᾱ)                    EDM / k-diffusion "VE view": x_t/√ᾱ = x_0 + σ·ε
    log_snr       λ   = log(ᾱ/(1 − ᾱ)) = −2·log σ      DPM-Solver's λ is half of it: −log σ

Index convention: ``x_0`` always means the clean data. The noisy variable at integer timestep
``t ∈ {0, …, T−1}`` is ``x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε`` with ``ᾱ_t = ∏_{s=0}^{t}(1 − β_s)``, so
timestep 0 already carries one step of noise (DDPM's ``t = 1``). The "previous" level of
timestep 0 is the data itself (ᾱ_{−1} = 1).

Between the integers ``ᾱ(t)`` is interpolated linearly in ``log ᾱ`` (as DPM-Solver's discrete
schedule does), which keeps it continuous and strictly decreasing, so σ and λ convert back to
a unique ``t``.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from .errors import KuosanError, is_int

Prediction = Literal["eps", "x0", "v"]
PREDICTIONS: tuple[str, ...] = ("eps", "x0", "v")


def expand_as(a: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-example tensor ``a`` of shape (B,) to (B, 1, …, 1) to broadcast against ``x``."""
    return a.to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


class Posterior(NamedTuple):
    """q(x_{t−1} | x_t, x_0) = N(mean, variance)."""

    mean: Tensor
    variance: Tensor
    log_variance: Tensor


class NoiseSchedule:
    """β_t, ᾱ_t and their continuous-time interpolation; the forward process and its posterior.

    Tables are kept in float64; results are cast to the dtype of the tensors they act on.
    """

    def __init__(self, betas: Tensor, name: str = "custom") -> None:
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if betas.numel() < 2:
            raise KuosanError(f"a noise schedule needs at least 2 steps, got {betas.numel()}")
        if not torch.isfinite(betas).all() or (betas <= 0).any() or (betas >= 1).any():
            bad = betas[~((betas > 0) & (betas < 1))][:3].tolist()
            raise KuosanError(f"betas must lie in (0, 1), got values such as {bad}")
        self.name = name
        self.betas = betas
        self.alpha_bar = torch.cumprod(1 - betas, dim=0)
        self.alpha_bar_prev = torch.cat([betas.new_ones(1), self.alpha_bar[:-1]])
        self.log_alpha_bar = torch.log(self.alpha_bar)

    # ---- constructors -----------------------------------------------------------------------

    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> NoiseSchedule:
        """DDPM's schedule: β linear from ``beta_start`` to ``beta_end`` (for T = 1000).

        For another T both ends are scaled by 1000/T (Nichol & Dhariwal 2021), so ᾱ_{T−1} stays
        about the same: ``linear(1000)`` is exactly ``linspace(1e-4, 0.02, 1000)``. β is clipped
        at 0.999 (it only binds for T < 21).
        """
        _check_T(T)
        scale = 1000 / T
        betas = torch.linspace(scale * beta_start, scale * beta_end, T, dtype=torch.float64)
        betas = betas.clamp(max=0.999)
        return cls(betas, name=f"linear-{T}")

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> NoiseSchedule:
        """Nichol & Dhariwal 2021: ᾱ(u) ∝ cos²((u + s)/(1 + s)·π/2), u = t/T; β clipped at ``max_beta``."""
        _check_T(T)
        u = torch.arange(T + 1, dtype=torch.float64) / T
        f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
        return cls(betas, name=f"cosine-{T}")

    @classmethod
    def from_betas(cls, betas: Tensor) -> NoiseSchedule:
        """Any 1-D sequence of β in (0, 1)."""
        return cls(torch.as_tensor(betas, dtype=torch.float64), name="custom")

    @classmethod
    def from_config(cls, config: dict) -> NoiseSchedule:
        """Rebuild from :meth:`to_config` (as stored in a checkpoint's config.json)."""
        kind = config.get("type")
        if kind == "linear":
            return cls.linear(config["T"], config.get("beta_start", 1e-4), config.get("beta_end", 0.02))
        if kind == "cosine":
            return cls.cosine(config["T"], config.get("s", 0.008), config.get("max_beta", 0.999))
        if kind == "custom":
            return cls.from_betas(torch.tensor(config["betas"], dtype=torch.float64))
        raise KuosanError(f"unknown noise schedule type {kind!r}: expected linear, cosine or custom")

    def to_config(self) -> dict:
        """A JSON-able description that :meth:`from_config` turns back into this schedule."""
        kind, _, T = self.name.partition("-")
        if kind == "linear" and T:
            return {"type": "linear", "T": int(T)}
        if kind == "cosine" and T:
            return {"type": "cosine", "T": int(T)}
        return {"type": "custom", "betas": self.betas.tolist()}

    # ---- sizes and the continuous-time view -------------------------------------------------

    @property
    def T(self) -> int:
        """Number of discrete timesteps."""
        return self.betas.numel()

    def __repr__(self) -> str:
        return f"NoiseSchedule({self.name}, T={self.T}, sigma_max={self.sigma_max:.4g})"

    def alpha_bar_at(self, t: Tensor | float) -> Tensor:
        """ᾱ(t) for continuous t ∈ [0, T−1]: log ᾱ interpolated linearly between the integers."""
        return torch.exp(self.log_alpha_bar_at(t))

    def log_alpha_bar_at(self, t: Tensor | float) -> Tensor:
        """log ᾱ(t), piecewise linear in t (float64)."""
        t = torch.as_tensor(t, dtype=torch.float64).clamp(0, self.T - 1)
        lo = t.floor().long().clamp(max=self.T - 2)
        frac = t - lo
        table = self.log_alpha_bar.to(t.device)
        return table[lo] + frac * (table[lo + 1] - table[lo])

    def sigma_at(self, t: Tensor | float) -> Tensor:
        """σ(t) = √((1 − ᾱ(t))/ᾱ(t))."""
        return sigma_from_alpha_bar(self.alpha_bar_at(t))

    def log_snr_at(self, t: Tensor | float) -> Tensor:
        """λ(t) = log(ᾱ/(1 − ᾱ))."""
        log_ab = self.log_alpha_bar_at(t)
        return log_ab - torch.log(-torch.expm1(log_ab))

    def t_from_log_alpha_bar(self, log_alpha_bar: Tensor) -> Tensor:
        """Inverse of :meth:`log_alpha_bar_at` (clamped to [0, T−1])."""
        # the table is strictly decreasing; search its negation, which increases
        neg = -self.log_alpha_bar.to(log_alpha_bar.device)
        y = -torch.as_tensor(log_alpha_bar, dtype=torch.float64)
        y = y.clamp(float(neg[0]), float(neg[-1]))
        hi = torch.searchsorted(neg, y).clamp(1, self.T - 1)
        lo = hi - 1
        frac = (y - neg[lo]) / (neg[hi] - neg[lo])
        return lo.to(torch.float64) + frac

    def t_from_sigma(self, sigma: Tensor | float) -> Tensor:
        """The continuous timestep with σ(t) = sigma: log ᾱ = −log(1 + σ²)."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        return self.t_from_log_alpha_bar(-torch.log1p(sigma**2))

    def t_from_log_snr(self, log_snr: Tensor | float) -> Tensor:
        """The continuous timestep with λ(t) = log_snr: log ᾱ = −log(1 + e^{−λ})."""
        log_snr = torch.as_tensor(log_snr, dtype=torch.float64)
        return self.t_from_log_alpha_bar(-torch.nn.functional.softplus(-log_snr))

    @property
    def sigma_min(self) -> float:
        """σ at t = 0."""
        return float(sigma_from_alpha_bar(self.alpha_bar[0]))

    @property
    def sigma_max(self) -> float:
        """σ at t = T − 1."""
        return float(sigma_from_alpha_bar(self.alpha_bar[-1]))

    # ---- the forward process and its posterior ---------------------------------------------

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = √ᾱ(t)·x_0 + √(1 − ᾱ(t))·ε, for a per-example (possibly fractional) t of shape (B,)."""
        alpha_bar = expand_as(self.alpha_bar_at(t), x0)
        return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise

    def q_mean_variance(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean √ᾱ_t·x_0 and variance (1 − ᾱ_t) of q(x_t | x_0)."""
        alpha_bar = expand_as(self.alpha_bar_at(t), x0)
        return alpha_bar.sqrt() * x0, (1 - alpha_bar).expand_as(x0)

    def posterior_coefficients(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """For integer t of shape (B,): (c_x0, c_xt, β̃_t) with

        μ̃_t = c_x0·x_0 + c_xt·x_t,  c_x0 = β_t·√ᾱ_{t−1}/(1 − ᾱ_t),
        c_xt = (1 − ᾱ_{t−1})·√(1 − β_t)/(1 − ᾱ_t),  β̃_t = β_t·(1 − ᾱ_{t−1})/(1 − ᾱ_t)
        (DDPM eq. 6–7). At t = 0 the previous level is the data: c_x0 = 1, c_xt = 0, β̃ = 0.
        """
        t = _as_index(t, self.T)
        return posterior_coefficients(self.alpha_bar[t], self.alpha_bar_prev[t], self.betas[t])

    def q_posterior(self, x0: Tensor, x_t: Tensor, t: Tensor) -> Posterior:
        """q(x_{t−1} | x_t, x_0) for integer t of shape (B,) (DDPM eq. 6–7).

        ``log_variance`` is clipped at t = 0 (where β̃ = 0) to log β̃_1, as improved-diffusion does.
        """
        c_x0, c_xt, var = self.posterior_coefficients(t)
        mean = expand_as(c_x0, x0) * x0 + expand_as(c_xt, x_t) * x_t
        log_var = torch.log(self.reverse_variance(t, "beta_tilde"))
        return Posterior(mean, expand_as(var, x0).expand_as(x0), expand_as(log_var, x0).expand_as(x0))

    def reverse_variance(self, t: Tensor, kind: Literal["beta", "beta_tilde"] = "beta_tilde") -> Tensor:
        """σ_t² of the learned reverse step p_θ(x_{t−1} | x_t): β_t ("beta", DDPM's upper choice) or
        β̃_t ("beta_tilde", the lower one). At t = 0 both use β̃_1 (improved-diffusion's clipping), so
        the decoder has a finite variance."""
        t = _as_index(t, self.T)
        _, _, beta_tilde = self.posterior_coefficients(torch.arange(self.T))
        if kind == "beta_tilde":
            table = torch.cat([beta_tilde[1:2], beta_tilde[1:]])
        elif kind == "beta":
            table = torch.cat([beta_tilde[1:2], self.betas[1:]])
        else:
            raise KuosanError(f"unknown reverse variance {kind!r}: expected 'beta' or 'beta_tilde'")
        return table[t]


# ---- small pure functions ----------------------------------------------------------------------


def posterior_coefficients(
    alpha_bar: Tensor, alpha_bar_prev: Tensor, beta: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """(c_x0, c_xt, β̃) of q(x_s | x_t, x_0) between any two levels ᾱ_t < ᾱ_s (DDPM eq. 6–7 with
    the step's β = 1 − ᾱ_t/ᾱ_s, given or derived): μ̃ = c_x0·x_0 + c_xt·x_t,
    c_x0 = β·√ᾱ_s/(1 − ᾱ_t), c_xt = (1 − ᾱ_s)·√(1 − β)/(1 − ᾱ_t), β̃ = β·(1 − ᾱ_s)/(1 − ᾱ_t)."""
    if beta is None:
        beta = 1 - alpha_bar / alpha_bar_prev
    c_x0 = beta * alpha_bar_prev.sqrt() / (1 - alpha_bar)
    c_xt = (1 - alpha_bar_prev) * (1 - beta).sqrt() / (1 - alpha_bar)
    var = beta * (1 - alpha_bar_prev) / (1 - alpha_bar)
    return c_x0, c_xt, var


def sigma_from_alpha_bar(alpha_bar: Tensor) -> Tensor:
    """σ = √((1 − ᾱ)/ᾱ)."""
    return ((1 - alpha_bar) / alpha_bar).sqrt()


def alpha_bar_from_sigma(sigma: Tensor) -> Tensor:
    """ᾱ = 1/(1 + σ²)."""
    return 1 / (1 + sigma**2)


def x0_eps_from_output(
    output: Tensor, x_t: Tensor, alpha_bar: Tensor, prediction: Prediction
) -> tuple[Tensor, Tensor]:
    """(x̂_0, ε̂) from a model output that predicts ``prediction`` at noisy ``x_t``.

    alpha_bar has shape (B,). With a = √ᾱ, b = √(1 − ᾱ) and x_t = a·x_0 + b·ε, v = a·ε − b·x_0:
      eps:  x̂_0 = (x_t − b·ε̂)/a
      x0:   ε̂ = (x_t − a·x̂_0)/b
      v:    x̂_0 = a·x_t − b·v̂,  ε̂ = b·x_t + a·v̂
    """
    ab = expand_as(alpha_bar, x_t)
    a, b = ab.sqrt(), (1 - ab).sqrt()
    if prediction == "eps":
        return (x_t - b * output) / a, output
    if prediction == "x0":
        return output, (x_t - a * output) / b
    if prediction == "v":
        return a * x_t - b * output, b * x_t + a * output
    raise KuosanError(f"unknown prediction type {prediction!r}: expected eps, x0 or v")


def target_for(prediction: Prediction, x0: Tensor, eps: Tensor, alpha_bar: Tensor) -> Tensor:
    """The regression target for a prediction type: ε, x_0, or v = √ᾱ·ε − √(1 − ᾱ)·x_0."""
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":
        ab = expand_as(alpha_bar, x0)
        return ab.sqrt() * eps - (1 - ab).sqrt() * x0
    raise KuosanError(f"unknown prediction type {prediction!r}: expected eps, x0 or v")


def _check_T(T: int) -> None:
    if not is_int(T) or T < 2:
        raise KuosanError(f"number of timesteps T must be an integer >= 2, got {T!r}")


def _as_index(t: Tensor, T: int) -> Tensor:
    t = torch.as_tensor(t)
    if t.is_floating_point():
        if not torch.equal(t, t.round()):
            raise KuosanError("the discrete posterior needs integer timesteps")
        t = t.long()
    if (t < 0).any() or (t >= T).any():
        raise KuosanError(f"timesteps must lie in [0, {T - 1}], got {t.min().item()}..{t.max().item()}")
    return t.cpu()
