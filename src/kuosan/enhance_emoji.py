"""Prompt enhancement for emoji models: free words in, "NAME" or "NAME, STYLE style" out.

    from kuosan.enhance_emoji import EmojiLanguage
    lang = EmojiLanguage.for_model("emoji-32")     # the model's own training captions
    lang.rewrite("a shiny fire truck").text         # 'fire engine, glossy style'
    lang.rewrite("a puppy, flat").text              # 'dog, flat style'

The language is read from the captions the model was trained on (``captions.json`` beside its
weights, :func:`kuosan.checkpoint.load_captions`): every caption is "NAME" or "NAME, STYLE style"
(docs/emoji.md), so the model's names and styles are known without the emoji sources. A rewrite:

1. **style**: a style word or one of its synonyms (:data:`STYLE_WORDS`: "shiny" → glossy,
   "twemoji" → flat), with "in … style" around it, is taken out of the text; a style the model
   was not trained on is dropped with a note;
2. **skin tone**: "dark-skinned", "with medium-light skin", "light skin tone" → that tone;
3. **concept**: what is left, less fillers ("a picture of", "an emoji of", "draw me"), is matched
   to a name: exactly, else the name nearest in MiniLM cosine when at least ``min_similarity``
   ("a puppy" → "dog", "fire truck" → "fire engine"). With a tone, only names drawn in skin
   tones are candidates.

The output composes them: "NAME[: TONE skin tone][, STYLE style]". A concept and style pair the
model never saw together is still written (its held-out pairs, docs/emoji.md): composing them
is the point. Embeddings of the names are computed once (about 30 s for ~2,900 names on one CPU
thread) and cached under ``$KUOSAN_CACHE/enhance/``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from kuosan.checkpoint import load_captions, resolve_model
from kuosan.data.emoji import caption_styles, split_caption
from kuosan.defaults import cache_folder
from kuosan.enhance import Embed, MiniLMEmbed, Rewrite, _check_text
from kuosan.errors import KuosanError

__all__ = ["STYLE_WORDS", "EmojiLanguage", "normalise_prompt"]

# words people use for an art style → the emoji style it names (kuosan.data.emoji.STYLES)
STYLE_WORDS: dict[str, tuple[str, ...]] = {
    "flat": ("flat", "twemoji", "twitter", "vector", "minimalist", "minimal"),
    "glossy": ("glossy", "shiny", "noto", "gradient", "glassy", "polished"),
    "3d": ("3d", "3-d", "three-dimensional", "three dimensional", "fluent", "rendered"),
    "outline": ("outline", "outlined", "openmoji", "line art", "line drawing"),
}
TONES = ("medium-light", "medium-dark", "light", "medium", "dark")  # longest first
_TONE = re.compile(r"\b(?:with (?:a |an )?)?(medium[- ]light|medium[- ]dark|light|medium|dark)"
                   r"[- ](?:skinned|skin(?:[- ]tone[sd]?)?)\b")
_LEAD = re.compile(r"^(?:(?:please |can you )?(?:draw|show|make|paint|give)(?: me)?\b"
                   r"|an? |the |some |(?:an? |the )?(?:picture|image|drawing|emoji|icon|"
                   r"illustration|sticker)s? of )\s*")
_TAIL = re.compile(r"\s*\b(?:emoji|emojis|icon|icons|sticker|picture|image)$")
_TONE_SUFFIX = re.compile(r"^(.*): ([a-z-]+) skin tone$")


def plain(text: str) -> str:
    """``text`` with a typographic apostrophe as ASCII ("o’clock" → "o'clock"), as people type."""
    return text.replace("’", "'")


def normalise_prompt(text: str) -> str:
    """Lower case, single spaces, a typographic apostrophe as ASCII, no end punctuation."""
    return " ".join(plain(_check_text(text).lower()).split()).strip(" .!?;")


def kept_as_typed(text: str, words: str) -> Rewrite:
    """The rewrite of ``text`` that is already a caption once normalised (``words``)."""
    if words == text:
        return Rewrite(text, text, False, reason="already one of the model's captions")
    return Rewrite(text, words, True, (words,), ("lower case, spaces",))


def _style_pattern(word: str) -> re.Pattern[str]:
    """``word`` as a style phrase: "glossy", "in glossy style", "glossy-style", "in a glossy style"."""
    w = re.escape(word).replace(r"\ ", "[ -]")
    return re.compile(rf"(?:\bin (?:an? |the )?)?(?<![\w-]){w}(?![\w-])(?:[ -]styled?\b)?")


class EmojiLanguage:
    """The caption language of an emoji model, read from its training ``captions``."""

    def __init__(self, captions: Sequence[str], *, embed: Embed | None = None,
                 min_similarity: float = 0.5, top: int = 4, cache: Path | None = None) -> None:
        if not captions:
            raise KuosanError("EmojiLanguage needs the model's training captions, got none")
        self.styles: tuple[str, ...] = tuple(caption_styles(captions))
        names = sorted({split_caption(c)[0] for c in captions})
        self.names = frozenset(names)
        self.bases = sorted({self._base(n) for n in names})  # names without a skin tone
        self._plain = {plain(b): b for b in self.bases}  # as normalise_prompt types it
        styled = "|".join(_style_pattern(w).pattern for ws in STYLE_WORDS.values() for w in ws)
        self._styled_names = [b for b in self._plain if re.search(styled, b)]  # "flat shoe"
        self.toned = frozenset(self._base(n) for n in names if _TONE_SUFFIX.match(n))
        self.min_similarity, self.top = min_similarity, top
        self._embed = embed
        self._cache = cache if cache is not None else (cache_folder("enhance") if embed is None
                                                       else None)
        self._matrix: Tensor | None = None

    @classmethod
    def for_model(cls, model: str | Path, **kwargs: Any) -> EmojiLanguage:
        """The language of a checkpoint folder or bundled model (its ``captions.json``)."""
        folder = resolve_model(model)
        captions = load_captions(folder)
        if captions is None:
            raise KuosanError(f"'{folder}' has no captions.json: export it again with this kuosan "
                              f"(`kuosan export` copies the run's captions)")
        return cls(captions, **kwargs)

    @staticmethod
    def _base(name: str) -> str:
        m = _TONE_SUFFIX.match(name)
        return m.group(1) if m else name

    def rewrite(self, text: str) -> Rewrite:
        words = normalise_prompt(text)
        name, style = split_caption(words)
        if name in self.names and (style is None or style in self.styles):
            return kept_as_typed(text, words)
        notes: list[str] = []
        words, style = self.take_style(words, notes)
        words, tone = self.take_tone(words, notes)
        concept = self.strip_fillers(words)
        if not concept:
            return Rewrite(text, text, False, reason="names no concept, only a style or tone")
        ranked = self.rank_names(concept, tone, notes)
        if not ranked:
            return Rewrite(text, text, False, reason=f"no emoji name is near enough to {concept!r}"
                                                    f" (MiniLM cosine < {self.min_similarity:g})")

        def caption(base: str) -> str:
            toned = f"{base}: {tone} skin tone" if tone and base in self.toned else base
            return toned + (f", {style} style" if style else "")

        candidates = tuple(caption(b) for b in ranked)
        if candidates[0] == text:
            return Rewrite(text, text, False, candidates, tuple(notes),
                           reason="already one of the model's captions")
        return Rewrite(text, candidates[0], True, candidates, tuple(notes))

    def take_style(self, words: str, notes: list[str]) -> tuple[str, str | None]:
        """The first style phrase found outside the names it is part of ("flat shoe"), taken out
        of ``words`` with every other style phrase; styles the model lacks dropped."""
        inside = [m.span() for n in self._styled_names
                  for m in re.finditer(rf"(?<![\w-]){re.escape(n)}(?![\w-])", words)]
        found: list[tuple[int, int, str, str]] = []
        for style, synonyms in STYLE_WORDS.items():
            for word in synonyms:
                found += [(m.start(), m.end(), style, word) for m in _style_pattern(word).finditer(words)
                          if not any(a <= m.start() and m.end() <= b for a, b in inside)]
        if not found:
            return words, None
        found.sort()
        _, _, style, word = found[0]
        kept: list[tuple[int, int]] = []  # the phrases to take out, without overlaps
        for start, end, _, _ in found:
            if not kept or start >= kept[-1][1]:
                kept.append((start, end))
        for start, end in reversed(kept):
            words = words[:start] + " " + words[end:]
        words = " ".join(words.split())
        if style not in self.styles:
            notes.append(f"{word}: the model knows no {style} style ({', '.join(self.styles)}); "
                         f"dropped")
            return words, None
        notes.append(f"{word} → {style} style" if word != style else f"{style} style")
        return words, style

    @staticmethod
    def take_tone(words: str, notes: list[str]) -> tuple[str, str | None]:
        m = _TONE.search(words)
        if not m:
            return words, None
        tone = m.group(1).replace(" ", "-")
        notes.append(f"{m.group(0).strip()} → {tone} skin tone")
        return " ".join((words[:m.start()] + " " + words[m.end():]).split()), tone

    @staticmethod
    def strip_fillers(words: str) -> str:
        """``words`` less leading fillers ("a picture of", "draw me a") and trailing ones ("emoji")."""
        words = words.strip(" ,.:;")
        while (m := _LEAD.match(words)) and m.end():
            words = words[m.end():]
        return _TAIL.sub("", words).strip(" ,.:;")

    def rank_names(self, concept: str, tone: str | None, notes: list[str]) -> list[str]:
        """Base names ranked for ``concept``: an exact name first, then the nearest by cosine."""
        ranked = self.nearest(concept, tone)
        if ranked and plain(ranked[0][0]) != plain(concept):
            notes.append(f"{concept} → {ranked[0][0]} (MiniLM cosine {ranked[0][1]:.2f})")
        return [name for name, _ in ranked]

    def nearest(self, concept: str, tone: str | None = None) -> list[tuple[str, float]]:
        """(base name, cosine) of the ``top`` names nearest ``concept`` with cosine at least
        ``min_similarity``, best first; an exact name alone, at cosine 1. With a tone, only
        names drawn in skin tones."""
        pool = [b for b in self.bases if not tone or b in self.toned]
        exact = self._plain.get(plain(concept))
        if exact is not None and exact in pool:
            return [(exact, 1.0)]
        if not pool:
            return []
        index = {b: i for i, b in enumerate(self.bases)}
        sims = self.matrix()[[index[b] for b in pool]] @ self.embedder()([concept])[0]
        order = torch.argsort(sims, descending=True)[:self.top].tolist()
        return [(pool[i], float(sims[i])) for i in order if float(sims[i]) >= self.min_similarity]

    def embedder(self) -> Embed:
        if self._embed is None:
            self._embed = MiniLMEmbed()
        return self._embed

    def matrix(self) -> Tensor:
        """The names' embeddings (len(bases), D), from the cache when it holds them."""
        if self._matrix is not None:
            return self._matrix
        key = hashlib.sha256("\n".join(["all-MiniLM-L6-v2", *self.bases]).encode()).hexdigest()[:16]
        path = self._cache / f"names-{key}.safetensors" if self._cache else None
        if path is not None and path.is_file():
            try:
                matrix = load_file(path)["names"]
                if matrix.shape[0] == len(self.bases):
                    self._matrix = matrix
                    return matrix
            except (OSError, KeyError, SafetensorError):
                pass  # a damaged cache file: computed again and replaced
        self._matrix = self.embedder()(self.bases).float().contiguous()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            save_file({"names": self._matrix}, tmp)
            tmp.replace(path)
        return self._matrix
