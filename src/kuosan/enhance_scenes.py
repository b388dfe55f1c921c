"""Prompt enhancement for EmojiWorld models: free words in, a scene caption of the grammar out.

    from kuosan.enhance_scenes import SceneLanguage
    lang = SceneLanguage(captions)                  # the model's training captions (captions.json)
    lang.rewrite("a shiny puppy on top of a fire truck").text
    # 'a dog above a fire engine, glossy style'
    lang.rewrite("apple, cat and pizza side by side").text
    # 'a red apple, a cat and a slice of pizza in a row, flat style'

EmojiWorld's captions (docs/emoji-scenes.md) are "A RELATION B", "A, B and C in a row", "A at the
POSITION" or "A in the center", each with ", STYLE style". A rewrite:

1. **style**: taken out as for single emoji (:class:`kuosan.enhance_emoji.EmojiLanguage`:
   "shiny" → glossy); with none named, the model's first style, said in the notes, because every
   training caption names one;
2. **layout**: every reading the words allow is tried: a relation phrase splitting the text in
   two ("on top of" → above, "left of", "under", "next to" → to the left of: no side named),
   "A on the left and B on the right", a list of three ("A, B and C", "… side by side") as a row,
   two things listed as a pair side by side, a place at the end ("in the upper left corner",
   "at the top") or none (the center);
3. **things**: each part is matched to an emoji name of the scenes, exactly or by MiniLM cosine
   (at least ``min_similarity``), as for single emoji.

The reading kept is the one whose worst-matched part matches best (an exact name counts 1), so
a name that holds a relation word ("face with hand over mouth") is not split. The result is
checked with the scorer's own parser (:func:`kuosan.metrics.emoji_scenes.parse`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kuosan.data.emoji_scenes import article
from kuosan.enhance import LEXICON, Embed, Rewrite, _check_text
from kuosan.enhance_emoji import EmojiLanguage
from kuosan.errors import KuosanError
from kuosan.metrics.emoji_scenes import parse

__all__ = ["PLACE_WORDS", "RELATION_WORDS", "SceneLanguage"]

# phrase → the grammar's relation; "next to" names no side: the grammar's "to the left of"
RELATION_WORDS: dict[str, str] = {
    phrase: relation for relation, phrases in LEXICON["relation"].items() for phrase in phrases
} | {"next to": "to the left of", "beside": "to the left of", "alongside": "to the left of",
     "by the side of": "to the left of", "on top of": "above", "on the top of": "above",
     "beneath of": "below", "at the bottom of": "below", "at the top of": "above",
     "in front of": "to the left of"}
# phrase → the grammar's place of a single emoji (ShapesWorld's 3×3 grid)
PLACE_WORDS: dict[str, str] = {
    phrase: place for place, phrases in LEXICON["position"].items() for phrase in phrases
    if phrase not in ("up", "down", "upper", "lower", "north", "south")
}
_NO_SIDE = ("next to", "beside", "alongside", "by the side of", "in front of")
_SIDE_PAIRS = {("left", "right"): "to the left of", ("right", "left"): "to the right of",
               ("top", "bottom"): "above", ("bottom", "top"): "below"}
_ROW = re.compile(r",?\s*\b(?:in a row|in a line|side by side|next to each other|in that order|"
                  r"(?:from )?left to right)\b\s*,?")
_LIST = re.compile(r"\s*,\s*(?:and\s+|then\s+)?|\s+(?:and|then|plus)\s+")
_SIDES = r"(left|right|top|bottom)"
_BY_SIDES = re.compile(rf"^(.+?),?\s+(?:on|at) the {_SIDES}(?: side)?,?\s+(?:and\s+)?(.+?)\s+"
                       rf"(?:on|at) the {_SIDES}(?: side)?$")


def _phrase_pattern(phrase: str) -> str:
    return r"[ -]".join(map(re.escape, phrase.split(" ")))


_PLACE = re.compile(
    r"(?:,\s*|\s+(?:at|in|on|to|near)\s+(?:the\s+)?)(?P<place>"
    + "|".join(_phrase_pattern(p) for p in sorted(PLACE_WORDS, key=len, reverse=True))
    + r")(?:[ -]hand)?(?:\s+(?:corner|side|edge|part|area))?"
    r"(?:\s+of\s+(?:the\s+)?(?:picture|image|canvas|frame|scene))?$")
_RELATION = re.compile(
    r"\s+(?P<rel>" + "|".join(_phrase_pattern(p) for p in sorted(RELATION_WORDS, key=len,
                                                                   reverse=True)) + r")\s+")


@dataclass(frozen=True)
class _Reading:
    """One way to read the words: the kind of scene, its parts' texts in caption order, and
    the pair's relation or the single emoji's place, with what was read into it."""

    kind: str
    parts: tuple[str, ...]
    relation: str | None = None
    place: str | None = None
    note: str = ""


class SceneLanguage:
    """The caption language of an EmojiWorld model, read from its training ``captions``."""

    def __init__(self, captions: Sequence[str], *, embed: Embed | None = None,
                 min_similarity: float = 0.5, top: int = 4, **kwargs: Any) -> None:
        named = set()
        for caption in captions:
            try:
                spec = parse(caption)
            except KuosanError:
                continue  # "" (the unconditional caption) or a caption of another kind
            named.update(f"{n}, {spec.style} style" if spec.style else n for n in spec.names)
        if not named:
            raise KuosanError("SceneLanguage needs the model's training captions, EmojiWorld "
                              "scene captions (docs/emoji-scenes.md); none of them is one")
        self.names = EmojiLanguage(sorted(named), embed=embed, min_similarity=min_similarity,
                                   top=top, **kwargs)
        self.styles = self.names.styles
        self.top = top

    def rewrite(self, text: str) -> Rewrite:
        words = " ".join(_check_text(text).lower().replace("’", "'").split()).strip(" .!?;")
        if self._is_caption(words):
            if words == text:
                return Rewrite(text, text, False, reason="already one of the model's captions")
            return Rewrite(text, words, True, (words,), ("lower case, spaces",))
        notes: list[str] = []
        words, style = self.names.take_style(words, notes)
        words = words.strip(" ,.:;")
        if style is None and self.styles:
            style = self.styles[0]
            notes.append(f"no style named: {style} style (every training caption names one)")
        best: tuple[float, _Reading, list[list[tuple[str, float]]]] | None = None
        for reading in self._readings(words):
            matches = [self.names.nearest(self.names.strip_fillers(p)) for p in reading.parts]
            if not all(matches):
                continue
            worst = min(m[0][1] for m in matches)
            if best is None or worst > best[0]:
                best = (worst, reading, matches)
        if best is None:
            return Rewrite(text, text, False, reason=f"no reading of {words!r} names emoji of the "
                                                     f"scenes (MiniLM cosine < "
                                                     f"{self.names.min_similarity:g})")
        _, reading, matches = best
        if reading.note:
            notes.append(reading.note)
        for part, m in zip(reading.parts, matches, strict=True):
            if (typed := self.names.strip_fillers(part)) != m[0][0]:
                notes.append(f"{typed} → {m[0][0]} (MiniLM cosine {m[0][1]:.2f})")
        first = [m[0][0] for m in matches]
        candidates = [self._caption(reading, first, style)]
        for i, m in enumerate(matches):  # then one part at a time to its next names
            for name, _ in m[1:]:
                candidates.append(self._caption(reading, first[:i] + [name] + first[i + 1:], style))
        candidates = list(dict.fromkeys(candidates))[:self.top]
        if candidates[0] == text:
            return Rewrite(text, text, False, tuple(candidates), tuple(notes),
                           reason="already one of the model's captions")
        return Rewrite(text, candidates[0], True, tuple(candidates), tuple(notes))

    def _is_caption(self, words: str) -> bool:
        try:
            spec = parse(words)
        except KuosanError:
            return False
        return spec.style in self.styles and all(n in self.names.names for n in spec.names)

    @staticmethod
    def _readings(words: str) -> list[_Reading]:
        """Every layout the words allow (module docstring, step 2), the most specific first: a
        tie in how well the parts match goes to the reading that says more."""
        out = []
        if (m := _BY_SIDES.match(words)) and (m.group(2), m.group(4)) in _SIDE_PAIRS:
            out.append(_Reading("pair", (m.group(1), m.group(3)),
                                relation=_SIDE_PAIRS[(m.group(2), m.group(4))]))
        row = _ROW.search(words)
        listed = [p for p in _LIST.split(_ROW.sub(" ", words).strip(" ,")) if p.strip()]
        if len(listed) == 3:
            out.append(_Reading("row", tuple(listed), note="" if row else
                                "three things: a row, left to right"))
        elif len(listed) == 2:
            out.append(_Reading("pair", tuple(listed), relation="to the left of",
                                note="two things, no relation: side by side, in the order named"))
        for m in _RELATION.finditer(words):
            phrase = " ".join(m.group("rel").replace("-", " ").split())
            out.append(_Reading("pair", (words[:m.start()], words[m.end():]),
                                relation=RELATION_WORDS[phrase],
                                note=f"{phrase}: no side named, so to the left of"
                                if phrase in _NO_SIDE else ""))
        if m := _PLACE.search(words):
            place = PLACE_WORDS[" ".join(m.group("place").replace("-", " ").split())]
            out.append(_Reading("single", (words[:m.start()],), place=place))
        out.append(_Reading("single", (words,), place="center"))
        return [r for r in out if all(p.strip(" ,") for p in r.parts)]

    @staticmethod
    def _caption(reading: _Reading, names: list[str], style: str | None) -> str:
        objs = [article(n) for n in names]
        if reading.kind == "row":
            scene = f"{objs[0]}, {objs[1]} and {objs[2]} in a row"
        elif reading.kind == "pair":
            scene = f"{objs[0]} {reading.relation} {objs[1]}"
        else:
            scene = f"{objs[0]} in the center" if reading.place == "center" else \
                f"{objs[0]} at the {reading.place}"
        return scene + (f", {style} style" if style else "")
