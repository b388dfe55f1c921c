"""The `kuosan` command: end to end on tiny runs, and one-line errors for a user's mistakes."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from kuosan.cli import main

QUICK = ["--batch", "16", "--warmup", "2", "--sample-every", "0", "--save-every", "0", "--no-progress"]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "digits"
    assert main(["train", "--data", "digits", "--out", str(out), "--steps", "3", *QUICK]) == 0
    return out


def test_sample_folder_and_grid(digits_run, tmp_path):
    folder = tmp_path / "samples"
    assert main(["sample", str(digits_run), "-n", "3", "--steps", "4", "--out", str(folder), "--no-progress"]) == 0
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["0000.png", "0001.png", "0002.png"]
    img = Image.open(folder / "0000.png")
    assert img.size == (8, 8) and img.mode == "L"
    grid = tmp_path / "grid.png"
    assert main(["sample", str(digits_run), "-n", "4", "--steps", "3", "--out", str(grid), "--no-progress"]) == 0
    assert Image.open(grid).size[0] > 8


def test_sample_defaults_to_the_models_fast_sampler(digits_run, tmp_path, capsys):
    assert main(["sample", str(digits_run), "-n", "2", "--out", str(tmp_path / "a"),
                 "--no-progress"]) == 0
    assert "(dpmpp_2m, 20 steps" in capsys.readouterr().out
    assert main(["sample", str(digits_run), "-n", "2", "--sampler", "ddpm", "--out",
                 str(tmp_path / "b"), "--no-progress"]) == 0  # DDPM's full chain: one flag away
    assert "(ddpm, 1000 steps" in capsys.readouterr().out


def test_sample_is_seeded_and_per_image(digits_run, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    main(["sample", str(digits_run), "-n", "3", "--steps", "4", "--seed", "5", "--out", str(a), "--no-progress"])
    main(["sample", str(digits_run), "-n", "1", "--steps", "4", "--seed", "5", "--out", str(b), "--no-progress"])
    assert (a / "0000.png").read_bytes() == (b / "0000.png").read_bytes()


def test_eval_nll(digits_run, capsys):
    assert main(["eval", str(digits_run), "--nll", "--examples", "8", "--timesteps", "4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    # a sanity range: a 3-step model's bound is ~6 bits/dim, uniform over 256 levels is 8
    assert result["unit"] == "bits/dim" and 0 < result["nll"] < 20
    assert main(["eval", str(digits_run), "--nll", "--empty-captions"]) == 2
    assert "--empty-captions applies to text models" in capsys.readouterr().err
    assert main(["eval", str(digits_run), "--nll", "--caption-gain"]) == 2
    assert "--caption-gain applies to text models" in capsys.readouterr().err


def test_eval_nll_of_a_text_model_is_given_the_captions(tiny_text_run, capsys, monkeypatch):
    import kuosan.data as kd

    monkeypatch.setattr(kd, "SHAPES_ITEMS", 48)  # the tiny run's data size, not 20,000
    args = ["eval", str(tiny_text_run), "--nll", "--examples", "6", "--timesteps", "3", "--json",
            "--no-progress"]
    results = []
    for extra in ([], ["--empty-captions"], [], ["--data-seed", "9"]):
        assert main([*args, *extra]) == 0
        results.append(json.loads(capsys.readouterr().out))
    own, empty, again, fresh = results
    assert own["captions"] == "own" and empty["captions"] == "empty" and fresh["data_seed"] == 9
    assert own["nll"] == again["nll"] and own["nll"] != empty["nll"] != fresh["nll"]
    assert all(0 < r["nll"] < 20 for r in results)
    # --caption-gain: both in one run with the same t and noise, so the gain is the difference
    assert main([*args, "--caption-gain"]) == 0
    both = json.loads(capsys.readouterr().out)
    # the empty pass runs the batches of --empty-captions (equal seen); 1e-6 of ~6 allows a
    # reduction in another order; the gain is a mean of differences: float64 rounding, ~1e-15
    assert both["nll"] == own["nll"] and both["nll_empty"] == pytest.approx(empty["nll"], abs=1e-6)
    assert both["caption_gain"] == pytest.approx(empty["nll"] - own["nll"], abs=1e-6)
    assert 0 < both["caption_gain_stderr"] < 1  # a sanity range (7e-4 seen)
    assert main([*(a for a in args if a != "--json"), "--caption-gain"]) == 0  # the text report
    assert "the caption is worth" in capsys.readouterr().out
    assert main([*args, "--caption-gain", "--empty-captions"]) == 2
    assert "leave out --empty-captions" in capsys.readouterr().err


def test_toy_train_sample_csv(tmp_path):
    out = tmp_path / "moons"
    assert main(["train", "--data", "moons", "--out", str(out), "--steps", "2", *QUICK]) == 0
    csv = tmp_path / "points.csv"
    assert main(["sample", str(out), "-n", "10", "--steps", "5", "--out", str(csv), "--no-progress"]) == 0
    assert np.loadtxt(csv, delimiter=",").shape == (10, 2)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kuosan.cli", *args], capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.mark.parametrize("args, needle", [
    (["train", "--data", "/no/such/folder", "--out", "X", "--steps", "1"], "/no/such/folder"),
    (["train", "--data", "digits", "--out", "X"], "--steps"),
    (["train", "--data", "digits", "--out", "X", "--steps", "1", "--lr", "-3"], "--lr"),
    (["train", "--data", "digits", "--out", "X", "--steps", "-1"], "--steps"),
    (["train", "--data", "digits", "--out", "X", "--steps", "1", "--batch", "zero"], "--batch"),
    (["train", "--data", "shapes", "--out", "X", "--steps", "1", "--shapes-mix", "pair"], "--shapes-mix"),
    (["train", "--data", "shapes", "--out", "X", "--steps", "1", "--shapes-mix", "pairs=1"], "'pairs'"),
    (["train", "--data", "digits", "--out", "X", "--steps", "1", "--shapes-mix", "pair=1"], "--shapes-mix"),
    (["sample", "/no/such/run", "-n", "2", "--out", "o.png"], "/no/such/run"),
    (["sample", ".", "-n", "2", "--out", "o.png"], "not a kuosan checkpoint"),
    (["sample", ".", "-n", "0", "--out", "o.png"], "-n"),
    (["eval", "/no/such/run", "--nll"], "/no/such/run"),
    (["generate", "a red circle", "-n", "100000000", "--out", "x"],
     "-n: 100000000 is over the limit of 10,000 images in one call (--no-limits lifts it)"),
    (["outpaint", "x.png", "--right", "100000", "a red circle"], "--right: 100000 is over the limit"),
])
def test_user_mistakes_get_one_line_errors(args, needle, tmp_path):
    r = run_cli(*args)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert needle in r.stderr


def test_empty_folder_and_corrupt_image(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_cli("train", "--data", str(empty), "--out", str(tmp_path / "o"), "--steps", "1")
    assert r.returncode == 2 and str(empty) in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "imgs"
    bad.mkdir()
    Image.new("RGB", (20, 20), (200, 10, 10)).save(bad / "good.png")
    (bad / "broken.png").write_bytes(b"not a png at all")
    r = run_cli("train", "--data", str(bad), "--out", str(tmp_path / "o"), "--steps", "1", "--size", "16")
    assert r.returncode == 2 and "broken.png" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o" / "config.json").exists()


def test_corrupt_checkpoint_is_named(digits_run, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(digits_run, broken)
    (broken / "ema.safetensors").write_bytes(b"\x00" * 20)
    r = run_cli("sample", str(broken), "-n", "1", "--out", str(tmp_path / "x.png"))
    assert r.returncode == 2 and "ema.safetensors" in r.stderr and "Traceback" not in r.stderr
    (broken / "config.json").write_text("{not json")
    r = run_cli("sample", str(broken), "-n", "1", "--out", str(tmp_path / "x.png"))
    assert r.returncode == 2 and "config.json" in r.stderr


def test_help_is_complete():
    for cmd in ("train", "sample", "eval"):
        r = run_cli(cmd, "--help")
        assert r.returncode == 0 and "usage: kuosan" in r.stdout
    assert "--minutes" in run_cli("train", "--help").stdout


def test_generate_writes_a_folder_as_it_goes(tmp_path, capsys):
    folder = tmp_path / "many"
    assert main(["generate", "a red circle", "-n", "5", "--batch", "2", "--steps", "1", "--seed", "3",
                 "--out", str(folder)]) == 0
    err = capsys.readouterr().err
    assert "kuosan: 2 of 5 images" in err and "kuosan: 4 of 5 images" in err
    files = sorted(folder.iterdir())
    assert [f.name for f in files] == [f"{i:04d}.png" for i in range(5)]
    assert [json.loads(Image.open(f).text["kuosan"])["seed"] for f in files] == [3, 4, 5, 6, 7]


def test_generate_without_batch_takes_the_devices_default(tmp_path, capsys):
    from kuosan.cli_images import default_batch

    assert main(["generate", "a red circle", "-n", "17", "--steps", "1", "--out",
                 str(tmp_path / "many")]) == 0
    err = capsys.readouterr().err
    assert "kuosan: 16 of 17 images" in err and "kuosan: 1 of 17" not in err  # batches of 16 here
    assert default_batch(torch.device("cpu")) == 16
    assert default_batch(torch.device("cuda")) == 256  # a device object needs no GPU


def test_ctrl_c_keeps_the_images_written(tmp_path):
    """A hundred million images (--no-limits), interrupted once two are on disk: exit status 130,
    one line saying how many were written, no traceback, every PNG whole, no temporary file."""
    folder = tmp_path / "big"
    proc = subprocess.Popen(
        [sys.executable, "-m", "kuosan.cli", "generate", "a red circle", "-n", "100000000",
         "--no-limits", "--steps", "1", "--batch", "2", "--out", str(folder)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 300
    while len(list(folder.glob("*.png"))) < 2:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no image written in 300 s"
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    written = re.search(r"kuosan: interrupted: ([\d,]+) of 100,000,000 images written to", err)
    assert written, err
    files = sorted(folder.glob("*.png"))
    assert len(files) == int(written[1].replace(",", "")) >= 2
    for i, f in enumerate(files):
        assert f.name == f"{i:04d}.png"
        with Image.open(f) as img:
            img.load()
            assert img.size == (32, 32) and json.loads(img.text["kuosan"])["seed"] == i
    assert not [p for p in folder.iterdir() if p.suffix != ".png"]


def test_export_attribution_reaches_every_png(tiny_text_run, tmp_path, capsys):
    """`kuosan export --attribution` keeps the data licence's credit in config.json; the Pipeline
    and every PNG the model makes (command and web share png_text) carry it."""
    from kuosan import Pipeline
    from kuosan.metadata import png_text

    credit = "Emoji graphics from Twemoji, CC-BY 4.0"
    slim = tmp_path / "slim"
    assert main(["export", str(tiny_text_run), "--out", str(slim), "--attribution", f" {credit} "]) == 0
    assert json.loads((slim / "config.json").read_text())["attribution"] == credit
    out = tmp_path / "a.png"
    assert main(["generate", "a red circle", "--model", str(slim), "--steps", "2", "--out", str(out)]) == 0
    assert Image.open(out).text["Copyright"] == credit
    assert Pipeline.load(slim).attribution == credit and Pipeline.load(tiny_text_run).attribution is None
    plain = Pipeline.load(tiny_text_run).generate("a red circle", num_inference_steps=1)
    assert "Copyright" not in png_text(plain, 0)
    capsys.readouterr()
    assert main(["export", str(tiny_text_run), "--out", str(tmp_path / "x"), "--attribution", " "]) == 2
    assert "--attribution" in capsys.readouterr().err


def test_info_describes_bundled_models_and_runs_without_loading_them(tiny_text_run, tmp_path, capsys):
    """`kuosan info`: every bundled model when none is named; a run's step from its training
    state; the digest PNGs carry; --json; a bad name or a broken folder exits 2 naming it."""
    from kuosan import Pipeline
    from kuosan.checkpoint import bundled_models, weights_digest

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert all(f"{name}  (bundled with kuosan)" in out for name in bundled_models())
    assert "text to image, 32×32 RGB" in out and "flat, glossy" in out
    assert out.count("--scene draws scene captions") == 1  # emoji-32's, not shapes-32's
    assert main(["info", str(tiny_text_run), "emoji-32", "--json"]) == 0
    run, emoji = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    state = json.loads((tiny_text_run / "training_state.json").read_text())
    assert run["trained"] == {"step": state["step"], "images_seen": state["images_seen"]}
    assert run["digest"] == weights_digest(tiny_text_run) == Pipeline.load(tiny_text_run).digest
    assert run["bundled"] is False and run["styles"] == [] and run["task"] == "text to image"
    assert emoji["trained"]["exported"] and emoji["network"]["parameters"] > 1_000_000
    assert emoji["captions"] > 1000 and emoji["attribution"].startswith("Emoji graphics")
    assert emoji["scenes"] is True and run["scenes"] is False
    assert main(["info", "nonesuch"]) == 2
    assert "'nonesuch' is neither a checkpoint folder" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((tiny_text_run / "config.json").read_text())
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    assert main(["info", str(broken)]) == 2
    assert "cannot read" in capsys.readouterr().err
