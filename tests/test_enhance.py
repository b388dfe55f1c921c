"""Prompt enhancement (kuosan.enhance): free text -> ShapesWorld captions, visual feedback."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from kuosan.data.shapes import Obj, Scene, render
from kuosan.enhance import (
    LEXICON,
    PHRASES,
    CaptionSet,
    Rewrite,
    ShapesLanguage,
    enhance_prompt,
    language_for,
)
from kuosan.enhance_colours import XKCD_COLOURS
from kuosan.enhance_feedback import (
    best_candidate,
    feedback_plan,
    generate_with_feedback,
    shapes_reward,
)
from kuosan.errors import KuosanError
from kuosan.metrics.shapes import PALETTE_HUE, find_objects, parse


@pytest.fixture(scope="module")
def tables() -> ShapesLanguage:
    """The phrase tables and typo repair only (no sentence encoder)."""
    return ShapesLanguage(embed=None)


@pytest.mark.parametrize("kind, prompt, caption", [
    ("synonym", "a crimson ball over a navy box", "a red circle above a blue square"),
    ("synonym", "a huge lavender sphere beneath a tiny scarlet cube",
     "a large purple circle below a small red square"),
    ("paraphrase", "draw a green square with a yellow triangle above it",
     "a yellow triangle above a green square"),
    ("paraphrase", "a circle that is small and cyan in the upper right corner",
     "a small cyan circle at the top right"),
    ("paraphrase", "a purple cross with an orange circle to its left",
     "an orange circle to the left of a purple cross"),
    ("word order", "square, purple, small", "a small purple square"),
    ("word order", "below a red cross, a blue circle", "a blue circle below a red cross"),
    ("word order", "at the bottom a triangle green", "a green triangle at the bottom"),
    ("typo", "a yelow trinagle", "a yellow triangle"),
    ("typo", "a smal bleu cirlce to the rigth of a red sqaure",
     "a small blue circle to the right of a red square"),
    ("extra words", "please make a nice picture of a cyan circle at the top right",
     "a cyan circle at the top right"),
    ("extra words", "hey, an image showing a big orange cross in the middle, thanks",
     "a large orange cross in the center"),
    ("count", "three little green plus signs", "three small green crosses"),
    ("count", "a pair of red balls on a dark background", "two red circles on a black background"),
    ("count", "3 huge yellow boxes", "three large yellow squares"),
    ("background", "a blue triangle against a grey backdrop",
     "a blue triangle on a gray background"),
])
def test_each_kind_maps_into_the_grammar(tables, kind, prompt, caption):
    rw = tables.rewrite(prompt)
    assert rw.changed and rw.text == caption, (kind, rw)
    assert rw.candidates[0] == caption
    parse(rw.text)


def test_a_pair_offers_the_same_statement_read_from_its_other_object(tables):
    rw = tables.rewrite("a crimson ball over a navy box")
    assert rw.candidates == ("a red circle above a blue square",
                             "a blue square below a red circle")


@pytest.mark.parametrize("prompt, why", [
    ("a happy kitty", "names no ShapesWorld shape"),
    ("asdf qwerty", "names no ShapesWorld shape"),
    ("", "names no ShapesWorld shape"),
    ("five red circles", "two or three"),
    ("two circles", "states its colour"),
    ("a red heart above a circle", "needs two shapes"),
    ("a red circle, a blue square and a green cross", "names 3 objects"),
])
def test_nonsense_comes_back_unchanged_with_a_reason(tables, prompt, why):
    rw = tables.rewrite(prompt)
    assert not rw.changed and rw.text == prompt and why in rw.reason
    assert enhance_prompt(prompt, tables) == prompt


def test_a_composed_prompt_is_rewritten_part_by_part(tables):
    assert (enhance_prompt("a crimson ball AND a navy box :0.5", tables)
            == "a red circle AND a blue square :0.5")


def test_each_model_gets_its_caption_language(tmp_path):
    """ShapesWorld: the grammar; emoji: EmojiLanguage over captions.json; another captioned
    model: CaptionSet of its captions; a model without captions.json: a clear error."""
    from kuosan.checkpoint import write_captions
    from kuosan.enhance_emoji import EmojiLanguage

    def pipe(data: str, path):
        info = type("Info", (), {"name": data})()
        return type("Pipe", (), {"info": info, "name": "m", "path": path})()

    assert isinstance(language_for(pipe("shapes", None)), ShapesLanguage)
    with pytest.raises(KuosanError, match="no captions.json"):
        language_for(pipe("emoji", tmp_path))
    write_captions(tmp_path, ["fox face, flat style", "fox face", ""])
    assert isinstance(language_for(pipe("emoji", tmp_path)), EmojiLanguage)
    folder = language_for(pipe("my-folder", tmp_path))
    assert isinstance(folder, CaptionSet) and list(folder.captions) == ["fox face", "fox face, flat style"]


def test_a_caption_of_the_grammar_is_kept(tables):
    rw = tables.rewrite("a small red circle above a large blue square on a gray background")
    assert not rw.changed and "already" in rw.reason


def test_a_prompt_must_be_text(tables):
    with pytest.raises(KuosanError, match="must be a string"):
        tables.rewrite(3)


def test_every_rewrite_parses_or_the_text_is_kept(tables):
    """Random word salad from the phrase tables, colour names and filler: the output is
    always a caption of the grammar, or the input unchanged with a reason."""
    words = sorted({w for key in PHRASES for w in key}) + ["the", "please", "kitty", "zzz",
                                                            "cirle", "on", "of", "at"]
    rng = np.random.default_rng(0)
    changed = 0
    for _ in range(2000):
        text = " ".join(rng.choice(words, size=int(rng.integers(1, 9))))
        rw = tables.rewrite(text)
        if rw.changed:
            changed += 1
            parse(rw.text)
            for c in rw.candidates:
                parse(c)
        else:
            assert rw.text == text and rw.reason
    assert changed > 100  # the salad does map often: the property is not vacuous


def test_colour_names_follow_the_scorer():
    """A colour word means the palette colour the scorer sees in a square of its hue (the same
    rule), and a grey one (chroma < 32) is a background: no object is found."""
    for name, code in XKCD_COLOURS.items():
        slot, value = PHRASES[(name,)]
        if (name,) in {tuple(p.split()) for v in LEXICON.values() for ps in v.values()
                       for p in ps}:
            continue  # the phrase table overrides ("dark" is a background, "white" too)
        rgb = np.array([int(code[i:i + 2], 16) for i in (0, 2, 4)], dtype=np.float64)
        chroma = rgb.max() - rgb.min()
        if 32 <= chroma < 110:  # the same hue (an integer factor: exact) at chroma ≥ 110, over the
            # scorer's core threshold ½·215 of the most saturated palette colour
            rgb = (rgb - rgb.min()) * math.ceil(110 / chroma) + 20
        img = np.full((32, 32, 3), 128, np.uint8)
        img[8:24, 8:24] = np.rint(rgb).astype(np.uint8)
        _, found = find_objects(img)
        if slot == "colour":
            assert [f.colour for f in found] == [value], name
        else:
            assert found == (), name
    assert len(PALETTE_HUE) == 7


def stub_embed(texts: list[str]) -> torch.Tensor:
    """Bag of words over a fixed vocabulary, L2-normalised: a stand-in for MiniLM."""
    vocab = ["grinning", "cat", "fox", "face", "3d", "flat", "style", "happy", "kitty"]
    rows = torch.tensor([[float(w in t.replace(",", " ").split()) for w in vocab]
                         for t in texts])
    rows = torch.cat([rows, (rows.sum(1, keepdim=True) == 0).float()], 1)  # one "other" word
    return torch.nn.functional.normalize(rows, dim=-1)


def test_caption_set_rewrites_to_the_nearest_caption():
    """How a finite caption set (the emoji model's) plugs in: nearest caption by cosine."""
    lang = CaptionSet(["grinning cat face, flat style", "fox face, 3d style", "fox face, flat style"],
                      embed=stub_embed, min_similarity=0.5)
    rw = lang.rewrite("a fox face in 3d style")
    assert rw.changed and rw.text == "fox face, 3d style"
    assert rw.candidates == ("fox face, 3d style", "fox face, flat style")  # cat: cosine < ½
    assert not lang.rewrite("zebra").changed
    assert "already" in lang.rewrite("fox face, flat style").reason


def test_minilm_maps_a_word_no_table_knows():
    lang = ShapesLanguage()
    rw = lang.rewrite("a red globe")
    assert rw.text == "a red circle" and "globe → circle (MiniLM)" in rw.notes
    assert not lang.rewrite("a happy kitty").changed


# --- visual feedback ---------------------------------------------------------------------------


def _image(level: int) -> Image.Image:
    return Image.new("RGB", (32, 32), (level, level, level))


def test_best_candidate_takes_the_highest_reward_and_the_first_on_ties():
    images = [_image(v) for v in (10, 40, 30, 40)]
    reward = lambda im, caption: float(im.getpixel((0, 0))[0])  # a stub
    assert best_candidate(images, "x", reward) == (1, [10.0, 40.0, 30.0, 40.0])
    assert best_candidate(images[:1], "x", reward)[0] == 0


def test_feedback_plan_cycles_the_top_rewrites():
    rw = Rewrite("p", "a", True, ("a", "b"))
    assert feedback_plan(rw, 5) == ["a", "b", "a", "b", "a"]
    with pytest.raises(KuosanError, match="integer >= 1"):
        feedback_plan(rw, 0)


class StubPipe:
    """generate(prompts, seed) -> image i of level seed + i, recording the calls."""

    def __init__(self) -> None:
        self.calls = []

    def generate(self, prompts, *, seed=0, **kwargs):
        self.calls.append((list(prompts), seed, kwargs))
        return [_image(seed + i) for i in range(len(prompts))]


def test_generate_with_feedback_keeps_the_best_scoring_picture(tables):
    pipe = StubPipe()
    # the stub reward prefers the picture drawn with seed 7 + 2
    reward = lambda im, caption: -abs(im.getpixel((0, 0))[0] - 9)
    fb = generate_with_feedback(pipe, "a crimson ball over a navy box", tables, k=4, seed=7,
                                reward=reward, num_inference_steps=5)
    plan = ["a red circle above a blue square", "a blue square below a red circle"] * 2
    assert pipe.calls == [(plan, 7, {"num_inference_steps": 5})]
    assert fb.chosen == 2 and fb.prompt == plan[2] and fb.seeds == [7, 8, 9, 10]
    assert fb.image.getpixel((0, 0))[0] == 9 and fb.rewards == [-2, -1, 0, -1]


def test_shapes_reward_prefers_a_picture_that_shows_the_caption():
    caption = "a small red circle above a large blue square"
    right = render(Scene((Obj("circle", "red", "small", (16, 7), 8),
                          Obj("square", "blue", "large", (16, 22), 14))))
    flipped = render(Scene((Obj("circle", "red", "small", (16, 25), 8),
                            Obj("square", "blue", "large", (16, 10), 14))))
    recoloured = render(Scene((Obj("circle", "green", "small", (16, 7), 8),
                               Obj("square", "blue", "large", (16, 22), 14))))
    r = [shapes_reward(im, caption) for im in (right, flipped, recoloured)]
    assert r[0] >= 10 > max(r[1:])  # only the right picture is satisfied


# --- wired into the pipeline and the command --------------------------------------------------


def test_cli_enhance_keeps_both_prompts_in_the_png(tmp_path, capsys):
    import json

    from kuosan import Pipeline
    from kuosan.cli import main

    typed, caption = "a crimson ball over a navy box", "a red circle above a blue square"
    out = tmp_path / "one.png"
    assert main(["generate", typed, "--model", "shapes-32", "--enhance", "--steps", "2", "--seed", "3",
                 "--out", str(out)]) == 0
    assert f"{typed!r} → {caption!r}" in capsys.readouterr().out
    img = Image.open(out)
    params = json.loads(img.text["kuosan"])
    assert params["prompt"] == caption and params["user_prompt"] == typed
    assert img.text["parameters"].startswith(caption + "\n")
    assert f"User prompt: {typed}" in img.text["parameters"]
    again = tmp_path / "again.png"  # --from-png draws the rewrite again: the same picture
    assert main(["generate", "--from-png", str(out), "--out", str(again)]) == 0
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(img))

    pipe = Pipeline.load("shapes-32")
    result = pipe.generate(typed, enhance_prompt=True, num_inference_steps=2, seed=3)
    assert result.prompts == [caption] and result.settings["user_prompt"] == typed
    assert np.array_equal(np.asarray(result[0]), np.asarray(img))
    assert pipe.enhance_prompt("a happy kitty") == "a happy kitty"
