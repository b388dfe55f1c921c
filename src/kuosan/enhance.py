"""Prompt enhancement: free words in, the model's caption language out.

BeautifulPrompt (Cao et al., EMNLP 2023) rewrites a plain description into a prompt the
text-to-image model renders well and picks among rewrites by what the pictures show. Here the
same two steps are built from what runs offline:

    from kuosan.enhance import ShapesLanguage, enhance_prompt
    lang = ShapesLanguage()                         # MiniLM is loaded on first need (~10 s)
    enhance_prompt("a crimson ball over a navy box", lang)   # "a red circle above a blue square"
    r = lang.rewrite("a happy kitty")   # Rewrite(text="a happy kitty", changed=False, reason=...)

A caption language (`CaptionLanguage`) turns text into a `Rewrite`: the caption, ranked
alternatives (`candidates`), what was mapped (`notes`), or the text unchanged with a `reason`.

- `ShapesLanguage`: parts of the sentence are matched to parts of the ShapesWorld grammar
  (colour, size, shape, position, relation, count, background): a phrase table per grammar
  word, the xkcd colour names mapped to the palette by the scorer's hue rule, typo repair
  against the grammar's words (difflib), and, for a word none of these knows, the nearest
  grammar word by frozen MiniLM sentence embeddings when close enough. The result is always
  checked with the grammar's own `parse`.
- `CaptionSet`: a finite caption set; the rewrite is the caption nearest in MiniLM cosine (a
  model trained on a captioned folder: its `captions.json`).
- `kuosan.enhance_emoji.EmojiLanguage`: an emoji model's names and styles, composed: style
  words and skin tones are taken out, the rest matched to a name.
- `kuosan.enhance_scenes.SceneLanguage`: an EmojiWorld model's scenes: the layout read from
  relation, place and list words, each thing matched to a name, the style taken out.

Visual feedback (`best_candidate`, `generate_with_feedback`): k pictures from the top rewrites
and seeds, each scored by a reward that reads pictures (`shapes_reward`: the ShapesWorld
scorer against the top rewrite); the best is kept. Cost: k× the sampling, plus k scorer calls
(~3 ms each on 32×32), so it is off by default.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
from torch import Tensor

from kuosan.data.shapes import BACKGROUNDS, COLOURS, PLURALS, CaptionSpec, ObjSpec, format_caption
from kuosan.enhance_colours import XKCD_COLOURS
from kuosan.errors import KuosanError, is_int
from kuosan.guidance import parse_composition
from kuosan.metrics.shapes import PALETTE, PALETTE_HUE, _hue, parse

__all__ = ["CaptionLanguage", "CaptionSet", "MiniLMEmbed", "Rewrite", "ShapesLanguage",
           "enhance_prompt", "language_for"]

Embed = Callable[[list[str]], Tensor]  # texts -> (N, D), rows L2-normalised


class MiniLMEmbed:
    """Sentence embeddings e(text) = normalise(mean of token states) of the frozen
    all-MiniLM-L6-v2 (`kuosan.models.text.MiniLMEncoder`), loaded on the first call; each
    distinct text is encoded once, ``chunk`` texts at a time (memory stays small for the
    20,000 captions of a scene model)."""

    def __init__(self, chunk: int = 256) -> None:
        if not is_int(chunk) or chunk < 1:
            raise KuosanError(f"MiniLMEmbed's chunk must be a positive integer, got {chunk!r}")
        self._encoder: Any = None
        self._cache: dict[str, Tensor] = {}
        self.chunk = chunk

    def __call__(self, texts: list[str]) -> Tensor:
        todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if todo and self._encoder is None:
            from kuosan.models.text import MiniLMEncoder

            self._encoder = MiniLMEncoder()
        for start in range(0, len(todo), self.chunk):
            part = todo[start:start + self.chunk]
            for t, v in zip(part, self._encoder.encode(part).pooled.float(), strict=True):
                self._cache[t] = v
        return torch.stack([self._cache[t] for t in texts])


@dataclass(frozen=True)
class Rewrite:
    """`text`: the caption to use (or the input unchanged); `candidates`: ranked captions (the
    first is `text` when changed); `notes`: what was mapped; `reason`: why nothing changed."""

    original: str
    text: str
    changed: bool
    candidates: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    reason: str = ""


class CaptionLanguage(Protocol):
    """A model's caption language: `rewrite(text)` maps free text into it."""

    def rewrite(self, text: str) -> Rewrite: ...


def enhance_prompt(text: str, language: CaptionLanguage | None = None) -> str:
    """`text` in the model's caption language (`language`, default a new `ShapesLanguage`),
    or `text` unchanged when nothing maps (`language.rewrite(text).reason` says why). Each
    part of a composed prompt ("A AND B :0.5") is rewritten on its own, its weight kept."""
    language = language or ShapesLanguage()
    parts = parse_composition(_check_text(text))
    if len(parts) == 1:
        return language.rewrite(text).text
    return " AND ".join(language.rewrite(t).text + ("" if w == 1 else f" :{w:g}")
                        for t, w in parts)


def language_for(pipe: Any) -> CaptionLanguage:
    """The caption language of a loaded `Pipeline`: ShapesWorld's grammar for a model trained
    on it; for an emoji model, `kuosan.enhance_emoji.EmojiLanguage` over its training captions;
    for an EmojiWorld model, `kuosan.enhance_scenes.SceneLanguage`; for any other text model
    with a ``captions.json``, `CaptionSet` of those captions."""
    from kuosan.checkpoint import load_captions

    data = getattr(pipe.info, "name", None)
    if data == "shapes":
        return ShapesLanguage()
    captions = load_captions(pipe.path) if pipe.path is not None else None
    if captions is None:
        raise KuosanError(f"prompt enhancement needs the caption language of '{pipe.name}': it "
                          f"was trained on {data!r} and its folder has no captions.json (export "
                          f"it again with this kuosan, or pass language=CaptionSet(its captions))")
    if data == "emoji":
        from kuosan.enhance_emoji import EmojiLanguage

        return EmojiLanguage(captions)
    if data == "emojiworld":
        from kuosan.enhance_scenes import SceneLanguage

        return SceneLanguage(captions)
    return CaptionSet(captions)


def _unchanged(text: str, reason: str) -> Rewrite:
    return Rewrite(text, text, False, reason=reason)


def _check_text(text: object) -> str:
    if not isinstance(text, str):
        raise KuosanError(f"a prompt must be a string, got {type(text).__name__}")
    return text


# --- ShapesWorld: the phrase table ------------------------------------------------------------

# slot -> value -> phrases (the grammar's own word first). Words outside these, the colour
# names and STOPWORDS go to typo repair, then to MiniLM (shapes and sizes only).
LEXICON: dict[str, dict[str, tuple[str, ...]]] = {
    "shape": {
        "circle": ("circle", "ball", "sphere", "orb", "disc", "disk", "dot", "ring", "round",
                   "oval", "spot", "bubble", "coin", "circular"),
        "square": ("square", "box", "cube", "block", "tile", "rectangle", "quadrilateral"),
        "triangle": ("triangle", "pyramid", "wedge", "triangular"),
        "cross": ("cross", "plus", "plus sign", "plus symbol", "x", "cross sign"),
    },
    "size": {
        "small": ("small", "little", "tiny", "mini", "minuscule", "wee", "smaller", "petite",
                  "teeny", "miniature", "short"),
        "large": ("large", "big", "huge", "giant", "massive", "enormous", "bigger", "larger",
                  "gigantic", "jumbo", "oversized"),
    },
    "relation": {
        "above": ("above", "over", "on top of", "atop", "higher than", "up from"),
        "below": ("below", "under", "beneath", "underneath", "lower than", "down from"),
        "to the left of": ("to the left of", "left of", "on the left of", "at the left of",
                           "to its left", "on its left", "west of"),
        "to the right of": ("to the right of", "right of", "on the right of",
                            "at the right of", "to its right", "on its right", "east of"),
    },
    "position": {
        "top left": ("top left", "upper left", "left top", "northwest"),
        "top right": ("top right", "upper right", "right top", "northeast"),
        "bottom left": ("bottom left", "lower left", "left bottom", "southwest"),
        "bottom right": ("bottom right", "lower right", "right bottom", "southeast"),
        "top": ("top", "upper", "up", "north"),
        "bottom": ("bottom", "lower", "down", "south"),
        "left": ("left", "left hand"),
        "right": ("right", "right hand"),
        "center": ("center", "centre", "middle", "central", "centered", "centred"),
    },
    "number": {"1": ("one", "a single", "single", "1", "lone"),
               "2": ("two", "2", "pair of", "a pair of", "couple of", "a couple of",
                     "duo of", "a duo of", "both", "twin"),
               "3": ("three", "3", "trio of", "a trio of", "triple", "triplet of")},
    "unsupported number": {"n": ("four", "five", "six", "seven", "eight", "nine", "ten",
                                 "several", "many", "multiple", "dozen", "lots of", "a few",
                                 "4", "5", "6", "7", "8", "9", "10")},
    "background": {"white": ("white", "light"), "black": ("black", "dark"),
                   "gray": ("gray", "grey")},
    "background noun": {"-": ("background", "backdrop", "bg", "canvas", "ground")},
    "separator": {"-": (",", "and", "with", "having", "while", "but")},
}
_STOPWORDS = """
a an the of in at on is are be it its it's that which who this there there's here with to for
by from as me my i you your we us our please thanks thank hello hi hey can could would will
should like want see show draw make render paint sketch generate create give put place depict
picture image photo drawing illustration painting artwork art scene shape shapes object objects
thing things figure item one some just only very really quite nice lovely beautiful pretty cute
simple plain clean minimal crisp clear colored coloured colour color sitting sits sit placed
positioned located lying floating standing resting being set near edge side corner part area
region of hand nothing else also exactly somewhere close closer directly just showing shows
containing contains featuring features has have all only kind sort style
"""
STOPWORDS = frozenset(_STOPWORDS.split())

CORNER_PARTS = {"top": "v", "bottom": "v", "left": "h", "right": "h"}


def _palette_colour(hexcode: str) -> tuple[str, str]:
    """("colour", palette name) by the scorer's rule (nearest hue), or ("background", name)
    for a grey (chroma < 32: nearest grey level)."""
    rgb = np.array([int(hexcode[i:i + 2], 16) for i in (0, 2, 4)], dtype=np.float64)
    hue, chroma = _hue(rgb)
    if chroma < 32:
        level = rgb.mean()
        return "background", min(BACKGROUNDS, key=lambda b: abs(BACKGROUNDS[b][0] - level))
    d = np.abs(float(hue) - PALETTE_HUE)
    return "colour", PALETTE[int(np.argmin(np.minimum(d, 360 - d)))]


def _phrase_table() -> dict[tuple[str, ...], tuple[str, str]]:
    table = {(name,): _palette_colour(code) for name, code in XKCD_COLOURS.items()}
    table.update({(c,): ("colour", c) for c in COLOURS})
    for slot, values in LEXICON.items():
        for value, phrases in values.items():
            for p in phrases:
                table[tuple(p.split(" "))] = (slot, value)
    return table


PHRASES = _phrase_table()
# typo repair aims at these: the words of LEXICON and the palette (not every xkcd name)
GRAMMAR_WORDS = sorted({w for values in LEXICON.values() for phrases in values.values()
                        for p in phrases for w in p.split(" ") if w.isalpha()}
                       | set(COLOURS) | set(PLURALS.values()))
KNOWN = frozenset(w for key in PHRASES for w in key) | STOPWORDS
SINGULAR = {plural: shape for shape, plural in PLURALS.items()}


class Item(NamedTuple):
    """One matched part of the sentence: slot, value, token index, whether plural."""

    slot: str
    value: str
    at: int
    plural: bool = False


def _words(text: str) -> list[str]:
    """Lower-case words; commas kept as "," (they separate objects); "x's" -> "xs"."""
    text = re.sub(r"(\w)'s\b", r"\1s", text.lower())
    text = re.sub(r"[-_/]", " ", text)
    return re.findall(r"[a-z]+|\d+|,", text)


def _lemma(word: str) -> tuple[str, bool]:
    """(singular, plural?): a known plural ("balls", "boxes", "crosses", "xs") is made
    singular; a known word is kept."""
    if word in SINGULAR:
        return SINGULAR[word], True
    if word in KNOWN:
        return word, False
    for cut in ("es", "s"):
        if word.endswith(cut) and word[:-len(cut)] in KNOWN:
            return word[:-len(cut)], True
    return word, False


def _repair(word: str) -> str | None:
    """The grammar word `word` is a typo of: same letters in another order (anagram), or
    difflib's ratio ≥ 0.8 (e.g. one letter dropped from a 5-letter word: 2·4/9 = 0.89)."""
    if len(word) < 3 or not word.isalpha():
        return None
    for w in GRAMMAR_WORDS:
        if len(w) >= 3 and sorted(w) == sorted(word):
            return w
    close = difflib.get_close_matches(word, GRAMMAR_WORDS, n=1, cutoff=0.8)
    return close[0] if close else None


@dataclass
class ShapesLanguage:
    """Free text -> a ShapesWorld caption (docs/enhance.md). `embed`: sentence embeddings for
    words none of the tables knows and for ranking alternatives (default MiniLM, loaded on
    first need; None: tables and typo repair only). A word is mapped to the shape or size
    whose phrases are nearest in cosine when that is ≥ `min_similarity`."""

    embed: Embed | None = field(default_factory=MiniLMEmbed)
    min_similarity: float = 0.6
    _prototypes: tuple[Tensor, list[tuple[str, str]]] | None = field(default=None, repr=False)

    def rewrite(self, text: str) -> Rewrite:
        text = _check_text(text)
        try:
            parse(text)
            return _unchanged(text, "already a ShapesWorld caption")
        except KuosanError:
            pass
        items, notes = self._match(_words(text))
        spec, why, extra = _assemble(items)
        if spec is None:
            return _unchanged(text, why)
        notes += extra
        candidates = _alternatives(spec)
        for c in candidates:
            parse(c)  # the grammar's own check: every rewrite must parse
        return Rewrite(text, candidates[0], True, tuple(candidates), tuple(notes))

    # -- parts of the sentence -> grammar parts --

    def _match(self, words: list[str]) -> tuple[list[Item], list[str]]:
        notes: list[str] = []
        fixed: list[tuple[str, bool]] = []
        for w in words:
            lemma, plural = _lemma(w)
            if lemma not in KNOWN:
                guess = _repair(w)
                if guess is not None:
                    notes.append(f"{w} → {guess} (typo)")
                    lemma, plural = _lemma(guess)
            fixed.append((lemma, plural))
        items, i = [], 0
        while i < len(fixed):
            for n in range(min(5, len(fixed) - i), 0, -1):
                key = tuple(f[0] for f in fixed[i:i + n])
                if key in PHRASES:
                    slot, value = PHRASES[key]
                    items.append(Item(slot, value, i, any(f[1] for f in fixed[i:i + n])))
                    if " ".join(key) != value and slot not in ("separator", "background noun"):
                        notes.append(f"{' '.join(key)} → {value}")
                    i += n
                    break
            else:
                word, plural = fixed[i]
                hit = None if word in KNOWN or not word.isalpha() else self._nearest(word)
                if hit is not None:
                    items.append(Item(*hit, i, plural))
                    notes.append(f"{word} → {hit[1]} (MiniLM)")
                i += 1
        return items, notes

    def _nearest(self, word: str) -> tuple[str, str] | None:
        """The shape or size whose phrases are nearest to `word` in embedding cosine, when
        that is at least `min_similarity`."""
        if self.embed is None or len(word) < 3:
            return None
        if self._prototypes is None:
            labels = [(s, v) for s in ("shape", "size") for v, ps in LEXICON[s].items()
                      for _ in ps]
            texts = [p for s in ("shape", "size") for ps in LEXICON[s].values() for p in ps]
            self._prototypes = (self.embed(texts), labels)
        protos, labels = self._prototypes
        sims = protos @ self.embed([word])[0]
        best = int(sims.argmax())
        return labels[best] if float(sims[best]) >= self.min_similarity else None


def _assemble(items: list[Item]) -> tuple[CaptionSpec | None, str, list[str]]:
    """A caption spec from the matched parts, or (None, reason, [])."""
    notes: list[str] = []
    background, kept = "white", []
    for j, it in enumerate(items):
        nxt = items[j + 1] if j + 1 < len(items) else None
        if it.slot == "background":
            if nxt is not None and nxt.slot == "colour" and nxt.at == it.at + 1:
                continue  # "dark red", "light blue": a shade of the colour, not a background
            background = it.value
        elif it.slot == "colour" and nxt is not None and nxt.slot == "colour" \
                and nxt.at == it.at + 1:
            continue  # "navy blue", "lime green": the last colour word of a run counts
        elif it.slot == "background noun":
            if kept and kept[-1].slot == "colour" and kept[-1].at >= it.at - 2:
                notes.append(f"a {kept.pop().value} background is not in the grammar: dropped")
        else:
            kept.append(it)
    if any(it.slot == "unsupported number" for it in kept):
        return None, "ShapesWorld captions count two or three objects only", []
    shapes = [it for it in kept if it.slot == "shape"]
    if not shapes:
        return None, "names no ShapesWorld shape (circle, square, triangle, cross)", []
    if len(shapes) > 2:
        return None, f"names {len(shapes)} objects; ShapesWorld captions state one or two", []
    relations = [it for it in kept if it.slot == "relation"]
    if relations and len(shapes) == 1:
        return None, (f"'{relations[0].value}' needs two shapes, but only one maps "
                      f"({shapes[0].value})"), []
    numbers = [int(it.value) for it in kept if it.slot == "number"]
    count = numbers[0] if numbers else (2 if shapes[0].plural and len(shapes) == 1 else 1)
    if count > 1 and len(shapes) == 2:
        return None, "a count of objects beside another object is not in the grammar", []
    if not numbers and count == 2:
        notes.append("plural without a number → two")
    objects = _attach(kept, shapes)
    if count > 1:
        o = objects[0]
        if o.colour is None:
            return None, "a ShapesWorld count states its colour (e.g. 'two red circles')", []
        spec = CaptionSpec("count", (ObjSpec(o.shape, o.colour, o.size),) * count, count=count)
    elif len(shapes) == 1:
        positions = [it.value for it in kept if it.slot == "position"]
        o = objects[0]
        spec = CaptionSpec("single", (ObjSpec(o.shape, o.colour, o.size,
                                              _position(positions)),))
    else:
        if not relations:
            notes.append("no relation stated → to the left of (reading order)")
            relation, first = "to the left of", 0
        else:
            rel = relations[0]
            relation = rel.value
            # "above B, A" and "B with A above it": the subject is the second object named
            first = 1 if rel.at < shapes[0].at or rel.at > shapes[1].at else 0
        spec = CaptionSpec("pair", (objects[first], objects[1 - first]), relation)
    if background != "white":
        spec = CaptionSpec(spec.kind, spec.objects, spec.relation, spec.count, background)
    return spec, "", notes


def _attach(items: list[Item], shapes: list[Item]) -> list[ObjSpec]:
    """Colours and sizes given to shapes: the next shape in the same segment (segments end at
    relations and separators), else the previous one in it, else the nearest shape."""
    segment, seg_of = 0, {}
    for it in items:
        if it.slot in ("relation", "separator"):
            segment += 1
        seg_of[it.at] = segment
    attrs: list[dict[str, str]] = [{} for _ in shapes]
    for it in items:
        if it.slot not in ("colour", "size"):
            continue
        same = [k for k, s in enumerate(shapes) if seg_of[s.at] == seg_of[it.at]]
        after = [k for k in same if shapes[k].at > it.at]
        before = [k for k in same if shapes[k].at < it.at]
        if after or before:
            k = after[0] if after else before[-1]
        else:
            k = min(range(len(shapes)), key=lambda k: (abs(shapes[k].at - it.at),
                                                       shapes[k].at > it.at))
        attrs[k].setdefault(it.slot, it.value)
    return [ObjSpec(s.value, a.get("colour"), a.get("size")) for s, a in zip(shapes, attrs,
                                                                             strict=True)]


def _position(positions: list[str]) -> str | None:
    """One grid cell from the position words: a vertical and a horizontal one make a corner
    ("top ... left"), otherwise the last one stated counts."""
    if not positions:
        return None
    v = [p for p in positions if CORNER_PARTS.get(p) == "v"]
    h = [p for p in positions if CORNER_PARTS.get(p) == "h"]
    if v and h and len(positions) == 2:
        return f"{v[0]} {h[0]}"
    return positions[-1]


FLIP = {"above": "below", "below": "above", "to the left of": "to the right of",
        "to the right of": "to the left of"}


def _alternatives(spec: CaptionSpec) -> list[str]:
    """The caption, then captions that state the same: a pair read from its other object."""
    out = [format_caption(spec)]
    if spec.kind == "pair":
        flipped = CaptionSpec("pair", spec.objects[::-1], FLIP[spec.relation],
                              background=spec.background)
        out.append(format_caption(flipped))
    return out


# --- a finite caption set (the emoji model's captions plug in here) ---------------------------


@dataclass
class CaptionSet:
    """Rewrites to the caption of `captions` nearest in embedding cosine, when it is at least
    `min_similarity`; `candidates` holds the `top` nearest."""

    captions: Sequence[str]
    embed: Embed = field(default_factory=MiniLMEmbed)
    min_similarity: float = 0.5
    top: int = 4
    _matrix: Tensor | None = field(default=None, repr=False)

    def rewrite(self, text: str) -> Rewrite:
        text = _check_text(text)
        if not self.captions:
            raise KuosanError("CaptionSet needs at least one caption")
        if text in self.captions:
            return _unchanged(text, "already one of the model's captions")
        if self._matrix is None:
            self._matrix = self.embed(list(self.captions))
        sims = self._matrix @ self.embed([text])[0]
        order = torch.argsort(sims, descending=True)[:self.top].tolist()
        best = float(sims[order[0]])
        if best < self.min_similarity:
            return _unchanged(text, f"no caption is near enough (best cosine {best:.2f} < "
                                    f"{self.min_similarity:g})")
        ranked = tuple(self.captions[i] for i in order if sims[i] >= self.min_similarity)
        return Rewrite(text, ranked[0], True, ranked, (f"nearest caption, cosine {best:.2f}",))
