"""Scenes drawn by a model of single emoji (kuosan.scenes): the layout of a caption, each emoji
drawn in its tile with its own seed, the canvas white elsewhere, and the command's --scene."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import same_pixels
from PIL import Image

from kuosan import Pipeline
from kuosan.cli import main
from kuosan.data.emoji_scenes import RELATIONS, SIDES, paste_tiles, place_tiles
from kuosan.errors import KuosanError
from kuosan.images import pil_to_uint8
from kuosan.limits import LimitError, Limits
from kuosan.metrics.emoji_scenes import parse
from kuosan.scenes import ScenePipeline, scene_captions

PAIR = "a red apple to the left of a fox face, glossy style"
ROW = "a rocket, a tulip and a dog face in a row, flat style"
SINGLE = "a fire engine at the top left, flat style"


@pytest.fixture(scope="module")
def emoji32() -> Pipeline:
    return Pipeline.load("emoji-32", precision="fp32")


@pytest.mark.parametrize("relation", RELATIONS)
def test_place_tiles_keeps_a_given_relation(relation):
    for seed in range(50):
        (a, b), rel, pos = place_tiles(np.random.default_rng(seed), 64, "pair", relation)
        assert rel == relation and pos is None
        (ax, ay, asz), (bx, by, bsz) = a, b
        assert round(SIDES["pair"][0] * 64) <= min(asz, bsz) <= max(asz, bsz) <= round(SIDES["pair"][1] * 64)
        assert {"to the left of": ax + asz < bx, "to the right of": bx + bsz < ax,
                "above": ay + asz < by, "below": by + bsz < ay}[relation]


def test_place_tiles_keeps_a_given_position_and_rows_run_left_to_right():
    for seed in range(50):
        [(x, y, side)], rel, pos = place_tiles(np.random.default_rng(seed), 64, "single",
                                               position="bottom right")
        assert pos == "bottom right" and rel is None and x + side / 2 > 40 and y + side / 2 > 40
        tiles, rel, pos = place_tiles(np.random.default_rng(seed), 64, "row")
        assert rel is None and pos is None and len(tiles) == 3
        assert tiles[0][0] + tiles[0][2] < tiles[1][0] and tiles[1][0] + tiles[1][2] < tiles[2][0]
    with pytest.raises(KuosanError, match="unknown scene kind"):
        place_tiles(np.random.default_rng(0), 64, "crowd")


def test_scene_captions_keep_names_the_grammar_can_hold():
    caps = scene_captions(["red apple, flat style", "owl", "family: man, boy, glossy style",
                           "hand with index finger and thumb crossed, flat style",
                           "red apple, flat style"])
    assert caps == ["a red apple in the center, flat style", "an owl in the center"]
    assert [parse(c).names for c in caps] == [("red apple",), ("owl",)]


def test_layout_follows_the_caption(emoji32):
    scenes = ScenePipeline(emoji32, 64)
    tiles = scenes.layout(PAIR, seed=3)
    assert [t.caption for t in tiles] == ["red apple, glossy style", "fox face, glossy style"]
    assert tiles[0].x + tiles[0].side < tiles[1].x  # the apple on the left
    assert scenes.layout(PAIR, seed=3) == tiles and scenes.layout(PAIR, seed=4) != tiles
    assert [t.caption for t in scenes.layout(ROW, 0)] == [
        "rocket, flat style", "tulip, flat style", "dog face, flat style"]


def test_each_emoji_is_the_models_own_drawing_in_its_tile_on_white(emoji32):
    scenes = ScenePipeline(emoji32, 64)
    result = scenes.generate([PAIR, ROW], num_inference_steps=2, seed=5)
    assert len(result) == 2 and result.seeds == [5, 6] and result.prompts == [PAIR, ROW]
    assert result.settings["scene"] == 64 and result.model == "emoji-32"
    assert result.sampler == emoji32.default_sampler and result.steps == 2
    for i, (image, caption) in enumerate(zip(result, [PAIR, ROW], strict=True)):
        assert image.size == (64, 64) and image.mode == "RGB"
        tiles = scenes.layout(caption, 5 + i)
        drawn = emoji32.generate([t.caption for t in tiles], num_inference_steps=2, generator=[
            torch.Generator().manual_seed(3 * (5 + i) + k) for k in range(len(tiles))])
        expected = paste_tiles(64, [(pil_to_uint8(im, 3), t.x, t.y, t.side)
                                    for im, t in zip(drawn, tiles, strict=True)])
        assert same_pixels(image, expected)  # the scene's batch holds 5 emoji, this one 2 or 3
        inside = np.zeros((64, 64), dtype=bool)
        for t in tiles:
            inside[t.y:t.y + t.side, t.x:t.x + t.side] = True
        assert (np.asarray(image)[~inside] == 255).all() and (np.asarray(image)[inside] < 200).any()


def test_an_image_is_the_same_whatever_the_batch(emoji32):
    scenes = ScenePipeline(emoji32, 64)
    both = scenes.generate([SINGLE, PAIR], num_inference_steps=2, seed=1, batch_size=1)
    alone = scenes.generate(PAIR, num_inference_steps=2, seed=2)
    assert same_pixels(both[1], alone[0])
    twice = scenes.generate(SINGLE, num_images_per_prompt=2, num_inference_steps=2, seed=1)
    assert same_pixels(twice[0], both[0])
    assert not np.array_equal(np.asarray(twice[0]), np.asarray(twice[1]))


def test_bad_scenes_are_refused_before_any_work(emoji32):
    scenes = ScenePipeline(emoji32, 64)
    with pytest.raises(KuosanError, match=r"cannot parse the scene caption 'a red apple near a "
                                          r"fox'.*--enhance"):
        scenes.generate(["a red apple at the top, flat style", "a red apple near a fox"])
    for size in (40, 16, 512, 64.0, True):
        with pytest.raises(KuosanError, match=r"scene size must be a multiple of 16"):
            ScenePipeline(emoji32, size)
    with pytest.raises(KuosanError, match="seed="):
        scenes.generate(PAIR, generator=torch.Generator())
    with pytest.raises(KuosanError, match="num_images_per_prompt"):
        scenes.generate(PAIR, num_images_per_prompt=0)
    small = ScenePipeline(Pipeline.load("emoji-32", limits=Limits(images=16)), 64)
    with pytest.raises(LimitError, match="batch_size × emoji per scene: 24"):
        small.generate(ROW, num_images_per_prompt=8, batch_size=8)
    with pytest.raises(LimitError, match="num_images_per_prompt: 17"):
        small.generate(SINGLE, num_images_per_prompt=17)


def test_a_model_without_captions_draws_no_scene():
    for text, kind in ((False, "image"), (True, "vector")):
        pipe = SimpleNamespace(is_text_conditioned=text, info=SimpleNamespace(kind=kind), name="m")
        with pytest.raises(KuosanError, match="'m' is not one"):
            ScenePipeline(pipe, 64)
    world = SimpleNamespace(is_text_conditioned=True, info=SimpleNamespace(kind="image", name="emojiworld"),
                            name="w")
    with pytest.raises(KuosanError, match="'w' draws whole scenes itself"):
        ScenePipeline(world, 64)


def test_free_words_become_a_scene_of_the_models_emoji(emoji32):
    scenes = ScenePipeline(emoji32, 64)
    assert scenes.enhance_prompt("a red apple to the left of a fox face, glossy") == PAIR
    result = scenes.generate("a red apple at the top left, flat", num_inference_steps=2,
                             enhance_prompt=True)
    assert result.prompts == ["a red apple at the top left, flat style"]
    assert result.settings["user_prompt"] == "a red apple at the top left, flat"


def test_command_scene_writes_and_reproduces_a_scene(tmp_path, capsys):
    out = tmp_path / "scene.png"
    assert main(["generate", PAIR, "--scene", "--steps", "2", "--out", str(out)]) == 0
    with Image.open(out) as img:
        assert img.size == (64, 64)
        params = json.loads(img.text["kuosan"])
    assert params["scene"] == 64 and params["prompt"] == PAIR
    again = tmp_path / "again.png"
    assert main(["generate", "--from-png", str(out), "--out", str(again)]) == 0
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(again)))
    assert main(["generate", SINGLE, "--scene", "96", "--steps", "2", "--out", str(out)]) == 0
    assert Image.open(out).size == (96, 96)
    capsys.readouterr()
    assert main(["generate", "a red apple near a fox", "--scene", "--out", str(out)]) == 2
    assert "cannot parse the scene caption" in capsys.readouterr().err
    assert main(["generate", PAIR, "--scene", "40", "--out", str(out)]) == 2
    assert "scene size must be a multiple of 16 from 32 to 256, got 40" in capsys.readouterr().err


def test_a_changed_name_redraws_only_its_own_emoji(emoji32):
    """The layout depends on the seed and the caption's kind and relation, each emoji's noise
    on the seed and its place in the caption: editing one NAME keeps the rest of the picture."""
    scenes = ScenePipeline(emoji32, 64)
    other = "a red apple to the left of a dog face, glossy style"
    a, b = (scenes.generate(c, num_inference_steps=2, seed=7)[0] for c in (PAIR, other))
    tiles = scenes.layout(PAIR, 7)
    assert [(t.x, t.y, t.side) for t in tiles] == [(t.x, t.y, t.side) for t in scenes.layout(other, 7)]
    (x0, y0, s0), (x1, y1, s1) = ((t.x, t.y, t.side) for t in tiles)
    a, b = np.asarray(a), np.asarray(b)
    # the same apple, bit for bit: fp32, and both batches have the same shapes (two emoji whose
    # captions have as many tokens)
    assert np.array_equal(a[y0:y0 + s0, x0:x0 + s0], b[y0:y0 + s0, x0:x0 + s0])
    assert not np.array_equal(a[y1:y1 + s1, x1:x1 + s1], b[y1:y1 + s1, x1:x1 + s1])  # fox → dog


def test_seeds_out_of_range_are_refused(emoji32):
    scenes = ScenePipeline(emoji32, 64)
    for seed in (-1, 2**70, 1.5, True, "7"):
        with pytest.raises(KuosanError, match="a scene's seed must be an integer from 0 to"):
            scenes.generate(SINGLE, seed=seed, num_inference_steps=1)
    for seed in (2**64, -(2**63) - 1, 2**64 - 1, "7"):  # 2⁶⁴ - 1: image 1 of 2 would be seeded 2⁶⁴
        with pytest.raises(KuosanError, match="seed must be an integer from"):
            emoji32.generate("red apple", seed=seed, num_images_per_prompt=2, num_inference_steps=1)


def test_a_layout_seed_gives_every_image_one_layout(emoji32, tmp_path, capsys):
    scenes = ScenePipeline(emoji32, 64, layout_seed=11)
    result = scenes.generate(PAIR, num_images_per_prompt=2, num_inference_steps=2, seed=3)
    assert result.settings["layout_seed"] == 11 and result.seeds == [3, 4]
    tiles = scenes.layout(PAIR, 11)
    one, two = (np.asarray(im) for im in result)
    inside = np.zeros((64, 64), dtype=bool)
    for t in tiles:
        inside[t.y:t.y + t.side, t.x:t.x + t.side] = True
    assert (one[~inside] == 255).all() and (two[~inside] == 255).all()  # the same places
    assert not np.array_equal(one, two)  # each image its own drawings
    plain = ScenePipeline(emoji32, 64).generate(PAIR, num_inference_steps=2, seed=3)
    assert "layout_seed" not in plain.settings
    for bad in (-1, 2**63, 1.5, True):
        with pytest.raises(KuosanError, match="layout seed must be an integer"):
            ScenePipeline(emoji32, 64, layout_seed=bad)
    out = tmp_path / "v.png"
    assert main(["generate", PAIR, "--scene", "--layout-seed", "11", "--steps", "2", "--seed", "3",
                 "--precision", "fp32", "--out", str(out)]) == 0
    assert same_pixels(Image.open(out).convert("RGB"), one)  # one scene here, two above
    assert json.loads(Image.open(out).text["kuosan"])["layout_seed"] == 11
    capsys.readouterr()
    assert main(["generate", "red apple", "--layout-seed", "3", "--out", str(out)]) == 2
    assert "--layout-seed places the emoji of a scene: it needs --scene" in capsys.readouterr().err


def test_the_command_hints_at_scene_for_a_scene_caption(tmp_path, capsys):
    out = tmp_path / "x.png"
    assert main(["generate", PAIR, "--steps", "1", "--out", str(out)]) == 0
    assert "hint: this is a scene caption; --scene" in capsys.readouterr().err
    assert main(["generate", "red apple, flat style", "--steps", "1", "--out", str(out)]) == 0
    assert "hint" not in capsys.readouterr().err
