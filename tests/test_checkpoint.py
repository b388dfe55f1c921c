"""Checkpoint files: round trips, atomic writes, consistency checks; no pickle."""

import json

import pytest
import torch
from safetensors.torch import load_file

import kuosan.checkpoint as ck
from kuosan import KuosanError


def test_round_trip_and_step_stamps(tmp_path):
    model = {"w": torch.randn(3, 4), "b": torch.zeros(4)}
    opt_state = {"state.0.exp_avg": torch.ones(2)}
    ck.save_checkpoint(tmp_path, config={"model": {}, "schedule": {}}, model=model, ema=model,
                       state_json={"images_seen": 10}, state_tensors=opt_state, step=7)
    assert ck.load_config(tmp_path)["format_version"] == ck.FORMAT_VERSION
    tensors, step = ck.load_weights(tmp_path, "ema")
    assert step == 7 and torch.equal(tensors["w"], model["w"])
    state, tensors = ck.load_training_state(tmp_path)
    assert state["step"] == 7 and torch.equal(tensors["state.0.exp_avg"], torch.ones(2))


def test_interrupted_save_is_detected(tmp_path):
    model = {"w": torch.zeros(2)}
    ck.save_checkpoint(tmp_path, config={"model": {}, "schedule": {}}, model=model, ema=model,
                       state_json={"images_seen": 0}, state_tensors={}, step=1)
    ck.write_tensors(tmp_path / ck.MODEL, model, step=2)  # as if a crash came after the first rename
    with pytest.raises(KuosanError, match="inconsistent"):
        ck.load_training_state(tmp_path)


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    ck.write_tensors(path, {"w": torch.ones(3)}, step=1)

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(ck, "save_file", crash)
    with pytest.raises(OSError):
        ck.write_tensors(path, {"w": torch.zeros(3)}, step=2)
    assert torch.equal(load_file(path)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_optimizer_state_round_trip():
    p = torch.nn.Parameter(torch.randn(5))
    opt = torch.optim.AdamW([p], lr=0.1)
    p.grad = torch.randn(5)
    opt.step()
    meta, tensors = ck.optimizer_to_tensors(opt)
    json.dumps(meta)  # JSON-able
    q = torch.nn.Parameter(p.detach().clone())
    opt2 = torch.optim.AdamW([q], lr=0.1)
    ck.optimizer_from_tensors(opt2, json.loads(json.dumps(meta)), {k: v.clone() for k, v in tensors.items()})
    for o in (opt, opt2):
        o.param_groups[0]["params"][0].grad = torch.ones(5)
        o.step()
    assert torch.equal(p, q)


@pytest.mark.parametrize("content, needle", [
    (None, "no config.json"),
    ("{oops", "not valid JSON"),
    ('{"model": {}, "schedule": {}, "format_version": 99}', "format version 99"),
    ('{"hello": 1}', "not a kuosan config"),
])
def test_bad_config(tmp_path, content, needle):
    if content is not None:
        (tmp_path / "config.json").write_text(content)
    with pytest.raises(KuosanError, match=needle):
        ck.load_config(tmp_path)


def test_weights_must_match_the_model(tmp_path):
    m = torch.nn.Linear(3, 2)
    with pytest.raises(KuosanError, match="does not match"):
        ck.load_state_dict_strict(m, {"weight": torch.zeros(2, 3)}, "x.safetensors")
    with pytest.raises(KuosanError, match="shape"):
        ck.load_state_dict_strict(m, {"weight": torch.zeros(3, 3), "bias": torch.zeros(2)}, "x.safetensors")


def test_unknown_model_name_is_explained(tmp_path, monkeypatch):
    from kuosan.pipeline import resolve_model

    monkeypatch.chdir(tmp_path)
    with pytest.raises(KuosanError, match=r"neither a checkpoint folder nor a model bundled.*shapes-32"):
        resolve_model("no-such-model")
    assert resolve_model("shapes-32").name == "shapes-32"  # the bundled model, from any folder
    (tmp_path / "mine").mkdir()
    assert resolve_model("mine") == tmp_path.joinpath("mine").relative_to(tmp_path)
    assert str(resolve_model("runs/x")) == "runs/x"  # a path is left to load_config's errors


def test_export_writes_a_slim_fp16_checkpoint(tmp_path):
    from kuosan import Pipeline
    from kuosan.train import TrainConfig, train

    run = tmp_path / "run"
    train(TrainConfig.from_flat(data="digits", steps=2, batch_size=8, sample_every=0, save_every=0), run,
          progress=False)
    slim = ck.export_checkpoint(run, tmp_path / "slim", sampling={"guidance": 2.5, "sampler": "ddim"})
    assert sorted(p.name for p in slim.iterdir()) == ["config.json", "model.safetensors"]
    # readable by others (not the temporary file's owner-only mode); no local path inside
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in slim.iterdir())
    assert ck.load_config(slim)["exported"]["from"] == "run"
    tensors = load_file(slim / "model.safetensors")
    assert all(v.dtype == torch.float16 for v in tensors.values() if v.is_floating_point())
    ema = load_file(run / "ema.safetensors")
    assert all(torch.equal(v.half(), tensors[k]) for k, v in ema.items())
    pipe = Pipeline.load(slim)
    assert pipe.default_guidance == 2.5 and next(pipe.model.parameters()).dtype == torch.float32
    assert pipe.default_sampler == "ddim" and Pipeline.load(run).default_sampler == "dpmpp_2m"
    default, ddim = pipe.generate(seed=1, num_inference_steps=3), pipe.generate(
        seed=1, num_inference_steps=3, sampler="ddim")
    assert default[0].tobytes() == ddim[0].tobytes()
    assert pipe.sample(2, sampler="ddim", num_inference_steps=3).shape == (2, 1, 8, 8)
    with pytest.raises(KuosanError, match="already holds a checkpoint"):
        ck.export_checkpoint(run, slim)
    again = ck.export_checkpoint(run, slim, sampling={"guidance": 4.0}, replace=True)
    assert Pipeline.load(again).default_guidance == 4.0
    with pytest.raises(KuosanError, match="only overwrites another exported"):
        ck.export_checkpoint(slim, run, replace=True)  # a training run's folder
    with pytest.raises(KuosanError, match="only overwrites another exported"):
        ck.export_checkpoint(slim, slim, replace=True)  # the source itself
    assert (run / "training_state.json").exists() and Pipeline.load(slim).default_guidance == 4.0


def test_a_captioned_run_keeps_its_captions_and_export_carries_them(tiny_text_run, tmp_path):
    """captions.json (the distinct training captions, sorted) is written by training and copied
    by export; a replaced export loses a stale one."""
    from kuosan.metrics.shapes import parse
    from kuosan.train import TrainConfig, train

    captions = ck.load_captions(tiny_text_run)  # of 48 ShapesWorld pictures (conftest)
    assert captions == sorted(set(captions)) and 1 < len(captions) <= 48
    assert all(parse(c) is not None for c in captions)
    slim = ck.export_checkpoint(tiny_text_run, tmp_path / "slim")
    assert ck.load_captions(slim) == captions
    digits = tmp_path / "digits"
    train(TrainConfig.from_flat(data="digits", steps=1, batch_size=8, sample_every=0, save_every=0),
          digits, progress=False)
    assert ck.load_captions(digits) is None
    ck.export_checkpoint(digits, slim, replace=True)
    assert ck.load_captions(slim) is None
    (slim / "captions.json").write_text('{"captions": [1, 2]}')
    with pytest.raises(KuosanError, match="not a captions file"):
        ck.load_captions(slim)
