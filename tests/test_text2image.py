"""Text-to-image end to end on a tiny ShapesWorld run: train with captions, load, generate."""

import dataclasses

import numpy as np
import pytest

import kuosan.data as kd
from kuosan import KuosanError, Pipeline
from kuosan.train import TrainConfig, train

TINY = TrainConfig(data="shapes", model="s", steps=3, batch_size=8, warmup_steps=1, sample_every=0,
                   save_every=0, grid_size=2, grid_steps=2, text_encoder="transformer", cond_drop=0.5)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("t2i") / "run"
    mp = pytest.MonkeyPatch()
    mp.setattr(kd, "SHAPES_ITEMS", 48)
    try:
        train(TINY, out, progress=False)
    finally:
        mp.undo()
    return out


def test_generate_shapes_and_seeds(run):
    pipe = Pipeline.load(run)
    assert pipe.is_text_conditioned and pipe.config["text_encoder"]["type"] == "transformer"
    kwargs = dict(num_inference_steps=3, guidance_scale=2.0, seed=7)
    images = pipe.generate(["a red circle", "a blue square"], num_images_per_prompt=2, **kwargs)
    assert len(images) == 4 and images[0].size == (32, 32) and images[0].mode == "RGB"
    alone = pipe.generate(["a red circle", "a blue square"], num_images_per_prompt=2, batch_size=1, **kwargs)
    for a, b in zip(images, alone, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    negative = pipe.generate("a red circle", negative_prompt="a blue square", **kwargs)
    assert not np.array_equal(np.asarray(negative[0]), np.asarray(images[0]))
    unguided = pipe.generate("a red circle", num_inference_steps=3, guidance_scale=1.0, seed=7)
    assert not np.array_equal(np.asarray(unguided[0]), np.asarray(images[0]))


def test_resume_of_a_text_model_is_exact(run, tmp_path):
    import torch
    from safetensors.torch import load_file

    mp = pytest.MonkeyPatch()
    mp.setattr(kd, "SHAPES_ITEMS", 48)
    try:
        split = tmp_path / "split"
        train(dataclasses.replace(TINY, steps=2), split, progress=False)
        train(TINY, split, resume=True, progress=False)
    finally:
        mp.undo()
    a, b = load_file(run / "model.safetensors"), load_file(split / "model.safetensors")
    assert any(k.startswith("text.") for k in a)
    assert all(torch.equal(v, b[k]) for k, v in a.items())


def test_text_encoder_needs_captions(tmp_path):
    with pytest.raises(KuosanError, match="captioned data"):
        train(dataclasses.replace(TINY, data="digits", model="xs"), tmp_path / "x", progress=False)


def test_prompt_to_unconditional_model_is_refused(tmp_path):
    out = tmp_path / "digits"
    train(TrainConfig(data="digits", steps=1, batch_size=8, sample_every=0, save_every=0), out,
          progress=False)
    with pytest.raises(KuosanError, match="not a text-to-image model"):
        Pipeline.load(out).generate("a red circle")
