"""Text-to-image throughput: images per second of ``Pipeline.generate`` in each precision and
compilation, side by side in one run.

Each variant (``--variants``: fp32, bf16, compile, bf16-compile; fp32 always timed, the
baseline) is one ``Pipeline.load(--model, precision=..., compile=...)``. Protocol: one untimed
call per variant of one batch (its compilation, reported as "first s"); then ``--repeats``
rounds in which every variant generates ``-n`` images (``--batch`` per model call, ``--prompt``
with image i seeded i, ``--steps`` guided steps of the model's default sampler and guidance), the order flipping every round; the median images/s is reported with its
speed-up over fp32. Guidance doubles the batch of each model call.

    python3 benchmarks/generate_speed.py --device cuda -n 512 --batch 256 \\
        --variants bf16,compile,bf16-compile --report benchmarks/results/generate_speed
    OMP_NUM_THREADS=2 python3 benchmarks/generate_speed.py --threads 2 -n 64 --batch 64

Several models (``--model shapes-32,emoji-32``) are timed side by side in the same rounds, each
also as a ratio against the first model in fp32: what one model costs per image beside another.
Several batch sizes (``--batch 16,64``) likewise: each row's "× fp32" is against the same model
in fp32 at the first batch size, so the table says what a larger batch buys in each precision.

``--report PATH`` writes ``PATH.json`` and ``PATH.md`` (the latest run) and appends a row to
``generate_speed_history.jsonl`` beside them (benchmarks/history.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from history import run_meta, write_report

from kuosan.pipeline import Pipeline
from kuosan.precision import native_bf16

VARIANTS = {"fp32": ("fp32", False), "bf16": ("bf16", False), "compile": ("fp32", True),
            "bf16-compile": ("bf16", True)}


def prompts_of(pipe: Pipeline, prompt: str, n: int) -> list[str]:
    """``n`` copies of ``prompt`` (the empty prompt for a model without text): the work of a call
    does not depend on the words, and every image is seeded apart."""
    return [prompt if pipe.is_text_conditioned else ""] * n


def images_per_s(pipe: Pipeline, prompts: list[str], steps: int, batch: int, device: str) -> float:
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    start = time.perf_counter()
    pipe.generate(prompts, num_inference_steps=steps, seed=0, batch_size=batch)
    sync()
    return len(prompts) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="shapes-32",
                   help="checkpoint folder or bundled name; several, comma-separated, are timed "
                        "side by side (ratios against the first)")
    p.add_argument("--prompt", default="a red circle above a blue square")
    p.add_argument("-n", type=int, default=64, help="images per timed call")
    p.add_argument("--batch", default="64",
                   help="images per model call; several, comma-separated, are timed side by side")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--variants", default="fp32", help=f"comma-separated, from {list(VARIANTS)}")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--note", default="(none given)", help="what else was running")
    p.add_argument("--report", type=Path, default=None)
    args = p.parse_args(argv)
    variants = ["fp32"] + [v for v in args.variants.split(",") if v != "fp32"]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        sys.exit(f"unknown --variants {unknown}; choose from {list(VARIANTS)}")
    try:
        batches = [int(b) for b in args.batch.split(",")]
    except ValueError:
        sys.exit(f"--batch: {args.batch!r} is not a comma-separated list of integers")
    if min(batches) < 1:
        sys.exit(f"--batch: {args.batch!r} has a size below 1")
    torch.set_num_threads(args.threads)
    models = args.model.split(",")

    pipes, first = {}, {}
    for model in models:
        for v in variants:
            precision, compiled = VARIANTS[v]
            pipes[model, v] = Pipeline.load(model, device=args.device, precision=precision,
                                            compile=compiled)
            for b in batches:  # the untimed first call of each shape (compiles it, if compiled)
                start = time.perf_counter()
                images_per_s(pipes[model, v], prompts_of(pipes[model, v], args.prompt, b),
                             args.steps, b, args.device)
                first[model, v, b] = time.perf_counter() - start
    rates: dict[tuple[str, str, int], list[float]] = {k: [] for k in first}
    for r in range(args.repeats):
        for key in list(first) if r % 2 == 0 else list(reversed(first)):
            pipe = pipes[key[:2]]
            prompts = prompts_of(pipe, args.prompt, args.n)
            rates[key].append(images_per_s(pipe, prompts, args.steps, key[2], args.device))
    med = {k: statistics.median(x) for k, x in rates.items()}

    def name(key: tuple[str, str, int]) -> str:  # "fp32"; "emoji-32/fp32"; "fp32/b16"
        return "/".join([*([key[0]] if len(models) > 1 else []), key[1],
                         *([f"b{key[2]}"] if len(batches) > 1 else [])])

    dev = torch.device(args.device)
    sampler = ", ".join(f"{m} {pipes[m, 'fp32'].default_sampler}" for m in models)
    lines = [f"model {args.model}, device {args.device}"
             + (f" ({torch.cuda.get_device_name()})" if dev.type == "cuda" else "")
             + f", native bf16 {native_bf16(dev)}, threads {torch.get_num_threads()}, n {args.n}, "
               f"batch {args.batch}, {args.steps} guided steps of the default sampler ({sampler}), "
               f"median of {args.repeats}",
             f"note: {args.note}",
             f"{'variant':24} {'images/s':>10} {'× fp32':>7} {'× ' + models[0]:>14} {'first s':>8}"]
    base = med[models[0], "fp32", batches[0]]
    lines += [f"{name(k):24} {med[k]:10.2f} {med[k] / med[k[0], 'fp32', batches[0]]:7.2f} "
              f"{med[k] / base:14.2f} {first[k]:8.1f}" for k in first]
    lines.append(f"× fp32: against the same model in fp32 at batch {batches[0]}; × {models[0]}: "
                 f"against {models[0]} in fp32 at batch {batches[0]} (below 1: slower per image)")
    print("\n".join(lines))
    if args.report is not None:
        meta = run_meta("generate_speed.py", argv, args.note, device=args.device,
                        native_bf16=native_bf16(dev))
        figures = {name(k): {"images_per_s": round(med[k], 3),
                             "speedup": round(med[k] / med[k[0], "fp32", batches[0]], 3),
                             "vs_first_model": round(med[k] / base, 3),
                             "first_s": round(first[k], 1)} for k in first}
        written = write_report(args.report, "generate_speed", title="Text-to-image throughput",
                               meta=meta, data={"rates": {name(k): x for k, x in rates.items()},
                                                "first_s": {name(k): x for k, x in first.items()}},
                               body="```\n" + "\n".join(lines) + "\n```\n", model=args.model,
                               figures=figures)
        print("wrote " + ", ".join(map(str, written)))


if __name__ == "__main__":
    main()
