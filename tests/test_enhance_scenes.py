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
    "an arrow pointing rightwards then curving upwards above a flat shoe, glossy style",
    "a sunrise over mountains to the left of a côte d’ivoire flag, flat style",
    "",
]
VOCAB = ["fire", "engine", "truck", "dog", "puppy", "cat", "face", "kitty", "pizza", "slice",
         "apple", "fox", "hand", "mouth", "arrow", "shoe", "sunrise", "mountains", "flag"]


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


@pytest.mark.parametrize("typed, caption", [
    ("a kitty on the right and a puppy on the left, flat", "a cat face to the right of a dog, flat style"),
    ("a fox at the top and an apple at the bottom, flat", "a fox face above a red apple, flat style"),
    ("a kitty, to its left a puppy, flat", "a dog to the left of a cat face, flat style"),
    ("a fox, on its right a puppy, flat", "a dog to the right of a fox face, flat style"),
    ("a dog, an arrow pointing rightwards then curving upwards and a fox, flat",
     "a dog, an arrow pointing rightwards then curving upwards and a fox face in a row, flat style"),
    ("a flat shoe below a dog, glossy", "a flat shoe below a dog, glossy style"),
    ("a côte d'ivoire flag at the top, flat", "a côte d’ivoire flag at the top, flat style"),
    ("a sunrise over mountains, flat", "a sunrise over mountains in the center, flat style"),
    ("bottom right: a puppy, flat", "a dog at the bottom right, flat style"),
    ("three emoji: a puppy, a kitty and a fox, flat", "a dog, a cat face and a fox face in a row, flat style"),
])
def test_sides_names_with_layout_words_and_styles_inside_names(lang, typed, caption):
    """Who is where when the sides are named apart or by "its"; a name holding a separator
    ("then"), a style word ("flat shoe"), a relation word ("over") or a typographic apostrophe
    is matched whole."""
    rw = lang.rewrite(typed)
    assert rw.text == caption, rw.notes
    assert not any("→" in n for n in rw.notes if "côte" in n)  # an exact name, not a near one


def test_a_leading_count_is_taken_out(lang):
    rw = lang.rewrite("three emoji: a puppy, a kitty and a fox, flat")
    assert "three emoji: taken out" in rw.notes
    assert not any(n.startswith("three emoji") and "→" in n for n in rw.notes)


def test_what_the_grammar_cannot_hold_comes_back_unchanged(lang):
    for typed, reason in (("a dog, a fox, a kitty and an apple, flat", "at most 3"),
                          ("a dog above a kitty above a fox, flat", "no reading"),
                          ("in glossy style", "only a style"),
                          ("a dog " * 300, "longer than 1000")):
        rw = lang.rewrite(typed)
        assert not rw.changed and rw.text == typed and reason in rw.reason, rw.reason


def test_candidates_vary_one_thing_at_a_time(lang):
    rw = lang.rewrite("a kitty above a puppy, glossy")
    assert rw.candidates[0] == rw.text == "a cat face above a dog, glossy style"
    assert len(rw.candidates) == len(set(rw.candidates)) <= lang.top
    for c in rw.candidates[1:]:
        spec = parse(c)
        assert spec.relation == "above" and spec.style == "glossy"
        assert sum(a != b for a, b in zip(spec.names, ("cat face", "dog"), strict=True)) == 1


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
    assert bench.means("a fox face to the right of a dog, flat style", ["a dog to the left of a fox"])
    assert bench.means("a dog below a cat, glossy style", ["a cat above a dog, glossy style"])
    assert not bench.means("a dog below a cat, flat style", ["a cat above a dog, glossy style"])
    assert not bench.means("a dog above a cat, glossy style", ["a cat above a dog"])
    assert not bench.means("a dog, a cat and a fox in a row, flat style", ["a cat, a dog and a fox in a row"])
    assert not bench.means("a dog at the top, flat style", ["a dog at the bottom"])
    assert not bench.means("a hot dog at the top, flat style", ["a dog at the top"])
    assert not bench.means("not a caption", ["a dog at the bottom"])
    assert bench.scores("a dog at the top, flat style", ["a cat at the bottom, glossy style",
                                                         "a dog at the bottom, flat style"]) == {
        "right": False, "layout": False, "names": True, "style": True}
    assert bench.in_training(["a dog at the top"], {"a dog at the top, glossy style"}, ["flat", "glossy"])
    assert not bench.in_training(["a dog at the top, flat style"], {"a dog at the top, glossy style"},
                                 ["flat", "glossy"])


def test_the_benchmark_prompt_file(bench, tmp_path):
    rows = bench.load_prompts(bench.PROMPTS)
    assert len(rows) >= 40 and {r["kind"] for r in rows} == set(bench.KINDS)
    with pytest.raises(KuosanError, match="lack"):
        bench.check_names(rows, ["a dog at the top, flat style"])
    parts = {p: True for p in bench.PARTS}
    table = bench.table([{"kind": "pair", "in_training": False, "scene": parts,
                          "nearest caption": {**parts, "right": False}},
                         {"kind": "row", "in_training": True, "scene": {**parts, "names": False},
                          "nearest caption": parts}])
    assert table["pair"]["scene: right"] == 100.0 and table["pair"]["nearest caption: right"] == 0.0
    assert table["all"]["n"] == 2 and table["all"]["in training"] == 50.0
    assert table["all"]["scene: names"] == 50.0 and table["all"]["nearest caption: layout"] == 100.0
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a fox", "kind": "single", "captions": ["a fox somewhere"]}\n')
    with pytest.raises(KuosanError, match="cannot parse"):
        bench.load_prompts(bad)
    bad.write_text('{"prompt": "a fox", "kind": "poem", "captions": ["a fox in the center"]}\n')
    with pytest.raises(KuosanError, match="kind"):
        bench.load_prompts(bad)


def test_minilm_embed_encodes_each_text_once_in_chunks():
    """MiniLMEmbed encodes ``chunk`` new texts at a time (a scene model's 20,000 captions in
    one batch took over 7 GiB) and never a text twice; rows come back in the order asked."""
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
    with pytest.raises(KuosanError, match="chunk"):
        MiniLMEmbed(chunk=0)


def test_the_benchmark_reads_a_single_emoji_models_names_as_scenes(bench):
    captions = bench.training_captions(None, "emoji-32")
    assert "a red apple in the center, flat style" in captions
    assert "a fox face in the center, glossy style" in captions
    assert all(bench.meaning(c) is not None for c in captions)  # every one a scene caption
    assert not any(":" in c for c in captions)  # skin tones and families: no name of a scene
