"""Pipeline calls return a Result (the images and what made them); kuosan.metadata turns it into
PNG text that `kuosan generate --from-png` reads back, old kuosan PNGs included."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_pipeline_reference import assert_same_pixels

from kuosan import Pipeline
from kuosan.checkpoint import BUNDLED, weights_digest
from kuosan.cli import main
from kuosan.errors import KuosanError
from kuosan.images import save_png
from kuosan.metadata import png_text, read_parameters
from kuosan.result import Result

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def pipe():
    return Pipeline.load("shapes-32", device="cpu")


def test_result_says_what_was_used_and_is_a_sequence_of_images(pipe):
    result = pipe.generate(["a red circle", "a blue square"], num_images_per_prompt=2,
                           num_inference_steps=2, seed=3, batch_size=3)
    assert isinstance(result, Result) and result.task == "generate"
    assert len(result) == 4 and all(isinstance(im, Image.Image) for im in result)
    assert list(result) == result.images and result[1:3] == result.images[1:3]
    assert result.prompts == ["a red circle"] * 2 + ["a blue square"] * 2
    assert result.seeds == [3, 4, 5, 6] and result.steps == 2
    assert result.sampler == pipe.default_sampler and result.guidance == pipe.default_guidance
    assert result.model == "shapes-32" and pipe.source == "shapes-32"
    assert result.model_hash == weights_digest(BUNDLED / "shapes-32") == pipe.digest
    first, *rest = result  # unpacking, as with the list it used to return
    assert first is result[0] and len(rest) == 3


def test_edits_record_their_own_settings(pipe):
    image = Image.new("RGB", (32, 32), "white")
    mask = Image.fromarray(np.pad(np.full((8, 8), 255, np.uint8), 12))
    inpainted = pipe.inpaint(image, mask, "a red circle", num_inference_steps=2, resample=2,
                             feather=1.5)
    assert (inpainted.sampler, inpainted.resample) == ("ddpm", 2)  # resampling: ddpm
    assert inpainted.settings == {"feather": 1.5} and inpainted.strength is None
    outpainted = pipe.outpaint(image, right=4, num_inference_steps=2)
    assert outpainted.settings == {"left": 0, "top": 0, "right": 4, "bottom": 0}
    assert outpainted[0].size == (36, 32) and outpainted.resample == 1
    varied = pipe.vary(image, num_images=2, num_inference_steps=2, guidance_scale=1.5, seed=9)
    assert varied.strength == 0.4 and varied.seeds == [9, 10] and varied.guidance == 1.5
    given = pipe.img2img(image, "a red circle", num_inference_steps=2,
                         generator=torch.Generator().manual_seed(0))
    assert given.seeds is None and given.strength == 0.7 and given.parameters()["seed"] is None


def test_png_metadata_round_trip(pipe, tmp_path):
    result = pipe.generate("a red circle", num_images_per_prompt=2, num_inference_steps=2, seed=5,
                           negative_prompt="a blue square")
    save_png(result[1], tmp_path / "one.png", png_text(result, 1))
    params = read_parameters(tmp_path / "one.png")
    assert params == result.parameters(1)
    assert params["seed"] == 6 and params["num"] == 1 and params["command"] == "generate"
    line = Image.open(tmp_path / "one.png").text["parameters"]
    assert line.startswith("a red circle\nNegative prompt: a blue square\nSteps: 2, ")
    assert f"Seed: 6, Size: 32x32, Model hash: {pipe.digest}, Model: shapes-32" in line
    grid = png_text(result, extra={"image": "in.png"})  # a grid of all: the first seed, num 2
    assert json.loads(grid["kuosan"])["num"] == 2 and json.loads(grid["kuosan"])["seed"] == 5
    assert ", Image: in.png" in grid["parameters"] and grid["parameters"].endswith("Batch: 2")


def test_from_png_reproduces_a_new_png(tmp_path):
    one, again = tmp_path / "one.png", tmp_path / "again.png"
    assert main(["generate", "a green cross at the top", "--steps", "2", "--guidance", "2.5",
                 "--seed", "4", "--negative", "a red circle", "--out", str(one)]) == 0
    assert main(["generate", "--from-png", str(one), "--out", str(again)]) == 0
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(one)))
    assert Image.open(again).text == Image.open(one).text


@pytest.mark.parametrize("made_in, asked, drawn_in", [
    ("fp32", [], "fp32"),  # the PNG's precision, though auto would pick bf16 here
    ("bf16", [], "bf16"),
    ("fp32", ["--precision", "bf16"], "bf16"),  # a named --precision wins
])
def test_from_png_draws_in_the_precision_the_png_was_made_in(tmp_path, monkeypatch, made_in, asked,
                                                             drawn_in):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True})
    one, again = tmp_path / "one.png", tmp_path / "again.png"
    assert main(["generate", "a green cross", "--model", "shapes-32", "--steps", "2",
                 "--precision", made_in, "--out", str(one)]) == 0
    assert main(["generate", "--from-png", str(one), *asked, "--out", str(again)]) == 0
    assert read_parameters(again)["precision"] == drawn_in
    if drawn_in == made_in:
        assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(one)))


def test_from_png_reads_pngs_written_before_the_result_object(tmp_path):
    """tests/data/old_generate.png and old_vary.png were written by `kuosan generate` and
    `kuosan vary` at commit e676402 (before Result and kuosan.metadata). Their chunks read back
    unchanged; the generate one is made again with the same pixels (exactly on a machine like
    the one that wrote it: see test_pipeline_reference.py; elsewhere within one level, from
    rounding near .5: test_pipeline_reference.assert_same_pixels) and carries the same
    parameters, and the one added since: precision (fp32, as every image made then)."""
    old = DATA / "old_generate.png"
    again = tmp_path / "again.png"
    assert main(["generate", "--from-png", str(old), "--out", str(again)]) == 0
    assert_same_pixels(Image.open(again), Image.open(old), "old_generate.png made again")
    assert read_parameters(again) == read_parameters(old) | {"precision": "fp32"}
    assert Image.open(again).text.keys() == Image.open(old).text.keys()
    with pytest.raises(KuosanError, match="lacks"):
        bad = tmp_path / "bad.png"
        save_png(Image.new("RGB", (4, 4)), bad, {"kuosan": json.dumps({"prompt": "x"})})
        read_parameters(bad)
    assert read_parameters(DATA / "old_vary.png")["command"] == "vary"
    assert main(["generate", "--from-png", str(DATA / "old_vary.png"), "--out", str(again)]) == 2
