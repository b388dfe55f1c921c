"""Training speed end to end: steps per second of whole `kuosan train` runs in each precision,
side by side. ``train_speed.py`` times the UNet's step alone; this times the command people run,
with its data, text encoder, EMA, clipping and logging (issue 22 measured it this way: a 32×32
RGB run, preset `s`, batch 32, steps 6 → 26).

Each round runs ``kuosan train`` once per precision (``--precisions``; fp32 first, the baseline),
the order flipping every round, each a fresh process writing into a fresh temporary folder
with ``--log-every 1``, no sample grid and no checkpoint before the end. A run's rate is
(N − K) / (t_N − t_K), t_k the elapsed seconds its log.jsonl records at step k, N = ``--steps``
and K = ``--skip``, so start-up, data loading and the first steps are left out. The median over
``--rounds`` is reported, with its speed-up over fp32.

    OMP_NUM_THREADS=2 python3 benchmarks/train_run_speed.py --threads 2 --rounds 3 \\
        --note "alone" --report benchmarks/results/train_run_speed

The runs train on ``--data`` (default: shapes, which needs no download) with ``--train-args``
added (default: ``--preset s --batch 32``, the issue's). ``--report PATH`` writes ``PATH.json``
and ``PATH.md`` (the latest run) and appends a row to ``train_run_speed_history.jsonl`` beside
them (benchmarks/history.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from history import run_meta, write_report

PRECISIONS = ("fp32", "bf16")


def steps_per_second(log: Path, skip: int, steps: int) -> float:
    """(steps − skip) / (t_steps − t_skip) from a run's log.jsonl rows (``step``, ``elapsed_s``)."""
    elapsed = {}
    for line in log.read_text().splitlines():
        row = json.loads(line)
        if "step" in row and "elapsed_s" in row:
            elapsed[row["step"]] = row["elapsed_s"]
    missing = [k for k in (skip, steps) if k not in elapsed]
    if missing:
        raise RuntimeError(f"{log}: no row for step(s) {missing} (rows: {sorted(elapsed)[:5]}…)")
    return (steps - skip) / (elapsed[steps] - elapsed[skip])


def run_once(precision: str, args: argparse.Namespace, folder: Path) -> float:
    """One `kuosan train` run in ``precision`` into ``folder``; its steps per second."""
    out = folder / f"run-{precision}"
    command = [sys.executable, "-m", "kuosan.cli", "train", "--data", args.data, "--out", str(out),
               "--steps", str(args.steps), "--log-every", "1", "--sample-every", "0",
               "--save-every", "0", "--grid-size", "1", "--precision", precision, "--no-progress",
               *shlex.split(args.train_args)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    done = subprocess.run(command, check=False, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"kuosan train ({precision}) failed:\n{done.stderr[-2000:]}")
    return steps_per_second(out / "log.jsonl", args.skip, args.steps)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="shapes")
    p.add_argument("--train-args", default="--preset s --batch 32",
                   help="more flags of kuosan train, as one string")
    p.add_argument("--precisions", default="bf16", help=f"comma-separated, from {PRECISIONS}")
    p.add_argument("--steps", type=int, default=26, help="N: the last step timed")
    p.add_argument("--skip", type=int, default=6, help="K: the steps before it left out")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    p.add_argument("--note", default="")
    p.add_argument("--report", type=Path, default=None)
    args = p.parse_args(argv)
    precisions = ["fp32"] + [x for x in args.precisions.split(",") if x != "fp32"]
    unknown = sorted(set(precisions) - set(PRECISIONS))
    if unknown or not 0 < args.skip < args.steps:
        sys.exit(f"--precisions from {PRECISIONS} (got {unknown}); 0 < --skip < --steps")
    rates: dict[str, list[float]] = {x: [] for x in precisions}
    with tempfile.TemporaryDirectory(prefix="kuosan-train-speed-") as tmp:
        for r in range(args.rounds):
            for precision in precisions if r % 2 == 0 else reversed(precisions):
                round_dir = Path(tmp) / f"round-{r}"
                round_dir.mkdir(exist_ok=True)
                rates[precision].append(run_once(precision, args, round_dir))
                print(f"round {r + 1}: {precision} {rates[precision][-1]:.3f} steps/s", flush=True)
    med = {x: statistics.median(v) for x, v in rates.items()}
    lines = [(f"kuosan train --data {args.data} {args.train_args}; steps {args.skip} → {args.steps} "
              f"timed, {args.threads} thread(s), median of {args.rounds} rounds"),
             f"note: {args.note}",
             f"{'precision':10} {'steps/s':>8} {'× fp32':>7}  rounds"]
    lines += [f"{x:10} {med[x]:8.3f} {med[x] / med['fp32']:7.2f}  "
              + ", ".join(f"{v:.3f}" for v in rates[x]) for x in precisions]
    print("\n".join(lines))
    if args.report is not None:
        meta = run_meta("train_run_speed.py", argv, args.note)
        figures = {x: {"steps_per_s": round(med[x], 4), "speedup": round(med[x] / med["fp32"], 3)}
                   for x in precisions}
        written = write_report(args.report, "train_run_speed", title="Training speed end to end",
                               meta=meta, data={"rates": rates}, body="```\n" + "\n".join(lines) + "\n```\n",
                               model=f"kuosan train --data {args.data} {args.train_args}", figures=figures)
        print("wrote " + ", ".join(map(str, written)))


if __name__ == "__main__":
    main()
