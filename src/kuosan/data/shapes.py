"""ShapesWorld: procedurally drawn, captioned images whose content is known exactly.

The palette, geometry and caption grammar are fixed by `docs/shapes-spec.md`; trained models and
scores depend on them, so they must not drift. The world, its renderer and its grammar:

- `render(scene)`: draw a `Scene` (objects with shape, colour, size and centre) at 4× and reduce
  with a box filter, so edges are anti-aliased;
- `random_example(rng)`: draw a caption from the grammar (`sample_spec`, `format_caption`), then
  a scene that satisfies it (an attribute the caption leaves out is drawn at random), then
  render it.

Reading captions back (`parse`) and checking an image against its caption (`score`) are
`kuosan.metrics.shapes`.

```python
import numpy as np
from kuosan.data.shapes import random_example, make_shapes_dataset
image, caption, scene = random_example(np.random.default_rng(0))
items, captions = make_shapes_dataset(20_000, size=32, seed=0)   # uint8 (N, 3, 32, 32)
```

Lengths are in pixels of the canvas; at canvas size S the 32×32 geometry is scaled by k = S/32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

from kuosan.errors import KuosanError, is_int

# --- the world (docs/shapes-spec.md) ---------------------------------------------------------

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
    if not is_int(size) or size % 16 or not 16 <= size <= 128:
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
    if not is_int(n) or n < 0:
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


__all__ = [
    "BACKGROUNDS", "COLOURS", "HELDOUT", "POSITIONS", "RELATIONS", "SHAPES", "SIZES",
    "CaptionSpec", "Obj", "ObjSpec", "Scene", "box_gap", "format_caption", "is_heldout",
    "make_shapes_dataset", "random_example", "render", "render_array", "sample_scene",
    "sample_spec",
]

# the caption parser and the scorer moved to kuosan.metrics.shapes; its names still import from here, with a warning
_MOVED_TO_METRICS = frozenset({
    "ATTRIBUTES", "CHROMA_MIN", "CORE_ALPHA", "IDEAL_FILL", "MAX_MATCHED", "MIN_AREA", "PALETTE",
    "SHAPE_MAX_DISTANCE", "Found", "ScoreResult", "attribute_accuracy", "classify_shape",
    "find_objects", "flood_fill_components", "parse", "score", "shape_features", "shape_templates",
})


def __getattr__(name: str) -> object:
    if name in _MOVED_TO_METRICS:
        import warnings

        from kuosan.metrics import shapes as scorer

        warnings.warn(f"kuosan.data.shapes.{name} moved to kuosan.metrics.shapes.{name}",
                      DeprecationWarning, stacklevel=2)
        return getattr(scorer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
