"""Caption accuracy of text-to-image models on ShapesWorld: does each image show its caption?

Protocol (issue 4, item 7). ``-n`` captions are drawn from the grammar with a seeded NumPy
generator, from the training distribution (``sample_spec(rng, holdout="exclude")``, generator
``default_rng([seed, 0])``), plus ``--heldout-n`` captions that each state a held-out colour–shape
pair (``holdout="only"``, generator ``default_rng([seed, 1])``). Every model and every setting
sees the same captions. Caption i (the seen ones first, then the held-out ones) gets one image,
drawn with the generator seeded ``seed + i`` (``Pipeline.generate(captions, seed=seed)``), and
``kuosan.metrics.shapes.score`` checks it against its caption. Reported per model, steps and
guidance scale (1 = off):

- caption accuracy: the fraction of images that satisfy their caption, for the seen single,
  pair and count captions, for the held-out captions, and for all captions (seen + held-out);
- attribute accuracy over all captions: per attribute (shape, colour, size, position, relation,
  count, background) the fraction right among the captions that state it
  (``attribute_accuracy``);
- images/s: generation only (text encoding, sampling, conversion to PIL), not scoring.

The targets row is 20 steps at the model's default guidance (``config["sampling"]["guidance"]``
when the checkpoint has it, else 3; added to the guidance grid at 20 steps when missing):
single ≥ 90 %, pair ≥ 70 %, held-out ≥ 50 %. To compare the jointly trained encoder with MiniLM,
pass both models (``--model A --model B``); each row names its text encoder.

    OMP_NUM_THREADS=1 python3 benchmarks/caption_accuracy.py --model runs/shapes \\
        --model runs/shapes-minilm --report benchmarks/results/caption_accuracy --note "..."

``--report PATH`` writes ``PATH.json`` (every row, with the per-caption results) and ``PATH.md``
(the tables, the command, machine, torch version, threads and note), and per model a grid of the
first 16 seen captions at the targets setting, ``PATH_<model>.png``, with its captions in the .md;
and appends one row (``history_figures``) to ``caption_accuracy_history.jsonl`` beside them
(benchmarks/history.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import re
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from history import nan_to_none, record
from PIL import Image

from kuosan import KuosanError, Pipeline
from kuosan.data.shapes import CaptionSpec, format_caption, is_heldout, sample_spec
from kuosan.images import save_grid
from kuosan.metrics.shapes import ATTRIBUTES, attribute_accuracy, score
from kuosan.precision import PRECISIONS

KINDS = ("single", "pair", "count")
GROUPS = (*KINDS, "heldout", "all")  # columns of the caption-accuracy table
GROUP_TITLES = {"single": "single", "pair": "pair", "count": "count", "heldout": "held-out",
                "all": "all"}
TARGETS = {"single": 0.90, "pair": 0.70, "heldout": 0.50}
TARGET_STEPS = 20
GRID_IMAGES = 16


@dataclass(frozen=True)
class Caption:
    """One evaluation caption: its text, what it states, and whether it is a held-out one."""

    text: str
    spec: CaptionSpec
    heldout: bool

    @property
    def group(self) -> str:
        return "heldout" if self.heldout else self.spec.kind


@dataclass
class Row:
    """The scores of one model at one (steps, guidance) setting."""

    model: str
    encoder: str
    steps: int
    guidance: float
    counts: dict[str, int]
    accuracy: dict[str, float]  # group → fraction satisfied
    attributes: dict[str, dict[str, float]]  # group → attribute_accuracy(...)
    images_per_s: float
    seconds: float
    satisfied: str  # one 0/1 character per caption, in caption order
    is_target: bool = False
    targets: dict[str, bool] = field(default_factory=dict)


# ---- captions ------------------------------------------------------------------------------------


def draw_captions(n: int, heldout_n: int, seed: int) -> list[Caption]:
    """``n`` captions of the training distribution, then ``heldout_n`` held-out ones.

    Two generators, so that changing one count leaves the other captions as they were.
    """
    seen_rng, held_rng = np.random.default_rng([seed, 0]), np.random.default_rng([seed, 1])
    seen = [sample_spec(seen_rng, holdout="exclude") for _ in range(n)]
    held = [sample_spec(held_rng, holdout="only") for _ in range(heldout_n)]
    out = [Caption(format_caption(s), s, False) for s in seen]
    out += [Caption(format_caption(s), s, True) for s in held]
    for c in out:
        assert is_heldout(c.spec) == c.heldout, c.text  # the grammar's holdout contract
    return out


def group_indices(captions: list[Caption]) -> dict[str, list[int]]:
    """Caption indices of each group; "all" holds every caption (seen and held-out)."""
    out = {g: [i for i, c in enumerate(captions) if c.group == g] for g in (*KINDS, "heldout")}
    out["all"] = list(range(len(captions)))
    return out


# ---- models ----------------------------------------------------------------------------------------


def encoder_type(pipe: Pipeline) -> str:
    enc = pipe.config.get("text_encoder") or {}
    return str(enc.get("type", "?")) if isinstance(enc, dict) else str(enc)


def load_text_model(path: Path, device: str, precision: str = "auto") -> Pipeline:
    """Load a checkpoint folder, which must hold a text-conditioned image model."""
    pipe = Pipeline.load(path, device=device, precision=precision)
    if not pipe.is_text_conditioned:
        raise KuosanError(f"--model '{path}' is not a text-to-image model (its config.json has no "
                          f"text_encoder): caption accuracy needs a model trained with "
                          f"--text-encoder on ShapesWorld")
    if pipe.info.kind != "image":
        raise KuosanError(f"--model '{path}' models vectors ({pipe.info.name}), not images")
    if pipe.info.name != "shapes":
        print(f"warning: --model '{path}' was trained on {pipe.info.name!r}, not ShapesWorld: "
              f"its scores say little", file=sys.stderr)
    return pipe


def settings_for(pipe: Pipeline, steps: list[int], guidance: list[float]) -> list[tuple[int, float]]:
    """(steps, guidance) pairs to run: the grid, plus the targets setting when 20 steps is in it."""
    grid = [(s, g) for s in steps for g in guidance]
    target = (TARGET_STEPS, pipe.default_guidance)
    if TARGET_STEPS in steps and not any(s == target[0] and math.isclose(g, target[1])
                                         for s, g in grid):
        grid.append(target)
    return sorted(grid)


def is_target(pipe: Pipeline, steps: int, guidance: float) -> bool:
    return steps == TARGET_STEPS and math.isclose(guidance, pipe.default_guidance)


def evaluate(pipe: Pipeline, label: str, captions: list[Caption], steps: int, guidance: float,
             args: argparse.Namespace) -> tuple[Row, list[Image.Image]]:
    """Generate one image per caption at one setting and score them."""
    start = time.perf_counter()
    images = pipe.generate([c.text for c in captions], num_inference_steps=steps,
                           guidance_scale=guidance, seed=args.seed, sampler=args.sampler,
                           batch_size=args.batch_size)
    seconds = time.perf_counter() - start
    results = [score(img, c.spec) for img, c in zip(images, captions, strict=True)]
    groups = group_indices(captions)
    counts = {g: len(idx) for g, idx in groups.items()}
    accuracy = {g: (sum(results[i].satisfied for i in idx) / len(idx)) if idx else math.nan
                for g, idx in groups.items()}
    attributes = {g: attribute_accuracy([results[i] for i in idx]) for g, idx in groups.items()}
    row = Row(label, encoder_type(pipe), steps, guidance, counts, accuracy, attributes,
              len(images) / seconds, seconds, "".join("1" if r.satisfied else "0" for r in results))
    if is_target(pipe, steps, guidance):
        row.is_target = True
        row.targets = {g: accuracy[g] >= t for g, t in TARGETS.items() if not math.isnan(accuracy[g])}
    return row, images


# ---- report ----------------------------------------------------------------------------------------


def pct(v: float) -> str:
    return "—" if math.isnan(v) else f"{100 * v:.1f}"


def target_cell(row: Row) -> str:
    if not row.is_target:
        return ""
    if not row.targets:
        return "targets: no captions"
    verdict = "PASS" if all(row.targets.values()) else "FAIL"
    parts = [f"{GROUP_TITLES[g]} {'ok' if ok else 'no'}" for g, ok in row.targets.items()]
    return f"**{verdict}** ({', '.join(parts)})"


def tables(rows: list[Row]) -> str:
    """Two markdown tables: caption accuracy by group, attribute accuracy over all captions."""
    counts = rows[0].counts if rows else {g: 0 for g in GROUPS}
    head = " | ".join(f"{GROUP_TITLES[g]} % (n={counts[g]})" for g in GROUPS)
    lines = ["### Caption accuracy (% of images that satisfy their caption)", "",
             f"| model | encoder | steps | guidance | {head} | images/s | targets |",
             "|---|---|---|---|" + "---|" * len(GROUPS) + "---|---|"]
    for r in rows:
        cells = " | ".join(pct(r.accuracy[g]) for g in GROUPS)
        lines.append(f"| {r.model} | {r.encoder} | {r.steps} | {r.guidance:g} | {cells} | "
                     f"{r.images_per_s:.2f} | {target_cell(r)} |")
    lines += ["", "### Attribute accuracy, all captions (% right among captions that state it)", "",
              "| model | encoder | steps | guidance | " + " | ".join(ATTRIBUTES) + " |",
              "|---|---|---|---|" + "---|" * len(ATTRIBUTES)]
    for r in rows:
        cells = " | ".join(pct(r.attributes["all"][a]) for a in ATTRIBUTES)
        mark = " ← targets" if r.is_target else ""
        lines.append(f"| {r.model} | {r.encoder} | {r.steps} | {r.guidance:g}{mark} | {cells} |")
    return "\n".join(lines) + "\n"


def paired_lines(rows: list[Row]) -> list[str]:
    """Caption by caption, each model's row against the first model's at the same setting (the
    same captions and seeds): how many agree, and how many only one of the two satisfies. A
    difference in accuracy is only as large as these flips."""
    out = []
    for r in rows:
        first = next(f for f in rows if (f.steps, f.guidance) == (r.steps, r.guidance))
        if first is r:
            continue
        pairs = list(zip(first.satisfied, r.satisfied, strict=True))
        agree = sum(a == b for a, b in pairs)
        out.append(f"- {r.steps} steps, guidance {r.guidance:g}: {first.model} and {r.model} agree "
                   f"on {agree} of {len(pairs)} captions; only {first.model}: "
                   f"{pairs.count(('1', '0'))}, only {r.model}: {pairs.count(('0', '1'))}")
    if not out:
        return []
    return ["### Caption by caption (same captions and seeds)", "", *out, ""]


def target_summary(label: str, pipe: Pipeline, rows: list[Row]) -> str:
    g = pipe.default_guidance
    mine = [r for r in rows if r.model == label and r.is_target]
    if not mine:
        return (f"- {label}: targets not measured ({TARGET_STEPS} steps is not in --steps; "
                f"default guidance {g:g})")
    r = mine[0]
    parts = [f"{GROUP_TITLES[k]} {pct(r.accuracy[k])} % (≥ {100 * t:.0f})"
             for k, t in TARGETS.items()]
    return f"- {label}: {TARGET_STEPS} steps, guidance {g:g}: {', '.join(parts)}: {target_cell(r)}"


def history_figures(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The history row's figures: per model and setting, % of captions satisfied by group."""
    def pct1(v: float | None) -> float | None:
        return None if v is None or math.isnan(v) else round(100 * v, 1)

    return {"settings": [
        {"model": r["model"], "encoder": r["encoder"], "steps": r["steps"], "guidance": r["guidance"],
         **{f"{g}_pct": pct1(r["accuracy"][g]) for g in GROUPS},
         "images_per_s": round(r["images_per_s"], 2),
         **({"targets_met": all(r["targets"].values())} if r.get("is_target") else {})}
        for r in rows]}


def grid_setting(pipe: Pipeline, settings: list[tuple[int, float]]) -> tuple[int, float]:
    """The targets setting when it was run, else the most steps at the guidance nearest it."""
    g = pipe.default_guidance
    for s in settings:
        if is_target(pipe, *s):
            return s
    most = max(s for s, _ in settings)
    return min(((s, x) for s, x in settings if s == most), key=lambda s: abs(s[1] - g))


def save_sample_grid(images: list[Image.Image], path: Path) -> Path:
    """The images as a 4-wide grid, enlarged 4× (nearest)."""
    x = torch.stack([torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32))
                     .permute(2, 0, 1) for im in images]) / 127.5 - 1
    return save_grid(x, path, nrow=4, upscale=4, padding=2)


def unique_labels(paths: list[Path]) -> list[str]:
    """Folder names, with "-2", "-3", … added where two models share one."""
    seen: dict[str, int] = {}
    out = []
    for p in paths:
        name = p.resolve().name or str(p)
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return out


# ---- command line ----------------------------------------------------------------------------------


def float_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected finite numbers >= 0, got {text!r}")
    return values


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def precision_list(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in PRECISIONS]
    if not values or bad or len(set(values)) < len(values):
        raise argparse.ArgumentTypeError(f"expected distinct values of {', '.join(PRECISIONS)} "
                                         f"separated by commas, got {text!r}")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, action="append", required=True,
                   help="a text-conditioned checkpoint folder (repeat to compare models)")
    p.add_argument("-n", type=int, default=500, help="captions from the training distribution")
    p.add_argument("--heldout-n", type=int, default=200, help="captions stating held-out pairs")
    p.add_argument("--guidance", type=float_list, default=[1.0, 2.0, 3.0, 5.0],
                   help="guidance scales, comma-separated (1 = off)")
    p.add_argument("--steps", type=int_list, default=[10, 20], help="sampling steps, comma-separated")
    p.add_argument("--sampler", default=None, help="default: each model's own (config.json)")
    p.add_argument("--seed", type=int, default=0, help="caption generators and image seeds")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", type=precision_list, default=["auto"],
                   help="the network's arithmetic, comma-separated (auto, fp32, bf16): each model "
                   "runs once per precision, side by side (docs/speed.md)")
    p.add_argument("--report", type=Path, default=None,
                   help="write PATH.json, PATH.md and PATH_<model>.png")
    p.add_argument("--note", default="", help="free text recorded in the report")
    args = p.parse_args(argv)
    if args.n < 0 or args.heldout_n < 0 or args.n + args.heldout_n == 0:
        p.error(f"-n and --heldout-n must be >= 0 and not both 0, got {args.n} and {args.heldout_n}")
    if args.batch_size < 1:
        p.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    return args


def run(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    runs = [(label if len(args.precision) == 1 else f"{label} ({precision})", path, precision)
            for label, path in zip(unique_labels(args.model), args.model, strict=True)
            for precision in args.precision]  # each model once per precision, side by side
    labels, paths = [r[0] for r in runs], [r[1] for r in runs]
    pipes = [load_text_model(path, args.device, precision)  # fail before any work
             for _, path, precision in runs]
    captions = draw_captions(args.n, args.heldout_n, args.seed)
    rows: list[Row] = []
    grids: dict[str, tuple[tuple[int, float], list[Image.Image]]] = {}
    for label, pipe in zip(labels, pipes, strict=True):
        settings = settings_for(pipe, args.steps, args.guidance)
        chosen = grid_setting(pipe, settings)
        for steps, guidance in settings:
            row, images = evaluate(pipe, label, captions, steps, guidance, args)
            rows.append(row)
            print(f"[{label} {row.encoder}: {steps} steps, guidance {guidance:g}: all "
                  f"{pct(row.accuracy['all'])} %, {row.images_per_s:.2f} images/s]", flush=True)
            if (steps, guidance) == chosen:
                grids[label] = (chosen, images[:GRID_IMAGES])
    meta = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": shlex.join(["python3", "benchmarks/caption_accuracy.py", *argv]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "device": str(pipes[0].device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "note": args.note,
        "sampler": args.sampler or ", ".join(sorted({p.default_sampler for p in pipes})) + " (the models' own)",
        "seed": args.seed,
        "models": {label: {"path": str(path), "weights": pipe.digest,
                           "encoder": encoder_type(pipe),
                           "default_guidance": pipe.default_guidance, "data": pipe.info.name,
                           "precision": pipe.precision}
                   for label, path, pipe in zip(labels, paths, pipes, strict=True)},
    }
    summary = [target_summary(label, pipe, rows) for label, pipe in zip(labels, pipes, strict=True)]
    return {"meta": meta, "captions": captions, "rows": rows, "grids": grids, "summary": summary}


def markdown(result: dict[str, Any], grid_files: dict[str, Path]) -> str:
    meta, captions = result["meta"], result["captions"]
    lines = ["# Caption accuracy on ShapesWorld", "", tables(result["rows"]),
             *paired_lines(result["rows"]),
             ("### Targets (bundled model: 20 steps, default guidance: single ≥ 90 %, "
              "pair ≥ 70 %, held-out ≥ 50 %)"), "", *result["summary"], "",
             f"- command: `{meta['command']}`",
             (f"- {meta['date']}, {meta['machine']}, device {meta['device']}, torch {meta['torch']}, "
              f"{meta['threads']} thread(s), sampler {meta['sampler']}, seed {meta['seed']}"),
             f"- note: {meta['note'] or '—'}",
             (f"- captions: {sum(not c.heldout for c in captions)} from the training distribution "
              f"(holdout \"exclude\"), {sum(c.heldout for c in captions)} stating a held-out "
              f"colour–shape pair (holdout \"only\"); image i seeded {meta['seed']} + i; "
              "\"all\" counts both; attribute accuracy is over all captions")]
    for label, (setting, images) in result["grids"].items():
        name = grid_files[label].name if label in grid_files else "(no --report: not saved)"
        lines += ["", f"### Samples: {label} ({setting[0]} steps, guidance {setting[1]:g}), `{name}`",
                  "", "Row by row, left to right:", ""]
        lines += [f"{i + 1}. {c.text}" for i, c in enumerate(captions[:len(images)])]
    return "\n".join(lines) + "\n"


def write_report(result: dict[str, Any], base: Path) -> list[Path]:
    base = base.with_suffix("") if base.suffix in {".json", ".md"} else base
    base.parent.mkdir(parents=True, exist_ok=True)
    grid_files = {}
    for label, (_, images) in result["grids"].items():
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", label)
        grid_files[label] = save_sample_grid(images, Path(f"{base}_{safe}.png"))
    payload = {
        "meta": result["meta"],
        "targets": {"steps": TARGET_STEPS, **TARGETS},
        "captions": [{"text": c.text, "kind": c.spec.kind, "heldout": c.heldout}
                     for c in result["captions"]],
        "rows": [r.__dict__ for r in result["rows"]],
        "grids": {label: {"file": grid_files[label].name, "steps": s[0], "guidance": s[1]}
                  for label, (s, _) in result["grids"].items()},
    }
    json_path, md_path = Path(f"{base}.json"), Path(f"{base}.md")
    json_path.write_text(json.dumps(nan_to_none(payload), indent=1, allow_nan=False) + "\n")
    md_path.write_text(markdown(result, grid_files))
    meta = result["meta"]
    table = record(base, "caption_accuracy", model=", ".join(meta["models"]),
                   weights=", ".join(m["weights"] for m in meta["models"].values()),
                   command=meta["command"], note=meta["note"], date=meta["date"],
                   figures=history_figures(payload["rows"]))
    return [json_path, md_path, *grid_files.values(), table]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    try:
        result = run(args, argv)
        print("\n" + tables(result["rows"]))
        print("\n".join(result["summary"]))
        if args.report is not None:
            written = write_report(result, args.report)
            print("wrote " + ", ".join(str(p) for p in written))
    except KuosanError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
