"""Precision (kuosan.precision): what ``auto`` picks, fp32 everywhere the math needs it, bf16 in
the trainer, the Pipeline and the CLI."""

import json

import pytest
import torch
from conftest import benchmark_module
from PIL import Image

from kuosan import KuosanError
from kuosan.cli import main
from kuosan.metadata import read_parameters
from kuosan.models import UNet, unet_preset
from kuosan.pipeline import Pipeline
from kuosan.precision import Autocast, native_bf16, prepare_module, resolve_precision
from kuosan.train import TrainConfig, train

TINY = TrainConfig.from_flat(data="digits", steps=4, batch_size=8, warmup_steps=1, sample_every=0,
                             save_every=0, grid_size=4, grid_steps=3, log_every=2)


@pytest.mark.parametrize("caps, native", [
    ({"amx_bf16": True, "avx512_bf16": False}, True),
    ({"amx_bf16": False, "avx512_bf16": True}, True),
    ({"amx_bf16": False, "avx512_bf16": False, "avx2": True}, False),
    ({}, False),
])
def test_native_bf16_on_the_cpu_reads_its_capabilities(monkeypatch, caps, native):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    assert native_bf16(torch.device("cpu")) is native


@pytest.mark.parametrize("caps, expected", [
    ({"amx_bf16": True, "avx512_bf16": False}, "bf16"),
    ({"amx_bf16": False, "avx512_bf16": True}, "bf16"),
    ({"amx_bf16": False, "avx512_bf16": False, "avx2": True}, "fp32"),
])
def test_auto_on_the_cpu_is_bf16_where_it_has_native_bf16(monkeypatch, caps, expected):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    assert resolve_precision("auto", "cpu") == expected
    assert resolve_precision("bf16", "cpu") == "bf16" and resolve_precision("fp32", "cpu") == "fp32"


@pytest.mark.parametrize("supported, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_on_cuda_is_bf16_where_the_gpu_has_it(monkeypatch, supported, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
    assert resolve_precision("auto", "cuda") == expected


def test_an_unknown_precision_is_refused():
    with pytest.raises(KuosanError, match="--precision: 'fp16'"):
        resolve_precision("fp16", "cpu")


def tiny_unet() -> UNet:
    """The digits UNet with its zero-initialised layers (output conv, …) given small random
    weights, so that every layer shapes the output."""
    torch.manual_seed(0)
    model = UNet(unet_preset("xs", in_channels=1, out_channels=1, image_size=8)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, 0.05)
    return model


def test_fp32_is_the_model_itself_and_bf16_returns_fp32():
    model = tiny_unet()
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([0.0, 10.0, 500.0, 999.0])
    with torch.no_grad():
        ref = model(x, t)
        assert torch.equal(Autocast(model, "fp32", "cpu")(x, t), ref)
        out = Autocast(model, "bf16", "cpu")(x, t)
    assert out.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
    # bf16 keeps 8 significant bits: ≤ 2⁻⁹ ≈ 0.002 per rounding, a random walk over ~20 layers
    # ≈ 0.01 of the output's scale; 0.05 is still ≪ an O(1) error (as in test_models)
    assert not torch.equal(out, ref)  # it really ran in bf16
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()


@pytest.mark.parametrize("native", [False, True])
def test_bf16_is_channels_last_on_a_cpu_that_emulates_it_and_fp32_unchanged(monkeypatch, native):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": native})
    model = prepare_module(tiny_unet(), "fp32", "cpu")
    assert all(p.is_contiguous() for p in model.parameters())
    prepare_module(model, "bf16", "cpu")
    convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    # emulated bf16 wants oneDNN's NHWC; native bf16 keeps NCHW (faster there: docs/speed.md)
    order = torch.contiguous_format if native else torch.channels_last
    assert convs and all(w.is_contiguous(memory_format=order) for w in convs)
    if native:  # (a 1×1 kernel is contiguous in both orders; a 3×3 one tells them apart)
        assert any(not w.is_contiguous(memory_format=torch.channels_last) for w in convs)


def test_training_in_bf16_saves_fp32_contiguous_weights_and_resumes_exactly(tmp_path):
    bf16 = TINY.replace(precision="bf16")
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(bf16, straight, progress=False)
    train(bf16.replace(steps=2), split, progress=False)
    train(bf16, split, resume=True, progress=False)
    from safetensors.torch import load_file
    a, b = load_file(straight / "model.safetensors"), load_file(split / "model.safetensors")
    assert all(v.dtype == torch.float32 and v.is_contiguous() for v in a.values())
    assert a.keys() == b.keys() and all(torch.equal(v, b[k]) for k, v in a.items())
    stored = json.loads((straight / "config.json").read_text())["train"]["runtime"]
    assert stored["precision"] == "bf16"
    fp32 = load_file(train(TINY.replace(precision="fp32"), tmp_path / "fp32", progress=False)
                     and tmp_path / "fp32" / "model.safetensors")
    assert any(not torch.equal(v, fp32[k]) for k, v in a.items())  # bf16 really ran


@pytest.mark.parametrize("stored, expected", [
    ({"bf16": True}, "bf16"), ({"bf16": False}, "fp32"),
    ({"runtime": {"bf16": True, "steps": 3}}, "bf16"), ({"runtime": {"steps": 3}}, "auto"),
])
def test_configs_written_with_the_bf16_flag_keep_their_precision(stored, expected):
    assert TrainConfig.from_dict(stored).runtime.precision == expected


def test_train_flags(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--data", "digits", "--steps", "2", "--batch", "8", "--sample-every", "0",
            "--save-every", "0", "--no-progress", "--out", str(out)]
    assert main(args + ["--bf16"]) == 0
    assert json.loads((out / "config.json").read_text())["train"]["runtime"]["precision"] == "bf16"
    # a resumed run takes a new precision (what the machine it runs on wants)
    assert main(["train", "--out", str(out), "--resume", "--steps", "3", "--precision", "fp32",
                 "--no-progress"]) == 0
    assert json.loads((out / "config.json").read_text())["train"]["runtime"]["precision"] == "fp32"
    with pytest.raises(SystemExit) as exc:
        main(args + ["--precision", "fp16"])
    assert exc.value.code == 2 and "--precision" in capsys.readouterr().err


def test_pipeline_records_its_precision(tmp_path):
    run = tmp_path / "run"
    train(TINY.replace(steps=1), run, progress=False)
    fp32 = Pipeline.load(run, precision="fp32", device="cpu")
    bf16 = Pipeline.load(run, precision="bf16", device="cpu")
    auto = resolve_precision("auto", "cpu")  # bf16 on a CPU with native bf16, else fp32
    assert Pipeline.load(run, device="cpu").precision == auto
    a = fp32.generate(num_images_per_prompt=2, num_inference_steps=3, seed=0)
    b = bf16.generate(num_images_per_prompt=2, num_inference_steps=3, seed=0)
    assert (a.precision, b.precision) == ("fp32", "bf16")
    assert b.parameters(0)["precision"] == "bf16"
    assert len(b) == 2 and all(isinstance(im, Image.Image) for im in b)
    out = tmp_path / "img.png"
    assert main(["generate", "", "--model", str(run), "--steps", "3", "--precision", "bf16",
                 "--out", str(out)]) == 0
    assert read_parameters(out)["precision"] == "bf16"


@pytest.mark.slow
def test_compile_keeps_names_and_results(tmp_path):
    """--compile: the compiled UNet (inductor, about a minute to compile on a 2-core CPU) draws
    the images of the eager one, and a run trained with it writes the same parameter names."""
    run = tmp_path / "run"
    train(TINY.replace(steps=2, compile=True), run, progress=False)
    eager = tmp_path / "eager"
    train(TINY.replace(steps=2), eager, progress=False)
    from safetensors.torch import load_file
    assert load_file(run / "model.safetensors").keys() == load_file(eager / "model.safetensors").keys()
    kwargs = {"sampler": "ddim", "num_inference_steps": 3, "seed": 0}
    a = Pipeline.load(eager, device="cpu").sample(4, **kwargs)
    b = Pipeline.load(eager, device="cpu", compile=True).sample(4, **kwargs)
    # the same fp32 arithmetic in another order (fused kernels): rounding, ~1e-6 relative per op;
    # 1e-3 of the [-1, 1] range is far above that and far below any error of the network's size
    assert not torch.equal(a, torch.zeros_like(a)) and (a - b).abs().max() < 1e-3


@pytest.fixture
def generate_speed():
    yield from benchmark_module("generate_speed")


def test_the_throughput_benchmark_times_each_variant_and_keeps_a_history(tmp_path, generate_speed,
                                                                         capsys):
    report = tmp_path / "generate_speed"
    generate_speed.main(["-n", "2", "--batch", "2", "--steps", "1", "--variants", "bf16",
                         "--repeats", "1", "--threads", str(torch.get_num_threads()),
                         "--report", str(report)])
    (row,) = [json.loads(line) for line in (tmp_path / "generate_speed_history.jsonl").open()]
    figures = row["figures"]
    assert set(figures) == {"fp32", "bf16"} and figures["fp32"]["speedup"] == 1.0
    assert all(f["images_per_s"] > 0 for f in figures.values())
    assert "bf16" in capsys.readouterr().out and (tmp_path / "generate_speed.md").exists()


def test_the_throughput_benchmark_times_several_models_side_by_side(tmp_path, generate_speed):
    generate_speed.main(["--model", "shapes-32,emoji-32", "-n", "2", "--batch", "2", "--steps", "1",
                         "--repeats", "1", "--threads", str(torch.get_num_threads()),
                         "--report", str(tmp_path / "generate_speed")])
    (row,) = [json.loads(line) for line in (tmp_path / "generate_speed_history.jsonl").open()]
    figures = row["figures"]
    assert set(figures) == {"shapes-32/fp32", "emoji-32/fp32"}
    assert figures["shapes-32/fp32"]["vs_first_model"] == 1.0
    emoji = figures["emoji-32/fp32"]
    # its ratio to the first model is the two measured rates' quotient, not a copy of 1
    assert emoji["vs_first_model"] == pytest.approx(
        emoji["images_per_s"] / figures["shapes-32/fp32"]["images_per_s"], rel=0.01)


def test_the_throughput_benchmark_times_several_batch_sizes_side_by_side(tmp_path, generate_speed,
                                                                         capsys):
    generate_speed.main(["-n", "4", "--batch", "2,4", "--steps", "1", "--variants", "bf16",
                         "--repeats", "1", "--threads", str(torch.get_num_threads()),
                         "--report", str(tmp_path / "generate_speed")])
    (row,) = [json.loads(line) for line in (tmp_path / "generate_speed_history.jsonl").open()]
    figures = row["figures"]
    assert set(figures) == {"fp32/b2", "fp32/b4", "bf16/b2", "bf16/b4"}
    base = figures["fp32/b2"]
    for f in figures.values():  # each against fp32 at the first batch size
        assert f["speedup"] == pytest.approx(f["images_per_s"] / base["images_per_s"], rel=0.01)
    with pytest.raises(SystemExit, match="--batch"):
        generate_speed.main(["--batch", "2,x"])


@pytest.fixture
def train_run_speed():
    yield from benchmark_module("train_run_speed")


def test_the_end_to_end_training_benchmark_times_whole_runs(tmp_path, train_run_speed, capsys):
    """Two rounds of real `kuosan train` processes per precision (digits, tiny); the rate comes
    from each run's log.jsonl, and a run that fails stops the benchmark with its error."""
    train_run_speed.main(["--data", "digits", "--train-args", "--batch 8", "--steps", "3",
                          "--skip", "1", "--rounds", "2", "--threads", "1",
                          "--report", str(tmp_path / "train_run_speed")])
    (row,) = [json.loads(line) for line in (tmp_path / "train_run_speed_history.jsonl").open()]
    figures = row["figures"]
    assert set(figures) == {"fp32", "bf16"} and figures["fp32"]["speedup"] == 1.0
    assert all(f["steps_per_s"] > 0 for f in figures.values())
    assert "round 2" in capsys.readouterr().out
    with pytest.raises(RuntimeError, match="kuosan train .fp32. failed"):
        train_run_speed.main(["--data", "digits", "--train-args", "--preset nonesuch", "--rounds", "1"])


def test_steps_per_second_reads_the_log_between_two_steps(tmp_path, train_run_speed):
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(json.dumps({"step": k, "elapsed_s": 10 + 0.5 * k}) for k in (1, 2, 3, 4))
                   + "\n" + json.dumps({"event": "saved"}) + "\n")
    assert train_run_speed.steps_per_second(log, 2, 4) == pytest.approx(2.0)  # 2 steps in 1 s
    with pytest.raises(RuntimeError, match=r"no row for step\(s\) \[6\]"):
        train_run_speed.steps_per_second(log, 2, 6)


@pytest.mark.parametrize(("device", "mode", "fused"), [("cuda", "reduce-overhead", True), ("cpu", None, True),
                                                       ("meta", None, None)])
def test_the_gpu_paths_pick_cuda_graphs_and_the_fused_adamw(monkeypatch, device, mode, fused):
    """What runs only on a GPU, checked on the CPU: --compile asks for CUDA graphs
    ("reduce-overhead") on CUDA and the default mode elsewhere; AdamW is fused on CUDA and CPU."""
    from kuosan.optim import adamw
    from kuosan.precision import compile_network

    modes = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: modes.append(kw.get("mode")))
    compile_network(UNet(unet_preset("xs", in_channels=1, out_channels=1, image_size=8)), device)
    assert modes == [mode]
    opt = adamw([torch.nn.Parameter(torch.ones(2))], 1e-3, 0.0, device)
    assert opt.defaults["fused"] is fused
