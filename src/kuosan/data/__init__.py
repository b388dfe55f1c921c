"""Datasets held in memory: built-in digits and 2-D toys, or a folder of images.

```python
from kuosan.data import load_dataset
ds = load_dataset("digits", size=16)        # 1,797 images (1, 16, 16) in [-1, 1], with labels
ds = load_dataset("moons", seed=0)          # 20,000 standardised points (2,)
ds = load_dataset("photos/", size=64)       # every image under photos/, centre-cropped
x = ds.batch(torch.randint(len(ds), (128,)))  # what the trainer calls
```

Model space: images are float32 in [-1, 1] (pixel v ↦ v/127.5 - 1); vectors are standardised,
x = (p - mean) / std. `info.normalization` (JSON-able, stored in checkpoints) says how to map
back: `denormalize(x, info.normalization)`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils.data import Dataset

from kuosan.data.captions import read_captions
from kuosan.data.digits import DIGITS_SIZE, load_digits
from kuosan.data.folder import IMAGE_EXTENSIONS, load_image_folder
from kuosan.data.toys import TOY_NAMES, TOY_POINTS, make_toy, standardize
from kuosan.errors import KuosanError, is_int

__all__ = [
    "DATASET_NAMES",
    "IMAGE_EXTENSIONS",
    "ArrayDataset",
    "DataInfo",
    "denormalize",
    "load_dataset",
    "normalize",
]

DATASET_NAMES = ("digits", "shapes", "emoji", "emojiworld", *TOY_NAMES)
SHAPES_ITEMS = 20_000  # ShapesWorld images drawn (with their captions) for `load_dataset("shapes")`
EMOJIWORLD_ITEMS = 20_000  # EmojiWorld scenes drawn for `load_dataset("emojiworld")`
DEFAULT_FOLDER_SIZE = 32
IMAGE_NORMALIZATION = {"type": "image", "range": [-1, 1]}


@dataclass(frozen=True)
class DataInfo:
    """What one dataset holds: `shape` of one item, (C, H, W) or (D,), and how to map back."""

    name: str
    kind: Literal["image", "vector"]
    shape: tuple[int, ...]
    num_items: int
    normalization: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (shape as a list)."""
        d = dataclasses.asdict(self)
        d["shape"] = list(self.shape)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataInfo:
        return cls(**{**d, "shape": tuple(d["shape"])})


class ArrayDataset(Dataset):
    """A dataset held in one tensor. Items come out in model space (float32).

    `items` is either float32 (already in model space) or uint8 pixels, kept as uint8 to save
    memory (a quarter of float32) and mapped x = v/127.5 - 1 when read.
    """

    def __init__(
        self,
        items: Tensor,
        info: DataInfo,
        labels: Tensor | None = None,
        paths: list[Path] | None = None,
    ) -> None:
        if items.dtype not in (torch.uint8, torch.float32):
            raise ValueError(f"items must be uint8 or float32, got {items.dtype}")
        if tuple(items.shape[1:]) != info.shape or len(items) != info.num_items:
            raise ValueError(
                f"items {tuple(items.shape)} disagree with info: {info.num_items} x {info.shape}"
            )
        for what, other in (("labels", labels), ("paths", paths)):
            if other is not None and len(other) != len(items):
                raise ValueError(f"{len(other)} {what} for {len(items)} items")
        self.items = items
        self.info = info
        self.labels = labels
        self.paths = paths
        self.captions: list[str] | None = None  # one caption per item, for captioned data
        self.groups: Tensor | None = None  # a concept id per item, for --balance (emoji)

    def _to_model_space(self, x: Tensor) -> Tensor:
        return x.float() / 127.5 - 1.0 if x.dtype == torch.uint8 else x

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Tensor:
        return self._to_model_space(self.items[i])

    def batch(self, indices: Tensor) -> Tensor:
        """Items at `indices` (a 1-D integer tensor) stacked: (B, *info.shape), float32."""
        return self._to_model_space(self.items[indices])

    @property
    def data(self) -> Tensor:
        """All items, (N, *info.shape) float32. For uint8 storage this makes a float copy
        on every access: use `batch` in loops."""
        return self._to_model_space(self.items)

    def to(self, device: torch.device | str) -> ArrayDataset:
        """The same dataset with its storage (and labels) on `device`; uint8 stays uint8."""
        labels = None if self.labels is None else self.labels.to(device)
        moved = ArrayDataset(self.items.to(device), self.info, labels, self.paths)
        moved.captions, moved.groups = self.captions, self.groups
        return moved

    def __repr__(self) -> str:
        i = self.info
        return f"ArrayDataset({i.name!r}, {i.kind}, {i.num_items} x {i.shape})"


def denormalize(x: Tensor, normalization: dict[str, Any]) -> Tensor:
    """Model space -> data space.

    image: [lo, hi] -> [0, 1], (x - lo)/(hi - lo), clamped; affine: x·std + mean over the last
    dimension (vectors (B, D)).
    """
    kind = normalization.get("type")
    if kind == "image":
        lo, hi = normalization["range"]
        return ((x - lo) / (hi - lo)).clamp(0.0, 1.0)
    if kind == "affine":
        mean, std = _affine(x, normalization)
        return x * std + mean
    raise KuosanError(f"unknown normalization type {kind!r}: expected 'image' or 'affine'")


def normalize(x: Tensor, normalization: dict[str, Any]) -> Tensor:
    """Data space -> model space, the inverse of `denormalize` (images: [0, 1] -> [lo, hi])."""
    kind = normalization.get("type")
    if kind == "image":
        lo, hi = normalization["range"]
        return x * (hi - lo) + lo
    if kind == "affine":
        mean, std = _affine(x, normalization)
        return (x - mean) / std
    raise KuosanError(f"unknown normalization type {kind!r}: expected 'image' or 'affine'")


def _affine(x: Tensor, normalization: dict[str, Any]) -> tuple[Tensor, Tensor]:
    mean = torch.as_tensor(normalization["mean"], dtype=x.dtype, device=x.device)
    std = torch.as_tensor(normalization["std"], dtype=x.dtype, device=x.device)
    if mean.shape != (x.shape[-1],) or std.shape != mean.shape:
        raise ValueError(
            f"affine normalization of dimension {tuple(mean.shape)} for data {tuple(x.shape)}"
        )
    return mean, std


def _check_channels(channels: int | None) -> None:
    if channels not in (None, 1, 3):
        raise KuosanError(f"channels must be 1 or 3 (or None for automatic), got {channels}")


def _check_size(size: int | None) -> None:
    if size is not None and (not is_int(size) or size < 1):
        raise KuosanError(f"image size must be a positive integer, got {size!r}")


def _image_dataset(
    name: str, items: Tensor, labels: Tensor | None = None, paths: list[Path] | None = None
) -> ArrayDataset:
    info = DataInfo(name, "image", tuple(items.shape[1:]), len(items), dict(IMAGE_NORMALIZATION))
    return ArrayDataset(items, info, labels, paths)


def _emojiworld(size: int | None, channels: int | None, seed: int,
                styles: tuple[str, ...] | None) -> ArrayDataset:
    from kuosan.data.emoji import DEFAULT_STYLES, catalogue_pictures, emoji_data_key
    from kuosan.data.emoji_scenes import cached_scene_dataset

    side = size if size is not None else 64
    if side % 16 or not 32 <= side <= 128:
        raise KuosanError(f"EmojiWorld scenes are 32..128 pixels, a multiple of 16; got size={side}")
    if channels == 1:
        raise KuosanError("EmojiWorld scenes are RGB: channels=1 does not apply")
    styles = styles or DEFAULT_STYLES
    items, captions = cached_scene_dataset(EMOJIWORLD_ITEMS, emoji_data_key(side, styles),
                                           lambda: catalogue_pictures(side, styles)[:2], side, seed)
    ds = _image_dataset("emojiworld", items)
    ds.captions = captions
    return ds


def _looks_like_path(spec: str) -> bool:
    return any(c in spec for c in "/\\") or spec.startswith((".", "~"))


def load_dataset(
    spec: str,
    *,
    size: int | None = None,
    channels: int | None = None,
    skip_bad: bool = False,
    seed: int = 0,
    shapes_mix: dict[str, float] | None = None,
    styles: tuple[str, ...] | None = None,
) -> ArrayDataset:
    """Load a dataset by name or folder path, all into memory.

    - "digits": scikit-learn's 1,797 8×8 digits, 1 channel (3 = repeated), resized to `size`
      (default 8, bilinear), with labels 0..9;
    - "shapes": 20,000 ShapesWorld images (docs/shapes-spec.md; RGB, `size` a multiple of 16 up to
      128, default 32) drawn with `seed`, held-out compositions excluded, captions in `.captions`;
      `shapes_mix` weighs the caption kinds (e.g. {"pair": 0.6, "single": 0.2, "count": 0.2};
      default `kuosan.data.shapes.KIND_WEIGHTS`);
    - "emoji": real emoji pictures (docs/emoji.md; RGB, `size` 16..128, default 32) in `styles`
      (default flat + glossy), held-out pairs excluded, three captions per picture in
      `.captions` and its concept (the emoji less its skin tone) in `.groups`; built from the
      installed sources once, then read from the cache;
    - "emojiworld": 20,000 EmojiWorld scenes (docs/emoji-scenes.md; two or three emoji with
      positions and relations, RGB, `size` 32..128 a multiple of 16, default 64) drawn with
      `seed` from the emoji pictures of `styles`, held-out pairs excluded, captions in `.captions`;
      cached beside the emoji pictures after the first build;
    - "moons", "swissroll", "gaussians": 20,000 2-D points drawn with `seed`, standardised
      (`size`/`channels` do not apply and raise);
    - anything else is a folder of images (recursive; .png .jpg .jpeg .webp .bmp), resized
      and centre-cropped to `size` (default 32), `channels` None = automatic (see
      `load_image_folder`); `skip_bad` skips unreadable files with a warning; captions from
      metadata.jsonl, metadata.csv or .txt sidecars (`kuosan.data.captions`) go to `.captions`.

    A built-in name wins over a folder of the same name: write "./digits" for the folder.
    """
    _check_size(size)
    _check_channels(channels)
    if shapes_mix is not None and spec != "shapes":
        raise KuosanError(f"a caption-kind mix (--shapes-mix) applies to the shapes data, not to '{spec}'")
    if styles is not None and spec not in ("emoji", "emojiworld"):
        raise KuosanError(f"emoji styles apply to the emoji data, not to '{spec}'")
    if spec == "digits":
        images, labels = load_digits(size if size is not None else DIGITS_SIZE)
        if channels == 3:
            images = images.repeat(1, 3, 1, 1)
        return _image_dataset("digits", images, labels=labels)
    if spec == "emoji":
        from kuosan.data.emoji import DEFAULT_STYLES, build_emoji, item_groups

        if channels == 1:
            raise KuosanError("emoji pictures are RGB: channels=1 does not apply")
        items, captions, entries = build_emoji(size or 32, styles or DEFAULT_STYLES)
        ds = _image_dataset("emoji", items)
        ds.captions, ds.groups = captions, item_groups(entries)
        return ds
    if spec == "emojiworld":
        return _emojiworld(size, channels, seed, styles)
    if spec in TOY_NAMES:
        for flag, value in (("size", size), ("channels", channels)):
            if value is not None:
                raise KuosanError(
                    f"{flag}={value} applies to image datasets, not to the 2-D toy '{spec}'"
                )
        points, labels = make_toy(spec, TOY_POINTS, seed)
        x, mean, std = standardize(points)
        normalization = {"type": "affine", "mean": mean.tolist(), "std": std.tolist()}
        info = DataInfo(spec, "vector", (x.shape[1],), len(x), normalization)
        return ArrayDataset(x.contiguous(), info, labels)

    if spec == "shapes":
        from kuosan.data.shapes import make_shapes_dataset

        side = size if size is not None else 32
        if side % 16 or not 16 <= side <= 128:
            raise KuosanError(f"ShapesWorld images are 16..128 pixels, a multiple of 16; got size={side}")
        if channels == 1:
            raise KuosanError("ShapesWorld images are RGB: channels=1 does not apply")
        items, captions = make_shapes_dataset(SHAPES_ITEMS, size=side, seed=seed,
                                              kind_weights=shapes_mix)
        ds = _image_dataset("shapes", torch.from_numpy(items))
        ds.captions = captions
        return ds

    path = Path(spec).expanduser()
    if not path.exists():
        if _looks_like_path(spec):
            raise KuosanError(f"dataset folder '{spec}' does not exist")
        raise KuosanError(
            f"unknown dataset '{spec}': expected digits, shapes, emoji, emojiworld, moons, swissroll, "
            "gaussians or a folder of images"
        )
    items, paths = load_image_folder(
        path, size if size is not None else DEFAULT_FOLDER_SIZE, channels, skip_bad
    )
    ds = _image_dataset(str(spec), items, paths=paths)
    ds.captions = read_captions(path, paths)
    return ds
