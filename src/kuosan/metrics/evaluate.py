"""FID, KID, precision/recall and a memorisation report for any two sets of images.

    >>> from kuosan.metrics.evaluate import evaluate, load_image_set
    >>> from kuosan.metrics.features import get_feature_map
    >>> report = evaluate(load_image_set("samples/"), load_image_set("shapes", seed=1),
    ...                   get_feature_map("inception"), kid=True, pr=True)

Image sets are uint8 (N, C, H, W) tensors (`ImageSet`): a folder of images (read with
`kuosan.data.load_image_folder`, every image brought to one size: the shorter side of the first
image unless told), a built-in dataset (`kuosan.data.load_dataset`: digits, shapes, emoji, …;
float data such as the digits is rounded onto the 8-bit grid, as a saved sample would be), or
samples of a checkpoint (`kuosan.metrics.sampling`). Both sides of a comparison must have the
same channel count (1 = gray, 3 = RGB): a mismatch is an error, not a silent conversion.

Numbers (all on float64 features; see `kuosan.metrics.fid`, `kuosan.metrics.neighbours`):
- ``fid``: FD between Gaussians fitted to the source's and the reference's features. Biased
  upward by a term that shrinks like 1/n, so it is comparable only at the same n_source (and
  n_ref); ``fid_floor`` (with ``floor=True``) is the FID of n_source *other* reference images
  against the reference: what a perfect sampler of the data would score at this n.
- ``kid`` (unbiased MMD², cubic kernel) and ``kid_std`` (its standard error, `kid_stderr`).
- ``precision``, ``recall``: Kynkäänniemi et al. 2019, k = 3, in the same features.

Feature cache. Features of a folder or a dataset are stored under ``cache_dir`` as
``<key>.safetensors`` (no pickle), written atomically (temporary file, then rename). The key is
the SHA-256 of the decoded uint8 pixels (shape included) and of the feature map's key (network,
preprocessing and resize): a changed, added or removed file changes the pixels and so the key;
an entry is never reused for other pixels. Samples drawn from a checkpoint are not cached.

Memorisation (`memorisation_report`): RMS pixel distance (0..1 units) from each sample to its
nearest training image, against the same for held-out real images (a held-out image's own copy
in the training set is skipped: images that are in fact training images count leave-one-out).
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image
from safetensors.numpy import load_file, save
from torch import Tensor

from kuosan.defaults import cache_folder
from kuosan.errors import KuosanError
from kuosan.images import _atomic_write
from kuosan.metrics.features import FeatureMap
from kuosan.metrics.fid import feature_stats, frechet_distance, kid, kid_stderr
from kuosan.metrics.neighbours import nearest_distances, precision_recall

__all__ = [
    "COPY_THRESHOLD",
    "ImageSet",
    "cached_features",
    "default_cache_dir",
    "evaluate",
    "load_image_set",
    "memorisation_report",
]

PR_K = 3  # Kynkäänniemi et al. 2019
# RMS pixel distance (0..1) under which a sample counts as a copy of a training image: the 8-bit
# PNG round trip moves an exact copy by at most 0.5/255 ≈ 0.002 RMS; 0.02 ≈ 5 gray levels.
COPY_THRESHOLD = 0.02


@dataclass(frozen=True)
class ImageSet:
    """uint8 images (N, C, H, W), what they are called, and captions when the data has them."""

    name: str
    images: Tensor
    captions: list[str] | None = None
    cacheable: bool = True  # folders and datasets; False for freshly drawn samples

    def __len__(self) -> int:
        return len(self.images)

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    def subset(self, indices: NDArray[np.int64], name: str | None = None) -> ImageSet:
        captions = None if self.captions is None else [self.captions[i] for i in indices]
        return replace(self, name=name or self.name, images=self.images[torch.from_numpy(indices)],
                       captions=captions)

    def digest(self) -> str:
        """SHA-256 of the pixels and their shape."""
        h = hashlib.sha256(repr(tuple(self.images.shape)).encode())
        h.update(self.images.contiguous().numpy().tobytes())
        return h.hexdigest()


def _first_image_side(folder: Path) -> int:
    from kuosan.data.folder import DECODE_ERRORS, describe_decode_error, find_images

    files = find_images(folder)
    if not files:
        raise KuosanError(f"'{folder}' holds no images (looked recursively for .png .jpg .jpeg "
                          ".webp .bmp files)")
    try:
        with Image.open(files[0]) as img:
            return min(img.size)
    except DECODE_ERRORS as err:
        raise KuosanError(f"cannot read image '{files[0]}': {describe_decode_error(err)}") from None


def load_image_set(spec: str | Path, *, size: int | None = None, seed: int = 0) -> ImageSet:
    """A folder of images (recursive; each resized and centre-cropped to ``size``, default the
    first image's shorter side) or a built-in image dataset drawn with ``seed``
    (`kuosan.data.load_dataset`, at ``size`` or its own default size)."""
    from kuosan.data import load_dataset, load_image_folder, read_captions

    path = Path(spec).expanduser()
    if path.is_dir():
        side = size if size is not None else _first_image_side(path)
        images, paths = load_image_folder(path, side)
        return ImageSet(str(spec), images, read_captions(path, paths))
    if path.is_file():
        raise KuosanError(f"'{spec}' is a file: give a folder of images or a dataset name")
    ds = load_dataset(str(spec), size=size, seed=seed)
    if ds.info.kind != "image":
        raise KuosanError(f"dataset '{spec}' holds {ds.info.kind}s, not images")
    items = ds.items
    if items.dtype != torch.uint8:  # float data in [-1, 1] (digits): onto the 8-bit grid, as PNGs
        items = torch.round((items.clamp(-1, 1) + 1) * 127.5).to(torch.uint8)
    return ImageSet(str(spec), items, ds.captions)


def default_cache_dir() -> Path:
    """``$KUOSAN_CACHE/features``, else ``~/.cache/kuosan/features``."""
    return cache_folder("features")


def cached_features(images: ImageSet, fmap: FeatureMap, cache_dir: Path | None,
                    progress: bool = False) -> NDArray[np.float64]:
    """``fmap``'s features of ``images``, read from / written to ``cache_dir`` (None: no cache)."""
    if cache_dir is None or not images.cacheable:
        return fmap(images.images, progress, images.name)
    key = hashlib.sha256(f"{fmap.key}\n{images.digest()}".encode()).hexdigest()[:32]
    path = Path(cache_dir) / f"{key}.safetensors"
    if path.is_file():
        try:
            features = load_file(str(path))["features"]
            if features.shape[0] == len(images):
                return features.astype(np.float64)
        except (OSError, ValueError, KeyError, RuntimeError) as err:  # damaged: recompute
            warnings.warn(f"ignoring the damaged cache file '{path}' ({err})", stacklevel=2)
    features = fmap(images.images, progress, images.name)
    data = save({"features": np.ascontiguousarray(features)},
                metadata={"feature": fmap.key, "images": images.name, "n": str(len(images))})
    try:
        _atomic_write(path, lambda f: f.write(data))
    except OSError as err:
        warnings.warn(f"cannot write the feature cache '{path}' ({err})", stacklevel=2)
    return features


def _check_pair(source: ImageSet, ref: ImageSet) -> None:
    for s in (source, ref):
        if len(s) < 2:
            raise KuosanError(f"'{s.name}': {len(s)} image(s); a covariance needs at least 2")
    if source.channels != ref.channels:
        kinds = {1: "gray (1 channel)", 3: "RGB (3 channels)"}
        raise KuosanError(
            f"'{source.name}' is {kinds.get(source.channels, source.channels)} and "
            f"'{ref.name}' is {kinds.get(ref.channels, ref.channels)}: compare like with like")


def _fid(features: NDArray[np.float64], ref_mu: NDArray[np.float64],
         ref_sigma: NDArray[np.float64]) -> float:
    mu, sigma = feature_stats(features)
    return frechet_distance(mu, sigma, ref_mu, ref_sigma)


def evaluate(source: ImageSet, ref: ImageSet, fmap: FeatureMap, *, kid_: bool = False,
             pr: bool = False, floor: ImageSet | None = None, cache_dir: Path | None = None,
             progress: bool = False) -> dict[str, Any]:
    """FID (and KID, precision/recall when asked) of ``source`` against ``ref`` in ``fmap``'s
    features; ``floor``: real images disjoint from ``ref`` (as many as ``source``) scored the
    same way, giving ``fid_floor`` (and ``kid_floor``, ``precision_floor``, ``recall_floor``)."""
    _check_pair(source, ref)
    if floor is not None:
        _check_pair(floor, ref)
    ref_f = cached_features(ref, fmap, cache_dir, progress)
    src_f = cached_features(source, fmap, cache_dir, progress)
    mu, sigma = feature_stats(ref_f)
    result: dict[str, Any] = {
        "fid": _fid(src_f, mu, sigma), "n_source": len(source), "n_ref": len(ref),
        "feature": fmap.name, "feature_dim": int(ref_f.shape[1]), "feature_key": fmap.key,
        "source": source.name, "ref": ref.name,
    }
    sides = {"": src_f}
    if floor is not None:
        sides["_floor"] = cached_features(floor, fmap, cache_dir, progress)
        result["fid_floor"] = _fid(sides["_floor"], mu, sigma)
        result["n_floor"] = len(floor)
    for suffix, feats in sides.items():
        if kid_:
            result["kid" + suffix] = kid(feats, ref_f)
            result["kid_std" + suffix] = kid_stderr(feats, ref_f)
        if pr:
            if min(len(feats), len(ref_f)) <= PR_K:
                raise KuosanError(f"precision/recall (k = {PR_K}) need more than {PR_K} images "
                                  f"on each side, got {len(feats)} and {len(ref_f)}")
            p, r = precision_recall(ref_f, feats, PR_K)
            result["precision" + suffix], result["recall" + suffix] = p, r
    return result


def _pixels(images: ImageSet) -> NDArray[np.float32]:
    return images.images.flatten(1).numpy().astype(np.float32) / 255.0


def memorisation_report(samples: ImageSet, train: ImageSet, held_out: ImageSet,
                        copy_threshold: float = COPY_THRESHOLD) -> dict[str, Any]:
    """Nearest-training-image distances (RMS over pixels, 0..1 units) of the samples and of
    held-out real images. A held-out image's exact copy in the training set is skipped, so
    held-out images that are training images are compared with the nearest *other* one
    (``held_out_in_train`` counts them)."""
    shapes = {s.name: tuple(s.images.shape[1:]) for s in (samples, train, held_out)}
    if len(set(shapes.values())) != 1:
        raise KuosanError("memorisation compares pixels: the images must have one shape, got "
                          + ", ".join(f"'{k}' {v}" for k, v in shapes.items()))
    bank = _pixels(train)
    scale = 1.0 / np.sqrt(bank.shape[1])  # L2 → RMS per pixel value
    sample_d = nearest_distances(_pixels(samples), bank) * scale
    held = _pixels(held_out)
    # distinct uint8 images differ by ≥ 1/255 in some value: L2 ≥ 1/255, so 0.5/255 skips copies
    # only (rounding leaves an exact copy ~1e-7 from 0)
    in_train = int((nearest_distances(held, bank) < 0.5 / 255).sum())
    real_d = nearest_distances(held, bank, skip_within=0.5 / 255) * scale
    low = float(np.quantile(real_d, 0.01))
    return {
        "train": train.name, "held_out": held_out.name, "n_train": len(train),
        "n_held_out": len(held_out), "held_out_in_train": in_train,
        "unit": "RMS pixel distance, 0..1",
        "nn_distance_mean": float(sample_d.mean()),
        "nn_distance_median": float(np.median(sample_d)),
        "nn_distance_min": float(sample_d.min()),
        "real_nn_distance_mean": float(real_d.mean()),
        "real_nn_distance_median": float(np.median(real_d)),
        "real_nn_distance_p01": low,
        "copy_threshold": copy_threshold,
        "copy_fraction": float((sample_d < copy_threshold).mean()),
        "closer_than_real_p01_fraction": float((sample_d < low).mean()),
    }
