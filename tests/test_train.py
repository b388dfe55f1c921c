"""The trainer end to end: exact resume, many processes, time budget, divergence, bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kuosan import KuosanError
from kuosan.cli import main
from kuosan.optim import (
    balance_weights,
    balanced_indices,
    batch_indices,
    ema_beta,
    with_high_noise,
)
from kuosan.train import TrainConfig, train

TINY = TrainConfig.from_flat(data="digits", steps=6, batch_size=16, warmup_steps=2, sample_every=0,
                   save_every=0, grid_size=4, grid_steps=3, log_every=2)


def weights(folder: Path, name: str = "model") -> dict[str, torch.Tensor]:
    return load_file(folder / f"{name}.safetensors")


def assert_same(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k, v in a.items():
        if atol == 0.0:
            assert torch.equal(v, b[k]), k
        else:
            torch.testing.assert_close(v, b[k], atol=atol, rtol=0, msg=k)


def test_exact_resume_bit_for_bit(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(TINY, straight, progress=False)
    train(TINY.replace(steps=3), split, progress=False)
    r = train(TINY.replace(steps=6), split, resume=True, progress=False)
    assert r.step == 6 and r.images_seen == 6 * 16
    for name in ("model", "ema", "training_state"):
        assert_same(weights(straight, name), weights(split, name))
    # and a different seed really gives different weights (the check above can fail)
    other = tmp_path / "other"
    train(TINY.replace(seed=1), other, progress=False)
    a, b = weights(straight), weights(other)
    assert any(not torch.equal(v, b[k]) for k, v in a.items())


def test_checkpoint_contents_and_samples(tmp_path):
    out = tmp_path / "run"
    train(TINY.replace(steps=4, save_every=2, sample_every=2), out, progress=False)
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "ema.safetensors", "training_state.json",
            "training_state.safetensors", "log.jsonl", "samples"} <= names
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step_0000002.png", "step_0000004.png"]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_time_budget_stops_and_saves(tmp_path):
    out = tmp_path / "run"
    r = train(TINY.replace(steps=None, minutes=0.02), out, progress=False)
    assert r.stopped_by == "minutes" and r.step > 0
    assert (out / "training_state.json").exists()


def test_divergence_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    import kuosan.train as kt

    real = kt.training_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] > 4 else loss

    monkeypatch.setattr(kt, "training_loss", poisoned)
    out = tmp_path / "run"
    with pytest.raises(KuosanError, match="diverged at step 4"):
        train(TINY.replace(steps=10, save_every=2), out, progress=False)
    from kuosan.checkpoint import load_training_state

    state, _ = load_training_state(out)
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in weights(out).values())


def test_refuses_to_overwrite_and_to_resume_nothing(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(KuosanError, match="nothing to resume|no training state"):
        train(TINY, out, resume=True, progress=False)
    train(TINY.replace(steps=1), out, progress=False)
    with pytest.raises(KuosanError, match="already holds a checkpoint"):
        train(TINY, out, progress=False)


@pytest.mark.parametrize("change, message", [
    ({"steps": None, "minutes": None}, "--steps N"),
    ({"lr": -1.0}, "--lr"),
    ({"prediction": "score"}, "--prediction"),
    ({"batch_size": 0}, "batch_size"),
    ({"model": "huge"}, "--preset"),
    ({"high_noise": 1.5}, "--high-noise"),
    ({"shapes_mix": {"pair": 1.0}}, "--shapes-mix"),  # TINY's data is not shapes
])
def test_bad_config_values(tmp_path, change, message):
    with pytest.raises(KuosanError, match=message):
        train(TINY.replace(**change), tmp_path / "run", progress=False)


def test_batch_indices_cover_each_epoch_once():
    n, b = 50, 16
    seen = torch.cat([batch_indices(0, s, b, n) for s in range(25)])  # 400 = 8 epochs
    for e in range(8):
        assert sorted(seen[e * n:(e + 1) * n].tolist()) == list(range(n))
    assert not torch.equal(batch_indices(0, 0, b, n), batch_indices(1, 0, b, n))


def test_high_noise_draws_from_the_noisiest_steps():
    t = torch.randint(0, 1000, (20_000,), generator=torch.Generator().manual_seed(0))
    assert torch.equal(with_high_noise(t, 1000, 0.0, torch.Generator().manual_seed(1)), t)
    every = with_high_noise(t, 1000, 1.0, torch.Generator().manual_seed(1))
    assert every.min() == 850 and every.max() == 999  # {⌈0.85·T⌉, …, T−1}, all of it reached
    some = with_high_noise(t, 1000, 0.4, torch.Generator().manual_seed(1))
    changed = (some != t).float().mean().item()
    # replaced with probability 0.4, and a replacement equals the old t with probability ~1/150;
    # fixed seeds, n = 20,000: SE √(p(1−p)/n) ≤ 0.0035, so 0.015 is 4.3 of them (also below)
    assert changed == pytest.approx(0.4 * (1 - 0.15 / 150), abs=0.015)
    # density on the noisiest steps: 0.6·0.15 + 0.4 = 0.49 of all draws
    assert (some >= 850).float().mean().item() == pytest.approx(0.49, abs=0.015)
    assert torch.equal(some, with_high_noise(t, 1000, 0.4, torch.Generator().manual_seed(1)))
    assert with_high_noise(t[:5], 3, 1.0, torch.Generator()).eq(2).all()  # tiny T: the last step


def test_ema_beta_half_life():
    # after half_life images the old weights count one half
    beta = ema_beta(100, 10**9, half_life=1000, rampup_ratio=0.05)
    assert beta ** (1000 / 100) == pytest.approx(0.5)  # float64: approx's rel 1e-6 ≫ rounding
    assert ema_beta(100, 200, half_life=1000, rampup_ratio=0.05) < beta  # ramp: shorter early


def test_two_processes_equal_one(tmp_path):
    """torchrun with 2 gloo ranks gives, bit for bit, the weights of one process that accumulates
    the same two micro-batches (``--grad-accum 2``).

    Why exact and not a tolerance: rank r and accumulation step m take the same rows of the global
    batch (train_step's ``rows``), so both runs evaluate the same kernels on the same shapes under
    one thread. DDP averages as g₀/2 + g₁/2, accumulation sums ∇(L₀/2) + ∇(L₁/2); halving is exact
    in float32 and backward is linear in the upstream gradient, so the two sums agree bit for bit.
    Against one process on the *full* batch only float32 rounding would bound the difference, and
    AdamW amplifies that where gradients are near zero (1e-5 on one CPU, 2e-7 on another), so that
    comparison says nothing about the code.
    """
    one, two = tmp_path / "one", tmp_path / "two"
    flags = ["train", "--data", "digits", "--steps", "4", "--batch", "16", "--warmup", "2",
             "--sample-every", "0", "--save-every", "0", "--no-progress", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run1 = subprocess.run([sys.executable, "-m", "kuosan.cli", *flags, "--grad-accum", "2",
                           "--out", str(one)],
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert run1.returncode == 0, run1.stderr
    run2 = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29533", "-m", "kuosan.cli", *flags, "--out", str(two)],
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert run2.returncode == 0, run2.stderr
    assert "2 process(es)" in run2.stdout  # each rank did not silently train alone
    assert_same(weights(one), weights(two))
    assert_same(weights(one, "ema"), weights(two, "ema"))


# ---- the config: nested groups, saved as JSON; the flat dict of older runs still reads ---------

BUNDLED_CONFIG = Path(__file__).parents[1] / "src" / "kuosan" / "bundled" / "shapes-32" / "config.json"


def test_config_groups_round_trip_through_json():
    config = TINY.replace(data="shapes", shapes_mix={"pair": 1.0}, init_from="runs/x", grid_size=9)
    stored = json.loads(json.dumps(config.to_dict()))
    assert set(stored) == {"data", "model", "optim", "init", "grid", "runtime"}
    assert stored["data"]["shapes_mix"] == {"pair": 1.0} and stored["grid"]["size"] == 9
    assert TrainConfig.from_dict(stored) == config
    assert TrainConfig.from_dict(config.to_flat()) == config
    assert TrainConfig.from_flat(**config.to_flat()) == config
    with pytest.raises(KuosanError, match="unknown training setting"):
        TINY.replace(lerning_rate=1.0)


def test_the_flat_names_are_those_of_checkpoints_written_before_the_groups():
    """The bundled model's config.json was written with the flat TrainConfig: every one of its
    names maps to a field of a group, and it reads back to the same values; its ``bf16`` (a
    bool, before ``precision``) reads as the precision that run used, and settings added since
    take their defaults."""
    flat = json.loads(BUNDLED_CONFIG.read_text())["train"]
    assert flat["bf16"] is False
    now = {k: v for k, v in flat.items() if k != "bf16"} | {"precision": "fp32"}
    added = {"compile": False, "balance": 0.0, "freeze": ""}  # settings added since, at their defaults
    assert set(now) | set(added) == set(TrainConfig().to_flat()) and not set(now) & set(added)
    config = TrainConfig.from_dict(flat)
    assert config.to_flat() == now | added
    assert config.data.name == "shapes" and config.data.shapes_mix == flat["shapes_mix"]
    config.check()


def test_cli_resumes_a_run_with_a_flat_config(tmp_path):
    """A run saved before the groups (its "train" flat) resumes, bit for bit as one straight run."""
    straight, old = tmp_path / "straight", tmp_path / "old"
    train(TINY, straight, progress=False)
    train(TINY.replace(steps=3), old, progress=False)
    stored = json.loads((old / "config.json").read_text())
    stored["train"] = TINY.replace(steps=3).to_flat()
    (old / "config.json").write_text(json.dumps(stored))
    assert main(["train", "--out", str(old), "--resume", "--steps", "6", "--no-progress"]) == 0
    for name in ("model", "ema"):
        assert_same(weights(straight, name), weights(old, name))
    assert json.loads((old / "config.json").read_text())["train"] == TINY.to_dict()


def test_balance_draws_each_concept_equally_often_at_one():
    """Group 0 has 6 items, group 1 has 2: alpha 0 keeps items uniform (group 0: 3/4 of draws),
    alpha 1 draws each group half the time; draws depend on (seed, step) only."""
    groups = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1])
    assert torch.allclose(balance_weights(groups, 0.0), torch.ones(8, dtype=torch.float64))
    w = balance_weights(groups, 1.0)
    assert torch.allclose(w[groups == 0].sum(), w[groups == 1].sum())
    draws = torch.cat([balanced_indices(w, 0, k, 64) for k in range(200)])
    share = float((groups[draws] == 1).double().mean())
    assert 0.45 < share < 0.55  # 12,800 draws: the standard error of the share is 0.0044
    assert torch.equal(balanced_indices(w, 0, 7, 64), balanced_indices(w, 0, 7, 64))
    assert not torch.equal(balanced_indices(w, 0, 7, 64), balanced_indices(w, 0, 8, 64))


def test_balance_needs_data_with_concepts(tmp_path):
    config = TrainConfig.from_flat(data="digits", steps=1, batch_size=8, sample_every=0,
                                   save_every=0, balance=0.5)
    with pytest.raises(KuosanError, match="--balance needs data"):
        train(config, tmp_path / "run", progress=False)
    with pytest.raises(KuosanError, match="between 0 and 1"):
        TrainConfig.from_flat(balance=2.0).check()


def test_an_interrupt_during_the_last_grid_keeps_the_checkpoint(tmp_path, monkeypatch, capsys):
    """Ctrl-C while the last sample grid is drawn (after the final save): no traceback, the
    checkpoint is complete, the run says it was interrupted."""
    from kuosan.checkpoint import load_weights
    from kuosan.train import Trainer

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "sample_grid", interrupted)
    result = train(TrainConfig.from_flat(data="digits", steps=2, batch_size=8, sample_every=0,
                                         save_every=0), tmp_path / "run", progress=False)
    assert result.stopped_by == "interrupt" and result.step == 2
    assert "last sample grid; it is skipped" in capsys.readouterr().out
    assert load_weights(tmp_path / "run")[1] == 2  # the EMA weights of step 2
