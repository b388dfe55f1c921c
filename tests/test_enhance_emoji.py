"""Prompt enhancement for emoji models (kuosan.enhance_emoji): style words, skin tones, names."""

from __future__ import annotations

import pytest
import torch

from kuosan import Pipeline
from kuosan.checkpoint import load_captions
from kuosan.data.emoji import split_caption
from kuosan.enhance_emoji import EmojiLanguage
from kuosan.errors import KuosanError

CAPTIONS = [
    "fire engine", "fire engine, flat style", "fire engine, glossy style",
    "dog", "dog, flat style", "cat face, glossy style", "slice of pizza, flat style",
    "woman firefighter", "woman firefighter, flat style",
    "woman firefighter: dark skin tone, flat style", "woman firefighter: light skin tone",
    "thumbs up sign: medium-light skin tone, glossy style",
]
VOCAB = ["fire", "engine", "truck", "dog", "puppy", "cat", "face", "kitty", "pizza", "slice",
         "woman", "firefighter", "thumbs", "up"]


def stub_embed(texts: list[str]) -> torch.Tensor:
    """Bag of the words of VOCAB, synonyms sharing a column, other words ignored (a text with
    none of them gets an "other" column of its own): a stand-in for MiniLM."""
    same = {"truck": "engine", "puppy": "dog", "kitty": "cat"}
    rows = torch.zeros(len(texts), len(VOCAB) + 1)
    for i, t in enumerate(texts):
        for w in t.replace(",", " ").split():
            if same.get(w, w) in VOCAB:
                rows[i, VOCAB.index(same.get(w, w))] += 1
        rows[i, -1] = float(rows[i].sum() == 0)
    return torch.nn.functional.normalize(rows, dim=-1)


@pytest.fixture()
def lang() -> EmojiLanguage:
    return EmojiLanguage(CAPTIONS, embed=stub_embed)


def test_the_language_is_read_from_the_captions(lang):
    assert lang.styles == ("flat", "glossy")
    assert "woman firefighter" in lang.bases and "woman firefighter: dark skin tone" not in lang.bases
    assert lang.toned == {"woman firefighter", "thumbs up sign"}
    assert split_caption("fox face, glossy style") == ("fox face", "glossy")
    assert split_caption("slice of pizza") == ("slice of pizza", None)


@pytest.mark.parametrize("typed, caption", [
    ("a shiny fire truck", "fire engine, glossy style"),           # synonym style, nearest name
    ("a picture of a puppy in twemoji style", "dog, flat style"),
    ("Fire Engine", "fire engine"),                                  # case only
    ("draw me a kitty emoji, glossy", "cat face, glossy style"),
    ("dark-skinned woman firefighter", "woman firefighter: dark skin tone"),
    ("a woman firefighter with medium-light skin, flat", "woman firefighter: medium-light skin tone, flat style"),
    ("cat face, flat style", "cat face, flat style"),                # a pair never trained: kept
])
def test_free_words_become_a_caption(lang, typed, caption):
    assert lang.rewrite(typed).text == caption


def test_unchanged_with_a_reason_when_nothing_maps(lang):
    assert lang.rewrite("fire engine, flat style").reason.startswith("already")
    assert "no concept" in lang.rewrite("in glossy style").reason
    rw = lang.rewrite("zebra crossing")
    assert not rw.changed and "near enough" in rw.reason
    rw = lang.rewrite("a 3d dog")  # a style this model was not trained on
    assert rw.text == "dog" and any("no 3d style" in n for n in rw.notes)
    with pytest.raises(KuosanError, match="must be a string"):
        lang.rewrite(None)
    with pytest.raises(KuosanError, match="training captions"):
        EmojiLanguage([])


def test_a_tone_limits_the_names_to_those_drawn_in_tones(lang):
    rw = lang.rewrite("light-skinned thumbs up")
    assert rw.text == "thumbs up sign: light skin tone"
    assert all("skin tone" in c for c in rw.candidates)


def test_the_names_embeddings_are_cached(tmp_path):
    calls = []

    def counting(texts):
        calls.append(len(texts))
        return stub_embed(texts)

    first = EmojiLanguage(CAPTIONS, embed=counting, cache=tmp_path)
    assert first.rewrite("a puppy").text == "dog"
    again = EmojiLanguage(CAPTIONS, embed=counting, cache=tmp_path)
    assert again.rewrite("a puppy").text == "dog"
    assert calls == [len(first.bases), 1, 1]  # the names once, then each query
    (cached,) = tmp_path.iterdir()
    cached.write_bytes(b"damaged")
    assert EmojiLanguage(CAPTIONS, embed=counting, cache=tmp_path).rewrite("a puppy").text == "dog"


def test_the_bundled_emoji_model_carries_its_captions():
    """emoji-32's captions.json: its names and styles, and exact names need no encoder."""
    captions = load_captions(Pipeline.load("emoji-32", device="cpu").path)
    assert len(captions) > 10_000 and "red apple, glossy style" in captions
    lang = EmojiLanguage(captions, embed=lambda texts: pytest.fail("no encoder for exact names"))
    assert lang.styles == ("flat", "glossy")
    assert lang.rewrite("a shiny red apple").text == "red apple, glossy style"
    assert lang.rewrite("dark-skinned woman firefighter in flat style").text == (
        "woman firefighter: dark skin tone, flat style")
