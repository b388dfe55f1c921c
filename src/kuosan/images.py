"""Image utilities: tensors in model space [-1, 1] <-> PIL images, grids, atomic PNG writes.

Model space is float, shape (C, H, W) with C = 1 (grayscale) or 3 (RGB), and the pixel value
v ∈ {0, …, 255} sits at x = v / 127.5 - 1, so 0 ↦ -1 and 255 ↦ +1. `to_pil` inverts
`from_pil` exactly for every uint8 value.

Every file written here goes to a temporary name in the target folder first and is then renamed
into place (`os.replace`), so a crash never leaves a half-written image where a good one was.
"""

from __future__ import annotations

import math
import os
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, PngImagePlugin
from torch import Tensor

from kuosan.errors import KuosanError
from kuosan.metadata import parameters_text

__all__ = [
    "from_pil",
    "is_grayscale",
    "make_grid",
    "pil_to_uint8",
    "save_grid",
    "save_images",
    "save_png",
    "to_pil",
    "to_rgb_or_l",
]

# Pillow modes that hold no colour. 'P' (palette) counts as colour even when its palette is gray.
_GRAY_MODES = {"1", "L", "LA", "La", "I", "F"}


def is_grayscale(img: Image.Image) -> bool:
    """True for Pillow's gray modes: '1', 'L', 'LA', 'I', 'I;16…', 'F'."""
    return img.mode in _GRAY_MODES or img.mode.startswith("I;")


def _wide_gray_to_l(img: Image.Image) -> Image.Image:
    """'I;16…' / 'I' / 'F' -> 'L'. 16-bit data is scaled by 1/257 (65535 ↦ 255), not clipped.

    Mode 'I' carries no bit depth, so it is read as 16-bit when any value exceeds 255 and as
    8-bit otherwise; 'F' is read as 0..255 and clipped.
    """
    arr = np.asarray(img).astype(np.float64)
    if img.mode.startswith("I;16") or (img.mode == "I" and arr.size and arr.max() > 255):
        arr = arr / 257.0
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))


def to_rgb_or_l(img: Image.Image, channels: int) -> Image.Image:
    """Convert any Pillow image to 'L' (channels=1) or 'RGB' (channels=3).

    Transparency (an alpha channel, or a palette / tRNS transparent colour) is composited onto
    white; gray -> RGB repeats the value; RGB -> gray is Pillow's ITU-R 601-2 luma.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if img.mode.startswith("I") or img.mode == "F":
        img = _wide_gray_to_l(img)
    has_alpha = img.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in img.info
    if has_alpha:
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img.convert("RGBA"))
    return img.convert("L" if channels == 1 else "RGB")


def pil_to_uint8(img: Image.Image, channels: int | None = None) -> Tensor:
    """PIL image -> uint8 tensor (C, H, W); channels None = 1 for gray modes, else 3."""
    if channels is None:
        channels = 1 if is_grayscale(img) else 3
    arr = np.asarray(to_rgb_or_l(img, channels), dtype=np.uint8)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(arr.copy())  # copy: writable and contiguous


def from_pil(img: Image.Image, channels: int | None = None) -> Tensor:
    """PIL image -> float32 tensor (C, H, W) in [-1, 1]: x = v / 127.5 - 1."""
    return pil_to_uint8(img, channels).float() / 127.5 - 1.0


def to_pil(x: Tensor) -> Image.Image:
    """Tensor (C, H, W) in [-1, 1] -> PIL image ('L' for C=1, 'RGB' for C=3).

    v = round((x + 1) · 127.5), clamped to 0..255; NaN becomes 0.0 (mid gray).
    """
    if x.ndim != 3 or x.shape[0] not in (1, 3):
        raise ValueError(f"to_pil expects a tensor (C, H, W) with C = 1 or 3, got {tuple(x.shape)}")
    x = torch.nan_to_num(x.detach().float().cpu(), nan=0.0)
    v = ((x + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    return Image.fromarray(v[0] if v.shape[0] == 1 else v.transpose(1, 2, 0))


def make_grid(
    x: Tensor, nrow: int | None = None, padding: int = 1, pad_value: float = 1.0
) -> Tensor:
    """Tile a batch (B, C, H, W) into one image (C, rows·(H+p)+p, nrow·(W+p)+p).

    As torchvision's `make_grid`: `nrow` images per row (default ceil(sqrt(B)), a square-ish
    grid), `padding` pixels around every cell filled with `pad_value` (1.0 = white in [-1, 1]).
    """
    if x.ndim != 4 or x.shape[0] == 0:
        raise ValueError(f"make_grid expects a non-empty batch (B, C, H, W), got {tuple(x.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    b, c, h, w = x.shape
    ncol = min(b, nrow if nrow is not None else math.ceil(math.sqrt(b)))
    if ncol < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    nrows = math.ceil(b / ncol)
    p = padding
    grid = x.new_full((c, nrows * (h + p) + p, ncol * (w + p) + p), pad_value)
    for i in range(b):
        top, left = p + (i // ncol) * (h + p), p + (i % ncol) * (w + p)
        grid[:, top : top + h, left : left + w] = x[i]
    return grid


def _atomic_write(path: Path, write: Callable[[object], None]) -> Path:
    """Call write(file) on a temporary file next to `path`, fsync it, then rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def save_png(img: Image.Image, path: str | Path, text: dict[str, str] | None = None) -> Path:
    """Write `img` as PNG at `path` (atomically) with `text` as PNG text chunks.

    Latin-1 values go into tEXt chunks, others (e.g. a Chinese prompt) into UTF-8 iTXt chunks;
    `Image.open(path).text` reads them back. Keys: 1-79 Latin-1 characters (PNG spec).
    """
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        try:
            ok = 1 <= len(key.encode("latin-1")) <= 79
        except UnicodeEncodeError:
            ok = False
        if not ok:
            raise ValueError(f"PNG text key must be 1-79 Latin-1 characters, got {key!r}")
        info.add_text(key, str(value))
    return _atomic_write(Path(path), lambda f: img.save(f, format="PNG", pnginfo=info))


def generation_metadata(params: dict, size: tuple[int, int]) -> dict[str, str]:
    """Deprecated: moved to :func:`kuosan.metadata.parameters_text`."""
    warnings.warn("kuosan.images.generation_metadata moved to kuosan.metadata.parameters_text",
                  DeprecationWarning, stacklevel=2)
    return parameters_text(params, size)


def save_grid(
    x: Tensor, path: str | Path, nrow: int | None = None, upscale: int = 1, padding: int = 1
) -> Path:
    """Save a batch (B, C, H, W) in [-1, 1] as one grid image, enlarged `upscale`× (nearest).

    The format follows the suffix of `path` (.png, .jpg, .webp, …); PNG is written through
    `save_png`. Nearest upscaling keeps pixels sharp, so an 8×8 digit stays readable.
    """
    path = Path(path)
    if upscale < 1:
        raise ValueError(f"upscale must be >= 1, got {upscale}")
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise KuosanError(f"cannot save grid to '{path}': unknown image suffix '{path.suffix}'")
    img = to_pil(make_grid(x, nrow=nrow, padding=padding))
    if upscale > 1:
        img = img.resize((img.width * upscale, img.height * upscale), Image.Resampling.NEAREST)
    if fmt == "PNG":
        return save_png(img, path)
    return _atomic_write(path, lambda f: img.save(f, format=fmt))


def save_images(
    x: Tensor, folder: str | Path, start: int = 0, text: dict[str, str] | None = None
) -> list[Path]:
    """Save each image of a batch (B, C, H, W) in [-1, 1] as `folder/0000.png`, `0001.png`, ….

    Numbering begins at `start` (to continue a folder); existing files of the same name are
    replaced. `text` goes into every file's PNG text chunks.
    """
    if x.ndim != 4:
        raise ValueError(f"save_images expects a batch (B, C, H, W), got {tuple(x.shape)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return [save_png(to_pil(img), folder / f"{start + i:04d}.png", text) for i, img in enumerate(x)]
