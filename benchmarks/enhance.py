"""Prompt enhancement on ShapesWorld: do pictures of free-form prompts show what was meant?

Protocol (issue 21). Each line of ``--prompts`` (default ``benchmarks/data/freeform_prompts.jsonl``,
the held-out set: never used to build or tune the mapping; ``freeform_dev.jsonl`` is the dev set)
holds a free-form ``prompt``, the ``caption`` it means in the ShapesWorld grammar and its
``kind`` (synonym, paraphrase, word order, typo, extra words, count). Prompt i gets one picture
from the prompt as typed ("without") and one from ``ShapesLanguage().rewrite(prompt)``
("with"), both with the generator seeded ``seed + i``, at 20 steps and the model's default
guidance and sampler; ``kuosan.data.shapes.score`` checks each picture against the canonical
caption. With ``--feedback K`` a third column keeps the best of K candidates
(``kuosan.enhance_feedback.feedback_plan`` and ``best_candidate``, scored against the top rewrite):
candidate 0 is the "with" picture, candidate j ≥ 1 of prompt i is drawn with seed
``seed + j·N + i`` (N prompts), so that each j is one batch.

Reported per kind and overall: caption accuracy without, with and with feedback; the mapping's
own accuracy (the rewrite states what the canonical caption states); images/s. Target for
shapes-32: with ≥ 80 % and ≥ 30 points above without.

    OMP_NUM_THREADS=1 python3 benchmarks/enhance.py --threads 1 \\
        --report benchmarks/results/enhance --note "..."

``--report PATH`` writes ``PATH.json`` (every prompt's rewrite and results) and ``PATH.md``, and
appends one line to ``PATH_history.jsonl`` (date, commit, model, figures; never rewritten).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch
from caption_accuracy import nan_to_none, pct
from digits_fid import git_commit
from history import append_row

from kuosan import KuosanError, Pipeline
from kuosan.data.shapes import CaptionSpec
from kuosan.enhance import FLIP, ShapesLanguage
from kuosan.enhance_feedback import best_candidate, feedback_plan, shapes_reward
from kuosan.metrics.shapes import parse, score

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("synonym", "paraphrase", "word order", "typo", "extra words", "count")
STEPS = 20
TARGET_WITH, TARGET_GAIN = 0.80, 0.30


def load_prompts(path: Path) -> list[dict[str, str]]:
    """The prompt file's rows; each canonical caption must parse."""
    if not path.is_file():
        raise KuosanError(f"--prompts '{path}' does not exist")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            prompt, caption, kind = row["prompt"], row["caption"], row["kind"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise KuosanError(f"'{path}' line {n}: expected a JSON object with prompt, caption "
                              f"and kind ({err})") from None
        if caption is None:
            continue  # a nonsense prompt of the dev set: nothing to draw
        parse(caption)
        rows.append({"prompt": prompt, "caption": caption, "kind": kind})
    if not rows:
        raise KuosanError(f"'{path}' holds no prompts")
    return rows


def same_statement(a: CaptionSpec, b: CaptionSpec) -> bool:
    """Whether two specs state the same (a pair may be read from either object)."""
    if a == b:
        return True
    return (a.kind == b.kind == "pair" and a.objects == b.objects[::-1]
            and a.relation == FLIP[b.relation] and a.background == b.background)


def states(text: str, caption: str) -> bool:
    """Whether ``text`` is a caption of the grammar stating what ``caption`` states (a prompt
    that already was a caption and came back unchanged counts)."""
    try:
        return same_statement(parse(text), parse(caption))
    except KuosanError:
        return False


def generate(pipe: Pipeline, prompts: list[str], seed: int, args: argparse.Namespace) -> list:
    return pipe.generate(prompts, num_inference_steps=STEPS, seed=seed,
                         batch_size=args.batch_size)


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()  # what else runs on the machine: 1, 5, 15-minute load
    rows = load_prompts(args.prompts)
    pipe = Pipeline.load(args.model, device=args.device)
    lang = ShapesLanguage()
    start = time.perf_counter()
    rewrites = [lang.rewrite(r["prompt"]) for r in rows]
    rewrite_s = time.perf_counter() - start  # includes loading MiniLM when a word needs it
    start = time.perf_counter()
    without = generate(pipe, [r["prompt"] for r in rows], args.seed, args)
    with_ = generate(pipe, [rw.text for rw in rewrites], args.seed, args)
    gen_s = time.perf_counter() - start
    feedback_s, candidates = 0.0, [[im] for im in with_]
    if args.feedback > 1:
        t = time.perf_counter()
        plans = [feedback_plan(rw, args.feedback) for rw in rewrites]
        for j in range(1, args.feedback):
            images = generate(pipe, [p[j] for p in plans], args.seed + j * len(rows), args)
            for c, im in zip(candidates, images, strict=True):
                c.append(im)
        feedback_s = time.perf_counter() - t
    results = []
    for i, (row, rw) in enumerate(zip(rows, rewrites, strict=True)):
        out = {**row, "rewrite": rw.text, "changed": rw.changed, "notes": list(rw.notes),
               "reason": rw.reason,
               "mapped": states(rw.text, row["caption"]),
               "without": bool(score(without[i], row["caption"]).satisfied),
               "with": bool(score(with_[i], row["caption"]).satisfied)}
        if args.feedback > 1:
            chosen, rewards = best_candidate(candidates[i], rw.text, shapes_reward)
            out.update(feedback=bool(score(candidates[i][chosen], row["caption"]).satisfied),
                       feedback_prompt=plans[i][chosen], feedback_chosen=chosen,
                       feedback_rewards=rewards)
        results.append(out)
    columns = ["without", "with"] + (["feedback"] if args.feedback > 1 else [])
    table = {}
    for kind in (*KINDS, "all"):
        mine = [r for r in results if kind in ("all", r["kind"])]
        if mine:
            table[kind] = {"n": len(mine), "mapped": mean(r["mapped"] for r in mine),
                           **{c: mean(r[c] for r in mine) for c in columns}}
    n_images = 2 * len(rows)
    meta = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "command": shlex.join(["python3", "benchmarks/enhance.py", *args.argv]),
        "model": str(args.model), "prompts": str(args.prompts), "steps": STEPS,
        "guidance": pipe.default_guidance, "sampler": pipe.default_sampler, "seed": args.seed,
        "feedback": args.feedback, "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "device": str(pipe.device), "torch": torch.__version__, "note": args.note,
        "rewrite_s": round(rewrite_s, 2), "images_per_s": round(n_images / gen_s, 3),
        "feedback_s": round(feedback_s, 1),
        "load_before": [round(x, 2) for x in load_before], "load_after": [
            round(x, 2) for x in os.getloadavg()],
    }
    return {"meta": meta, "columns": columns, "table": table, "results": results}


def mean(values: Any) -> float:
    values = [float(v) for v in values]
    return sum(values) / len(values) if values else float("nan")


def verdict(table: dict[str, dict[str, float]]) -> str:
    a = table["all"]
    gain = a["with"] - a["without"]
    ok = a["with"] >= TARGET_WITH and gain >= TARGET_GAIN
    return (f"**{'PASS' if ok else 'FAIL'}**: with {pct(a['with'])} % (target ≥ "
            f"{100 * TARGET_WITH:.0f}), {100 * gain:+.1f} points over without (target ≥ "
            f"+{100 * TARGET_GAIN:.0f})")


def markdown(result: dict[str, Any]) -> str:
    meta, cols, table = result["meta"], result["columns"], result["table"]
    titles = {"without": "without %", "with": "with %", "feedback":
              f"with + feedback (k={meta['feedback']}) %"}
    lines = ["# Prompt enhancement on ShapesWorld", "",
             ("Caption accuracy: % of pictures that satisfy the canonical caption of a free-form "
             "prompt; *mapped*: % of rewrites that state what the canonical caption states."), "",
             "| kind | n | mapped % | " + " | ".join(titles[c] for c in cols) + " |",
             "|---|---|---|" + "---|" * len(cols)]
    for kind, row in table.items():
        cells = " | ".join(pct(row[c]) for c in cols)
        name = f"**{kind}**" if kind == "all" else kind
        lines.append(f"| {name} | {row['n']} | {pct(row['mapped'])} | {cells} |")
    lines += ["", verdict(table), "",
              f"- command: `{meta['command']}`",
              (f"- {meta['date']}, commit {meta['commit']}, model {meta['model']}, {meta['steps']} "
              f"steps, guidance {meta['guidance']:g}, sampler {meta['sampler']}, seed "
              f"{meta['seed']} (prompt i: seed + i, the same with and without)"),
              f"- {meta['machine']}, device {meta['device']}, torch {meta['torch']}, "
              f"{meta['threads']} thread(s); {meta['images_per_s']} images/s; rewriting all "
              f"prompts {meta['rewrite_s']} s (MiniLM load included); load average (1, 5, 15 "
              f"min) {meta['load_before']} before, {meta['load_after']} after"
              + (f"; feedback {meta['feedback_s']} s" if meta["feedback"] > 1 else ""),
              f"- note: {meta['note'] or '—'}", "", ("## Rewrites that do not state the canonical "
              "caption"), ""]
    misses = [r for r in result["results"] if not r["mapped"]]
    lines += [f"- ({r['kind']}) {r['prompt']!r} → {r['rewrite']!r}, meant {r['caption']!r}"
              + (f" ({r['reason']})" if r["reason"] else "") for r in misses] or ["- none"]
    return "\n".join(lines) + "\n"


def write_report(result: dict[str, Any], base: Path) -> list[Path]:
    base.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = Path(f"{base}.json"), Path(f"{base}.md")
    history = Path(f"{base}_history.jsonl")
    json_path.write_text(json.dumps(nan_to_none(result), indent=1, allow_nan=False) + "\n")
    md_path.write_text(markdown(result))
    row = {k: result["meta"][k] for k in ("date", "commit", "model", "command", "prompts",
                                          "steps", "guidance", "seed", "feedback", "threads",
                                          "note")}
    append_row(history, {"benchmark": "enhance", **row, "figures": result["table"]})
    return [json_path, md_path, history]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="shapes-32", help="checkpoint folder or bundled name")
    p.add_argument("--prompts", type=Path,
                   default=ROOT / "benchmarks" / "data" / "freeform_prompts.jsonl")
    p.add_argument("--feedback", type=int, default=0,
                   help="K > 1: also keep the best of K candidates (K-1 more pictures a prompt)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--report", type=Path, default=None)
    p.add_argument("--note", default="")
    args = p.parse_args(argv)
    if args.feedback < 0 or args.batch_size < 1 or (args.threads is not None and args.threads < 1):
        p.error("--feedback must be >= 0, --batch-size and --threads >= 1")
    args.argv = argv
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        result = run(args)
    except KuosanError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(markdown(result))
    if args.report is not None:
        print("wrote " + ", ".join(map(str, write_report(result, args.report))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
