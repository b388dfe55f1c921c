"""Exact diffusion of a Gaussian mixture: a model with no training error, for tests and benchmarks.

If x_0 ~ Σ_k w_k·N(μ_k, Σ_k), then x = x_0 + σ·ε ~ Σ_k w_k·N(μ_k, Σ_k + σ²I) for every σ, so
the ideal denoiser is known in closed form (Tweedie / Gaussian conditioning):

    D(x; σ) = E[x_0 | x] = Σ_k r_k(x)·(μ_k + Σ_k (Σ_k + σ²I)⁻¹ (x − μ_k)),
    r_k(x) ∝ w_k·N(x; μ_k, Σ_k + σ²I),

and the exact ε, x_0 or v model of the VP process follows through the schedule's σ(t). Each
Σ_k = U_k·diag(s_k)·U_kᵀ is kept in its eigenbasis, so every σ costs only matrix products
(autograd, forward-mode included, goes through all of it). Float64 throughout.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .errors import KuosanError
from .schedule import NoiseSchedule, Prediction


class GaussianMixture:
    """Σ_k w_k·N(μ_k, Σ_k) in d dimensions: weights (K,), means (K, d), covariances (K, d, d)."""

    def __init__(self, weights: Tensor, means: Tensor, covariances: Tensor, name: str = "gmm") -> None:
        weights = torch.as_tensor(weights, dtype=torch.float64)
        means = torch.as_tensor(means, dtype=torch.float64)
        covariances = torch.as_tensor(covariances, dtype=torch.float64)
        K, d = means.shape
        if weights.shape != (K,) or covariances.shape != (K, d, d):
            raise KuosanError(f"mixture shapes disagree: weights {tuple(weights.shape)}, means "
                              f"{tuple(means.shape)}, covariances {tuple(covariances.shape)}")
        if (weights <= 0).any():
            raise KuosanError("mixture weights must be positive")
        self.name = name
        self.weights = weights / weights.sum()
        self.means = means
        self.covariances = covariances
        self.eigenvalues, self.eigenvectors = torch.linalg.eigh(covariances)  # (K, d), (K, d, d)
        if (self.eigenvalues <= 0).any():
            raise KuosanError("mixture covariances must be positive definite")

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def _components(self, x: Tensor, sigma: Tensor | float) -> tuple[Tensor, Tensor, Tensor]:
        """(z, var, log N_k(x)): eigen-coordinates z (B, K, d) of x − μ_k, variances s_k + σ²."""
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        sigma2 = (sigma**2).reshape(-1, 1, 1)  # (B or 1, 1, 1)
        z = torch.einsum("bkd,kde->bke", x[:, None, :] - self.means, self.eigenvectors)
        var = self.eigenvalues + sigma2
        log_n = -0.5 * ((z**2 / var).sum(-1) + var.log().sum(-1) + self.dim * math.log(2 * math.pi))
        return z, var, log_n

    def log_prob(self, x: Tensor, sigma: Tensor | float = 0.0) -> Tensor:
        """log p_σ(x) for x (B, d) under the mixture convolved with N(0, σ²I)."""
        _, _, log_n = self._components(x, sigma)
        return torch.logsumexp(log_n + self.weights.log(), dim=-1)

    def denoise(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        """D(x; σ) = E[x_0 | x_0 + σ·ε = x] for x (B, d); σ a scalar or (B,)."""
        z, var, log_n = self._components(x, sigma)
        r = torch.softmax(log_n + self.weights.log(), dim=-1)  # (B, K)
        shrunk = z * (self.eigenvalues / var)  # Σ_k(Σ_k + σ²I)⁻¹(x − μ_k) in the eigenbasis
        post = self.means + torch.einsum("bke,kde->bkd", shrunk, self.eigenvectors)
        return (r[..., None] * post).sum(1)

    def model(self, schedule: NoiseSchedule, prediction: Prediction = "eps") -> Callable:
        """The exact VP model ``model(x_t, t)`` (x_t of shape (B, d) or (B, 1, d)) for ``schedule``.

        σ = σ(t), x = x_t·√(1 + σ²), x̂_0 = D(x; σ), ε̂ = (x − x̂_0)/σ, v̂ = √ᾱ·ε̂ − √(1 − ᾱ)·x̂_0.
        """
        if prediction not in ("eps", "x0", "v"):
            raise KuosanError(f"unknown prediction type {prediction!r}: expected eps, x0 or v")

        def exact(x_t: Tensor, t: Tensor) -> Tensor:
            shape, dtype = x_t.shape, x_t.dtype
            x_t = x_t.reshape(shape[0], -1).to(torch.float64)
            sigma = schedule.sigma_at(t.to(torch.float64)).to(x_t.device).reshape(-1, 1)
            x = x_t * (1 + sigma**2).sqrt()
            x0 = self.denoise(x, sigma.flatten())
            eps = (x - x0) / sigma
            if prediction == "eps":
                out = eps
            elif prediction == "x0":
                out = x0
            else:
                out = (eps - sigma * x0) / (1 + sigma**2).sqrt()
            return out.to(dtype).reshape(shape)

        return exact

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n exact samples (n, d)."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        scale = self.eigenvectors[k] * self.eigenvalues[k].sqrt()[:, None, :]
        return self.means[k] + torch.einsum("nde,ne->nd", scale, z)

    def entropy(self, n: int = 200_000, generator: torch.Generator | None = None) -> float:
        """H(q) = −E_q[log q] by Monte Carlo on n exact samples (no closed form for a mixture)."""
        return float(-self.log_prob(self.sample(n, generator)).mean())


def random_mixture(
    dim: int,
    components: int,
    *,
    seed: int = 0,
    mean_scale: float = 1.0,
    std_range: tuple[float, float] = (0.02, 0.5),
    name: str | None = None,
) -> GaussianMixture:
    """A seeded mixture with unequal weights (Dirichlet(1)) and anisotropic covariances whose
    axis standard deviations are log-uniform in ``std_range`` along random rotations."""
    g = torch.Generator().manual_seed(seed)
    weights = -torch.rand(components, generator=g, dtype=torch.float64).log()  # Dirichlet(1)
    means = mean_scale * torch.randn(components, dim, generator=g, dtype=torch.float64) / math.sqrt(dim)
    lo, hi = math.log(std_range[0]), math.log(std_range[1])
    stds = (lo + (hi - lo) * torch.rand(components, dim, generator=g, dtype=torch.float64)).exp()
    rot, _ = torch.linalg.qr(torch.randn(components, dim, dim, generator=g, dtype=torch.float64))
    covs = rot @ torch.diag_embed(stds**2) @ rot.transpose(-1, -2)
    return GaussianMixture(weights, means, covs, name=name or f"random-{dim}d-{components}")
