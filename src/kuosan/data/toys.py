"""2-D toy distributions: two moons, a swiss roll, a ring of Gaussians.

Each is a fixed number of points drawn with a seed (NumPy's `RandomState(seed)`, as
scikit-learn's generators use), then standardised per coordinate: x = (p - mean) / std.
The dataset keeps mean and std, so `kuosan.data.denormalize` maps samples back to the
original coordinates.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

TOY_NAMES = ("moons", "swissroll", "gaussians")
TOY_POINTS = 20_000

# The ring of Gaussians: component k sits at angle 2πk/8 on a circle of radius 4 with
# standard deviation 0.3, and has weight ∝ 1 + k/7 (the heaviest is twice the lightest),
# so a sampler that gets the mode weights wrong can be caught.
RING_COMPONENTS = 8
RING_RADIUS = 4.0
RING_STD = 0.3


def ring_weights() -> np.ndarray:
    """Mixture weights of the ring of Gaussians: w_k ∝ 1 + k/7, k = 0..7, summing to 1."""
    w = 1.0 + np.arange(RING_COMPONENTS) / (RING_COMPONENTS - 1)
    return w / w.sum()


def ring_means() -> np.ndarray:
    """Component means (8, 2) of the ring: radius · (cos 2πk/8, sin 2πk/8)."""
    angle = 2 * math.pi * np.arange(RING_COMPONENTS) / RING_COMPONENTS
    return RING_RADIUS * np.stack([np.cos(angle), np.sin(angle)], axis=1)


def _gaussians(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(seed)
    labels = rng.choice(RING_COMPONENTS, size=n, p=ring_weights())
    points = ring_means()[labels] + RING_STD * rng.standard_normal((n, 2))
    return points, labels


def make_toy(name: str, n: int = TOY_POINTS, seed: int = 0) -> tuple[Tensor, Tensor | None]:
    """n raw (unstandardised) points (n, 2) of toy `name`, and integer labels or None.

    moons: `make_moons(noise=0.05)`, label = which moon; swissroll: the (x, z) coordinates of
    `make_swiss_roll(noise=0.5)`, no labels; gaussians: the ring above, label = component.
    """
    from sklearn.datasets import make_moons, make_swiss_roll  # ~1 s: only when used

    if name == "moons":
        points, labels = make_moons(n_samples=n, noise=0.05, random_state=seed)
    elif name == "swissroll":
        points3, _ = make_swiss_roll(n_samples=n, noise=0.5, random_state=seed)
        points, labels = points3[:, [0, 2]], None
    elif name == "gaussians":
        points, labels = _gaussians(n, seed)
    else:
        raise ValueError(f"unknown toy {name!r}: expected one of {', '.join(TOY_NAMES)}")
    x = torch.from_numpy(np.asarray(points, dtype=np.float32))
    y = None if labels is None else torch.from_numpy(np.asarray(labels, dtype=np.int64))
    return x, y


def standardize(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-coordinate standardisation of (n, D): returns ((x - mean) / std, mean, std)."""
    mean, std = x.mean(dim=0), x.std(dim=0)
    return (x - mean) / std, mean, std
