"""A domain FID for scikit-learn's handwritten digits, and the checks that go with it.

Inception features mean little on 8×8 digits, so the feature space here is the penultimate layer
(64 units, after ReLU) of a small CNN classifier trained on the real digits.

Protocol (all of it fixed by ``DigitsEvaluator.fit(seed)``; seed 0 is the reported protocol)
-------------------------------------------------------------------------------------------
Data: ``sklearn.datasets.load_digits``, 1,797 images, 8×8, values 0..16 (ink bright).

1. **Split.** Each class's images are permuted with ``numpy.random.default_rng(seed)`` and cut
   into three near-equal parts (``numpy.array_split``), giving three disjoint, class-stratified
   sets: ``fit`` (602 images, trains the classifier), ``reference`` (599, the FID reference
   statistics) and ``held_out`` (596, the real-data floor). The classifier never sees
   ``reference`` or ``held_out``, so real images and model samples are both "new" images to it,
   and the reference features are not the over-fitted features of its own training images
   (scored as samples, the 602 ``fit`` images get FID ≈ 0.07 against a floor ≈ 0.05).
2. **Classifier.** Conv(1→32)·pool·Conv(32→64)·pool·FC(256→64)·FC(64→10), 3×3 kernels, ReLU,
   input ``x/16``; Adam (lr 2e-3), batch 32, 40 epochs, random ±1-pixel shifts, on CPU; the
   weights are initialised and the batches drawn from ``seed`` (deterministic for a given
   torch version and thread count). Its accuracy on ``reference ∪ held_out`` (1,195 images it
   never saw) is ``DigitsEvaluator.accuracy``; the tests require > 95 %.
3. **Features** of an image are the 64 post-ReLU penultimate activations, as float64, divided
   by one constant fixed at fit time: the RMS activation over the ``reference`` images (so the
   reference features have mean ‖f‖²/64 = 1 and KID's kernel ``(xᵀy/64 + 1)³`` stays O(1)).
4. **FID.** ``FD(N(μ_s, Σ_s), N(μ_ref, Σ_ref))`` (see `kuosan.metrics.fid`), the reference
   statistics from all 599 ``reference`` images. FID is biased upward by a term that shrinks
   like 1/n in the number of samples n (with seed 0 the floor is ≈ 0.05 at n = 596 and ≈ 0.14
   at n = 300), so a model's FID is only comparable with a floor computed at the same n. Both
   are computed at ``n_eval = min(n, 596)`` images:
   - ``fid``: the mean over ``repeats`` (default 10) random subsets of ``n_eval`` of the samples
     (drawn without replacement, ``default_rng(seed)``; a single evaluation when n ≤ 596);
   - ``fid_floor``: the same with subsets of the ``held_out`` real digits in place of the
     samples (a single evaluation of all of them when n_eval = 596).
   ``fid_floor`` is what a perfect sampler of the digit distribution would score at this n;
   ``fid − fid_floor`` is the excess to report. Neither is comparable with FIDs from other
   feature extractors, other seeds or other n.
5. **KID** (unbiased, cubic kernel) of all n samples against ``reference``, and ``kid_floor``
   of ``held_out`` against ``reference``. KID is unbiased in n, so it needs no matching.
6. **Classes.** ``class_histogram``: counts of the classifier's argmax over the samples;
   ``min_class_share`` the smallest count over n (0.1 when perfectly balanced; a collapsed model
   scores near 0). ``confidence_mean``: mean max-softmax probability (real digits: near 1).
7. **Memorisation.** Pixel L2 distance in 0..16 units (over 64 pixels) from each sample to its
   nearest image among all 1,797 digits (what a model trained on ``--data digits`` sees):
   ``nn_distance_mean`` / ``_median``. For comparison ``real_nn_distance_mean`` / ``_median``:
   each real digit to its nearest *other* real digit (mean ≈ 16.4, minimum ≈ 5.3: the set
   has no duplicates). ``memorised_fraction``: the share of samples closer than
   ``MEMORISATION_THRESHOLD`` = 2.0 to some training digit; the 8-bit PNG round trip moves an
   exact copy by at most 64^½·16/510 ≈ 0.25, while distinct real digits are ≥ 5.3 apart.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from PIL import Image
from torch import nn

from kuosan.errors import KuosanError
from kuosan.metrics.fid import feature_stats, frechet_distance, kid

__all__ = [
    "MEMORISATION_THRESHOLD",
    "DigitsEvaluator",
    "DigitsReport",
    "DigitsSplit",
    "as_digit_images",
    "load_png_folder",
    "real_digits",
    "split_digits",
]

MEMORISATION_THRESHOLD = 2.0  # pixel L2, 0..16 units; distinct real digits are >= 5.3 apart
DIGIT_MAX = 16.0


def real_digits() -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """The 1,797 scikit-learn digits as (N, 8, 8) float32 in 0..16, and their labels (N,)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.images.astype(np.float32), data.target.astype(np.int64)


@dataclass(frozen=True)
class DigitsSplit:
    """Indices into `real_digits()` of the three disjoint, class-stratified sets."""

    fit: NDArray[np.int64]
    reference: NDArray[np.int64]
    held_out: NDArray[np.int64]


def split_digits(labels: NDArray[np.int64], seed: int = 0) -> DigitsSplit:
    """Per class: permute with default_rng(seed), cut in 3 near-equal parts (fit, ref, held)."""
    rng = np.random.default_rng(seed)
    parts: list[list[NDArray[np.int64]]] = [[], [], []]
    for c in range(10):
        members = rng.permutation(np.flatnonzero(labels == c))
        for part, chunk in zip(parts, np.array_split(members, 3), strict=True):
            part.append(chunk)
    fit, reference, held_out = (np.sort(np.concatenate(p)) for p in parts)
    return DigitsSplit(fit=fit, reference=reference, held_out=held_out)


def as_digit_images(images: ArrayLike | torch.Tensor, name: str = "images") -> NDArray[np.float32]:
    """Check and convert N×8×8 (or N×1×8×8) images in 0..16 to a float32 array (N, 8, 8)."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3 or x.shape[1:] != (8, 8) or x.shape[0] == 0:
        raise KuosanError(f"{name}: expected N×8×8 digit images, got shape {tuple(x.shape)}")
    if not np.isfinite(x).all():
        raise KuosanError(f"{name}: holds NaN or inf")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-3 or hi > DIGIT_MAX + 1e-3:
        raise KuosanError(
            f"{name}: values must lie in 0..16 (digits scale), got {lo:.3g}..{hi:.3g}; "
            "PNGs in 0..255 go through load_png_folder"
        )
    return x


def load_png_folder(folder: str | Path) -> NDArray[np.float32]:
    """Read every ``*.png`` in ``folder`` (sorted by name) as grayscale, box-downsample to 8×8
    if larger, and map 0..255 → 0..16: (N, 8, 8) float32."""
    folder = Path(folder)
    if not folder.is_dir():
        raise KuosanError(f"{folder}: not a folder of PNG images")
    paths = sorted(folder.glob("*.png"))
    if not paths:
        raise KuosanError(f"{folder}: holds no .png files")
    images = []
    for path in paths:
        try:
            with Image.open(path) as im:
                im = im.convert("L")
                if im.size[0] < 8 or im.size[1] < 8:
                    raise KuosanError(f"{path}: {im.size[0]}×{im.size[1]} is smaller than 8×8")
                if im.size != (8, 8):
                    im = im.resize((8, 8), Image.Resampling.BOX)
                images.append(np.asarray(im, dtype=np.float32))
        except OSError as e:
            raise KuosanError(f"{path}: cannot read as an image ({e})") from e
    return np.stack(images) * (DIGIT_MAX / 255.0)


class DigitsCNN(nn.Module):
    """8×8×1 → 64 features (post-ReLU) → 10 logits."""

    def __init__(self, width: int = 32, feature_dim: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 4×4
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 2×2
            nn.Flatten(),
            nn.Linear(2 * width * 4, feature_dim),
            nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, 1, 8, 8) in 0..1 → (features (B, 64), logits (B, 10))."""
        features = self.body(x)
        return features, self.head(features)


def _random_shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Shift each image (B, 1, 8, 8) by (dy, dx) ∈ {−1, 0, 1}², filling with 0 (background)."""
    padded = nn.functional.pad(x, (1, 1, 1, 1))
    shifted = torch.stack(
        [padded[:, :, dy : dy + 8, dx : dx + 8] for dy in range(3) for dx in range(3)]
    )
    choice = torch.randint(0, 9, (x.shape[0],), generator=generator)
    return shifted[choice, torch.arange(x.shape[0])]


def _train_classifier(
    images: NDArray[np.float32], labels: NDArray[np.int64], seed: int, epochs: int = 40
) -> DigitsCNN:
    with torch.random.fork_rng(devices=[]):  # seeded init without leaking into the caller's RNG
        torch.manual_seed(seed)
        net = DigitsCNN()
    generator = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(images / DIGIT_MAX).unsqueeze(1)
    y = torch.from_numpy(labels)
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    batch_size = 32
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            _, logits = net(_random_shift(x[idx], generator))
            loss = nn.functional.cross_entropy(logits, y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    net.eval()
    return net


def _nearest_distance(
    queries: NDArray[np.float32], bank: NDArray[np.float32], exclude_self: bool = False
) -> NDArray[np.float64]:
    """Pixel L2 from each query (N, 8, 8) to its nearest image in bank (M, 8, 8), float64."""
    q = queries.reshape(len(queries), -1).astype(np.float64)
    b = bank.reshape(len(bank), -1).astype(np.float64)
    out = np.empty(len(q))
    for start in range(0, len(q), 512):
        chunk = q[start : start + 512]
        d2 = (chunk**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2.0 * chunk @ b.T
        if exclude_self:
            rows = np.arange(len(chunk))
            d2[rows, start + rows] = np.inf
        out[start : start + 512] = np.sqrt(np.clip(d2.min(axis=1), 0.0, None))
    return out


@dataclass(frozen=True)
class DigitsReport:
    """What `DigitsEvaluator.evaluate` measures; see the module docstring for the protocol."""

    n: int  # samples scored
    n_eval: int  # images per FID evaluation, for fid and fid_floor alike
    fid: float
    fid_floor: float
    kid: float
    kid_floor: float
    class_histogram: tuple[int, ...]  # 10 counts
    min_class_share: float
    confidence_mean: float
    nn_distance_mean: float
    nn_distance_median: float
    real_nn_distance_mean: float
    real_nn_distance_median: float
    memorised_fraction: float
    memorisation_threshold: float

    @property
    def fid_excess(self) -> float:
        """fid − fid_floor: what the samples lose to real digits at the same n."""
        return self.fid - self.fid_floor

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "class_histogram": list(self.class_histogram),
            "fid_excess": self.fid_excess,
        }


class DigitsEvaluator:
    """Domain FID/KID, class balance and memorisation for 8×8 digit samples (0..16 scale).

    >>> ev = DigitsEvaluator.fit(seed=0)          # a few seconds on one CPU core
    >>> report = ev.evaluate(load_png_folder("samples/"))
    """

    def __init__(
        self,
        net: DigitsCNN,
        images: NDArray[np.float32],
        labels: NDArray[np.int64],
        split: DigitsSplit,
        seed: int,
    ) -> None:
        self.net = net
        self.images, self.labels, self.split, self.seed = images, labels, split, seed
        raw = self._forward(images[split.reference])[0].double()
        self.feature_scale = float(raw.square().mean().sqrt())  # RMS activation on reference
        unseen = np.concatenate([split.reference, split.held_out])
        self.accuracy = float((self.classify(images[unseen]) == labels[unseen]).mean())
        self.reference_features = self.features(images[split.reference])
        self.reference_mu, self.reference_sigma = feature_stats(self.reference_features)
        self.held_out_features = self.features(images[split.held_out])
        self.real_nn_distances = _nearest_distance(images, images, exclude_self=True)

    @classmethod
    def fit(cls, seed: int = 0) -> DigitsEvaluator:
        """Split the real digits and train the classifier, both from ``seed`` (protocol: 0)."""
        images, labels = real_digits()
        split = split_digits(labels, seed)
        net = _train_classifier(images[split.fit], labels[split.fit], seed)
        return cls(net, images, labels, split, seed)

    @torch.no_grad()
    def _forward(self, images: ArrayLike | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(as_digit_images(images) / DIGIT_MAX).unsqueeze(1)
        return self.net(x)

    def features(self, images: ArrayLike | torch.Tensor) -> NDArray[np.float64]:
        """Penultimate-layer features (N, 64), float64, of images (N, 8, 8) in 0..16."""
        return self._forward(images)[0].double().numpy() / self.feature_scale

    def predict_proba(self, images: ArrayLike | torch.Tensor) -> NDArray[np.float64]:
        """Class probabilities (N, 10) (softmax of the classifier's logits)."""
        return torch.softmax(self._forward(images)[1].double(), dim=1).numpy()

    def classify(self, images: ArrayLike | torch.Tensor) -> NDArray[np.int64]:
        """Predicted digit (N,) for images (N, 8, 8) in 0..16."""
        return self._forward(images)[1].argmax(dim=1).numpy().astype(np.int64)

    def _mean_fid(
        self, features: NDArray[np.float64], n_eval: int, repeats: int, seed: int
    ) -> float:
        """Mean FD to the reference over `repeats` random subsets of n_eval rows (one if all)."""
        if n_eval >= len(features):
            mu, sigma = feature_stats(features)
            return frechet_distance(mu, sigma, self.reference_mu, self.reference_sigma)
        rng = np.random.default_rng(seed)
        values = []
        for _ in range(repeats):
            subset = features[rng.choice(len(features), n_eval, replace=False)]
            mu, sigma = feature_stats(subset)
            values.append(frechet_distance(mu, sigma, self.reference_mu, self.reference_sigma))
        return float(np.mean(values))

    def evaluate(
        self, images: ArrayLike | torch.Tensor, repeats: int = 10, seed: int = 0
    ) -> DigitsReport:
        """Score samples (N, 8, 8) in 0..16, N >= 2, against the real digits (module docstring)."""
        x = as_digit_images(images, "samples")
        n = len(x)
        if n < 2:
            raise KuosanError(f"samples: need at least 2 images to fit a covariance, got {n}")
        features, logits = (t.double() for t in self._forward(x))
        features_np = features.numpy() / self.feature_scale
        probabilities = torch.softmax(logits, dim=1)
        predicted = probabilities.argmax(dim=1).numpy()
        histogram = np.bincount(predicted, minlength=10)
        n_eval = min(n, len(self.held_out_features))
        nn_distances = _nearest_distance(x, self.images)
        return DigitsReport(
            n=n,
            n_eval=n_eval,
            fid=self._mean_fid(features_np, n_eval, repeats, seed),
            fid_floor=self._mean_fid(self.held_out_features, n_eval, repeats, seed),
            kid=kid(features_np, self.reference_features),
            kid_floor=kid(self.held_out_features, self.reference_features),
            class_histogram=tuple(int(c) for c in histogram),
            min_class_share=float(histogram.min() / n),
            confidence_mean=float(probabilities.max(dim=1).values.mean()),
            nn_distance_mean=float(nn_distances.mean()),
            nn_distance_median=float(np.median(nn_distances)),
            real_nn_distance_mean=float(self.real_nn_distances.mean()),
            real_nn_distance_median=float(np.median(self.real_nn_distances)),
            memorised_fraction=float((nn_distances < MEMORISATION_THRESHOLD).mean()),
            memorisation_threshold=MEMORISATION_THRESHOLD,
        )
