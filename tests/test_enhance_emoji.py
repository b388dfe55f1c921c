"""Prompt enhancement for emoji models (kuosan.enhance_emoji): style words, skin tones, names."""

from __future__ import annotations

import pytest
from conftest import bag_of_words_embed

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


stub_embed = bag_of_words_embed(VOCAB, {"truck": "engine", "puppy": "dog", "kitty": "cat"})


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


# --- benchmarks/enhance_emoji.py: its pure parts, on synthetic entries ----------------------------


@pytest.fixture(scope="module")
def bench():
    from conftest import benchmark_module

    yield from benchmark_module("enhance_emoji")


def _entry(cps, name, style, keywords=(), tone=None):
    from kuosan.data.emoji import EmojiEntry

    return EmojiEntry(cps, "", name, style, keywords, tone, False, f"{name}, {style} style")


def test_the_benchmark_compares_meanings_not_strings(bench):
    woman, man, engine, dark = 0x1F469, 0x1F468, 0x1F692, 0x1F3FF
    cat = bench.Catalogue([
        _entry((0x1F6D1,), "octagonal sign", "flat", ("stop sign",)),
        _entry((woman, 0x200D, engine), "woman firefighter", "flat"),
        _entry((woman, dark, 0x200D, engine), "woman firefighter: dark skin tone", "glossy",
               tone="dark skin tone"),
        _entry((man, 0x200D, engine), "man firefighter", "flat"),
    ])
    assert cat.meaning("stop sign, flat style") == cat.meaning("octagonal sign, flat style")
    assert cat.meaning("woman firefighter") != cat.meaning("man firefighter")  # gender counts
    assert cat.meaning("woman firefighter: dark skin tone")[1:] == ("dark skin tone", None)
    assert cat.meaning("a zebra")[0] is None
    assert cat.index("woman firefighter: dark skin tone, glossy style") == 2
    with pytest.raises(KuosanError, match="names no picture"):
        cat.index("woman firefighter: dark skin tone, flat style")


def test_the_benchmark_table_and_prompt_file(bench, tmp_path):
    rows = bench.load_prompts(bench.PROMPTS)
    assert len(rows) >= 50 and {r["kind"] for r in rows} == set(bench.KINDS)
    assert all((r["caption"] is None) == (r["kind"] == "none") for r in rows)
    table = bench.table([
        {"kind": "style", "mapped": True, "without": False, "with": True},
        {"kind": "style", "mapped": False, "without": False, "with": False},
        {"kind": "none", "mapped": True},
    ])
    assert table["style"] == {"n": 2, "mapping": 50.0, "without": 0.0, "with": 50.0}
    assert table["all"]["n"] == 3 and table["all"]["mapping"] == pytest.approx(200 / 3)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a fox", "kind": "rhyme"}\n')
    with pytest.raises(KuosanError, match="kind"):
        bench.load_prompts(bad)
