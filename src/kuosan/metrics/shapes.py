"""The ShapesWorld scorer: read a caption, find the objects in an image, check one against the other.

- `parse(caption)`: the strict inverse of `kuosan.data.shapes.format_caption`; anything outside
  the grammar raises `KuosanError` naming the caption and the word at fault;
- `score(image, caption)`: find objects by colour, classify shape, size and cell, and check the
  image against what the caption states (`ScoreResult`, with one flag per attribute);
  `attribute_accuracy` sums results up.

The world, renderer and grammar it checks against are `kuosan.data.shapes`.

```python
import numpy as np
from kuosan.data.shapes import random_example
from kuosan.metrics.shapes import score
image, caption, scene = random_example(np.random.default_rng(0))
score(image, caption).satisfied               # True for a rendered image and its own caption
```
"""

from __future__ import annotations

import itertools
import math
from functools import cache
from typing import NamedTuple

import numpy as np
from PIL import Image

from kuosan.data.shapes import (
    BACKGROUNDS,
    CELL_NAMES,
    COLOURS,
    NUMBERS,
    PLURALS,
    RELATION_MARGIN,
    SHAPES,
    SIZES,
    CaptionSpec,
    Obj,
    ObjSpec,
    coverage,
)
from kuosan.errors import KuosanError

# --- parsing captions ------------------------------------------------------------------------


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
    """What `caption` states, strictly by the grammar of docs/shapes-spec.md (raises otherwise)."""
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


# --- scoring images ---------------------------------------------------------------------------

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


def components(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected components (scipy.ndimage.label when installed: same result, faster)."""
    try:
        from scipy import ndimage
    except ImportError:
        return flood_fill_components(mask)
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    return [np.argwhere(labels == i) for i in range(1, n + 1)]


def dilate(mask: np.ndarray, reach: int = 1) -> np.ndarray:
    """A 2-D bool mask grown by ``reach`` pixels in all 8 directions: out[y, x] = any(mask over
    the (2·reach + 1)² square centred on (y, x))."""
    padded = np.pad(mask, reach)
    h, w = mask.shape
    out = np.zeros_like(mask)
    for dy in range(2 * reach + 1):
        for dx in range(2 * reach + 1):
            out |= padded[dy:dy + h, dx:dx + w]
    return out


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
        for comp in components(core):
            rr, cc = comp.T
            r0, r1 = max(rr.min() - 1, 0), min(rr.max() + 2, height)
            c0, c1 = max(cc.min() - 1, 0), min(cc.max() + 2, width)
            grown = np.zeros((r1 - r0, c1 - c0), dtype=bool)
            grown[rr - r0, cc - c0] = True
            grown = dilate(grown)  # the component grown by one pixel (8 neighbours)
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
    "ATTRIBUTES", "Found", "ScoreResult", "attribute_accuracy", "classify_shape", "components",
    "dilate", "find_objects", "flood_fill_components", "parse", "score", "shape_features",
]
