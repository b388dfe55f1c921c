"""Nearest-neighbour measures: improved precision/recall and nearest-image distances.

- Precision and recall (Kynkäänniemi et al. 2019, "Improved precision and recall metric for
  assessing generative models"), k = 3: each point of a set gets a ball whose radius is the
  distance to its k-th nearest neighbour in its own set (itself excluded); the union of the
  balls estimates the set's manifold. ``precision`` = share of generated points inside the real
  manifold, ``recall`` = share of real points inside the generated manifold.
- `nearest_distances`: Euclidean distance from each row of one set to its nearest row of another
  (optionally skipping the row's own copies), in chunks so memory stays O(chunk · m).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["kth_neighbour_radii", "nearest_distances", "precision_recall"]

CHUNK = 1024


def _rows(x: ArrayLike, name: str) -> NDArray[np.float64]:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or len(a) == 0:
        raise ValueError(f"{name} must have shape (n, d) with n >= 1, got {a.shape}")
    return a


def _squared_distances(q: NDArray[np.float64], b: NDArray[np.float64],
                       b_norms: NDArray[np.float64]) -> NDArray[np.float64]:
    """‖qᵢ − bⱼ‖² = ‖qᵢ‖² + ‖bⱼ‖² − 2 qᵢ·bⱼ, clipped at 0 (rounding)."""
    d2 = (q**2).sum(1)[:, None] + b_norms[None, :] - 2.0 * q @ b.T
    return np.clip(d2, 0.0, None)


def nearest_distances(queries: ArrayLike, bank: ArrayLike,
                      skip_within: float | None = None) -> NDArray[np.float64]:
    """min_j ‖qᵢ − bⱼ‖ for each query row (n,); ``skip_within``: bank rows at distance ≤ it
    are not candidates (a query's own copy in the bank: the nearest *other* row); inf when
    every row is skipped."""
    q, b = _rows(queries, "queries"), _rows(bank, "bank")
    if q.shape[1] != b.shape[1]:
        raise ValueError(f"queries have {q.shape[1]} values per row, the bank {b.shape[1]}")
    b_norms = (b**2).sum(1)
    out = np.empty(len(q))
    for start in range(0, len(q), CHUNK):
        d2 = _squared_distances(q[start:start + CHUNK], b, b_norms)
        if skip_within is not None:
            d2[d2 <= skip_within**2] = np.inf
        out[start:start + CHUNK] = np.sqrt(d2.min(axis=1))
    return out


def kth_neighbour_radii(points: ArrayLike, k: int = 3) -> NDArray[np.float64]:
    """Distance from each row to its k-th nearest other row (n,); needs n > k."""
    x = _rows(points, "points")
    if not 1 <= k < len(x):
        raise ValueError(f"k-th neighbour radii need more than k = {k} points, got {len(x)}")
    norms = (x**2).sum(1)
    out = np.empty(len(x))
    for start in range(0, len(x), CHUNK):
        d2 = _squared_distances(x[start:start + CHUNK], x, norms)
        rows = np.arange(len(d2))
        d2[rows, start + rows] = np.inf  # itself is not a neighbour
        out[start:start + CHUNK] = np.sqrt(np.partition(d2, k - 1, axis=1)[:, k - 1])
    return out


def _inside_fraction(queries: NDArray[np.float64], centres: NDArray[np.float64],
                     radii: NDArray[np.float64]) -> float:
    """Share of queries inside at least one ball ‖q − cⱼ‖ ≤ rⱼ."""
    norms = (centres**2).sum(1)
    inside = 0
    for start in range(0, len(queries), CHUNK):
        d2 = _squared_distances(queries[start:start + CHUNK], centres, norms)
        inside += int((d2 <= (radii**2)[None, :]).any(axis=1).sum())
    return inside / len(queries)


def precision_recall(real: ArrayLike, fake: ArrayLike, k: int = 3) -> tuple[float, float]:
    """(precision, recall) of ``fake`` against ``real`` features (Kynkäänniemi et al. 2019):
    precision = mean_f 1[∃r: ‖f − r‖ ≤ NN_k(r)], recall = mean_r 1[∃f: ‖r − f‖ ≤ NN_k(f)]."""
    r, f = _rows(real, "real"), _rows(fake, "fake")
    if r.shape[1] != f.shape[1]:
        raise ValueError(f"feature sizes differ: {r.shape[1]} and {f.shape[1]}")
    precision = _inside_fraction(f, r, kth_neighbour_radii(r, k))
    recall = _inside_fraction(r, f, kth_neighbour_radii(f, k))
    return precision, recall
