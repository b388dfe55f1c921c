"""Prompt enhancement for EmojiWorld models (kuosan.enhance_scenes): layout, things, style."""

from __future__ import annotations

import pytest
import torch
from conftest import bag_of_words_embed

from kuosan.enhance import language_for
from kuosan.enhance_scenes import SceneLanguage
from kuosan.errors import KuosanError
from kuosan.metrics.emoji_scenes import parse

CAPTIONS = [
    "a dog to the left of a fire engine, flat style", "a cat face above a slice of pizza, glossy style",
    "a red apple at the top left, flat style", "a face with hand over mouth in the center, glossy style",
    "a dog, a red apple and a cat face in a row, glossy style", "a fox face below a red apple, flat style",
    "",
]
VOCAB = ["fire", "engine", "truck", "dog", "puppy", "cat", "face", "kitty", "pizza", "slice",
         "apple", "fox", "hand", "mouth"]


stub_embed = bag_of_words_embed(VOCAB, {"truck": "engine", "puppy": "dog", "kitty": "cat"})


@pytest.fixture()
def lang() -> SceneLanguage:
    return SceneLanguage(CAPTIONS, embed=stub_embed, cache=None)


@pytest.mark.parametrize("typed, caption", [
    ("a shiny puppy on top of a fire truck", "a dog above a fire engine, glossy style"),
    ("a dog under a kitty, twemoji", "a dog below a cat face, flat style"),
    ("a red apple in the upper-left corner, in glossy style", "a red apple at the top left, glossy style"),
    ("a fox at the bottom right of the picture, flat", "a fox face at the bottom right, flat style"),
    ("a kitty on the left and a puppy on the right, shiny", "a cat face to the left of a dog, glossy style"),
    ("apple, kitty and pizza side by side, flat", "a red apple, a cat face and a slice of pizza in a row, flat style"),
    ("a dog then an apple then a fox, left to right, flat",  "a dog, a red apple and a fox face in a row, flat style"),
    ("a dog and a kitty, flat", "a dog to the left of a cat face, flat style"),       # two things: a pair
    ("a fox, glossy", "a fox face in the center, glossy style"),                      # no place: the center
    ("A Dog to the left of a fire engine, flat style", "a dog to the left of a fire engine, flat style"),
])
def test_free_words_become_a_scene_caption(lang, typed, caption):
    rw = lang.rewrite(typed)
    assert rw.changed and rw.text == caption and rw.candidates[0] == caption
    parse(rw.text)  # a caption of the grammar, read back by the scorer's parser


def test_a_name_holding_a_relation_word_is_not_split(lang):
    """"over" is a relation word, but "face with hand over mouth" is a name: the reading whose
    parts match best wins; "next to" names no side, which the notes say."""
    rw = lang.rewrite("face with hand over mouth next to a dog, glossy")
    assert rw.text == "a face with hand over mouth to the left of a dog, glossy style"
    assert any("no side named" in n for n in rw.notes)


def test_no_style_named_takes_the_first_and_says_so(lang):
    rw = lang.rewrite("a puppy above a fox")
    assert rw.text == "a dog above a fox face, flat style"
    assert any("no style named" in n for n in rw.notes)
    assert any("puppy → dog" in n for n in rw.notes)


def test_unchanged_with_a_reason(lang):
    assert lang.rewrite("a dog to the left of a fire engine, flat style").reason.startswith("already")
    rw = lang.rewrite("a dragon above the sea")
    assert not rw.changed and rw.text == "a dragon above the sea" and "no reading" in rw.reason
    with pytest.raises(KuosanError, match="must be a string"):
        lang.rewrite(None)
    with pytest.raises(KuosanError, match="scene captions"):
        SceneLanguage(["red apple, flat style", ""], embed=stub_embed)


def test_an_emojiworld_model_gets_the_scene_language(tmp_path):
    from kuosan.checkpoint import write_captions

    info = type("Info", (), {"name": "emojiworld"})()
    pipe = type("Pipe", (), {"info": info, "name": "m", "path": tmp_path})()
    write_captions(tmp_path, CAPTIONS)
    assert isinstance(language_for(pipe), SceneLanguage)


# --- benchmarks/enhance_scenes.py: its pure parts ----------------------------------------------


@pytest.fixture(scope="module")
def bench():
    from conftest import benchmark_module

    yield from benchmark_module("enhance_scenes")


def test_the_benchmark_compares_meanings(bench):
    assert bench.means("a fox face to the right of a dog, flat style", ["a dog to the left of a fox face"])
    assert bench.means("a dog below a cat, glossy style", ["a cat above a dog, glossy style"])
    assert not bench.means("a dog below a cat, flat style", ["a cat above a dog, glossy style"])
    assert not bench.means("a dog above a cat, glossy style", ["a cat above a dog"])
    assert not bench.means("a dog, a cat and a fox in a row, flat style", ["a cat, a dog and a fox in a row"])
    assert not bench.means("a dog at the top, flat style", ["a dog at the bottom"])
    assert not bench.means("not a caption", ["a dog at the bottom"])


def test_the_benchmark_prompt_file(bench, tmp_path):
    rows = bench.load_prompts(bench.PROMPTS)
    assert len(rows) >= 40 and {r["kind"] for r in rows} == set(bench.KINDS)
    table = bench.table([{"kind": "pair", "scene": {"right": True}, "nearest caption": {"right": False}},
                         {"kind": "row", "scene": {"right": False}, "nearest caption": {"right": False}}])
    assert table["pair"] == {"n": 1, "scene": 100.0, "nearest caption": 0.0}
    assert table["all"] == {"n": 2, "scene": 50.0, "nearest caption": 0.0}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a fox", "kind": "single", "captions": ["a fox somewhere"]}\n')
    with pytest.raises(KuosanError, match="cannot parse"):
        bench.load_prompts(bad)
    bad.write_text('{"prompt": "a fox", "kind": "poem", "captions": ["a fox in the center"]}\n')
    with pytest.raises(KuosanError, match="kind"):
        bench.load_prompts(bad)


def test_minilm_embed_encodes_each_text_once_in_chunks():
    """MiniLMEmbed encodes ``chunk`` new texts at a time (a scene model's 20,000 captions in
    one batch took 5 GiB) and never a text twice; rows come back in the order asked."""
    from types import SimpleNamespace

    from kuosan.enhance import MiniLMEmbed

    calls = []

    class Encoder:
        def encode(self, texts):
            calls.append(list(texts))
            return SimpleNamespace(pooled=torch.tensor([[float(len(t)), 1.0] for t in texts]))

    embed = MiniLMEmbed(chunk=2)
    embed._encoder = Encoder()
    out = embed(["a", "bb", "ccc", "a", "dddd", "eeeee"])
    assert calls == [["a", "bb"], ["ccc", "dddd"], ["eeeee"]]
    assert out[:, 0].tolist() == [1, 2, 3, 1, 4, 5]
    embed(["bb", "ffffff"])
    assert calls[-1] == ["ffffff"]
