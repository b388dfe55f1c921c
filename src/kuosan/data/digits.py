"""scikit-learn's handwritten digits: 1,797 real 8×8 grayscale images, values 0..16, labels 0..9.

scikit-learn's convention is kept: ink is bright. A value v maps to v/16 ∈ [0, 1] (so 16 ↦ 255
as a pixel) and then to x = 2·v/16 - 1 ∈ [-1, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

DIGITS_SIZE = 8


def load_digits(size: int = DIGITS_SIZE) -> tuple[Tensor, Tensor]:
    """Images (1797, 1, size, size) float32 in [-1, 1], and labels (1797,) int64.

    Resizing to `size` ≠ 8 is bilinear on the [0, 1] values (`F.interpolate`,
    align_corners=False, antialias when shrinking), so values stay inside [-1, 1].
    """
    from sklearn.datasets import load_digits as sklearn_load_digits  # ~1 s: only when used

    bunch = sklearn_load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0  # (N, 1, 8, 8)
    if size != DIGITS_SIZE:
        images = F.interpolate(
            images, size=(size, size), mode="bilinear", align_corners=False,
            antialias=size < DIGITS_SIZE,
        ).clamp(0.0, 1.0)
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    return images * 2.0 - 1.0, labels
