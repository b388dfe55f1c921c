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
2. **layout**: every reading the words allow is tried (:func:`readings`): a relation phrase
   splitting the text in two (:data:`RELATION_WORDS`: "on top of" → above, "under" → below,
   "west of" → to the left of; "next to" and "beside" name no side: "to the left of"; "A, to
   its left B" puts B on the left); "A on the left and B on the right"; three things listed
   ("A, B and C", "A then B then C", with or without "side by side" or "in a row") as a row; two
   listed as a pair side by side, in the order named (a leading count, "three emoji:", is
   taken out); a place at the end ("in the upper-left corner", "at the bottom of the picture")
   or first ("bottom right: a banana") for a single emoji; a single thing with no place goes in
   the center;
3. **things**: each part, less fillers, is matched to an emoji name of the scenes, exactly or
   by MiniLM cosine (at least ``min_similarity``), as for single emoji. A part that still holds
   layout words (a relation, a place, a list) is not a thing unless it is a name exactly, so
   "a dog above a cat above a fox" (three things in a relation the grammar lacks) maps to
   nothing rather than to two of them.

Of the readings whose parts are all things, the one whose worst-matched part matches best is
kept (an exact name counts 1), so "sunrise over mountains" stays one emoji; on a tie, the first
in the order above. More than three things listed come back unchanged: a scene holds at most
three. The caption is read back with the scorer's own parser
(:func:`kuosan.metrics.emoji_scenes.parse`) before it is returned.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from kuosan.data.emoji_scenes import article
from kuosan.enhance import LEXICON, Embed, Rewrite
from kuosan.enhance_emoji import EmojiLanguage, kept_as_typed, normalise_prompt, plain
from kuosan.errors import KuosanError
from kuosan.limits import Limits
from kuosan.metrics.emoji_scenes import parse

__all__ = ["NO_SIDE_WORDS", "PLACE_WORDS", "RELATION_WORDS", "SceneLanguage", "readings"]

# phrases that name no side: the grammar's "to the left of", said in the notes
NO_SIDE_WORDS = ("next to", "beside", "alongside", "by the side of")
# phrase → the grammar's relation ("A PHRASE B" means "A RELATION B"; the "its" phrases of
# ShapesWorld's table are read apart: "A, to its left B" means "B to the left of A")
RELATION_WORDS: dict[str, str] = {
    phrase: relation for relation, phrases in LEXICON["relation"].items() for phrase in phrases
} | {"on the top of": "above", "at the top of": "above", "at the bottom of": "below"} \
  | dict.fromkeys(NO_SIDE_WORDS, "to the left of")
# phrase → the grammar's place of a single emoji (ShapesWorld's 3×3 grid)
PLACE_WORDS: dict[str, str] = {phrase: place for place, phrases in LEXICON["position"].items()
                               for phrase in phrases}
MAX_THINGS = 3  # a row
MAX_PIECES = 2 * MAX_THINGS  # listed pieces past which no list reading is tried (their groupings
# grow as n², each part one more embedding)
_SIDE_PAIRS = {("left", "right"): "to the left of", ("right", "left"): "to the right of",
               ("top", "bottom"): "above", ("bottom", "top"): "below"}


def _alternatives(phrases: Sequence[str]) -> str:
    """A regex of ``phrases``, longest first, a space also matching a hyphen."""
    return "|".join(r"[ -]".join(map(re.escape, p.split(" ")))
                    for p in sorted(phrases, key=len, reverse=True))


_ROW = re.compile(r",?\s*\b(?:in a row|in a line|side by side|next to each other|in that order|"
                  r"(?:from )?left to right)\b\s*,?")
_SEPARATOR = re.compile(r"(\s*,\s*(?:and\s+|then\s+)?|\s+(?:and|then)\s+)")
_BY_SIDES = re.compile(r"^(.+?),?\s+(?:on|at) the (left|right|top|bottom)(?: side)?,?\s+(?:and\s+)?"
                       r"(.+?)\s+(?:on|at) the (left|right|top|bottom)(?: side)?$")
_PLACE = re.compile(r"(?:,\s*|\s+(?:at|in|on|to|near)\s+(?:the\s+)?)(?P<place>"
                    + _alternatives(list(PLACE_WORDS)) + r")(?:\s+(?:corner|side|edge|part|area))?"
                    r"(?:\s+of\s+(?:the\s+)?(?:picture|image|canvas|frame|scene))?$")
_PLACE_FIRST = re.compile(r"^(?:(?:at|in|on) (?:the )?)?(?P<place>" + _alternatives(list(PLACE_WORDS))
                          + r")(?:\s+(?:corner|side))?\s*:\s*")  # "bottom right: a banana"
_COUNT = re.compile(r"^(?:two|three|2|3)\s+(?:emojis?|things|objects|pictures|icons)\s*:\s*")
_RELATION = re.compile(r"\s+(?P<rel>" + _alternatives(list(RELATION_WORDS)) + r")\s+")
_LAYOUT = re.compile(r"(?:^|\s)(?:" + _alternatives(list(RELATION_WORDS)) + r")(?:\s|$)|"
                     + _ROW.pattern + "|" + _SEPARATOR.pattern + "|" + _PLACE.pattern
                     + r"|\b(?:on|at) the (?:left|right|top|bottom)\b")


@dataclass(frozen=True)
class Reading:
    """One way to read the words: the kind of scene, its parts' texts in caption order, the
    pair's relation or the single emoji's place, and what was read into it."""

    kind: str
    parts: tuple[str, ...]
    relation: str | None = None
    place: str | None = None
    note: str = ""


def _canonical(phrase: str) -> str:
    return " ".join(phrase.replace("-", " ").split())


def _groupings(pieces: list[str], separators: list[str], k: int) -> list[tuple[str, ...]]:
    """Every way to join consecutive ``pieces`` (their ``separators`` kept) into ``k`` parts,
    so a name that holds a separator ("arrow pointing rightwards then curving upwards") is
    one part in one of them."""
    if k == 1:
        return [("".join(p + s for p, s in zip(pieces, [*separators, ""], strict=True)),)]
    out = []
    for cut in range(1, len(pieces) - k + 2):
        head = "".join(p + s for p, s in zip(pieces[:cut], [*separators[:cut - 1], ""],
                                              strict=True))
        out += [(head, *rest) for rest in _groupings(pieces[cut:], separators[cut:], k - 1)]
    return out


def readings(words: str) -> list[Reading]:
    """Every layout ``words`` (normalised, style taken out) allow, in the module docstring's
    order; a reading's parts are not yet checked to be things."""
    out = []
    if (m := _BY_SIDES.match(words)) and (m.group(2), m.group(4)) in _SIDE_PAIRS:
        out.append(Reading("pair", (m.group(1), m.group(3)),
                           relation=_SIDE_PAIRS[(m.group(2), m.group(4))]))
    for m in _RELATION.finditer(words):
        phrase = _canonical(m.group("rel"))
        before, after = words[:m.start()].strip(" ,"), words[m.end():].strip(" ,")
        parts = (after, before) if " its " in f" {phrase} " else (before, after)
        note = f"{phrase}: no side named, so to the left of" if phrase in NO_SIDE_WORDS else ""
        out.append(Reading("pair", parts, relation=RELATION_WORDS[phrase], note=note))
    row = _ROW.search(words)
    split = _SEPARATOR.split(_ROW.sub(" ", words).strip(" ,"))
    pieces, separators = split[::2], split[1::2]
    if len(pieces) > MAX_PIECES:
        pieces = []
    if len(pieces) >= 3:
        out += [Reading("row", parts, note="" if row else "three things: a row, left to right")
                for parts in _groupings(pieces, separators, 3)]
    if len(pieces) >= 2:
        out += [Reading("pair", parts, relation="to the left of",
                        note="two things, no relation: side by side, in the order named")
                for parts in _groupings(pieces, separators, 2)]
    if m := _PLACE.search(words):
        out.append(Reading("single", (words[:m.start()],), place=PLACE_WORDS[_canonical(
            m.group("place"))]))
    if m := _PLACE_FIRST.match(words):
        out.append(Reading("single", (words[m.end():],), place=PLACE_WORDS[_canonical(
            m.group("place"))]))
    out.append(Reading("single", (words,), place="center"))
    return [r for r in out if all(p.strip(" ,") for p in r.parts)]


class _Match(NamedTuple):
    reading: Reading
    things: list[str]  # per part: the thing as typed, fillers stripped
    names: list[list[tuple[str, float]]]  # per part: (name, cosine), best first

    @property
    def worst(self) -> float:
        return min(m[0][1] for m in self.names)


class SceneLanguage:
    """The caption language of an EmojiWorld model, read from its training ``captions``."""

    def __init__(self, captions: Sequence[str], *, embed: Embed | None = None,
                 min_similarity: float = 0.5, top: int = 4, cache: Path | None = None) -> None:
        named = set()
        for caption in captions:
            try:
                spec = parse(caption)
            except KuosanError:
                continue  # "" (the unconditional caption) or a caption of another kind
            named.update((n, spec.style) for n in spec.names)
        if not named:
            raise KuosanError("SceneLanguage needs the model's training captions, EmojiWorld "
                              "scene captions (docs/emoji-scenes.md); none of them is one")
        # the single-emoji matcher over the scenes' names, each with the styles it was seen in
        self.matcher = EmojiLanguage([f"{n}, {s} style" if s else n for n, s in sorted(
            named, key=str)], embed=embed, min_similarity=min_similarity, top=top, cache=cache)
        self.styles = self.matcher.styles
        self.top = top

    def rewrite(self, text: str) -> Rewrite:
        words = normalise_prompt(text)
        limit = Limits().prompt_chars
        if limit is not None and len(words) > limit:
            return Rewrite(text, text, False, reason=f"longer than {limit} characters")
        if self._is_caption(words):
            return kept_as_typed(text, words)
        notes: list[str] = []
        words, style = self.matcher.take_style(words, notes)
        words = words.strip(" ,.:;")
        if m := _COUNT.match(words):  # "three emoji: a ghost, a robot and a penguin"
            words = words[m.end():]
            notes.append(f"{m.group(0).strip()} taken out")
        if not words:
            return Rewrite(text, text, False, reason="names no emoji, only a style")
        if style is None and self.styles:
            style = self.styles[0]
            notes.append(f"no style named: {style} style (every training caption names one)")
        listed = _SEPARATOR.split(_ROW.sub(" ", words))[::2]
        if len(listed) > MAX_THINGS and all(self._is_name(p) for p in listed):
            return Rewrite(text, text, False, reason=f"names more than {MAX_THINGS} emoji: a "
                                                     f"scene holds at most {MAX_THINGS}")
        best = self._best(words)
        if best is None:
            return Rewrite(text, text, False, reason=f"no reading of {words!r} names emoji of the "
                                                     f"scenes (MiniLM cosine < "
                                                     f"{self.matcher.min_similarity:g})")
        reading, things, matches = best
        notes += [reading.note] if reading.note else []
        for typed, m in zip(things, matches, strict=True):
            if typed != plain(m[0][0]):
                notes.append(f"{typed} → {m[0][0]} (MiniLM cosine {m[0][1]:.2f})")
        first = [m[0][0] for m in matches]
        candidates = [self._caption(reading, first, style)]
        for i, m in enumerate(matches):  # then one part at a time to its next names
            candidates += [self._caption(reading, [*first[:i], name, *first[i + 1:]], style)
                           for name, _ in m[1:]]
        candidates = list(dict.fromkeys(candidates))[:self.top]
        parse(candidates[0])  # a caption the scorer reads back (a KuosanError would be a bug)
        if candidates[0] == text:
            return Rewrite(text, text, False, tuple(candidates), tuple(notes),
                           reason="already one of the model's captions")
        return Rewrite(text, candidates[0], True, tuple(candidates), tuple(notes))

    def _is_caption(self, words: str) -> bool:
        try:
            spec = parse(words)
        except KuosanError:
            return False
        return spec.style in self.styles and all(n in self.matcher.names for n in spec.names)

    def _is_name(self, part: str) -> bool:
        return bool(self.matcher.nearest(self.matcher.strip_fillers(part)))

    def _best(self, words: str) -> _Match | None:
        """The reading whose parts are all things and whose worst part matches best."""
        best: _Match | None = None
        for reading in readings(words):
            things, names = [], []
            for part in reading.parts:
                thing = self.matcher.strip_fillers(part)
                found = self.matcher.nearest(thing)
                exact = bool(found) and plain(found[0][0]) == thing
                if not found or (not exact and _LAYOUT.search(thing)):
                    break  # not a thing: no name near, or layout words left in it
                things.append(thing)
                names.append(found)
            else:
                match = _Match(reading, things, names)
                if best is None or match.worst > best.worst:
                    best = match
        return best

    @staticmethod
    def _caption(reading: Reading, names: list[str], style: str | None) -> str:
        objs = [article(n) for n in names]
        if reading.kind == "row":
            scene = f"{objs[0]}, {objs[1]} and {objs[2]} in a row"
        elif reading.kind == "pair":
            scene = f"{objs[0]} {reading.relation} {objs[1]}"
        elif reading.place == "center":
            scene = f"{objs[0]} in the center"
        else:
            scene = f"{objs[0]} at the {reading.place}"
        return scene + (f", {style} style" if style else "")
