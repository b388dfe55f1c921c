"""A folder of images, read recursively and loaded into memory up front.

Every image is decoded before training starts, so a corrupt file stops the run at once with
its name (or, with `skip_bad=True`, is skipped with a warning). Per image, in order:

1. EXIF orientation applied (`ImageOps.exif_transpose`);
2. transparency composited onto white, then converted to 'L' or 'RGB' (`images.to_rgb_or_l`);
3. the shorter side resized to `size` and the centre cropped to size×size, in one Lanczos
   resample (`Image.resize(…, box=centre square)`; Lanczos filters the whole footprint when
   shrinking, so it is antialiased). JPEGs are first decoded at a reduced scale no smaller
   than `size` (`Image.draft`), which is much faster for large photos.

Files are taken in sorted order of their path relative to the folder, so the dataset is the
same on every run. Hidden files and folders (names starting with '.') and files with other
suffixes (.txt and .json caption sidecars, for instance) are ignored. PIL's decompression-bomb
limit (`Image.MAX_IMAGE_PIXELS`) stays in force; an image over it counts as unreadable.
"""

from __future__ import annotations

import os
import struct
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor
from tqdm.auto import tqdm

from kuosan.errors import KuosanError
from kuosan.images import is_grayscale, to_rgb_or_l

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
PROGRESS_MIN_FILES = 1000  # show a progress bar above this many files

# What a broken or hostile file can raise while Pillow decodes it.
DECODE_ERRORS = (
    OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error,
    Image.DecompressionBombError,
)


def find_images(root: Path) -> list[Path]:
    """Image files under `root` (recursive, suffix in IMAGE_EXTENSIONS, case-insensitive),
    skipping hidden files and folders, sorted by their path relative to `root`."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                found.append(Path(dirpath) / name)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def describe_decode_error(err: Exception) -> str:
    """One line saying why Pillow could not read a file."""
    if isinstance(err, UnidentifiedImageError):
        return "cannot identify image file (not an image, or a format Pillow cannot read)"
    if isinstance(err, Image.DecompressionBombError):
        return f"{err} (PIL's decompression-bomb limit, Image.MAX_IMAGE_PIXELS)"
    return f"{type(err).__name__}: {err}"


def _read_one(path: Path, size: int, channels: int | None) -> tuple[np.ndarray | None, str]:
    """(uint8 array (C, size, size), '') for a good file, (None, reason) for a bad one."""
    try:
        with Image.open(path) as img:
            if img.format == "JPEG":
                img.draft(None, (size, size))
            img = ImageOps.exif_transpose(img)
            c = channels if channels is not None else (1 if is_grayscale(img) else 3)
            img = to_rgb_or_l(img, c)
    except DECODE_ERRORS as err:
        return None, describe_decode_error(err)
    w, h = img.size
    side = min(w, h)
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    img = img.resize((size, size), Image.Resampling.LANCZOS, box=box)
    arr = np.asarray(img, dtype=np.uint8)
    return (arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)), ""


def load_image_folder(
    root: str | Path, size: int, channels: int | None = None, skip_bad: bool = False
) -> tuple[Tensor, list[Path]]:
    """All images under `root` as a uint8 tensor (N, C, size, size), and their paths.

    channels None = 1 if every image is gray ('1', 'L', 'LA', 'I…'), else 3 (gray images are
    then repeated to RGB); 1 or 3 forces it. A file that cannot be decoded raises KuosanError
    naming it, or with `skip_bad` is skipped with one warning per file and a final count.
    """
    root = Path(root)
    if not root.exists():
        raise KuosanError(f"dataset folder '{root}' does not exist")
    if not root.is_dir():
        raise KuosanError(f"dataset '{root}' is a file, expected a folder of images")
    files = find_images(root)
    if not files:
        raise KuosanError(
            f"no images found in '{root}': looked recursively for "
            f"{', '.join(IMAGE_EXTENSIONS)} files (any case; hidden files are ignored)"
        )

    arrays, paths, skipped = [], [], 0
    pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))
    try:  # decode in threads (Pillow releases the GIL); map keeps the sorted order
        results = pool.map(lambda p: _read_one(p, size, channels), files)
        bar = tqdm(
            zip(files, results, strict=True), total=len(files), desc=f"loading {root}", unit="img",
            disable=len(files) <= PROGRESS_MIN_FILES,
        )
        for path, (arr, reason) in bar:
            if arr is None:
                if not skip_bad:
                    raise KuosanError(
                        f"cannot read image '{path}': {reason} "
                        "(remove the file, or pass skip_bad / --skip-bad to skip it)"
                    )
                warnings.warn(f"skipping unreadable image '{path}': {reason}", stacklevel=2)
                skipped += 1
                continue
            arrays.append(arr)
            paths.append(path)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # on an error, drop the files not started
    if skipped:
        warnings.warn(f"skipped {skipped} of {len(files)} image files in '{root}'", stacklevel=2)
    if not arrays:
        raise KuosanError(
            f"no readable images in '{root}': all {len(files)} image files were unreadable"
        )
    c = 3 if any(a.shape[0] == 3 for a in arrays) else 1
    data = np.stack([np.repeat(a, 3, axis=0) if a.shape[0] != c else a for a in arrays])
    return torch.from_numpy(data), paths
