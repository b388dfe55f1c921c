"""Text-to-image end to end on a tiny ShapesWorld run: train with captions, load, generate."""


import numpy as np
import pytest
from conftest import TINY_TEXT, train_tiny_text

from kuosan import KuosanError, Pipeline
from kuosan.train import TrainConfig, train


@pytest.fixture(scope="module")
def run(tiny_text_run):
    return tiny_text_run


def test_generate_shapes_and_seeds(run):
    pipe = Pipeline.load(run)
    assert pipe.is_text_conditioned and pipe.config["text_encoder"]["type"] == "transformer"
    kwargs = {"num_inference_steps": 3, "guidance_scale": 2.0, "seed": 7}
    images = pipe.generate(["a red circle", "a blue square"], num_images_per_prompt=2, **kwargs)
    assert len(images) == 4 and images[0].size == (32, 32) and images[0].mode == "RGB"
    alone = pipe.generate(["a red circle", "a blue square"], num_images_per_prompt=2, batch_size=1, **kwargs)
    for a, b in zip(images, alone, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    negative = pipe.generate("a red circle", negative_prompt="a blue square", **kwargs)
    assert not np.array_equal(np.asarray(negative[0]), np.asarray(images[0]))
    unguided = pipe.generate("a red circle", num_inference_steps=3, guidance_scale=1.0, seed=7)
    assert not np.array_equal(np.asarray(unguided[0]), np.asarray(images[0]))


def test_composed_prompts(run):
    import torch

    pipe = Pipeline.load(run)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([900.0, 300.0])

    def out(captions, **kw):
        with torch.no_grad():
            return pipe.conditioned(captions, guidance_scale=2.0, **kw)(x[:len(captions)], t[:len(captions)])

    # Guided outputs computed in other batches round differently: ≈ 2e-5 of |out| ≈ 0.3 per model
    # output (see test_guidance.guided_atol), × (1 + 2·2) at guidance 2: ≈ 3e-5 per guided output.
    guided = 3e-5
    # a part at weight 0 changes nothing; a plain prompt beside a composed one keeps its output
    torch.testing.assert_close(out(["a red circle AND a blue square :0"]), out(["a red circle"]),
                               rtol=0, atol=2 * guided)
    mixed = out(["a red circle AND a blue square", "a green cross"])
    torch.testing.assert_close(mixed[1:], out(["a red circle", "a green cross"])[1:], rtol=0, atol=2 * guided)
    # u + s·((c_a − u) + (c_b − u)) = guided(a) + guided(b) − u, u = the empty caption's output
    a, b, u = out(["a red circle"]), out(["a blue square"]), out([""])
    both = out(["a red circle AND a blue square"])
    torch.testing.assert_close(both, a + b - u, rtol=0, atol=4 * guided)
    assert not torch.allclose(both, a, atol=1e-3)  # b's part moves it by 6e-3 after 3 steps
    image = pipe.generate("a red circle AND a blue square", num_inference_steps=3, seed=7)
    assert image[0].size == (32, 32)
    with pytest.raises(KuosanError, match="empty part"):
        pipe.generate("a red circle AND", num_inference_steps=3)


def test_resume_of_a_text_model_is_exact(tmp_path):
    """Both runs are made here, side by side, so they train under the same threads and MKL/oneDNN
    state (the session fixture's run was made earlier, under whatever state tests left behind)."""
    import torch
    from safetensors.torch import load_file

    straight, split = tmp_path / "straight", tmp_path / "split"
    train_tiny_text(TINY_TEXT, straight)
    train_tiny_text(TINY_TEXT.replace(steps=2), split)
    train_tiny_text(TINY_TEXT, split, resume=True)
    a, b = load_file(straight / "model.safetensors"), load_file(split / "model.safetensors")
    assert any(k.startswith("text.") for k in a)
    assert all(torch.equal(v, b[k]) for k, v in a.items())


def test_text_encoder_needs_captions(tmp_path):
    with pytest.raises(KuosanError, match="captioned data"):
        train(TINY_TEXT.replace(data="digits", model="xs"), tmp_path / "x", progress=False)


def test_prompt_to_unconditional_model_is_refused(tmp_path):
    out = tmp_path / "digits"
    train(TrainConfig.from_flat(data="digits", steps=1, batch_size=8, sample_every=0, save_every=0), out,
          progress=False)
    with pytest.raises(KuosanError, match="not a text-to-image model"):
        Pipeline.load(out).generate("a red circle")


def test_cli_generate_writes_metadata_and_reproduces(run, tmp_path):
    import json

    from PIL import Image

    from kuosan.cli import main

    one = tmp_path / "one.png"
    assert main(["generate", "a green cross at the top", "--model", str(run), "--steps", "3",
                 "--guidance", "2", "--seed", "4", "--out", str(one)]) == 0
    img = Image.open(one)
    params = json.loads(img.text["kuosan"])
    assert params["prompt"] == "a green cross at the top" and params["seed"] == 4
    assert "CFG scale: 2.0" in img.text["parameters"] and "Seed: 4" in img.text["parameters"]
    again = tmp_path / "again.png"
    assert main(["generate", "--from-png", str(one), "--out", str(again)]) == 0
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(img))
    folder = tmp_path / "many"
    assert main(["generate", "a green cross at the top", "--model", str(run), "--steps", "3",
                 "--guidance", "2", "--seed", "4", "-n", "2", "--out", str(folder)]) == 0
    assert np.array_equal(np.asarray(Image.open(folder / "0000.png")), np.asarray(img))
    assert json.loads(Image.open(folder / "0001.png").text["kuosan"])["seed"] == 5


def test_cli_generate_errors(run, tmp_path):
    import subprocess
    import sys

    from PIL import Image

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "kuosan.cli", *args], capture_output=True,
                              text=True, timeout=120, check=False)

    r = cli("generate", "a red circle", "--model", "no-such-model", "--out", str(tmp_path / "x.png"))
    assert r.returncode == 2 and "no-such-model" in r.stderr and "shapes-32" in r.stderr
    assert "Traceback" not in r.stderr
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    r = cli("generate", "--from-png", str(plain))
    assert r.returncode == 2 and "plain.png" in r.stderr
