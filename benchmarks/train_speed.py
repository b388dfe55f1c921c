"""Training- and sampling-step speed of kuosan's UNet in each precision, memory order and
compilation (``--variants``), against kuosan fp32 and diffusers' UNet2DModel, side by side.

Both networks get the same widths, depths, attention levels, GroupNorm groups, head width,
scale-shift time embedding and dropout, so they have about the same parameter count and FLOPs.
A variant (``VARIANTS``) runs both networks as kuosan runs its own: under
``kuosan.precision.Autocast`` (bf16 autocast, fp32 output and loss), channels-last weights and
input, ``torch.compile``. Protocol: seeded inputs; every (network, variant) is built from the
same seed and called once untimed (its compilation, reported as "first s"); then `--warmup`
untimed rounds and `--repeats` rounds that alternate all of them (the order flips every
round); the median of each is reported, with its speed-up over kuosan fp32 (always timed) and
its time relative to diffusers in the same variant. A training step is forward + MSE loss +
backward + AdamW step (kuosan's fused AdamW for both networks; train mode); a sampling step is
one forward under no_grad (eval mode).
FLOPs come from torch.utils.flop_counter.FlopCounterMode on the fp32 networks (the optimizer's
element-wise work is not counted); the matmul peak of each precision is the median of
``torch.mm``s measured in the same run (n = 512 for bf16 on a CPU without native bf16, which
emulates it at about 1 GFLOP/s). The header prints the CPU's bf16 capability.

    OMP_NUM_THREADS=1 python3 benchmarks/train_speed.py --threads 1 --batch-size 16 \\
        --cases s32 --variants fp32-cl,bf16,bf16-cl,compile \\
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
from kuosan.models.unet import ResBlock
from kuosan.optim import adamw
from kuosan.precision import Autocast, compile_network, native_bf16

Shape = tuple[int, ...]

# name -> (preset, in_channels, image_size, self-attention resolutions; None: the preset's)
CASES: dict[str, tuple[str, int, int, tuple[int, ...] | None]] = {
    "xs8": ("xs", 1, 8, None),    # 8×8 grayscale digits
    "s32": ("s", 3, 32, None),    # 32×32 RGB
    "m32": ("m", 3, 32, None),
    "l32": ("l", 3, 32, None),
    "s64": ("s", 3, 64, None),    # 64×64 RGB, the preset's self-attention (16×16)
    # 64×64 with self-attention where a 32×32 source puts it (32×32: 1,024 positions), as
    # `--init-from` a 32×32 model lays it out (EmojiWorld-64 from emoji-32)
    "s64-src": ("s", 3, 64, (32,)),
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


@dataclasses.dataclass(frozen=True)
class Variant:
    """How a network runs: its precision (kuosan.precision), memory order and compilation."""

    precision: str = "fp32"  # fp32, or bf16 autocast
    channels_last: bool = False
    compile: bool = False
    before: bool = False  # torch's nn.Dropout and default AdamW: kuosan's step before 2026-12-06


# name -> Variant; "bf16-cl" is what `--precision bf16` does on a CPU (kuosan.precision);
# "fp32-before" is kuosan's fp32 step as issue 22 measured it ("kuosan fp32 today"): torch's
# nn.Dropout (per-element bernoulli_ on the CPU) and the foreach AdamW, before kuosan's Dropout
# and the fused AdamW
VARIANTS: dict[str, Variant] = {
    "fp32": Variant(),
    "fp32-before": Variant(before=True),
    "fp32-cl": Variant(channels_last=True),
    "bf16": Variant("bf16"),
    "bf16-cl": Variant("bf16", channels_last=True),
    "compile": Variant(compile=True),
    "bf16-compile": Variant("bf16", compile=True),
    "bf16-cl-compile": Variant("bf16", channels_last=True, compile=True),
}


def make_steps(model: nn.Module, x: Tensor, t: Tensor, target: Tensor, variant: Variant
               ) -> dict[str, Callable[[], None]]:
    """One training step (forward + MSE + backward + AdamW) and one sampling step (forward),
    run as kuosan runs them: the network under kuosan.precision.Autocast (fp32 output, fp32
    loss), channels-last weights and input if asked, torch.compile'd if asked."""
    fmt = torch.channels_last if variant.channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    x = x.contiguous(memory_format=fmt)
    opt = adamw(model.parameters(), 1e-4, 0.0, x.device)  # kuosan train's optimizer, for both
    if variant.before:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        for block in model.modules():
            if isinstance(block, ResBlock):
                block.dropout = nn.Dropout(block.dropout.p)
    if variant.compile:  # as --compile does: CUDA graphs on CUDA
        compile_network(model, x.device)
    run = Autocast(model, variant.precision, x.device)

    def train_step() -> None:
        model.train()
        opt.zero_grad(set_to_none=True)
        loss = F.mse_loss(run(x, t), target)
        loss.backward()
        opt.step()

    @torch.no_grad()
    def sample_step() -> None:
        model.eval()
        run(x, t)

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


def history_figures(rows: list[dict], batch_size: int, peaks: dict[str, float]) -> dict:
    """The history row's figures: per case and variant, kuosan's speed-up over kuosan fp32
    (train, sample; above 1: faster), its time relative to diffusers' in the same variant
    (below 1: faster), its share of the matmul peak, and the parameter counts."""
    ours = [r for r in rows if r["model"] == "kuosan"]
    return {"batch_size": batch_size, "peak_gflops": {k: round(v, 1) for k, v in peaks.items()},
            "cases": {f"{r['case']}/{r['variant']}": {
                "params": r["params"],
                "train_speedup": round(r["train_speedup"], 3),
                "sample_speedup": round(r["sample_speedup"], 3),
                "train_ratio": round(r["train_ratio"], 3),
                "sample_ratio": round(r["sample_ratio"], 3),
                "train_peak_pct": round(100 * r["train_peak"], 1),
                "sample_peak_pct": round(100 * r["sample_peak"], 1)} for r in ours}}


def time_case(case: str, variants: list[str], args: argparse.Namespace, device: str,
              sync: Callable[[], None]) -> tuple[dict, dict, dict, dict]:
    """Median ms per step of kuosan's UNet and its diffusers twin in each variant, all timed in
    alternating rounds; the FLOPs per step (counted on the fp32 eager networks) and the
    parameter counts per model; the first-call seconds (compilation) per (model, variant)."""
    preset, channels, size, attention = CASES[case]
    cfg = dataclasses.replace(UNET_PRESETS[preset], in_channels=channels,
                              out_channels=channels, image_size=size)
    if attention is not None:
        cfg = dataclasses.replace(cfg, attn_resolutions=attention)
    builders = {"kuosan": lambda: UNet(cfg), "diffusers": lambda: diffusers_twin(cfg)}
    x = torch.randn(args.batch_size, channels, size, size, device=device)
    target = torch.randn_like(x)
    t = torch.rand(args.batch_size, device=device) * 999
    steps, flops, params, first = {}, {}, {}, {}
    for name, build in builders.items():
        torch.manual_seed(0)
        model = build().to(device)
        params[name] = count_parameters(model)
        flops[name] = {k: count_flops(step) for k, step in make_steps(model, x, t, target, Variant()).items()}
        for v in variants:
            torch.manual_seed(0)
            steps[name, v] = make_steps(build().to(device), x, t, target, VARIANTS[v])
            start = time.perf_counter()
            for step in steps[name, v].values():
                step()
            sync()
            first[name, v] = time.perf_counter() - start
    times: dict[tuple[str, str], dict[str, list[float]]] = {k: {"train": [], "sample": []} for k in steps}
    for r in range(args.warmup + args.repeats):
        order = list(steps) if r % 2 == 0 else list(reversed(steps))
        for kind in ("train", "sample"):
            for key in order:
                ms = time_ms(steps[key][kind], sync)
                if r >= args.warmup:
                    times[key][kind].append(ms)
    med = {k: {kind: statistics.median(v) for kind, v in d.items()} for k, d in times.items()}
    return med, flops, params, first


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", default="m32,xs8", help=f"comma-separated, from {sorted(CASES)}")
    p.add_argument("--variants", default="fp32",
                   help=f"comma-separated, from {list(VARIANTS)}; fp32 is always timed too (the "
                        "baseline of the speed-ups)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--tf32", action="store_true", help="allow TF32 in CUDA matmuls and convs")
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
    variants = ["fp32"] + [v for v in args.variants.split(",") if v != "fp32"]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        sys.exit(f"unknown --variants {unknown}; choose from {list(VARIANTS)}")

    torch.set_num_threads(args.threads)
    device = args.device
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    precisions = sorted({VARIANTS[v].precision for v in variants})
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    dev = torch.device(device)
    # emulated bf16 (no native bf16) runs a 2048² mm at a few GFLOP/s: measure it on 512²
    peak_n = {pr: args.peak_size if pr == "fp32" or native_bf16(dev) else min(args.peak_size, 512)
              for pr in precisions}
    peaks = {pr: matmul_peak_gflops(peak_n[pr], 5, device, sync, dtypes[pr]) for pr in precisions}
    printed: list[str] = []

    def say(line: str) -> None:  # print, and keep the line for the report
        printed.append(line)
        print(line)

    caps = torch.cpu.get_capabilities() if dev.type == "cpu" else {}
    say(f"torch {torch.__version__}, diffusers {diffusers.__version__}, python "
        f"{platform.python_version()}, device {device}, threads {torch.get_num_threads()} "
        f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), "
        f"batch {args.batch_size}, variants {','.join(variants)}, tf32 {args.tf32}")
    say(f"machine: {platform.machine()} {caps.get('cpu_name', '')} cores {os.cpu_count()}; "
        f"native bf16 {native_bf16(dev)}"
        + (f" (amx_bf16 {caps.get('amx_bf16')}, avx512_bf16 {caps.get('avx512_bf16')}, "
           f"torch CPU capability {torch.backends.cpu.get_cpu_capability()})" if caps else "")
        + (f"; GPU {torch.cuda.get_device_name()}" if dev.type == "cuda" else ""))
    say("matmul peak (n² torch.mm): "
        + ", ".join(f"{pr} {g:.1f} GFLOP/s (n = {peak_n[pr]})" for pr, g in peaks.items()))
    say(f"note: {args.note}")
    say(f"protocol: {args.warmup} warm-up rounds, median of {args.repeats} rounds alternating "
        "every (model, variant)")

    header = (f"{'case':5} {'variant':15} {'model':9} {'params':>8} {'train ms':>9} "
              f"{'sample ms':>9} {'train ×':>7} {'samp ×':>7} {'vs diff tr':>10} "
              f"{'vs diff sa':>10} {'train %pk':>9} {'samp %pk':>8} {'first s':>7}")
    say(header)
    say("-" * len(header))
    rows = []
    for case in args.cases.split(","):
        med, flops, params, first = time_case(case, variants, args, device, sync)
        for v in variants:
            peak = peaks[VARIANTS[v].precision]
            for name in ("kuosan", "diffusers"):
                m = med[name, v]
                speedup = {k: med["kuosan", "fp32"][k] / m[k] for k in ("train", "sample")}
                ratio = {k: m[k] / med["diffusers", v][k] for k in ("train", "sample")}
                gfs = {k: flops[name][k] / (m[k] * 1e-3) / 1e9 for k in ("train", "sample")}
                row = {"case": case, "variant": v, "model": name, "params": params[name],
                       "train_ms": m["train"], "sample_ms": m["sample"],
                       "train_speedup": speedup["train"], "sample_speedup": speedup["sample"],
                       "train_ratio": ratio["train"], "sample_ratio": ratio["sample"],
                       "train_gflops": gfs["train"], "sample_gflops": gfs["sample"],
                       "train_peak": gfs["train"] / peak, "sample_peak": gfs["sample"] / peak,
                       "first_call_s": first[name, v]}
                rows.append(row)
                say(f"{case:5} {v:15} {name:9} {row['params'] / 1e6:7.2f}M {m['train']:9.1f} "
                    f"{m['sample']:9.1f} {speedup['train']:7.2f} {speedup['sample']:7.2f} "
                    f"{ratio['train']:10.2f} {ratio['sample']:10.2f} "
                    f"{100 * row['train_peak']:8.1f}% {100 * row['sample_peak']:7.1f}% "
                    f"{first[name, v]:7.1f}")
        say(f"{'':5} FLOPs per step (kuosan / diffusers): train "
            f"{flops['kuosan']['train'] / 1e9:.2f} / {flops['diffusers']['train'] / 1e9:.2f} G, "
            f"sample {flops['kuosan']['sample'] / 1e9:.2f} / "
            f"{flops['diffusers']['sample'] / 1e9:.2f} G")
    say("× = speed-up over kuosan fp32 (above 1: faster); vs diff = ms relative to diffusers in "
        "the same variant (below 1: kuosan is faster); %pk against the matmul peak of the "
        "variant's precision; first s = the first train + sample call (compilation)")

    if args.report is not None:
        meta = run_meta("train_speed.py", argv, args.note, diffusers=diffusers.__version__,
                        device=device, batch_size=args.batch_size, variants=variants,
                        tf32=args.tf32, peak_gflops=peaks, native_bf16=native_bf16(dev),
                        cpu_name=caps.get("cpu_name"))
        written = write_report(args.report, "train_speed",
                               title="UNet step speed: precision, memory order and compilation, "
                                     "against kuosan fp32 and diffusers' UNet2DModel",
                               meta=meta, data={"rows": rows},
                               body="```\n" + "\n".join(printed) + "\n```\n",
                               model="UNet cases: " + args.cases,
                               figures=history_figures(rows, args.batch_size, peaks))
        print("wrote " + ", ".join(map(str, written)))


if __name__ == "__main__":
    main()
