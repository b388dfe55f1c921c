"""Fréchet distance (FID) and kernel distance (KID) between two sets of features.

Pure NumPy functions in float64; the feature extractor is someone else's business (see
`kuosan.metrics.digits` for the one used on the digits).

- FD (Dowson & Landau 1982; FID: Heusel et al. 2017) between N(μ₁, Σ₁) and N(μ₂, Σ₂):
  ``FD = ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁^½ Σ₂ Σ₁^½)^½``.
  ``tr (Σ₁ Σ₂)^½`` (what pytorch-fid computes with `scipy.linalg.sqrtm`) equals
  ``tr (Σ₁^½ Σ₂ Σ₁^½)^½``: the two matrices are similar, so they share eigenvalues. The second form
  is symmetric positive semi-definite, so a symmetric eigen-decomposition gives its square root
  with real, non-negative eigenvalues: no complex parts to discard, no `sqrtm` convergence issues.
- KID (Bińkowski et al. 2018): the unbiased estimate of MMD² with the cubic polynomial kernel
  ``k(x, y) = (xᵀy / d + 1)³``. Unlike FID it is unbiased in the number of samples.
  `kid_stderr`: its standard error, from B disjoint blocks (see there).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["feature_stats", "frechet_distance", "kid", "kid_stderr", "sqrt_psd"]


def _as_features(features: ArrayLike, name: str) -> NDArray[np.float64]:
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"{name} must have shape (n, d) with n >= 2, got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} holds NaN or inf")
    return x


def feature_stats(features: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Mean μ (d,) and covariance Σ (d, d) of features (n, d), float64, Σ with 1/(n − 1)."""
    x = _as_features(features, "features")
    return x.mean(axis=0), np.cov(x, rowvar=False, ddof=1).reshape(x.shape[1], x.shape[1])


def sqrt_psd(matrix: ArrayLike) -> NDArray[np.float64]:
    """Symmetric square root A^½ of a symmetric positive semi-definite matrix (eigenvalues < 0,
    which only rounding produces, are set to 0): A^½ = V diag(√max(λ, 0)) Vᵀ."""
    a = np.asarray(matrix, dtype=np.float64)
    a = (a + a.T) / 2
    eigenvalues, vectors = np.linalg.eigh(a)
    return (vectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ vectors.T


def frechet_distance(
    mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike
) -> float:
    """FD = ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁^½ Σ₂ Σ₁^½)^½, in float64.

    Rounding can make the exact-zero case (identical Gaussians) come out a hair below 0; the
    result is clamped at 0 since a squared distance cannot be negative.
    """
    mu1, mu2 = (
        np.atleast_1d(np.asarray(mu1, np.float64)),
        np.atleast_1d(np.asarray(mu2, np.float64)),
    )
    sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(
            f"shapes disagree: mu1 {mu1.shape}, sigma1 {sigma1.shape}, "
            f"mu2 {mu2.shape}, sigma2 {sigma2.shape}"
        )
    root1 = sqrt_psd(sigma1)
    middle = root1 @ sigma2 @ root1
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = np.sqrt(np.clip(eigenvalues, 0.0, None)).sum()
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt
    return max(float(value), 0.0)


def kid(features1: ArrayLike, features2: ArrayLike) -> float:
    """Unbiased MMD² with k(x, y) = (xᵀy/d + 1)³ (Bińkowski et al. 2018), on all pairs:

    MMD²ᵤ = mean_{i≠j} k(xᵢ, xⱼ) + mean_{i≠j} k(yᵢ, yⱼ) − 2 mean_{i,j} k(xᵢ, yⱼ).

    The estimate is unbiased, so it can come out slightly negative when the two sets come from
    the same distribution. Cost O((n₁ + n₂)² d): fine for a few thousand samples.
    """
    x, y = _as_features(features1, "features1"), _as_features(features2, "features2")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature sizes differ: {x.shape[1]} and {y.shape[1]}")
    d = x.shape[1]
    k_xx = (x @ x.T / d + 1.0) ** 3
    k_yy = (y @ y.T / d + 1.0) ** 3
    k_xy = (x @ y.T / d + 1.0) ** 3
    n, m = x.shape[0], y.shape[0]
    mean_xx = (k_xx.sum() - np.trace(k_xx)) / (n * (n - 1))
    mean_yy = (k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(mean_xx + mean_yy - 2.0 * k_xy.mean())


def kid_stderr(features1: ArrayLike, features2: ArrayLike, blocks: int = 10, seed: int = 0) -> float:
    """Standard error of KID from ``blocks`` disjoint random blocks of both sets:
    std(KID_b) / √B over the B block estimates (ddof 1).

    The B blocks are independent, so this is the standard error of their mean, which uses only
    the within-block pairs; the all-pairs `kid` uses more pairs and has no larger variance, so the
    value is a conservative (upper) estimate of its standard error. B is cut so every block keeps
    at least 2 rows of each set; below B = 2 there is no spread to measure and the result is NaN.
    """
    x, y = _as_features(features1, "features1"), _as_features(features2, "features2")
    b = min(blocks, len(x) // 2, len(y) // 2)
    if b < 2:
        return float("nan")
    rng = np.random.default_rng(seed)
    xs = np.array_split(x[rng.permutation(len(x))], b)
    ys = np.array_split(y[rng.permutation(len(y))], b)
    values = [kid(xb, yb) for xb, yb in zip(xs, ys, strict=True)]
    return float(np.std(values, ddof=1) / np.sqrt(b))
