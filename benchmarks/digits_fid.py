"""Digits benchmark: kuosan against lucidrains' denoising-diffusion-pytorch, same time budget.

    OMP_NUM_THREADS=2 python3 benchmarks/digits_fid.py --minutes 10 --threads 2 \
        --report benchmarks/results/digits_fid --note "quiet machine"

Protocol. The two systems run one after the other, never together, each with ``--threads``
torch threads (OMP_NUM_THREADS / MKL_NUM_THREADS in its environment; the peer also calls
``torch.set_num_threads``):

(a) kuosan: ``kuosan train --data digits --out RUN --minutes M [--kuosan-args]``, then
    ``kuosan sample RUN -n N --out FOLDER [--kuosan-sample-args]`` (its default sampler unless
    told); steps reached are ``step`` from ``RUN/training_state.json``;
(b) the peer, ``benchmarks/peers/lucidrains_digits.py`` in its own venv (``--peer-python``),
    trains for the same M minutes and writes N PNGs; it reports its own steps and steps/s.

Then one `kuosan.metrics.digits.DigitsEvaluator` (fit with ``--eval-seed``, printed accuracy)
scores both folders and the real held-out digits; its module docstring states the FID protocol
(domain classifier features, reference and floor sets, FID at matched n). Steps/s is
steps / training seconds: the peer times its loop; for kuosan the training seconds are
``elapsed_seconds`` from ``training_state.json``, else the last ``log.jsonl`` record's elapsed
time, else the wall clock of the whole ``kuosan train`` process (start-up and checkpointing
included); the report says which (``steps_per_s_basis``). Sampling time is reported apart
and is not part of the M minutes. The report goes to ``--report PATH`` as ``PATH.json`` and
``PATH.md`` (the latest run), and one row (``history_figures``) is appended to
``digits_fid_history.jsonl`` beside them (benchmarks/history.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from history import git_commit, record

from kuosan.errors import KuosanError
from kuosan.metrics.digits import MEMORISATION_THRESHOLD, DigitsEvaluator, load_png_folder

ROOT = Path(__file__).resolve().parents[1]
PEER_SCRIPT = ROOT / "benchmarks" / "peers" / "lucidrains_digits.py"
DEFAULT_PEER_PYTHON = ROOT / ".peer" / "venv" / "bin" / "python"
KUOSAN_CLI = [sys.executable, "-c", "import sys; from kuosan.cli import main; sys.exit(main())"]
ELAPSED_KEYS = ("elapsed_s", "elapsed", "train_seconds", "wall_s", "time_s", "seconds")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0, help="training budget per system")
    p.add_argument("-n", "--num-samples", type=int, default=1000)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--skip-kuosan", action="store_true")
    p.add_argument("--skip-peer", action="store_true")
    p.add_argument(
        "--kuosan-args", default="", help='extra `kuosan train` flags, e.g. "--lr 2e-4"'
    )
    p.add_argument(
        "--kuosan-sample-args",
        default="",
        help='extra `kuosan sample` flags, e.g. "--sampler dpmpp_2m --steps 50"',
    )
    p.add_argument("--peer-args", default="", help='extra peer flags, e.g. "--sampling-steps 50"')
    p.add_argument("--peer-python", type=Path, default=DEFAULT_PEER_PYTHON)
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="runs, samples and logs (default runs/digits_fid/<time>)",
    )
    p.add_argument("--eval-seed", type=int, default=0, help="DigitsEvaluator.fit seed")
    p.add_argument("--report", type=Path, default=None, help="write PATH.json and PATH.md")
    p.add_argument("--note", default="", help="free text stored with the report")
    return p.parse_args(argv)


def child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def run_logged(cmd: list[str], log: Path, env: dict[str, str]) -> tuple[int, float, str]:
    """Run cmd with stdout+stderr to log; return (exit code, wall seconds, stdout+stderr)."""
    print("$ " + shlex.join(cmd), flush=True)
    start = time.perf_counter()
    with log.open("w") as f:
        code = subprocess.run(
            cmd, check=False, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT
        ).returncode
    wall = time.perf_counter() - start
    text = log.read_text(errors="replace")
    print(f"  exit {code} after {wall:.1f} s (log: {log})", flush=True)
    return code, wall, text


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def last_elapsed(log_jsonl: Path) -> float | None:
    """The elapsed training seconds in the last record of log.jsonl, if it has such a field."""
    if not log_jsonl.is_file():
        return None
    records = [line for line in log_jsonl.read_text().splitlines() if line.strip()]
    if not records:
        return None
    try:
        last = json.loads(records[-1])
    except json.JSONDecodeError:
        return None
    for key in ELAPSED_KEYS:
        if isinstance(last.get(key), (int, float)):
            return float(last[key])
    return None


def run_kuosan(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    run, samples = workdir / "kuosan_run", workdir / "kuosan_samples"
    env = child_env(args.threads)
    row: dict[str, Any] = {
        "system": "kuosan",
        "minutes": args.minutes,
        "samples_dir": str(samples),
    }
    train = [
        *KUOSAN_CLI,
        "train",
        "--data",
        "digits",
        "--out",
        str(run),
        "--minutes",
        str(args.minutes),
        *shlex.split(args.kuosan_args),
    ]
    code, train_wall, text = run_logged(train, workdir / "kuosan_train.log", env)
    row.update(train_wall_s=train_wall, train_args=args.kuosan_args)
    if code != 0:
        return {**row, "error": f"kuosan train exited {code}:\n{tail(text)}"}
    state_path = run / "training_state.json"
    try:
        state = json.loads(state_path.read_text())
        row["steps"] = int(state["step"])
    except (OSError, KeyError, ValueError) as e:
        return {**row, "error": f"cannot read 'step' from {state_path}: {e}"}
    elapsed = last_elapsed(run / "log.jsonl")
    if isinstance(state.get("elapsed_seconds"), (int, float)):
        row.update(
            train_seconds=float(state["elapsed_seconds"]),
            steps_per_s_basis="elapsed_seconds in training_state.json",
        )
    elif elapsed is not None:
        row.update(train_seconds=elapsed, steps_per_s_basis="log.jsonl elapsed time")
    else:
        row.update(train_seconds=train_wall, steps_per_s_basis="wall clock of `kuosan train`")
    row["steps_per_s"] = row["steps"] / row["train_seconds"]
    if isinstance(state.get("images_seen"), int):
        row["images_seen"] = state["images_seen"]
        row["images_per_s"] = state["images_seen"] / row["train_seconds"]
    sample = [
        *KUOSAN_CLI,
        "sample",
        str(run),
        "-n",
        str(args.num_samples),
        "--out",
        str(samples),
        "--no-progress",
        *shlex.split(args.kuosan_sample_args),
    ]
    code, sample_wall, text = run_logged(sample, workdir / "kuosan_sample.log", env)
    row.update(
        sample_seconds=sample_wall,
        sample_args=args.kuosan_sample_args,
        sample_output=tail(text, 1),
    )
    if code != 0:
        return {**row, "error": f"kuosan sample exited {code}:\n{tail(text)}"}
    return row


def run_peer(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    samples = workdir / "peer_samples"
    row: dict[str, Any] = {
        "system": "lucidrains",
        "minutes": args.minutes,
        "samples_dir": str(samples),
    }
    if not args.peer_python.exists():
        return {
            **row,
            "error": f"{args.peer_python} missing: build the venv (benchmarks/peers/README.md)",
        }
    cmd = [
        str(args.peer_python),
        str(PEER_SCRIPT),
        "--minutes",
        str(args.minutes),
        "-n",
        str(args.num_samples),
        "--out",
        str(samples),
        "--threads",
        str(args.threads),
        *shlex.split(args.peer_args),
    ]
    code, wall, text = run_logged(cmd, workdir / "peer.log", child_env(args.threads))
    row.update(wall_s=wall, peer_args=args.peer_args)
    if code != 0:
        return {**row, "error": f"peer exited {code}:\n{tail(text)}"}
    results = re.findall(r"^RESULT (\{.*\})$", text, flags=re.MULTILINE)
    if not results:
        return {**row, "error": f"no RESULT line in the peer's output:\n{tail(text)}"}
    peer = json.loads(results[-1])
    row.update(
        steps=peer["steps"],
        train_seconds=peer["train_seconds"],
        steps_per_s=peer["steps_per_s"],
        sample_seconds=peer["sample_seconds"],
        images_seen=peer["steps"] * peer["batch_size"],
        images_per_s=peer["steps"] * peer["batch_size"] / peer["train_seconds"],
        steps_per_s_basis="the peer's own training-loop timer",
        peer=peer,
    )
    return row


def score(rows: list[dict[str, Any]], eval_seed: int) -> dict[str, Any]:
    """Fit the evaluator once; add its report to every row that has samples; return its meta."""
    start = time.perf_counter()
    evaluator = DigitsEvaluator.fit(seed=eval_seed)
    unseen = len(evaluator.split.reference) + len(evaluator.split.held_out)
    print(
        f"DigitsEvaluator.fit(seed={eval_seed}) in {time.perf_counter() - start:.1f} s: "
        f"accuracy {evaluator.accuracy:.4f} on {unseen} unseen real digits",
        flush=True,
    )
    for row in rows:
        if "error" in row:
            continue
        try:
            report = evaluator.evaluate(load_png_folder(row["samples_dir"]), seed=eval_seed)
        except KuosanError as e:
            row["error"] = f"scoring failed: {e}"
            continue
        row["metrics"] = report.to_dict()
    held = evaluator.images[evaluator.split.held_out]
    real = evaluator.evaluate(held, seed=eval_seed)
    nn_real = evaluator.real_nn_distances
    rows.append(
        {
            "system": "real digits (held-out)",
            "metrics": {
                **real.to_dict(),
                # held-out digits are training digits themselves: show their distance to the
                # nearest *other* digit instead, and no memorisation figure
                "nn_distance_mean": float(nn_real[evaluator.split.held_out].mean()),
                "nn_distance_median": float(np.median(nn_real[evaluator.split.held_out])),
                "memorised_fraction": None,
            },
        }
    )
    return {
        "eval_seed": eval_seed,
        "classifier_accuracy": evaluator.accuracy,
        "feature_scale": evaluator.feature_scale,
    }


def fmt(value: Any, spec: str = ".3f") -> str:
    if value is None:
        return "—"
    return format(value, spec) if isinstance(value, (int, float)) else str(value)


def describe_sampler(row: dict[str, Any]) -> str:
    if "peer" in row:
        return f"{row['peer']['sampler']}, {row['peer']['sampling_steps']} steps"
    return row.get("sample_output", "?").strip() or "?"


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    head = [
        "system",
        "min",
        "steps",
        "steps/s",
        "images/s",
        "FID",
        "floor",
        "excess",
        "KID",
        "KID floor",
        "class histogram 0–9",
        "min class share",
        "NN dist mean (median)",
        "real NN mean",
        "memorised",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        m = row.get("metrics")
        if m is None:
            lines.append(
                f"| {row['system']} | {fmt(row.get('minutes'), 'g')} | "
                f"failed: {row.get('error', '?').splitlines()[0]} |" + " |" * 12
            )
            continue
        cells = [
            row["system"],
            fmt(row.get("minutes"), "g"),
            fmt(row.get("steps"), "d"),
            fmt(row.get("steps_per_s"), ".2f"),
            fmt(row.get("images_per_s"), ".1f"),
            fmt(m["fid"], ".4f"),
            fmt(m["fid_floor"], ".4f"),
            fmt(m["fid_excess"], ".4f"),
            fmt(m["kid"], ".4f"),
            fmt(m["kid_floor"], ".4f"),
            "/".join(str(c) for c in m["class_histogram"]),
            fmt(m["min_class_share"], ".3f"),
            f"{m['nn_distance_mean']:.2f} ({m['nn_distance_median']:.2f})",
            fmt(m["real_nn_distance_mean"], ".2f"),
            fmt(m["memorised_fraction"], ".3f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    n_eval = {r["system"]: r["metrics"]["n_eval"] for r in rows if "metrics" in r}
    basis = "; ".join(
        f"{r['system']}: {r['steps_per_s_basis']}" for r in rows if "steps_per_s_basis" in r
    )
    notes = [
        "",
        (
            f"- {meta['date']}, {meta['machine']}, {meta['threads']} thread(s), "
            f"torch {meta['torch']}, kuosan commit {meta['kuosan_commit']}. {meta['note']}"
        ).rstrip(),
        (
            "- Domain FID/KID from `kuosan.metrics.digits.DigitsEvaluator.fit"
            f"(seed={meta['eval_seed']})` (classifier accuracy "
            f"{meta['classifier_accuracy']:.4f} on unseen digits); FID and floor at matched n "
            f"(n_eval per row: {n_eval}); floor = real held-out digits. FID is biased by n: "
            "compare a row only with its own floor."
        ),
        (
            "- NN dist: pixel L2 (0..16 units) from each sample to its nearest training digit; "
            "real NN: each real digit to its nearest other digit. Memorised: share of samples "
            f"within {MEMORISATION_THRESHOLD} of a training digit."
        ),
        f"- steps/s basis: {basis}",
        "- sampling (not in the training budget): "
        + "; ".join(
            f"{r['system']}: {describe_sampler(r)}, {r['sample_seconds']:.0f} s"
            for r in rows
            if "sample_seconds" in r
        ),
    ]
    for row in rows:
        if "error" in row:
            notes.append(f"- {row['system']} failed:\n\n```\n{row['error']}\n```")
    return "\n".join(lines + notes) + "\n"


def history_figures(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The history row's figures: per system, steps, speed and the domain FID against its floor."""
    def rounded(value: float | None, digits: int) -> float | None:
        return None if value is None else round(value, digits)

    out = {}
    for row in rows:
        m = row.get("metrics")
        if m is None:
            out[row["system"]] = {"error": row.get("error", "?").splitlines()[0]}
            continue
        out[row["system"]] = {
            "minutes": row.get("minutes"), "steps": row.get("steps"),
            "steps_per_s": rounded(row.get("steps_per_s"), 2),
            "fid": rounded(m["fid"], 4), "fid_floor": rounded(m["fid_floor"], 4),
            "fid_excess": rounded(m["fid_excess"], 4), "kid": rounded(m["kid"], 4),
            "min_class_share": rounded(m["min_class_share"], 3),
            "memorised_fraction": rounded(m["memorised_fraction"], 3),
            "sampler": (row["sample_args"] or "default") if "sample_args" in row
            else describe_sampler(row) if "peer" in row else None}
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    workdir = args.workdir or ROOT / "runs" / "digits_fid" / stamp
    workdir.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": shlex.join(["python3", "benchmarks/digits_fid.py", *argv]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "threads": args.threads,
        "torch": torch.__version__,
        "kuosan_commit": git_commit(),
        "minutes": args.minutes,
        "num_samples": args.num_samples,
        "note": args.note,
        "kuosan_args": args.kuosan_args,
        "peer_args": args.peer_args,
        "workdir": str(workdir),
    }
    rows = []
    if not args.skip_kuosan:
        rows.append(run_kuosan(args, workdir))
    if not args.skip_peer:
        rows.append(run_peer(args, workdir))
    systems = ", ".join(row["system"] for row in rows)  # before score() adds the real digits
    meta.update(score(rows, args.eval_seed))
    table = markdown(rows, meta)
    print("\n" + table)
    if args.report is not None:
        base = (
            args.report.with_suffix("") if args.report.suffix in {".json", ".md"} else args.report
        )
        base.parent.mkdir(parents=True, exist_ok=True)
        json_path, md_path = Path(f"{base}.json"), Path(f"{base}.md")
        json_path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
        md_path.write_text(f"# Digits benchmark, {args.minutes:g} min per system\n\n{table}")
        history = record(base, "digits_fid", model=f"digits, {args.minutes:g} min: {systems}",
                         command=meta["command"],
                         note=meta["note"], date=meta["date"], figures=history_figures(rows))
        print(f"wrote {json_path} and {md_path}; appended a row to {history}")
    return 1 if any("error" in row for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
