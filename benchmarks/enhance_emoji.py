"""Prompt enhancement on emoji: do pictures of free-form prompts show what was meant?

Each line of ``--prompts`` (default ``benchmarks/data/emoji_freeform_prompts.jsonl``, 58 prompts
written after the mapping and never used to tune it) holds a free-form ``prompt``, the
``caption`` it means ("NAME[: TONE skin tone][, STYLE style]" of the emoji catalogue, or null
when nothing should map) and its ``kind`` (synonym, extra words, style, tone, mixed, none).

- **mapping**: the rewrite (``kuosan.enhance_emoji.EmojiLanguage`` over the model's
  ``captions.json``) means the caption: the same concept (a keyword that names the concept
  counts), tone and style; for kind "none", the prompt comes back unchanged.
- **pictures**: prompt i is drawn as typed ("without") and as rewritten ("with"), both seeded
  ``seed + i``, at 20 steps and the model's default guidance and sampler; the emoji recogniser
  (``kuosan.metrics.emoji``) scores each against the caption: success = its concept in the
  top 5, its style and skin tone where the caption names them, and its gender where the
  emoji has one (woman, man, person).

    OMP_NUM_THREADS=2 python3 benchmarks/enhance_emoji.py --model emoji-32 --threads 2 \\
        --report benchmarks/results/enhance_emoji

``--report PATH`` writes ``PATH.json`` (every prompt's rewrite and results) and ``PATH.md`` and
appends one row to ``benchmarks/results/enhance_emoji_history.jsonl``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from digits_fid import git_commit
from emoji_editing import to_uint8
from history import append_row, nan_to_none, repo_path

from kuosan import KuosanError, Pipeline
from kuosan.checkpoint import load_captions, weights_digest
from kuosan.data.emoji import EmojiEntry, split_caption, without_tone
from kuosan.enhance_emoji import EmojiLanguage
from kuosan.metrics.emoji import entry_labels, load_or_train, score

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ROOT / "benchmarks" / "data" / "emoji_freeform_prompts.jsonl"
KINDS = ("synonym", "extra words", "style", "tone", "mixed", "none")
STEPS = 20


def load_prompts(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise KuosanError(f"--prompts '{path}' does not exist")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for i, r in enumerate(rows, 1):
        if not isinstance(r.get("prompt"), str) or r.get("kind") not in KINDS:
            raise KuosanError(f"{path}:{i}: needs a 'prompt' and a 'kind' of {KINDS}")
    return rows


class Catalogue:
    """Captions → catalogue entries: a name or keyword → its emoji (less the tone), and
    (name, style) → entry."""

    def __init__(self, entries: list[EmojiEntry]) -> None:
        self.entries = entries
        self.concept: dict[str, tuple[int, ...]] = {}
        self.entry: dict[tuple[str, str | None], int] = {}
        for i, e in enumerate(entries):
            for name in (e.name, *e.keywords):
                self.concept.setdefault(name, without_tone(e.code_points))
                self.entry.setdefault((name, e.style), i)
                self.entry.setdefault((name, None), i)

    def meaning(self, caption: str) -> tuple[tuple[int, ...] | None, str | None, str | None]:
        """(concept, tone, style) of a caption; concept None when it names no emoji."""
        name, style = split_caption(caption)
        base, _, tone = name.partition(": ")
        concept = self.concept.get(name) or self.concept.get(base)
        return concept, tone or None, style

    def index(self, caption: str) -> int:
        name, style = split_caption(caption)
        if (name, style) not in self.entry:
            raise KuosanError(f"the caption {caption!r} names no picture of the emoji catalogue")
        return self.entry[(name, style)]


def run(args: argparse.Namespace) -> dict[str, Any]:
    rows = load_prompts(Path(args.prompts))
    pipe = Pipeline.load(args.model, device="cpu")
    captions = load_captions(pipe.path)
    if captions is None:
        raise KuosanError(f"'{args.model}' has no captions.json: export it with this kuosan")
    lang = EmojiLanguage(captions)
    recogniser, _, entries = load_or_train(tuple(pipe.styles or ("flat", "glossy")))
    labels, _, _ = entry_labels(entries, recogniser.config.styles, recogniser.config.concepts)
    cat = Catalogue(entries)
    t0 = time.perf_counter()
    rewrites = [lang.rewrite(r["prompt"]) for r in rows]
    map_s = time.perf_counter() - t0
    for r, rw in zip(rows, rewrites, strict=True):
        r["rewrite"], r["notes"], r["reason"] = rw.text, list(rw.notes), rw.reason
        if r["caption"] is None:
            r["mapped"] = not rw.changed
        else:
            cat.index(r["caption"])  # the prompt file's caption must name a real picture
            r["mapped"] = rw.changed and cat.meaning(rw.text) == cat.meaning(r["caption"])

    drawn = [r for r in rows if r["caption"] is not None]
    t0 = time.perf_counter()
    seeds = {"seed": args.seed, "num_inference_steps": STEPS}
    without = pipe.generate([r["prompt"] for r in drawn], **seeds)
    with_ = pipe.generate([r["rewrite"] for r in drawn], **seeds)
    draw_s = time.perf_counter() - t0
    index = [cat.index(r["caption"]) for r in drawn]
    want = {k: labels[k][index] for k in ("concept", "style", "tone", "gender")}
    _, tone_of, style_of = zip(*(cat.meaning(r["caption"]) for r in drawn), strict=True)
    for name, images in (("without", without), ("with", with_)):
        hits = score(recogniser, to_uint8(list(images)), want)
        ok = hits["top5"].numpy().copy()
        ok &= np.array([s is None for s in style_of]) | hits["style"].numpy()
        ok &= np.array([t is None for t in tone_of]) | hits["tone"].numpy()
        ok &= ~hits["has_gender"].numpy() | hits["gender"].numpy()  # woman, man or person
        for r, v in zip(drawn, ok, strict=True):
            r[name] = bool(v)
    return {"model": args.model, "weights": weights_digest(pipe.path), "prompts": repo_path(args.prompts),
            "rows": rows, "table": table(rows), "map_seconds": round(map_s, 2),
            "images_per_s": round(2 * len(drawn) / draw_s, 2), "steps": STEPS,
            "guidance": pipe.default_guidance, "sampler": pipe.default_sampler}


def table(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per kind and overall: n, mapping %, and pictures' success % without and with."""
    out = {}
    for kind in (*KINDS, "all"):
        group = [r for r in rows if kind in ("all", r["kind"])]
        drawn = [r for r in group if "with" in r]
        out[kind] = {"n": len(group), "mapping": _pct("mapped", group),
                     "without": _pct("without", drawn), "with": _pct("with", drawn)}
    return out


def _pct(key: str, rows: list[dict[str, Any]]) -> float:
    return 100 * float(np.mean([r[key] for r in rows])) if rows else float("nan")


def markdown(result: dict[str, Any], command: str) -> str:
    lines = [f"# Prompt enhancement on emoji: {result['model']}", "",
             f"`{command}`", "",
             (f"{len(result['rows'])} prompts ({result['prompts']}); {result['steps']} steps, guidance "
              f"{result['guidance']:g}, {result['sampler']}; success = the caption's concept in the "
              f"recogniser's top 5, its style and tone where the caption names them, its gender where "
              f"the emoji has one."), "",
             "| kind | n | mapping | pictures without | pictures with |", "|---|---|---|---|---|"]
    for kind, r in result["table"].items():
        cells = [f"{r[k]:.1f}" if r[k] == r[k] else "" for k in ("mapping", "without", "with")]
        lines.append(f"| {kind} | {r['n']} | " + " | ".join(cells) + " |")
    lines += ["", (f"Mapping took {result['map_seconds']} s for all prompts (with the names' embeddings, if not "
                   f"cached yet); pictures {result['images_per_s']} images/s."), "",
              "| prompt | rewrite | meant | mapping | without | with |", "|---|---|---|---|---|---|"]
    mark = {True: "yes", False: "no", None: ""}
    for r in result["rows"]:
        lines.append(f"| {r['prompt']} | {r['rewrite']} | {r['caption'] or '(unchanged)'} | "
                     f"{mark[r['mapped']]} | {mark[r.get('without')]} | {mark[r.get('with')]} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="emoji-32", help="checkpoint folder or bundled name")
    p.add_argument("--prompts", default=str(PROMPTS))
    p.add_argument("--seed", type=int, default=0, help="prompt i is drawn with seed + i")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--report", default=None, metavar="PATH", help="write PATH.json and PATH.md")
    p.add_argument("--note", default="", help="a note for the history row")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python3 benchmarks/enhance_emoji.py " + " ".join(sys.argv[1:] if argv is None else argv)
    try:
        result = run(args)
    except KuosanError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = markdown(result, command)
    print(text)
    if args.report:
        base = Path(args.report)
        base.parent.mkdir(parents=True, exist_ok=True)
        base.with_suffix(".json").write_text(json.dumps(nan_to_none(result), indent=1) + "\n")
        base.with_suffix(".md").write_text(text)
        append_row(base.parent / "enhance_emoji_history.jsonl", {
            "benchmark": "enhance_emoji", "model": result["model"], "weights": result["weights"],
            "commit": git_commit(), "command": command, "note": args.note,
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "figures": result["table"]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
