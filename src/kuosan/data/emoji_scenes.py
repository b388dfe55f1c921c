"""EmojiWorld: two or three real emoji placed on a white canvas, with positions and relations
(docs/emoji-scenes.md): the step from one object to combining concepts.

```python
from kuosan.data.emoji_scenes import make_scene_dataset, scene_concepts
from kuosan.data.emoji import catalogue_pictures
pictures, entries, _ = catalogue_pictures(64)               # the emoji data's pictures at 64×64
items, captions, scenes = make_scene_dataset(1000, pictures, entries, size=64, seed=0)
captions[0]   # e.g. 'a fox face to the left of a red apple, glossy style'
```

Grammar (every caption ends with its style; all emoji of a scene share it):

    caption  := scene ", " STYLE " style"
    scene    := single | pair | row
    single   := OBJ " at the " POS | OBJ " in the center"   (POS: the ShapesWorld 3×3 grid)
    pair     := OBJ " " RELATION " " OBJ                   (to the left of, to the right of,
                                                             above, below)
    row      := OBJ ", " OBJ " and " OBJ " in a row"       (left to right)
    OBJ      := ("a" | "an") " " NAME                        (NAME: the emoji's lower-case name)

Geometry, with S the canvas side: each emoji is its framed catalogue picture (6 % margin) resized
to a square tile of side ``SIDES[kind]`` · S (drawn uniformly, whole pixels); tiles never overlap
and keep S/32 pixels apart (``GAP``). "A to the left of B": A's tile lies wholly left of B's (so their
centres are at least a tile apart); rows are left to right, each tile's centre within ±S/8 of the
middle line; a single emoji's centre lies at 1/4, 1/2 or 3/4 of each side (± S/32), clamped into
the canvas.

What a scene may hold: concepts of the emoji data (held-out (concept, style) pairs stay held out)
without a skin tone (nor the five tone swatches), whose NAME has no ':' and none of the grammar's
words ("and", "above", "below", "in a row", "to the", "at the", "in the center"), so every caption
parses one way.
**Held-out compositions**: two concepts whose code points' sums add up to a multiple of
``PAIR_MODULUS`` (13) are never in one training scene; ``holdout="only"`` draws scenes of such
pairs, for the scorer's held-out group.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from kuosan.data.emoji import TONES, EmojiEntry, read_cached, without_tone, write_cached
from kuosan.data.shapes import POSITIONS
from kuosan.defaults import cache_folder
from kuosan.errors import KuosanError, is_int

__all__ = [
    "GRAMMAR_WORDS",
    "KIND_WEIGHTS",
    "PAIR_MODULUS",
    "RELATIONS",
    "SCENES_VERSION",
    "Placed",
    "Scene",
    "cached_scene_dataset",
    "format_caption",
    "is_held_out_pair",
    "make_scene_dataset",
    "paste_tiles",
    "place_tiles",
    "random_scene",
    "render_scene",
    "scene_concepts",
]

SCENES_VERSION = 1  # of the grammar, geometry and drawing: a change rebuilds cached scenes
Kind = Literal["single", "pair", "row"]
Holdout = Literal["exclude", "only"]
KIND_WEIGHTS: dict[str, float] = {"single": 0.2, "pair": 0.6, "row": 0.2}
RELATIONS = ("to the left of", "to the right of", "above", "below")
SIDES = {"single": (0.40, 0.55), "pair": (0.34, 0.46), "row": (0.26, 0.31)}  # tile side / S
COUNTS = {"single": 1, "pair": 2, "row": 3}
GAP = 1 / 32  # of the canvas side, between tiles (2 px at 64)
PAIR_MODULUS = 13
GRAMMAR_WORDS = re.compile(r":|\b(and|above|below|in a row|to the|at the|in the center)\b")


@dataclass(frozen=True)
class Placed:
    """One emoji of a scene: ``entry`` (an index into the catalogue entries), its tile's top-left
    corner ``(x, y)`` and ``side``, in canvas pixels."""

    entry: int
    x: int
    y: int
    side: int

    @property
    def centre(self) -> tuple[float, float]:
        """(x + side/2, y + side/2)."""
        return self.x + self.side / 2, self.y + self.side / 2


@dataclass(frozen=True)
class Scene:
    """What one picture shows: ``objects`` in caption order, their ``style``, and the ``kind``'s
    ``relation`` (pair) or ``position`` (single)."""

    kind: Kind
    objects: tuple[Placed, ...]
    style: str
    size: int
    relation: str | None = None
    position: str | None = None


def article(name: str) -> str:
    """'a NAME' or 'an NAME' (by the first letter)."""
    return f"{'an' if name[:1] in 'aeiou' else 'a'} {name}"


def format_caption(scene: Scene, entries: Sequence[EmojiEntry]) -> str:
    """The caption of ``scene`` (module docstring's grammar)."""
    objs = [article(entries[o.entry].name) for o in scene.objects]
    if scene.kind == "single":
        where = "in the center" if scene.position == "center" else f"at the {scene.position}"
        text = f"{objs[0]} {where}"
    elif scene.kind == "pair":
        text = f"{objs[0]} {scene.relation} {objs[1]}"
    else:
        text = f"{objs[0]}, {objs[1]} and {objs[2]} in a row"
    return f"{text}, {scene.style} style"


def is_held_out_pair(a: EmojiEntry, b: EmojiEntry) -> bool:
    """Whether two concepts never share a training scene: (Σ code points of a + of b, tones and
    U+FE0F set aside) % PAIR_MODULUS == 0."""
    return (sum(without_tone(a.code_points)) + sum(without_tone(b.code_points))) % PAIR_MODULUS == 0


def scene_concepts(entries: Sequence[EmojiEntry]) -> dict[str, list[int]]:
    """Style → indices of the entries a scene may hold (module docstring), in entry order."""
    out: dict[str, list[int]] = {}
    for i, e in enumerate(entries):
        if (e.held_out or e.tone or GRAMMAR_WORDS.search(e.name)
                or any(cp in TONES for cp in e.code_points)):
            continue
        out.setdefault(e.style, []).append(i)
    return out


def _pick_concepts(rng: np.random.Generator, pool: list[int], entries: Sequence[EmojiEntry],
                   k: int, holdout: Holdout, tries: int = 200) -> list[int]:
    """k distinct concepts of ``pool`` whose pairs are all held out of training ("only": at least
    one pair held out) or none ("exclude")."""
    for _ in range(tries):
        chosen = [pool[j] for j in rng.choice(len(pool), size=k, replace=False)]
        held = [is_held_out_pair(entries[a], entries[b])
                for n, a in enumerate(chosen) for b in chosen[n + 1:]]
        if (holdout == "exclude" and not any(held)) or (holdout == "only" and any(held)):
            return chosen
    raise KuosanError(f"cannot draw {k} emoji for a scene with holdout={holdout!r} from "
                      f"{len(pool)} concepts")


def _place_single(rng: np.random.Generator, size: int, side: int, position: str) -> tuple[int, int]:
    col, row = POSITIONS[position]
    jitter = size / 32
    centre = [size * (c + 1) / 4 + rng.uniform(-jitter, jitter) for c in (col, row)]
    x, y = (int(np.clip(round(c - side / 2), 0, size - side)) for c in centre)
    return x, y


def _place_along(rng: np.random.Generator, size: int, sides: list[int]) -> list[int] | None:
    """Starts of tiles laid left to right along one axis, GAP·size apart, the free space
    spread at random; None when they do not fit."""
    gap = max(1, round(GAP * size))
    free = size - sum(sides) - gap * (len(sides) - 1)
    if free < 0:
        return None
    cuts = np.sort(rng.integers(0, free + 1, size=len(sides)))  # free pixels before each tile
    starts, at = [], 0
    for n, s in enumerate(sides):
        at += int(cuts[n] - (cuts[n - 1] if n else 0))
        starts.append(at)
        at += s + gap
    return starts


def random_scene(rng: np.random.Generator, entries: Sequence[EmojiEntry],
                 concepts: dict[str, list[int]], size: int = 64, kind: Kind | None = None,
                 holdout: Holdout = "exclude", style: str | None = None) -> Scene:
    """A scene drawn at random: style (uniform over ``concepts``' styles, or ``style``), kind
    (KIND_WEIGHTS, or ``kind``), its emoji and their places (module docstring)."""
    if style is None:
        style = str(rng.choice(sorted(concepts)))
    if style not in concepts:
        raise KuosanError(f"no emoji of style {style!r} for scenes: have {sorted(concepts)}")
    if kind is None:
        kinds = list(KIND_WEIGHTS)
        kind = kinds[rng.choice(len(kinds), p=np.array(list(KIND_WEIGHTS.values())))]
    if kind not in COUNTS:
        raise KuosanError(f"unknown scene kind {kind!r}: expected one of {list(COUNTS)}")
    if kind == "single" and holdout == "only":
        raise KuosanError("a single-emoji scene has no pair to hold out")
    chosen = _pick_concepts(rng, concepts[style], entries, COUNTS[kind], holdout)
    tiles, relation, position = place_tiles(rng, size, kind)
    placed = tuple(Placed(e, x, y, side) for e, (x, y, side) in zip(chosen, tiles, strict=True))
    return Scene(kind, placed, style, size, relation=relation, position=position)


def place_tiles(rng: np.random.Generator, size: int, kind: Kind, relation: str | None = None,
                position: str | None = None) -> tuple[list[tuple[int, int, int]], str | None, str | None]:
    """Tiles (x, y, side) for the emoji of a ``kind`` of scene, in caption order, by the
    module docstring's geometry; the pair's ``relation`` or the single emoji's ``position`` is
    drawn when None. Returns (tiles, relation, position): relation None unless a pair, position
    None unless a single emoji."""
    if kind not in COUNTS:
        raise KuosanError(f"unknown scene kind {kind!r}: expected one of {list(COUNTS)}")
    lo, hi = SIDES[kind]
    sides = [int(rng.integers(round(lo * size), round(hi * size) + 1)) for _ in range(COUNTS[kind])]
    if kind == "single":
        if position is None:
            position = str(rng.choice(list(POSITIONS)))
        x, y = _place_single(rng, size, sides[0], position)
        return [(x, y, sides[0])], None, position
    if kind == "pair" and relation is None:
        relation = str(rng.choice(RELATIONS))
    axis = relation if kind == "pair" else "to the left of"
    flipped = axis in ("to the right of", "below")
    starts = _place_along(rng, size, sides[::-1] if flipped else sides)
    if starts is None:
        raise KuosanError(f"{len(sides)} tiles of sides {sides} do not fit a {size}-pixel canvas")
    if flipped:
        starts = starts[::-1]
    tiles = []
    for along, side in zip(starts, sides, strict=True):
        if kind == "row":
            mid = size / 2 + rng.uniform(-size / 8, size / 8)
            across = int(np.clip(round(mid - side / 2), 0, size - side))
        else:
            across = int(rng.integers(0, size - side + 1))
        x, y = (along, across) if axis in ("to the left of", "to the right of") else (across, along)
        tiles.append((x, y, side))
    return tiles, (relation if kind == "pair" else None), None


def render_scene(scene: Scene, pictures: torch.Tensor) -> np.ndarray:
    """(size, size, 3) uint8: each emoji's picture (``pictures[entry]``, (3, P, P) uint8 on
    white, P ≥ its tile) resized to its tile (Lanczos) and put in place on white."""
    return paste_tiles(scene.size, [(pictures[o.entry], o.x, o.y, o.side) for o in scene.objects])


def paste_tiles(size: int, tiles: Sequence[tuple[torch.Tensor, int, int, int]]) -> np.ndarray:
    """(size, size, 3) uint8 white canvas with each (picture, x, y, side) put in place: the
    picture ((3, P, P) uint8 on white) resized (Lanczos) to side × side, its corner at (x, y)."""
    canvas = np.full((size, size, 3), 255, dtype=np.uint8)
    for picture, x, y, side in tiles:
        tile = Image.fromarray(picture.permute(1, 2, 0).numpy())
        tile = tile.resize((side, side), Image.Resampling.LANCZOS)
        canvas[y:y + side, x:x + side] = np.asarray(tile)
    return canvas


def make_scene_dataset(
    n: int, pictures: torch.Tensor, entries: Sequence[EmojiEntry], size: int = 64,
    seed: int = 0, holdout: Holdout = "exclude", kind: Kind | None = None,
) -> tuple[torch.Tensor, list[str], list[Scene]]:
    """n scenes: (items (n, 3, size, size) uint8, captions, scenes). Scene i is drawn with
    ``np.random.default_rng((seed, i))``, so it does not depend on n."""
    if not is_int(n) or n < 0:
        raise KuosanError(f"number of EmojiWorld scenes must be a non-negative integer, got {n!r}")
    if pictures.shape[-1] < round(max(hi for _, hi in SIDES.values()) * size):
        raise KuosanError(f"emoji pictures of {pictures.shape[-1]} px are too small for "
                          f"{size}-pixel scenes: build them at {size}")
    concepts = scene_concepts(entries)
    items = torch.empty((n, 3, size, size), dtype=torch.uint8)
    captions, scenes = [], []
    for i in range(n):
        scene = random_scene(np.random.default_rng((seed, i)), entries, concepts, size, kind,
                             holdout)
        items[i] = torch.from_numpy(render_scene(scene, pictures)).permute(2, 0, 1)
        captions.append(format_caption(scene, entries))
        scenes.append(scene)
    return items, captions, scenes


def cached_scene_dataset(n: int, data_key: str,
                         pictures: Callable[[], tuple[torch.Tensor, Sequence[EmojiEntry]]],
                         size: int = 64, seed: int = 0,
                         cache_dir: Path | None = None) -> tuple[torch.Tensor, list[str]]:
    """The training scenes of :func:`make_scene_dataset` (items, captions), cached as
    ``emojiworld-KEY.safetensors`` + ``.json`` beside the emoji pictures. KEY hashes the emoji
    data's key (``data_key``: ``emoji_data_key``), n, size, seed and :data:`SCENES_VERSION`;
    ``pictures()`` (the emoji pictures and their entries) is called only to build the scenes;
    a damaged file is rebuilt (atomic writes)."""
    meta = {"data": data_key, "n": n, "size": size, "seed": seed, "version": SCENES_VERSION}
    key = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:20]
    stem = (Path(cache_dir) if cache_dir is not None else cache_folder("emoji")) / f"emojiworld-{key}"

    def parse(items: torch.Tensor, stored: dict) -> list[str]:
        if items.shape != (n, 3, size, size) or len(stored["captions"]) != n:
            raise ValueError("cached scenes of another shape")
        return stored["captions"]

    if (hit := read_cached(stem, "items", parse)) is not None:
        return hit
    items, captions, _ = make_scene_dataset(n, *pictures(), size, seed)
    write_cached(stem, "items", items, meta | {"captions": captions})
    return items, captions
