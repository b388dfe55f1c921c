"""ShapesWorld: procedurally drawn, captioned images whose content is known exactly.

The palette, geometry and caption grammar are fixed by `specs/shapes.md`; trained models and
scores depend on them, so they must not drift. Four parts:

- `render(scene)`: draw a `Scene` (objects with shape, colour, size and centre) at 4× and reduce
  with a box filter, so edges are anti-aliased;
- `random_example(rng)`: draw a caption from the grammar, then a scene that satisfies it
  (an attribute the caption leaves out is drawn at random), then render it;
- `parse(caption)`: the strict inverse of `format_caption`; anything outside the grammar raises
  `KuosanError` naming the caption and the word at fault;
- `score(image, caption)`: find objects by colour, classify shape/size/cell, and check the
  image against the caption (`ScoreResult`, with one flag per attribute).

```python
import numpy as np
from kuosan.data.shapes import random_example, score, make_shapes_dataset
image, caption, scene = random_example(np.random.default_rng(0))
score(image, caption).satisfied               # True for a rendered image and its own caption
items, captions = make_shapes_dataset(20_000, size=32, seed=0)   # uint8 (N, 3, 32, 32)
```

Lengths are in pixels of the canvas; at canvas size S the 32×32 geometry is scaled by k = S/32.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import cache
from typing import Literal, NamedTuple

import numpy as np
from PIL import Image

from kuosan.errors import KuosanError

# --- the world (specs/shapes.md) -------------------------------------------------------------

SHAPES = ("circle", "square", "triangle", "cross")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
COLOURS = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (235, 210, 40),
    "green": (40, 170, 60),
    "cyan": (40, 190, 200),
    "blue": (40, 70, 220),
    "purple": (150, 60, 200),
}
BACKGROUNDS = {"white": (245, 245, 245), "black": (20, 20, 20), "gray": (128, 128, 128)}
SIZES = {"small": 8.0, "large": 14.0}  # bounding-box side at 32×32, each ± SIZE_JITTER
SIZE_JITTER = 1.0
# Grid cell name -> (column, row) of the 3×3 grid.
POSITIONS = {
    "top left": (0, 0), "top": (1, 0), "top right": (2, 0),
    "left": (0, 1), "center": (1, 1), "right": (2, 1),
    "bottom left": (0, 2), "bottom": (1, 2), "bottom right": (2, 2),
}
CELL_NAMES = {cell: name for name, cell in POSITIONS.items()}
RELATIONS = ("to the left of", "to the right of", "above", "below")
NUMBERS = {"two": 2, "three": 3}
HELDOUT = frozenset({("purple", "triangle"), ("orange", "cross"), ("cyan", "circle"),
                     ("yellow", "square")})

SUPERSAMPLE = 4  # drawn at 4×, reduced with a box filter
GRID_JITTER = 1.0  # a single object's centre is within ± 1 px of its grid point
GAP = 2.0  # bounding boxes at least 2 px apart
RELATION_MARGIN = 4.0  # "left of": centres at least 4 px apart along x
SAMPLING_SLACK = 1.0  # the sampler keeps relations 1 px clear of the margin, for the scorer

Holdout = Literal["exclude", "only", "allow"]
Kind = Literal["single", "pair", "count"]
KIND_WEIGHTS = {"single": 0.4, "pair": 0.35, "count": 0.25}
P_STATE_SIZE, P_STATE_COLOUR, P_STATE_POSITION = 0.5, 0.8, 0.75
BACKGROUND_WEIGHTS = {"white": 0.6, "black": 0.2, "gray": 0.2}


def check_canvas(size: int) -> None:
    """A canvas is a multiple of 16 up to 128."""
    if not isinstance(size, int) or size % 16 or not 16 <= size <= 128:
        raise KuosanError(f"ShapesWorld canvas size must be 16, 32, 48, ... or 128, got {size!r}")


# --- scenes: what is drawn -------------------------------------------------------------------


@dataclass(frozen=True)
class Obj:
    """One drawn object: `centre` (x, y) and `side` (bounding-box side) in canvas pixels."""

    shape: str
    colour: str
    size: str
    centre: tuple[float, float]
    side: float

    def __post_init__(self) -> None:
        for what, value, allowed in (("shape", self.shape, SHAPES), ("colour", self.colour,
                                     COLOURS), ("size", self.size, SIZES)):
            if value not in allowed:
                raise KuosanError(f"unknown {what} {value!r}: expected one of {list(allowed)}")

    def box(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of the bounding box."""
        (x, y), h = self.centre, self.side / 2
        return x - h, y - h, x + h, y + h


@dataclass(frozen=True)
class Scene:
    """Objects on a flat background, on a `canvas`×`canvas` image."""

    objects: tuple[Obj, ...]
    background: str = "white"
    canvas: int = 32

    def __post_init__(self) -> None:
        check_canvas(self.canvas)
        if self.background not in BACKGROUNDS:
            raise KuosanError(
                f"unknown background {self.background!r}: expected one of {list(BACKGROUNDS)}"
            )


def box_gap(a: Obj, b: Obj) -> float:
    """Distance between two bounding boxes (Chebyshev: the larger of the x and y gaps)."""
    ax0, ay0, ax1, ay1 = a.box()
    bx0, by0, bx1, by1 = b.box()
    return max(bx0 - ax1, ax0 - bx1, by0 - ay1, ay0 - by1)


# --- rendering ---------------------------------------------------------------------------------


def _inside(shape: str, x: np.ndarray, y: np.ndarray, cx: float, cy: float, s: float) -> np.ndarray:
    """Whether points (x, y) lie in `shape` of side s centred (bounding box) at (cx, cy)."""
    dx, dy, h = np.abs(x - cx), y - cy, s / 2
    if shape == "square":
        return (dx <= h) & (np.abs(dy) <= h)
    if shape == "circle":
        return dx**2 + dy**2 <= h**2
    if shape == "triangle":  # apex (cx, cy - s/2), base y = cy + s/2 of width s
        return (dy <= h) & (dx <= (dy + h) / 2)
    arm = s / 6  # cross: a plus sign whose arms are s/3 wide
    return ((dx <= arm) & (np.abs(dy) <= h)) | ((np.abs(dy) <= arm) & (dx <= h))


def coverage(obj: Obj, scale: float = 1.0) -> tuple[np.ndarray, int, int]:
    """Anti-aliased coverage α ∈ [0, 1] of `obj` scaled by `scale`: (α, row0, col0).

    α of a pixel is the fraction of its 4×4 sub-pixel centres inside the shape (box filter).
    """
    cx, cy, s = obj.centre[0] * scale, obj.centre[1] * scale, obj.side * scale
    c0, r0 = math.floor(cx - s / 2), math.floor(cy - s / 2)
    c1, r1 = math.ceil(cx + s / 2), math.ceil(cy + s / 2)
    n = SUPERSAMPLE
    xs = c0 + (np.arange((c1 - c0) * n) + 0.5) / n
    ys = r0 + (np.arange((r1 - r0) * n) + 0.5) / n
    hit = _inside(obj.shape, xs[None, :], ys[:, None], cx, cy, s)
    alpha = hit.reshape(r1 - r0, n, c1 - c0, n).mean(axis=(1, 3))
    return alpha, r0, c0


def render_array(scene: Scene, size: int | None = None) -> np.ndarray:
    """The scene as uint8 pixels (size, size, 3): background + Σ α·(colour − background)."""
    size = scene.canvas if size is None else size
    check_canvas(size)
    scale = size / scene.canvas
    bg = np.array(BACKGROUNDS[scene.background], dtype=np.float32)
    img = np.broadcast_to(bg, (size, size, 3)).copy()
    for obj in scene.objects:
        alpha, r0, c0 = coverage(obj, scale)
        # Clip to the canvas (objects are placed inside it; this guards hand-made scenes).
        rr, cc = slice(max(r0, 0), min(r0 + alpha.shape[0], size)), slice(
            max(c0, 0), min(c0 + alpha.shape[1], size))
        a = alpha[rr.start - r0: rr.stop - r0, cc.start - c0: cc.stop - c0]
        img[rr, cc] += a[..., None] * (np.array(COLOURS[obj.colour], np.float32) - bg)
    return np.rint(img).clip(0, 255).astype(np.uint8)


def render(scene: Scene, size: int | None = None) -> Image.Image:
    """Draw `scene` as an RGB image, at its own canvas size or rescaled to `size`."""
    return Image.fromarray(render_array(scene, size), mode="RGB")


# --- captions ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjSpec:
    """One object as a caption states it: None for an attribute the caption leaves out."""

    shape: str
    colour: str | None = None
    size: str | None = None
    position: str | None = None


@dataclass(frozen=True)
class CaptionSpec:
    """What a caption states. A count holds `count` equal `ObjSpec`s; a pair holds two."""

    kind: Kind
    objects: tuple[ObjSpec, ...]
    relation: str | None = None
    count: int | None = None
    background: str = "white"


def _object_phrase(o: ObjSpec) -> str:
    words = [w for w in (o.size, o.colour, o.shape) if w is not None]
    return ("an " if words[0][0] in "aeiou" else "a ") + " ".join(words)


def format_caption(spec: CaptionSpec) -> str:
    """The caption of `spec`, following the grammar (the inverse of `parse`)."""
    o = spec.objects[0]
    if spec.kind == "single":
        text = _object_phrase(o)
        if o.position == "center":
            text += " in the center"
        elif o.position is not None:
            text += f" at the {o.position}"
    elif spec.kind == "pair":
        text = f"{_object_phrase(o)} {spec.relation} {_object_phrase(spec.objects[1])}"
    else:
        number = {v: k for k, v in NUMBERS.items()}[spec.count]
        words = [number, o.size, o.colour, PLURALS[o.shape]]
        text = " ".join(w for w in words if w is not None)
    if spec.background != "white":
        text += f" on a {spec.background} background"
    return text


def _pick(rng: np.random.Generator, options: tuple | list) -> object:
    return options[int(rng.integers(len(options)))]


def _free_colours(shape: str, holdout: Holdout) -> list[str]:
    """Colours an unstated colour may take for `shape` ("only" draws unstated ones freely)."""
    return [c for c in COLOURS if holdout != "exclude" or (c, shape) not in HELDOUT]


def _random_objspec(rng: np.random.Generator, holdout: Holdout, force_heldout: bool) -> ObjSpec:
    size = _pick(rng, tuple(SIZES)) if rng.random() < P_STATE_SIZE else None
    if force_heldout:
        colour, shape = _pick(rng, sorted(HELDOUT))
        return ObjSpec(shape, colour, size)
    shape = _pick(rng, SHAPES)
    colour = _pick(rng, _free_colours(shape, holdout)) if rng.random() < P_STATE_COLOUR else None
    return ObjSpec(shape, colour, size)


def check_kind_weights(weights: dict[str, float]) -> dict[str, float]:
    """The caption-kind mix `weights` (kind → weight ≥ 0, kinds left out weigh 0) normalised
    to sum 1, in KIND_WEIGHTS' order; raises naming the kind or value at fault."""
    if not isinstance(weights, dict) or not weights:
        raise KuosanError(f"a caption-kind mix must map single/pair/count to weights, got {weights!r}")
    for k, w in weights.items():
        if k not in KIND_WEIGHTS:
            raise KuosanError(f"caption kind must be 'single', 'pair' or 'count', got {k!r}")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not (0 <= w < math.inf):
            raise KuosanError(f"the weight of caption kind {k!r} must be a number >= 0, got {w!r}")
    total = sum(weights.values())
    if total <= 0:
        raise KuosanError(f"a caption-kind mix needs a weight > 0, got {weights!r}")
    return {k: weights.get(k, 0) / total for k in KIND_WEIGHTS}


def sample_spec(
    rng: np.random.Generator, kind: Kind | None = None, holdout: Holdout = "exclude",
    kind_weights: dict[str, float] | None = None,
) -> CaptionSpec:
    """A random caption (as a spec). holdout: "exclude" never states a held-out colour–shape
    pair, "only" always states one (in a pair: the first, the second or both), "allow" either.
    With `kind` None the kind is drawn with `kind_weights` (default KIND_WEIGHTS)."""
    if holdout not in ("exclude", "only", "allow"):
        raise KuosanError(f"holdout must be 'exclude', 'only' or 'allow', got {holdout!r}")
    if kind is None:
        weights = KIND_WEIGHTS if kind_weights is None else check_kind_weights(kind_weights)
        kind = str(rng.choice(list(weights), p=list(weights.values())))
    if kind not in KIND_WEIGHTS:
        raise KuosanError(f"kind must be 'single', 'pair' or 'count', got {kind!r}")
    background = str(rng.choice(list(BACKGROUND_WEIGHTS), p=list(BACKGROUND_WEIGHTS.values())))
    only = holdout == "only"
    if kind == "single":
        o = _random_objspec(rng, holdout, only)
        if rng.random() < P_STATE_POSITION:
            o = ObjSpec(o.shape, o.colour, o.size, _pick(rng, tuple(POSITIONS)))
        return CaptionSpec("single", (o,), background=background)
    if kind == "pair":
        which = int(rng.integers(3)) if only else -1  # 0: first, 1: second, 2: both held out
        objects = tuple(_random_objspec(rng, holdout, which in (i, 2)) for i in range(2))
        return CaptionSpec("pair", objects, _pick(rng, RELATIONS), background=background)
    count = int(_pick(rng, tuple(NUMBERS.values())))
    o = _random_objspec(rng, holdout, only)
    if o.colour is None:
        o = ObjSpec(o.shape, _pick(rng, _free_colours(o.shape, holdout)), o.size)
    return CaptionSpec("count", (o,) * count, count=count, background=background)


def is_heldout(spec: CaptionSpec) -> bool:
    """Whether the caption states a held-out colour–shape pair."""
    return any((o.colour, o.shape) in HELDOUT for o in spec.objects)


# --- from a caption to a scene -----------------------------------------------------------------


def _realise(o: ObjSpec, rng: np.random.Generator, holdout: Holdout, k: float
             ) -> tuple[str, str, str, float]:
    colour = o.colour or _pick(rng, _free_colours(o.shape, holdout))
    size = o.size or _pick(rng, tuple(SIZES))
    side = k * (SIZES[size] + rng.uniform(-SIZE_JITTER, SIZE_JITTER))
    return o.shape, colour, size, side


def _place_free(sides: list[float], relation: str | None, rng: np.random.Generator,
                canvas: int) -> list[tuple[float, float]] | None:
    """Centres drawn one after another, uniformly on a ¼-px·k grid among those that keep the
    boxes GAP apart, inside the canvas and (for a pair) the relation; None if stuck."""
    k = canvas / 32
    gap, step = GAP * max(k, 1.0), k / 4
    margin = (RELATION_MARGIN + SAMPLING_SLACK) * k
    centres: list[tuple[float, float]] = []
    for s in sides:
        axis = np.arange(s / 2, canvas - s / 2 + 1e-9, step)
        x, y = np.meshgrid(axis, axis, indexing="xy")
        ok = np.ones(x.shape, dtype=bool)
        for (px, py), ps in zip(centres, sides, strict=False):  # placed so far
            reach = (s + ps) / 2 + gap
            ok &= (np.abs(x - px) >= reach) | (np.abs(y - py) >= reach)
        if relation is not None and centres:  # the second object, relative to the first
            px, py = centres[0]
            ok &= {"to the left of": x >= px + margin, "to the right of": x <= px - margin,
                   "above": y >= py + margin, "below": y <= py - margin}[relation]
        idx = np.flatnonzero(ok)
        if idx.size == 0:
            return None
        i = int(idx[rng.integers(idx.size)])
        centres.append((float(x.flat[i]), float(y.flat[i])))
    return centres


def sample_scene(spec: CaptionSpec, rng: np.random.Generator, canvas: int = 32,
                 holdout: Holdout = "exclude", tries: int = 50) -> Scene:
    """A scene satisfying `spec`; unstated attributes are drawn at random (an unstated colour
    avoids held-out pairs when holdout="exclude"). Raises if it cannot fit after `tries`."""
    check_canvas(canvas)
    k = canvas / 32
    for _ in range(tries):
        drawn = [_realise(o, rng, holdout, k) for o in spec.objects]
        if spec.kind == "single":
            shape, colour, size, side = drawn[0]
            name = spec.objects[0].position or _pick(rng, tuple(POSITIONS))
            col, row = POSITIONS[name]
            grid = [canvas * (c + 1) / 4 + rng.uniform(-GRID_JITTER, GRID_JITTER) * k
                    for c in (col, row)]
            centre = tuple(float(np.clip(g, side / 2, canvas - side / 2)) for g in grid)
            return Scene((Obj(shape, colour, size, centre, side),), spec.background, canvas)
        centres = _place_free([d[3] for d in drawn], spec.relation, rng, canvas)
        if centres is not None:
            objs = tuple(Obj(*d[:3], c, d[3]) for d, c in zip(drawn, centres, strict=True))
            return Scene(objs, spec.background, canvas)
    raise KuosanError(
        f"cannot fit {format_caption(spec)!r} on a {canvas}x{canvas} canvas (tried {tries} times)"
    )


def random_example(
    rng: np.random.Generator,
    size: int = 32,
    kind: Kind | None = None,
    holdout: Holdout = "exclude",
) -> tuple[Image.Image, str, Scene]:
    """(image, caption, scene) drawn from ShapesWorld; see `sample_spec` for `holdout`."""
    scene, spec = _random_scene(rng, size, kind, holdout)
    return render(scene), format_caption(spec), scene


def _random_scene(rng: np.random.Generator, size: int, kind: Kind | None, holdout: Holdout,
                  kind_weights: dict[str, float] | None = None) -> tuple[Scene, CaptionSpec]:
    check_canvas(size)
    for _ in range(100):  # a caption that cannot fit (three large objects at 16×16) is redrawn
        spec = sample_spec(rng, kind, holdout, kind_weights)
        try:
            return sample_scene(spec, rng, size, holdout, tries=20), spec
        except KuosanError:
            continue
    raise KuosanError(f"cannot fit ShapesWorld captions of kind {kind!r} at {size}x{size}")


def make_shapes_dataset(
    n: int, size: int = 32, seed: int = 0, holdout: Holdout = "exclude",
    kind_weights: dict[str, float] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """n images uint8 (n, 3, size, size) and their captions, the caption kinds drawn with
    `kind_weights` (default KIND_WEIGHTS). Image i is drawn with `np.random.default_rng((seed, i))`,
    so it does not depend on n."""
    if kind_weights is not None:
        kind_weights = check_kind_weights(kind_weights)
    if not isinstance(n, int) or n < 0:
        raise KuosanError(f"number of ShapesWorld images must be a non-negative integer, got {n!r}")
    check_canvas(size)
    items = np.empty((n, size, size, 3), dtype=np.uint8)
    captions = []
    for i in range(n):
        scene, spec = _random_scene(np.random.default_rng((seed, i)), size, None, holdout,
                                    kind_weights)
        items[i] = render_array(scene)
        captions.append(format_caption(spec))
    return items.transpose(0, 3, 1, 2).copy(), captions


# --- parsing ----------------------------------------------------------------------------------


class _Words:
    """A cursor over a caption's words that raises naming the caption and the word at fault."""

    def __init__(self, caption: str) -> None:
        self.caption, self.words, self.i = caption, caption.split(" "), 0

    def peek(self, ahead: int = 0) -> str | None:
        j = self.i + ahead
        return self.words[j] if j < len(self.words) else None

    def fail(self, expected: str) -> KuosanError:
        word = self.peek()
        at = "the end of the caption" if word is None else f"word {self.i + 1} {word!r}"
        return KuosanError(
            f"caption {self.caption!r} is outside the ShapesWorld grammar: "
            f"expected {expected} at {at}"
        )

    def take(self, allowed: tuple | dict | set | frozenset, expected: str) -> str:
        word = self.peek()
        if word not in allowed:
            raise self.fail(expected)
        self.i += 1
        return word

    def take_phrase(self, phrase: str) -> None:
        for w in phrase.split(" "):
            self.take((w,), repr(phrase))


def _parse_object(w: _Words) -> ObjSpec:
    start = w.i
    article = w.take(("a", "an"), "'a' or 'an'")
    following = w.peek()
    size = w.take(SIZES, "a size") if w.peek() in SIZES else None
    colour = w.take(COLOURS, "a colour") if w.peek() in COLOURS else None
    shape = w.take(SHAPES, "a shape (circle, square, triangle, cross)")
    expected = "an" if following[0] in "aeiou" else "a"
    if article != expected:
        w.i = start
        raise w.fail(f"{expected!r} before {following!r}")
    return ObjSpec(shape, colour, size)


def parse(caption: str) -> CaptionSpec:
    """What `caption` states, strictly by the grammar of specs/shapes.md (raises otherwise)."""
    if not isinstance(caption, str):
        raise KuosanError(f"a caption must be a string, got {type(caption).__name__}")
    w = _Words(caption)
    if w.peek() in NUMBERS:
        count = NUMBERS[w.take(NUMBERS, "a number")]
        size = w.take(SIZES, "a size") if w.peek() in SIZES else None
        colour = w.take(COLOURS, "a colour (a count names its colour)")
        plural = w.take(set(PLURALS.values()), "a plural shape (circles, squares, ...)")
        shape = next(s for s, p in PLURALS.items() if p == plural)
        spec = CaptionSpec("count", (ObjSpec(shape, colour, size),) * count, count=count)
    else:
        first = _parse_object(w)
        word = w.peek()
        if word == "at":
            w.take_phrase("at the")
            pos = w.take(("top", "bottom", "left", "right"), "a position")
            if pos in ("top", "bottom") and w.peek() in ("left", "right"):
                pos += " " + w.take(("left", "right"), "left or right")
            spec = CaptionSpec("single", (ObjSpec(first.shape, first.colour, first.size, pos),))
        elif word == "in":
            w.take_phrase("in the center")
            spec = CaptionSpec("single", (ObjSpec(first.shape, first.colour, first.size,
                                                  "center"),))
        elif word in ("to", "above", "below"):
            relation = word if word != "to" else None
            if relation is None:
                w.take_phrase("to the")
                side = w.take(("left", "right"), "'left' or 'right'")
                w.take(("of",), "'of'")
                relation = f"to the {side} of"
            else:
                w.i += 1
            spec = CaptionSpec("pair", (first, _parse_object(w)), relation)
        else:
            spec = CaptionSpec("single", (first,))
    if w.peek() is not None:
        w.take(("on",), "'on a ... background' or the end of the caption")
        w.take(("a",), "'a'")
        background = w.take(("black", "gray"), "'black' or 'gray'")
        w.take(("background",), "'background'")
        spec = CaptionSpec(spec.kind, spec.objects, spec.relation, spec.count, background)
    if w.peek() is not None:
        raise w.fail("the end of the caption")
    return spec


# --- scoring ----------------------------------------------------------------------------------

CHROMA_MIN = 32.0  # max − min channel; the grey backgrounds have 0, the palette 130..215
CORE_ALPHA = 0.5  # a component is made of pixels at least half covered
MIN_AREA = 0.15 * SIZES["small"] ** 2  # at 32×32, in px (×k²); a small triangle has ≥ 24.5
SHAPE_MAX_DISTANCE = 0.45  # features farther than this from every template: shape unknown
IDEAL_FILL = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5, "cross": 5 / 9}


def _hue(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HSV hue in degrees and chroma (max − min) of float RGB (..., 3)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx, mn = rgb.max(-1), rgb.min(-1)
    c = mx - mn
    safe = np.where(c > 0, c, 1.0)
    h = np.where(mx == r, ((g - b) / safe) % 6,
                 np.where(mx == g, (b - r) / safe + 2, (r - g) / safe + 4))
    return 60.0 * h, c


PALETTE = tuple(COLOURS)
PALETTE_HUE, PALETTE_CHROMA = _hue(np.array([COLOURS[c] for c in PALETTE], dtype=np.float64))


class Found(NamedTuple):
    """One object the scorer found: `centre` is its bounding-box centre, `side` its side."""

    colour: str
    shape: str | None  # None: matches no shape template
    size: str
    position: str
    centre: tuple[float, float]
    side: float
    area: float
    features: tuple[float, ...]


class ScoreResult(NamedTuple):
    """Whether an image satisfies a caption, and each attribute (None: the caption states none).

    `count` is whether as many objects were found as stated (no other object present).
    """

    satisfied: bool
    shape: bool
    colour: bool | None
    size: bool | None
    position: bool | None
    relation: bool | None
    count: bool
    background: bool
    found: tuple[Found, ...]
    found_background: str | None


ATTRIBUTES = ("shape", "colour", "size", "position", "relation", "count", "background")


def flood_fill_components(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected components of a boolean image, each as (n, 2) (row, col): a plain flood
    fill, used when SciPy is absent."""
    todo = {(int(r), int(c)) for r, c in np.argwhere(mask)}
    comps = []
    while todo:
        stack = [todo.pop()]
        comp = []
        while stack:
            r, c = stack.pop()
            comp.append((r, c))
            for q in ((r - 1, c - 1), (r - 1, c), (r - 1, c + 1), (r, c - 1), (r, c + 1),
                      (r + 1, c - 1), (r + 1, c), (r + 1, c + 1)):
                if q in todo:
                    todo.remove(q)
                    stack.append(q)
        comps.append(np.array(sorted(comp)))
    return comps


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected components (scipy.ndimage.label when installed: same result, faster)."""
    try:
        from scipy import ndimage
    except ImportError:
        return flood_fill_components(mask)
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    return [np.argwhere(labels == i) for i in range(1, n + 1)]


def _overlap(n: int, a: float, b: float) -> np.ndarray:
    """Length of [c, c+1) ∩ [a, b] for pixels c = 0..n-1."""
    c = np.arange(n)
    return np.clip(np.minimum(c + 1, b) - np.maximum(c, a), 0.0, 1.0)


def shape_features(alpha: np.ndarray) -> tuple[tuple[float, ...], tuple[float, float, float, float]]:
    """Features of one object's coverage α (a crop): (fill, corner TL, TR, BL, BR, top), and
    its bounding box (x0, y0, x1, y1) in crop pixels.

    fill = Σα / (w·h) (circle π/4, square 1, triangle 1/2, cross 5/9); a corner is the mean α
    over the w/3 × h/3 corner of the box (hollow for a cross); top is the share of Σα in the
    upper half of the box (1/4 for an apex-up triangle, 1/2 for the symmetric shapes).
    The box edges come from the column/row maxima of α, so they are sub-pixel.
    """
    area = float(alpha.sum())
    box = []
    for profile in (alpha.max(0), alpha.max(1)):
        nz = np.flatnonzero(profile > 0)
        box.append((nz[0] + 1 - profile[nz[0]], nz[-1] + profile[nz[-1]]))
    (x0, x1), (y0, y1) = box
    w, h = max(x1 - x0, 1e-6), max(y1 - y0, 1e-6)
    rows, cols = alpha.shape
    wx = [_overlap(cols, x0, x0 + w / 3), _overlap(cols, x1 - w / 3, x1)]
    wy = [_overlap(rows, y0, y0 + h / 3), _overlap(rows, y1 - h / 3, y1)]
    corners = [float(wy[i] @ alpha @ wx[j]) / (w * h / 9) for i in (0, 1) for j in (0, 1)]
    top = float(_overlap(rows, y0, y0 + h / 2) @ alpha.sum(1)) / max(area, 1e-6)
    return (area / (w * h), *corners, top), (float(x0), float(y0), float(x1), float(y1))


@cache
def shape_templates() -> dict[str, np.ndarray]:
    """Features of each ideal shape, from a large (side 60 px) rendering."""
    out = {}
    for shape in SHAPES:
        alpha, _, _ = coverage(Obj(shape, "red", "large", (32.0, 32.0), 60.0))
        out[shape] = np.array(shape_features(alpha)[0])
    return out


def classify_shape(features: tuple[float, ...]) -> str | None:
    """Nearest template (Euclidean), or None when none is within SHAPE_MAX_DISTANCE."""
    f = np.array(features)
    dist = {s: float(np.linalg.norm(f - t)) for s, t in shape_templates().items()}
    best = min(dist, key=dist.get)
    return best if dist[best] <= SHAPE_MAX_DISTANCE else None


def _as_pixels(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float64)
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[0] == 3 and a.shape[-1] != 3:
        a = a.transpose(1, 2, 0)
    if a.ndim != 3 or a.shape[-1] != 3 or a.dtype != np.uint8:
        raise KuosanError(
            f"score needs an RGB image: a PIL image or uint8 (H, W, 3) / (3, H, W), got "
            f"{a.dtype} {a.shape}"
        )
    return a.astype(np.float64)


def find_objects(image: Image.Image | np.ndarray) -> tuple[str | None, tuple[Found, ...]]:
    """The background's name and the objects in an image (largest first).

    A pixel belongs to the palette colour nearest in hue when its chroma is ≥ CHROMA_MIN;
    its coverage is α = chroma / chroma(colour) (mixing with a grey keeps the hue and scales
    the chroma). Components are 8-connected pixels with α ≥ 1/2 of one colour, grown by one
    pixel to take in the anti-aliased rim, and kept when Σα ≥ MIN_AREA·k².
    """
    rgb = _as_pixels(image)
    height, width = rgb.shape[:2]
    k = min(height, width) / 32
    hue, chroma = _hue(rgb)
    grey = chroma < CHROMA_MIN
    background = None
    if grey.any():
        level = float(np.median(rgb[grey].mean(-1)))
        background = min(BACKGROUNDS, key=lambda b: abs(BACKGROUNDS[b][0] - level))
    d = np.abs(hue[..., None] - PALETTE_HUE)
    label = np.argmin(np.minimum(d, 360 - d), axis=-1)
    alpha_all = np.clip(chroma[..., None] / PALETTE_CHROMA, 0.0, 1.0)  # (H, W, colours)
    found = []
    for ci, name in enumerate(PALETTE):
        core = ~grey & (label == ci) & (alpha_all[..., ci] >= CORE_ALPHA)
        if not core.any():
            continue
        for comp in _components(core):
            rr, cc = comp.T
            r0, r1 = max(rr.min() - 1, 0), min(rr.max() + 2, height)
            c0, c1 = max(cc.min() - 1, 0), min(cc.max() + 2, width)
            grown = np.zeros((r1 - r0, c1 - c0), dtype=bool)
            for dr in (-1, 0, 1):  # the component grown by one pixel (8 neighbours)
                for dc in (-1, 0, 1):
                    r, c = rr - r0 + dr, cc - c0 + dc
                    keep = (r >= 0) & (r < grown.shape[0]) & (c >= 0) & (c < grown.shape[1])
                    grown[r[keep], c[keep]] = True
            alpha = np.where(grown, alpha_all[r0:r1, c0:c1, ci], 0.0)
            area = float(alpha.sum())
            if area < MIN_AREA * k * k:
                continue
            features, _ = shape_features(alpha)
            shape = classify_shape(features)
            side = math.sqrt(area / IDEAL_FILL[shape]) if shape else math.sqrt(area)
            ys, xs = np.arange(r1 - r0) + r0 + 0.5, np.arange(c1 - c0) + c0 + 0.5
            cx = float(alpha.sum(0) @ xs) / area
            cy = float(alpha.sum(1) @ ys) / area
            if shape == "triangle":  # the centroid of a triangle is s/6 below its box centre
                cy -= side / 6
            cell = (min(int(cx / (width / 3)), 2), min(int(cy / (height / 3)), 2))
            size = "small" if side < k * (SIZES["small"] + SIZES["large"]) / 2 else "large"
            found.append(Found(name, shape, size, CELL_NAMES[cell], (cx, cy), side, area,
                               tuple(round(f, 4) for f in features)))
    found.sort(key=lambda f: -f.area)
    return background, tuple(found)


def _relation_holds(relation: str, a: Found, b: Found, k: float) -> bool:
    (ax, ay), (bx, by), m = a.centre, b.centre, RELATION_MARGIN * k
    return {"to the left of": ax <= bx - m, "to the right of": ax >= bx + m,
            "above": ay <= by - m, "below": ay >= by + m}[relation]


MAX_MATCHED = 6  # only the largest objects found take part in the one-to-one matching


def score(image: Image.Image | np.ndarray, caption: str | CaptionSpec) -> ScoreResult:
    """Check an image against a caption: objects found must match the stated ones one to one,
    with every stated attribute and relation, and no other object may be present.

    The attribute flags come from the assignment of found to stated objects that gets most
    attributes right; an attribute is right when it is right for every stated object.
    """
    spec = parse(caption) if isinstance(caption, str) else caption
    rgb = _as_pixels(image)
    k = min(rgb.shape[:2]) / 32
    background, found = find_objects(rgb.astype(np.uint8))
    stated = spec.objects
    slots: list[Found | None] = list(found[:MAX_MATCHED]) + [None] * len(stated)
    best, best_key = None, (-1,)
    for assignment in itertools.permutations(range(len(slots)), len(stated)):
        match = [slots[i] for i in assignment]
        flags = {a: [] for a in ("shape", "colour", "size", "position")}
        for o, f in zip(stated, match, strict=True):
            for attr, right in flags.items():
                want = getattr(o, attr)
                if want is not None:
                    right.append(f is not None and getattr(f, attr) == want)
        relation = None
        if spec.relation is not None:
            relation = None not in match and _relation_holds(spec.relation, *match, k)
        result = {a: (all(v) if v else None) for a, v in flags.items()}
        result["shape"] = bool(result["shape"])
        result["relation"] = relation
        key = (sum(sum(v) for v in flags.values()) + bool(relation),)
        if key > best_key:
            best, best_key = result, key
    count = len(found) == len(stated)
    bg_ok = background == spec.background
    satisfied = count and bg_ok and all(v is not False for v in best.values())
    return ScoreResult(satisfied, best["shape"], best["colour"], best["size"], best["position"],
                       best["relation"], count, bg_ok, found, background)


def attribute_accuracy(results: list[ScoreResult]) -> dict[str, float]:
    """Fraction satisfied, and per attribute the fraction right among results that state it."""
    out = {"satisfied": float(np.mean([r.satisfied for r in results])) if results else math.nan}
    for attr in ATTRIBUTES:
        values = [getattr(r, attr) for r in results if getattr(r, attr) is not None]
        out[attr] = float(np.mean(values)) if values else math.nan
    return out


__all__ = [
    "ATTRIBUTES", "BACKGROUNDS", "COLOURS", "HELDOUT", "POSITIONS", "RELATIONS", "SHAPES",
    "SIZES", "CaptionSpec", "Found", "Obj", "ObjSpec", "Scene", "ScoreResult",
    "attribute_accuracy", "box_gap", "classify_shape", "find_objects", "flood_fill_components",
    "format_caption",
    "is_heldout", "make_shapes_dataset", "parse", "random_example", "render", "render_array",
    "sample_scene", "sample_spec", "score", "shape_features",
]
