"""kuosan.limits: every limit refuses a call before any work, naming the argument (Python), the
flag (command) and the limit; Limits.none() and --no-limits lift them."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import kuosan.tasks as kp
from kuosan import Pipeline
from kuosan.cli import main
from kuosan.data.shapes import make_shapes_dataset
from kuosan.errors import KuosanError
from kuosan.limits import LimitError, Limits
from kuosan.models.unet import UNetConfig
from kuosan.request import Request
from kuosan.samplers.grids import check_steps
from kuosan.schedule import NoiseSchedule


def test_each_limit_is_named_and_values_at_the_limit_pass():
    lim = Limits()
    lim.check(images=lim.images, steps=lim.steps, resample=lim.resample,
              borders={"left": lim.border}, prompts=["x" * lim.prompt_chars])
    cases = [({"images": lim.images + 1}, "num_images_per_prompt"),
             ({"steps": lim.steps + 1}, "num_inference_steps"),
             ({"resample": lim.resample + 1}, "resample"),
             ({"pixels": lim.pixels + 1}, "image"),
             ({"borders": {"right": lim.border + 1}}, "right"),
             ({"prompts": ["x" * (lim.prompt_chars + 1)]}, "prompt"),
             ({"negative_prompt": " AND ".join(["ab"] * (lim.prompt_parts + 1))}, "negative_prompt"),
             ({"images": 10_000, "steps": 1_000, "pixels": 1024}, "num_images_per_prompt × num_inference_steps × pixels: 10000×1000×1024")]
    for kwargs, name in cases:
        with pytest.raises(LimitError, match="over the limit") as err:
            lim.check(**kwargs)
        assert str(err.value).startswith(name) and "Limits.none()" in str(err.value), err.value
        Limits.none().check(**kwargs)  # lifted: nothing is refused


def test_limit_error_names_the_callers_flag():
    with pytest.raises(LimitError) as err:
        Limits(images=3).check(images=4)
    assert str(err.value.named({"images": "-n", "lift": "--no-limits lifts it"})) == (
        "-n: 4 is over the limit of 3 images in one call (--no-limits lifts it)")


@pytest.fixture(scope="module")
def pipe():
    return Pipeline.load("shapes-32", device="cpu")


@pytest.fixture
def no_work(monkeypatch):
    """Any sampling (or editing) fails the test: a refusal must come before it."""
    def work(*args, **kwargs):
        raise AssertionError("work started before the limit was checked")
    for name in ("sample", "inpaint_windows", "sdedit"):
        monkeypatch.setattr(kp, name, work)


def test_the_python_api_refuses_before_any_work(pipe, no_work):
    image = Image.new("RGB", (32, 32), "white")
    big = Image.new("RGB", (1100, 1000), "white")
    calls = [
        (lambda: pipe.generate("a red circle", num_images_per_prompt=100_000_000), "num_images"),
        (lambda: pipe.generate("a red circle", num_inference_steps=5_000), "num_inference_steps"),
        (lambda: pipe.generate("a red circle " * 100), "prompt"),
        (lambda: pipe.generate(" AND ".join(["a red circle"] * 9)), "prompt"),
        (lambda: pipe.generate("a red circle", negative_prompt="x" * 2000), "negative_prompt"),
        (lambda: pipe.generate("a red circle", num_images_per_prompt=9000,
                               num_inference_steps=50), "num_images_per_prompt × num_inference"),
        (lambda: pipe.outpaint(image, right=100_000), "right"),
        (lambda: pipe.inpaint(image, image, resample=51), "resample"),
        (lambda: pipe.inpaint(big, big), "image"),
        (lambda: pipe.vary(image, num_images=20_000), "num_images"),
        (lambda: pipe.sample(100_000_000), "n: 100000000 is over"),
    ]
    for call, name in calls:
        with pytest.raises(LimitError) as err:
            call()
        assert str(err.value).startswith(name), err.value


def test_lifted_limits_run_lazily_batch_by_batch(pipe, monkeypatch):
    """Limits.none(): a hundred million images start; only the batches taken are made."""
    monkeypatch.setattr(pipe, "limits", Limits.none())
    request = Request("generate", "a red circle", num_images_per_prompt=100_000_000,
                      num_inference_steps=1, batch_size=2)
    batches = pipe.batches(request)
    first = next(batches)
    assert len(first) == 2 and first.seeds == [0, 1]
    second = next(batches)
    assert second.seeds == [2, 3]
    with pytest.raises(LimitError):  # the default limits refuse the same request
        monkeypatch.setattr(pipe, "limits", Limits())
        pipe.batches(request)


@pytest.mark.parametrize("args, flag", [
    (["generate", "a red circle", "-n", "100000000"], "-n: 100000000 is over the limit of 10,000"),
    (["generate", "a red circle", "--steps", "5000"], "--steps: 5000 is over the limit of 1,000"),
    (["generate", "a red circle " * 100], "PROMPT: 1300 characters is over the limit of 1,000"),
    (["generate", " AND ".join(["a red circle"] * 9)], "PROMPT: 9 AND parts"),
    (["generate", "a red circle", "--negative", "x" * 2000], "--negative: 2000 characters"),
    (["outpaint", "{image}", "--right", "100000"], "--right: 100000 is over the limit of 512"),
    (["inpaint", "{image}", "--mask", "{image}", "--resample", "51"], "--resample: 51 is over"),
])
def test_the_command_refuses_before_loading_the_model(args, flag, tmp_path, capsys, monkeypatch):
    def load(*a, **k):
        raise AssertionError("the model was loaded before the limit was checked")
    monkeypatch.setattr(Pipeline, "load", load)
    image = tmp_path / "in.png"
    Image.new("RGB", (32, 32), "white").save(image)
    out = tmp_path / "out"
    argv = [a.replace("{image}", str(image)) for a in args] + ["--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"kuosan: error: {flag}") and "--no-limits lifts it" in err, err
    assert err.count("\n") == 1 and not out.exists()


def test_the_command_refuses_work_and_canvas_after_reading_sizes(tmp_path, capsys, no_work):
    out = tmp_path / "out"
    assert main(["generate", "a red circle", "-n", "9000", "--steps", "50", "--out", str(out)]) == 2
    assert "-n × --steps × pixels: 9000×50×1024 = 4.61e+08 is over the limit of 2.56e+08" in (
        capsys.readouterr().err)
    big = tmp_path / "big.png"
    Image.fromarray(np.full((1000, 1100, 3), 255, np.uint8)).save(big)
    assert main(["inpaint", str(big), "--mask", str(big), "--out", str(out)]) == 2
    assert "IMAGE: 1100000 is over the limit of 1,048,576 pixels" in capsys.readouterr().err
    assert main(["outpaint", str(big), "--left", "1", "--out", str(out)]) == 2
    assert "IMAGE with --left/--top/--right/--bottom: 1101000" in capsys.readouterr().err
    assert not out.exists()


def test_no_limits_is_in_the_help(capsys):
    for command in ("generate", "inpaint", "outpaint", "vary", "img2img", "sample", "serve"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "--no-limits" in capsys.readouterr().out


def test_non_integers_get_the_callers_own_message(pipe):
    with pytest.raises(KuosanError, match="num_images_per_prompt must be an integer"):
        pipe.generate("a red circle", num_images_per_prompt="many")


@pytest.mark.parametrize("call", [
    lambda: NoiseSchedule.linear(True),
    lambda: make_shapes_dataset(True),
    lambda: make_shapes_dataset(4, size=True),
    lambda: UNetConfig(base_channels=True),
    lambda: check_steps(True),
], ids=["schedule-T", "shapes-n", "shapes-size", "unet-channels", "sampler-steps"])
def test_a_bool_is_not_taken_for_a_count(call):
    """Python's True is the int 1; a count, size or seed given as a bool is refused, not read as 1."""
    with pytest.raises(KuosanError, match="True"):
        call()
