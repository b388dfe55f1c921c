"""Scoring an EmojiWorld picture against its caption (docs/emoji-scenes.md), as ShapesWorld's
scorer does for shapes: find the drawn emoji, read each with the emoji recogniser, check the
layout the caption states.

- ``parse``: a caption of ``kuosan.data.emoji_scenes``' grammar → ``SceneSpec``;
- ``find_emoji``: the emoji drawn on white, as pixel boxes: a pixel is drawn when 255 minus its
  smallest channel exceeds ``INK`` (24); drawn pixels are joined by a dilation of S/64 pixels
  (pieces up to 2·S/64 apart are one emoji; scene tiles' drawings lie further apart) into
  8-connected groups; a group with fewer than (S/16)² drawn pixels is a speck and is dropped;
- ``read_boxes``: each box cropped, framed as the recogniser's pictures are (the box scaled to
  fill its canvas less the 6 % margin, on white) and read by ``kuosan.metrics.emoji``;
- ``score_scene``: the boxes are given to the caption's emoji in the caption's layout (a pair "A
  to the left of B": A is the left box; a row: left to right; a single emoji: the largest box),
  and the picture **satisfies** its caption when it holds as many emoji as stated, each box's
  concept is among the recogniser's top 5 for its emoji, the pair's centres are at least S/16
  apart along the relation's axis (a single emoji's centre in its third of the canvas), and the
  scene is read in the caption's style (one vote: the style heads' log-probabilities summed over
  the boxes; a small emoji alone often shows too little of its style). ``concepts_any`` counts
  the stated emoji recognised in some box regardless of layout: concepts drawn but misplaced
  show as concepts_any > concepts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise, permutations

import numpy as np
import torch
from PIL import Image

from kuosan.data.emoji import EmojiEntry, frame_picture, split_caption
from kuosan.data.emoji_scenes import COUNTS, RELATIONS
from kuosan.data.shapes import CELL_NAMES, POSITIONS
from kuosan.errors import KuosanError
from kuosan.metrics.emoji import Recogniser, entry_labels
from kuosan.metrics.shapes import components, dilate

__all__ = ["SceneScore", "SceneSpec", "concept_index", "find_emoji", "parse", "read_boxes",
           "score_scene", "summarise_scenes"]

INK = 24  # a pixel is drawn when 255 - min(R, G, B) > INK
TOP_K = 5


@dataclass(frozen=True)
class SceneSpec:
    """What a scene caption states: the emoji NAMEs in caption order, the style, and the pair's
    ``relation`` or the single emoji's ``position``."""

    kind: str
    names: tuple[str, ...]
    style: str | None
    relation: str | None = None
    position: str | None = None


def _strip_article(phrase: str, caption: str) -> str:
    for a in ("a ", "an "):
        if phrase.startswith(a) and len(phrase) > len(a):
            return phrase[len(a):]
    raise KuosanError(f"cannot parse the scene caption {caption!r}: expected 'a' or 'an' before "
                      f"{phrase!r}")


def parse(caption: str) -> SceneSpec:
    """A caption of EmojiWorld's grammar (``kuosan.data.emoji_scenes``) as a ``SceneSpec``."""
    text, style = split_caption(caption)
    if text.endswith(" in a row"):
        first, sep, rest = text[: -len(" in a row")].partition(", ")
        second, sep2, third = rest.partition(" and ")
        if not sep or not sep2:
            raise KuosanError(f"cannot parse the scene caption {caption!r}: a row is "
                              f"'a A, a B and a C in a row'")
        return SceneSpec("row", tuple(_strip_article(p, caption) for p in (first, second, third)),
                         style)
    if text.endswith(" in the center"):
        return SceneSpec("single", (_strip_article(text[: -len(" in the center")], caption),),
                         style, position="center")
    obj, sep, where = text.rpartition(" at the ")
    if sep and where in POSITIONS:
        return SceneSpec("single", (_strip_article(obj, caption),), style, position=where)
    for relation in RELATIONS:
        a, sep, b = text.partition(f" {relation} ")
        if sep:
            return SceneSpec("pair", (_strip_article(a, caption), _strip_article(b, caption)),
                             style, relation=relation)
    raise KuosanError(f"cannot parse the scene caption {caption!r}: expected a single emoji with "
                      f"its place, a pair with a relation ({', '.join(RELATIONS)}) or a row")


def concept_index(entries: Sequence[EmojiEntry], recogniser: Recogniser) -> dict[str, int]:
    """NAME → the recogniser's concept index, for every catalogue entry it knows."""
    labels, _, _ = entry_labels(list(entries), recogniser.config.styles, recogniser.config.concepts)
    return {e.name: int(c) for e, c in zip(entries, labels["concept"], strict=True) if c >= 0}


def find_emoji(pixels: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Boxes (x0, y0, x1, y1), end exclusive, of the emoji drawn on white in an (S, S, 3) uint8
    picture, largest first (module docstring)."""
    if pixels.ndim != 3 or pixels.shape[-1] != 3 or pixels.dtype != np.uint8:
        raise KuosanError(f"find_emoji needs (H, W, 3) uint8 pixels, got {pixels.dtype} "
                          f"{pixels.shape}")
    size = min(pixels.shape[:2])
    ink = (255 - pixels.min(axis=2).astype(np.int16)) > INK
    boxes = []
    for comp in components(dilate(ink, max(1, round(size / 64)))):
        rr, cc = comp.T
        inside = ink[rr, cc]
        if inside.sum() < (size / 16) ** 2:
            continue
        rr, cc = rr[inside], cc[inside]
        boxes.append((int(inside.sum()), (int(cc.min()), int(rr.min()), int(cc.max()) + 1,
                                          int(rr.max()) + 1)))
    return [b for _, b in sorted(boxes, key=lambda t: -t[0])]


def read_boxes(recogniser: Recogniser, pixels: np.ndarray,
               boxes: Sequence[tuple[int, int, int, int]]) -> dict[str, torch.Tensor]:
    """The recogniser's logits for each box of ``pixels``, framed as its own pictures are."""
    size = recogniser.config.size
    if not boxes:
        return {}
    crops = [frame_picture(Image.fromarray(pixels[y0:y1, x0:x1]).convert("RGBA"), size)
             for x0, y0, x1, y1 in boxes]
    return recogniser.predict(torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous())


@dataclass(frozen=True)
class SceneScore:
    """One picture against its caption (module docstring)."""

    satisfied: bool
    count: bool  # as many emoji as stated
    concepts: float  # share of stated emoji recognised top 5 in the caption's layout
    concepts_any: float  # ... in any box, one box each
    layout: bool  # the relation's or position's geometry holds
    style: bool  # the scene read in the caption's style (summed over its boxes)
    found: int


def _centre(box: tuple[int, int, int, int]) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def _arrange(spec: SceneSpec, boxes: list[tuple[int, int, int, int]], size: int
             ) -> tuple[list[int], bool]:
    """Which box each stated emoji gets (indices into ``boxes``), and whether the layout holds."""
    k = COUNTS[spec.kind]
    chosen = list(range(min(k, len(boxes))))  # the largest boxes
    if spec.kind == "single":
        if not chosen:
            return [], False
        cx, cy = _centre(boxes[0])
        cell = (min(int(3 * cx / size), 2), min(int(3 * cy / size), 2))
        return chosen, CELL_NAMES[cell] == spec.position
    axis = 1 if spec.relation in ("above", "below") else 0
    chosen.sort(key=lambda i: _centre(boxes[i])[axis])
    if spec.relation in ("to the right of", "below"):
        chosen.reverse()
    if len(chosen) < k:
        return chosen, False
    along = [_centre(boxes[i])[axis] for i in chosen]
    gaps = [abs(b - a) for a, b in pairwise(along)]
    return chosen, min(gaps) >= size / 16


def _any_match(hits: np.ndarray) -> int:
    """The most stated emoji (rows) recognisable in distinct boxes (columns): a maximum
    bipartite matching, tried over every order (at most three emoji)."""
    if hits.shape[0] > hits.shape[1]:
        hits = hits.T
    rows, cols = hits.shape
    if not rows:
        return 0
    return max(sum(bool(hits[r, c]) for r, c in enumerate(perm))
               for perm in permutations(range(cols), rows))


def score_scene(recogniser: Recogniser, pixels: np.ndarray, spec: SceneSpec,
                concepts: dict[str, int], top_k: int = TOP_K) -> SceneScore:
    """``pixels`` (S, S, 3) uint8 against ``spec``; ``concepts`` from ``concept_index``; an
    emoji is recognised when its concept is among the ``top_k`` of the recogniser."""
    unknown = [n for n in spec.names if n not in concepts]
    if unknown:
        raise KuosanError(f"the emoji recogniser does not know {unknown}")
    size = min(pixels.shape[:2])
    boxes = find_emoji(pixels)
    k = len(spec.names)
    if not boxes:
        return SceneScore(False, False, 0.0, 0.0, False, False, 0)
    logits = read_boxes(recogniser, pixels, boxes)
    top = logits["concept"].topk(min(top_k, logits["concept"].shape[1]), dim=1).indices
    hits = np.array([[concepts[n] in top[b].tolist() for b in range(len(boxes))]
                     for n in spec.names])
    order, layout = _arrange(spec, boxes, size)
    in_layout = sum(bool(hits[j, b]) for j, b in enumerate(order))
    styles = recogniser.config.styles
    votes = logits["style"][order].log_softmax(1).sum(0) if order else None
    style = spec.style is None or (votes is not None and styles[int(votes.argmax())] == spec.style)
    count = len(boxes) == k
    return SceneScore(count and layout and in_layout == k and style, count, in_layout / k,
                      _any_match(hits) / k, layout, bool(style), len(boxes))


def summarise_scenes(scores: Sequence[SceneScore]) -> dict[str, float]:
    """Percentages over ``scores``: satisfied, count, concepts, concepts_any, layout, style; n."""
    if not scores:
        return {"n": 0}
    out: dict[str, float] = {"n": len(scores)}
    for key in ("satisfied", "count", "concepts", "concepts_any", "layout", "style"):
        out[key] = 100 * float(np.mean([float(getattr(s, key)) for s in scores]))
    return out
