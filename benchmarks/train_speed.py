"""Training- and sampling-step speed of kuosan's UNet against diffusers' UNet2DModel.

Both networks get the same widths, depths, attention levels, GroupNorm groups, head width,
scale-shift time embedding and dropout, so they have about the same parameter count and FLOPs.
Protocol: seeded inputs; `--warmup` untimed rounds, then `--repeats` rounds that alternate the
two models (the order flips every round); the median of each is reported. A training step is
forward + MSE loss + backward + AdamW step (train mode); a sampling step is one forward under
no_grad (eval mode). FLOPs come from torch.utils.flop_counter.FlopCounterMode (the optimizer's
element-wise work is not counted); the matmul peak is the median of large fp32 `torch.mm`s
measured in the same run.

    OMP_NUM_THREADS=1 python3 benchmarks/train_speed.py --threads 1 --batch-size 32 \\
        --note "quiet machine" --report benchmarks/results/train_speed

``--report PATH`` writes ``PATH.json`` (every row) and ``PATH.md`` (the printed table; the latest
run) and appends one row (``history_figures``) to ``train_speed_history.jsonl`` beside them
(benchmarks/history.py).

diffusers is an optional benchmark dependency: `pip install diffusers` (the `bench` extra).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from history import run_meta, write_report
from torch import Tensor, nn
from torch.utils.flop_counter import (
    FlopCounterMode,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

from kuosan.models import UNET_PRESETS, UNet, UNetConfig, count_parameters

Shape = tuple[int, ...]

# name -> (preset, in_channels, image_size)
CASES: dict[str, tuple[str, int, int]] = {
    "xs8": ("xs", 1, 8),    # 8×8 grayscale digits
    "s32": ("s", 3, 32),    # 32×32 RGB
    "m32": ("m", 3, 32),
    "l32": ("l", 3, 32),
}


def diffusers_twin(cfg: UNetConfig) -> nn.Module:
    """diffusers' UNet2DModel with the same layout as our UNet; forward(x, t) -> Tensor."""
    from diffusers import UNet2DModel

    attn_levels = []
    res = cfg.image_size
    for _ in cfg.channel_mult:
        attn_levels.append(res in cfg.attn_resolutions)
        res //= 2
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn_levels)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn_levels))
    model = UNet2DModel(
        sample_size=cfg.image_size, in_channels=cfg.in_channels, out_channels=cfg.out_channels,
        block_out_channels=tuple(cfg.base_channels * m for m in cfg.channel_mult),
        layers_per_block=cfg.num_res_blocks, down_block_types=down, up_block_types=up,
        attention_head_dim=cfg.head_dim, norm_num_groups=cfg.num_groups, dropout=cfg.dropout,
        resnet_time_scale_shift="scale_shift", flip_sin_to_cos=True, freq_shift=0,
    )

    class Twin(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.unet = model

        def forward(self, x: Tensor, t: Tensor) -> Tensor:
            return self.unet(x, t).sample

    return Twin()


def time_ms(fn: Callable[[], object], sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return 1e3 * (time.perf_counter() - start)


def matmul_peak_gflops(n: int, repeats: int, device: str, sync: Callable[[], None],
                       dtype: torch.dtype = torch.float32) -> float:
    """Median GFLOP/s of an n×n torch.mm (2·n³ FLOPs)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)
    times = [time_ms(lambda: torch.mm(a, b), sync) for _ in range(repeats)]
    return 2 * n**3 / (statistics.median(times) * 1e-3) / 1e9


def make_steps(
    model: nn.Module, x: Tensor, t: Tensor, target: Tensor, bf16: bool
) -> dict[str, Callable[[], None]]:
    """One training step (forward + MSE + backward + AdamW) and one sampling step (forward)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    autocast = torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16)

    def train_step() -> None:
        model.train()
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = F.mse_loss(model(x, t).float(), target)
        loss.backward()
        opt.step()

    @torch.no_grad()
    def sample_step() -> None:
        model.eval()
        with autocast:
            model(x, t)

    return {"train": train_step, "sample": sample_step}


def _flash_cpu_flops(query: Shape, key: Shape, value: Shape, *args: object, **kwargs: object
                     ) -> int:
    return sdpa_flop_count(query, key, value)


def _flash_cpu_backward_flops(grad_out: Shape, query: Shape, key: Shape, value: Shape,
                              *args: object, **kwargs: object) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


# FlopCounterMode has formulas for the CUDA attention kernels but not for the fused CPU kernel
# that F.scaled_dot_product_attention dispatches to on CPU: count it as the math path would.
SDPA_CPU_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _flash_cpu_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward:
        _flash_cpu_backward_flops,
}


def count_flops(fn: Callable[[], object]) -> int:
    counter = FlopCounterMode(display=False, custom_mapping=SDPA_CPU_FLOPS)
    with counter:
        fn()
    return counter.get_total_flops()


def history_figures(rows: list[dict], batch_size: int, peak: float) -> dict:
    """The history row's figures: per case, our ms per step relative to diffusers' (train,
    sample; below 1: faster), our share of the matmul peak, and the parameter counts."""
    ours = [r for r in rows if r["model"] == "kuosan"]
    return {"batch_size": batch_size, "peak_gflops": round(peak, 1),
            "cases": {r["case"]: {"params": r["params"],
                                  "train_ratio": round(r["train_ratio"], 3),
                                  "sample_ratio": round(r["sample_ratio"], 3),
                                  "train_peak_pct": round(100 * r["train_peak"], 1),
                                  "sample_peak_pct": round(100 * r["sample_peak"], 1)}
                      for r in ours}}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", default="m32,xs8", help=f"comma-separated, from {sorted(CASES)}")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (peak: a bf16 mm)")
    p.add_argument("--tf32", action="store_true", help="allow TF32 in CUDA matmuls and convs")
    p.add_argument("--channels-last", action="store_true", help="both models and inputs")
    p.add_argument("--peak-size", type=int, default=2048, help="n of the n×n matmul peak")
    p.add_argument("--note", default="(none given)", help="what else was running")
    p.add_argument("--report", type=Path, default=None,
                   help="write PATH.json (every row) and PATH.md; append to the history")
    args = p.parse_args(argv)

    try:
        import diffusers
    except ImportError:
        sys.exit("this benchmark compares against diffusers: `pip install diffusers` "
                 "(or `pip install -e .[bench]`); it must not pull torchvision")
    unknown = sorted(set(args.cases.split(",")) - set(CASES))
    if unknown:
        sys.exit(f"unknown --cases {unknown}; choose from {sorted(CASES)}")

    torch.set_num_threads(args.threads)
    device = args.device
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    peak_dtype = torch.bfloat16 if args.bf16 else torch.float32
    peak = matmul_peak_gflops(args.peak_size, 5, device, sync, peak_dtype)
    printed: list[str] = []

    def say(line: str) -> None:  # print, and keep the line for the report
        printed.append(line)
        print(line)

    say(f"torch {torch.__version__}, diffusers {diffusers.__version__}, python "
        f"{platform.python_version()}, device {device}, threads {torch.get_num_threads()} "
        f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), "
        f"batch {args.batch_size}, channels_last {args.channels_last}, bf16 {args.bf16}, "
        f"tf32 {args.tf32}")
    say(f"machine: {platform.machine()} {platform.processor() or ''} cores {os.cpu_count()}; "
        f"{'bf16' if args.bf16 else 'fp32'} matmul peak ({args.peak_size}² torch.mm): "
        f"{peak:.1f} GFLOP/s"
        + (f"; GPU {torch.cuda.get_device_name()}" if device.startswith("cuda") else ""))
    say(f"note: {args.note}")
    say(f"protocol: {args.warmup} warm-up rounds, median of {args.repeats} alternating rounds")

    header = (f"{'case':5} {'model':9} {'params':>8} {'train ms':>9} {'sample ms':>9} "
              f"{'train x':>7} {'sample x':>8} {'train GF/s':>10} {'samp GF/s':>9} "
              f"{'train %pk':>9} {'samp %pk':>8}")
    say(header)
    say("-" * len(header))
    rows = []
    for case in args.cases.split(","):
        preset, channels, size = CASES[case]
        cfg = dataclasses.replace(UNET_PRESETS[preset], in_channels=channels,
                                  out_channels=channels, image_size=size)
        torch.manual_seed(0)
        models = {"kuosan": UNet(cfg), "diffusers": diffusers_twin(cfg)}
        x = torch.randn(args.batch_size, channels, size, size, device=device)
        x = x.contiguous(memory_format=fmt)
        target = torch.randn_like(x)
        t = torch.rand(args.batch_size, device=device) * 999
        steps, flops = {}, {}
        for name, model in models.items():
            model.to(device=device, memory_format=fmt)
            steps[name] = make_steps(model, x, t, target, args.bf16)
            flops[name] = {k: count_flops(step) for k, step in steps[name].items()}

        times: dict[str, dict[str, list[float]]] = {n: {"train": [], "sample": []} for n in models}
        for r in range(args.warmup + args.repeats):
            order = list(models) if r % 2 == 0 else list(reversed(models))
            for kind in ("train", "sample"):
                for name in order:
                    ms = time_ms(steps[name][kind], sync)
                    if r >= args.warmup:
                        times[name][kind].append(ms)
        med = {n: {k: statistics.median(v) for k, v in d.items()} for n, d in times.items()}
        for name, model in models.items():
            gfs = {k: flops[name][k] / (med[name][k] * 1e-3) / 1e9 for k in ("train", "sample")}
            ratio = {k: med[name][k] / med["diffusers"][k] for k in ("train", "sample")}
            row = {
                "case": case, "model": name, "params": count_parameters(model),
                "train_ms": med[name]["train"], "sample_ms": med[name]["sample"],
                "train_ratio": ratio["train"], "sample_ratio": ratio["sample"],
                "train_gflops": gfs["train"], "sample_gflops": gfs["sample"],
                "train_peak": gfs["train"] / peak, "sample_peak": gfs["sample"] / peak,
            }
            rows.append(row)
            say(f"{case:5} {name:9} {row['params'] / 1e6:7.2f}M {row['train_ms']:9.1f} "
                f"{row['sample_ms']:9.1f} {row['train_ratio']:7.2f} {row['sample_ratio']:8.2f} "
                f"{row['train_gflops']:10.1f} {row['sample_gflops']:9.1f} "
                f"{100 * row['train_peak']:8.1f}% {100 * row['sample_peak']:7.1f}%")
        say(f"{'':5} FLOPs per step (kuosan / diffusers): train "
            f"{flops['kuosan']['train'] / 1e9:.2f} / {flops['diffusers']['train'] / 1e9:.2f} G, "
            f"sample {flops['kuosan']['sample'] / 1e9:.2f} / "
            f"{flops['diffusers']['sample'] / 1e9:.2f} G")
    say("x = ms per step relative to diffusers (below 1: kuosan is faster)")

    if args.report is not None:
        meta = run_meta("train_speed.py", argv, args.note, diffusers=diffusers.__version__,
                        device=device, batch_size=args.batch_size, channels_last=args.channels_last,
                        bf16=args.bf16, tf32=args.tf32, peak_gflops=peak)
        written = write_report(args.report, "train_speed",
                               title="UNet step speed against diffusers' UNet2DModel", meta=meta,
                               data={"rows": rows}, body="```\n" + "\n".join(printed) + "\n```\n",
                               model="UNet cases: " + args.cases,
                               figures=history_figures(rows, args.batch_size, peak))
        print("wrote " + ", ".join(map(str, written)))

if __name__ == "__main__":
    main()
