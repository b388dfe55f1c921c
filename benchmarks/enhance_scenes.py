"""Prompt enhancement on EmojiWorld: does a free-form scene prompt become the scene it means?

Each line of ``--prompts`` (default ``benchmarks/data/emojiworld_prompts.jsonl``, 46 prompts
written after the mapping, before its first run) holds a free-form ``prompt``, its ``kind``
(single, place, pair, row) and the ``captions`` that mean it (EmojiWorld's grammar,
docs/emoji-scenes.md; more than one where the prompt leaves a choice, e.g. "next to" names no
side; no style suffix where the prompt names no style: then any style counts).

Two caption languages read the same training captions and rewrite every prompt:

- **scene**: ``kuosan.enhance_scenes.SceneLanguage`` (what ``--enhance`` uses for an EmojiWorld
  model): layout, things and style read apart;
- **nearest caption**: ``kuosan.enhance.CaptionSet``, the training caption nearest in MiniLM
  cosine (what ``--enhance`` gave an EmojiWorld model before).

A rewrite is right when it means one of the prompt's captions: the same layout (kind, and the
relation or place; a pair may also be written the other way round: "B to the right of A"), the
same names in the same order (an animal and its face emoji both count: "tiger", "tiger face"),
and the same style where the caption names one. The table gives each of the three parts too,
and how many prompts mean a caption that is among the training captions: the nearest-caption
rewrite can be right only for those, since two or three of 1,725 emoji in one of many layouts
are almost never all in 20,000 scenes.

The training captions are those of ``--model``'s captions.json, or, without a model, those that
``kuosan train --data emojiworld`` draws (20,000 scenes, seed 0; the emoji sources must be
installed). ``--compose MODEL`` reads instead the names a model of single emoji draws as scenes
(``kuosan generate --scene --enhance``: ``kuosan.scenes.scene_captions`` of its captions.json),
and with ``--pictures K`` also draws K pictures of every prompt (seeds 0 … K-1, 20 steps) and
scores them with the scene scorer against the prompt's captions (``kuosan.metrics.emoji_scenes``;
a caption without a style takes any): the prompt as typed, one picture of the model; and the
scene language's rewrite drawn as a scene (``kuosan.scenes.ScenePipeline``, 64×64).

    OMP_NUM_THREADS=2 python3 benchmarks/enhance_scenes.py --threads 2 \\
        --report benchmarks/results/enhance_scenes
    OMP_NUM_THREADS=2 python3 benchmarks/enhance_scenes.py --threads 2 --compose emoji-32 \\
        --pictures 4 --report benchmarks/results/enhance_scenes_emoji-32

``--report PATH`` writes ``PATH.json`` and ``PATH.md`` and appends one row to
``benchmarks/results/enhance_scenes_history.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from history import repo_path, run_meta, write_report

from kuosan import KuosanError
from kuosan.checkpoint import load_captions, resolve_model
from kuosan.enhance import CaptionSet, MiniLMEmbed
from kuosan.enhance_scenes import SceneLanguage
from kuosan.metrics.emoji_scenes import parse

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ROOT / "benchmarks" / "data" / "emojiworld_prompts.jsonl"
KINDS = ("single", "place", "pair", "row")
LANGUAGES = ("scene", "nearest caption")
PARTS = ("right", "layout", "names", "style")
SCENES = 20_000  # what `kuosan train --data emojiworld` draws (kuosan.data.EMOJIWORLD_ITEMS)
FLIP = {"to the right of": "to the left of", "below": "above"}


def load_prompts(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise KuosanError(f"--prompts '{path}' does not exist")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for i, r in enumerate(rows, 1):
        if (not isinstance(r.get("prompt"), str) or r.get("kind") not in KINDS
                or not isinstance(r.get("captions"), list) or not r["captions"]):
            raise KuosanError(f"{path}:{i}: needs a 'prompt', a 'kind' of {KINDS} and a list "
                              f"of 'captions'")
        for c in r["captions"]:
            parse(c)  # each must be a caption of the grammar
    return rows


def meaning(caption: str) -> tuple | None:
    """(kind, relation or place, names, style) of a scene caption, a pair written with its
    relation's left/above form; None when it is not a caption of the grammar."""
    try:
        spec = parse(caption)
    except KuosanError:
        return None
    names, relation = spec.names, spec.relation
    if relation in FLIP:
        names, relation = names[::-1], FLIP[relation]
    return spec.kind, relation or spec.position, names, spec.style


def same_thing(a: str, b: str) -> bool:
    """Two names of one thing: equal, or an animal and its face emoji ("tiger", "tiger face")."""
    return a == b or a == f"{b} face" or b == f"{a} face"


def scores(rewrite: str, captions: list[str]) -> dict[str, bool]:
    """Whether ``rewrite`` means one of ``captions`` (``right``), and part by part: its
    ``layout`` (kind, relation or place), ``names`` (in order) and ``style`` (a caption without
    a style takes any); each part judged against the caption that matches most parts."""
    got = meaning(rewrite)
    best = {"right": False, "layout": False, "names": False, "style": False}
    for caption in captions:
        want = meaning(caption)
        if got is None or want is None:
            continue
        s = {"layout": got[:2] == want[:2],
             "names": len(got[2]) == len(want[2]) and all(
                 same_thing(x, y) for x, y in zip(got[2], want[2], strict=True)),
             "style": want[3] in (None, got[3])}
        s["right"] = all(s.values())
        if sum(s.values()) > sum(best.values()):
            best = s
    return best


def means(rewrite: str, captions: list[str]) -> bool:
    """Whether ``rewrite`` means one of ``captions``."""
    return scores(rewrite, captions)["right"]


def in_training(captions: list[str], training: set[str], styles: Sequence[str]) -> bool:
    """Whether one of ``captions`` (in some style, where it names none) is a training caption:
    the nearest-caption rewrite can only be right when one is."""
    return any(c in training or any(f"{c}, {s} style" in training for s in styles)
               for c in captions)


def training_captions(model: str | None, compose: str | None = None) -> list[str]:
    if compose is not None:
        from kuosan.scenes import scene_captions

        captions = load_captions(resolve_model(compose))
        if captions is None:
            raise KuosanError(f"'{compose}' has no captions.json")
        return scene_captions(captions)
    if model is not None:
        captions = load_captions(resolve_model(model))
        if captions is None:
            raise KuosanError(f"'{model}' has no captions.json")
        return list(captions)
    from kuosan.data.emoji import DEFAULT_STYLES, emoji_catalogue
    from kuosan.data.emoji_scenes import format_caption, random_scene, scene_concepts

    entries = [e for e in emoji_catalogue(styles=DEFAULT_STYLES) if not e.held_out]
    concepts = scene_concepts(entries)
    return [format_caption(random_scene(np.random.default_rng((0, i)), entries, concepts, 64),
                           entries) for i in range(SCENES)]


def check_names(rows: list[dict[str, Any]], captions: list[str]) -> None:
    """Every name the prompt file's captions use is a name of the training scenes."""
    known = {n for c in captions if (m := meaning(c)) for n in m[2]}
    unknown = sorted({n for r in rows for c in r["captions"] for n in meaning(c)[2]} - known)
    if unknown:
        raise KuosanError(f"the prompt file names emoji the training scenes lack: {unknown}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    rows = load_prompts(Path(args.prompts))
    captions = training_captions(args.model, args.compose)
    check_names(rows, captions)
    training, styles = set(captions), sorted({m[3] for c in captions if (m := meaning(c)) and m[3]})
    for r in rows:
        r["in_training"] = in_training(r["captions"], training, styles)
    embed = MiniLMEmbed()
    languages = {"scene": SceneLanguage(captions, embed=embed),
                 "nearest caption": CaptionSet(captions, embed=embed)}
    seconds = {}
    for name, lang in languages.items():
        t0 = time.perf_counter()
        lang.rewrite(rows[0]["prompt"])  # the names' or captions' embeddings, once
        setup = time.perf_counter() - t0
        t0 = time.perf_counter()
        for r in rows:
            rw = lang.rewrite(r["prompt"])
            r[name] = {"rewrite": rw.text, **scores(rw.text, r["captions"]),
                       "notes": list(rw.notes), "reason": rw.reason}
        seconds[name] = {"setup": round(setup, 1),
                         "per_prompt_ms": round(1000 * (time.perf_counter() - t0) / len(rows), 1)}
    source = (f"the scene captions of {args.compose}'s names" if args.compose else args.model
              or f"kuosan train --data emojiworld's {SCENES} captions")
    result = {"model": source, "training_captions": len(captions),
              "prompts": repo_path(args.prompts), "rows": rows, "table": table(rows),
              "seconds": seconds}
    if args.compose and args.pictures:
        result["pictures"] = score_pictures(rows, args.compose, args.pictures)
    return result


def score_pictures(rows: list[dict[str, Any]], model: str, k: int) -> dict[str, Any]:
    """K pictures of each prompt, as typed (one picture of ``model``) and as the scene
    language's rewrite drawn by ``kuosan.scenes``; each scored against the prompt's captions
    (satisfied by one of them), per kind and over all."""
    from kuosan import Pipeline
    from kuosan.data.emoji import DEFAULT_STYLES
    from kuosan.metrics.emoji import load_or_train
    from kuosan.metrics.emoji_scenes import concept_index, score_scene
    from kuosan.scenes import ScenePipeline, is_scene_caption

    recogniser, _, entries = load_or_train(DEFAULT_STYLES, 32)
    index = concept_index(entries, recogniser)
    pipe = Pipeline.load(model)
    scenes = ScenePipeline(pipe, 64)
    t0 = time.perf_counter()
    for r in rows:
        typed = pipe.generate([r["prompt"]] * k, num_inference_steps=20, seed=0)
        rewrite = r["scene"]["rewrite"]
        drawn = (scenes.generate([rewrite] * k, num_inference_steps=20, seed=0)
                 if is_scene_caption(rewrite) else [])
        for name, images in (("typed", typed), ("scene", drawn)):
            r[f"pictures: {name}"] = [any(score_scene(recogniser, np.asarray(im.convert("RGB")),
                                                      parse(c), index).satisfied
                                          for c in r["captions"]) for im in images] or [False] * k
    out = {}
    for kind in (*KINDS, "all"):
        sel = [r for r in rows if kind in ("all", r["kind"])]
        if sel:
            out[kind] = {"n": len(sel) * k, **{
                name: _pct([v for r in sel for v in r[f"pictures: {name}"]])
                for name in ("typed", "scene")}}
    return {"per_prompt": k, "table": out, "seconds": round(time.perf_counter() - t0, 1)}


def table(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per kind and overall: n, the % of prompts whose meant caption is a training caption, and
    per language the % of rewrites that are right, and right in layout, names and style."""
    out = {}
    for kind in (*KINDS, "all"):
        sel = [r for r in rows if kind in ("all", r["kind"])]
        if sel:
            out[kind] = {"n": len(sel), "in training": _pct([r["in_training"] for r in sel])}
            for name in LANGUAGES:
                for part in PARTS:
                    out[kind][f"{name}: {part}"] = _pct([r[name][part] for r in sel])
    return out


def _pct(values: list[bool]) -> float:
    return 100 * float(np.mean(values))


def markdown(result: dict[str, Any]) -> str:
    lines = [(f"{len(result['rows'])} prompts ({result['prompts']}); both languages read the same "
              f"{result['training_captions']} training captions ({result['model']}). Right = the "
              f"rewrite means one of the prompt's captions: layout (kind, relation or place), "
              f"names in order (an animal and its face emoji both count) and style where named. "
              f"In training = a meant caption is among the training captions, the most the "
              f"nearest-caption rewrite can get."), "",
             "| kind | n | in training | " + " | ".join(f"{n}: {p}" for n in LANGUAGES for p in PARTS)
             + " |", "|---|---|---|" + "---|" * (len(LANGUAGES) * len(PARTS))]
    for kind, r in result["table"].items():
        lines.append(f"| {kind} | {r['n']} | {r['in training']:.1f} | " + " | ".join(
            f"{r[f'{n}: {p}']:.1f}" for n in LANGUAGES for p in PARTS) + " |")
    if "pictures" in result:
        pics = result["pictures"]
        lines += ["", (f"Pictures ({pics['per_prompt']} of each prompt, {pics['seconds']} s in "
                       f"all) that satisfy one of the prompt's captions (the scene scorer):"), "",
                  "| kind | pictures | typed, one picture | scene language, drawn as a scene |",
                  "|---|---|---|---|"]
        lines += [f"| {kind} | {r['n']} | {r['typed']:.1f} | {r['scene']:.1f} |"
                  for kind, r in pics["table"].items()]
    lines += ["", "Time: " + "; ".join(
        f"{name}: {v['setup']} s to embed its names or captions, then {v['per_prompt_ms']} ms a "
        f"prompt" for name, v in result["seconds"].items()) + ".", "",
        "| prompt | meant | scene | nearest caption |", "|---|---|---|---|"]
    mark = {True: "", False: " **(wrong)**"}
    for r in result["rows"]:
        cells = [r[name]["rewrite"] + mark[r[name]["right"]] for name in LANGUAGES]
        lines.append(f"| {r['prompt']} | {' / '.join(r['captions'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="an EmojiWorld checkpoint (its captions.json); "
                   "default: the captions `kuosan train --data emojiworld` draws")
    p.add_argument("--compose", default=None, metavar="MODEL",
                   help="a model of single emoji (emoji-32): the scene captions of its names")
    p.add_argument("--pictures", type=int, default=0, metavar="K",
                   help="with --compose: draw and score K pictures of each prompt")
    p.add_argument("--prompts", default=str(PROMPTS))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--report", default=None, metavar="PATH", help="write PATH.json and PATH.md")
    p.add_argument("--note", default="", help="what else was running (the report and history)")
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    if args.pictures and not args.compose:
        p.error("--pictures needs --compose MODEL")
    if args.compose and args.model:
        p.error("--compose and --model read different captions: give one")
    if args.threads:
        torch.set_num_threads(args.threads)
    meta = run_meta("enhance_scenes.py", argv, args.note)
    try:
        result = run(args)
    except KuosanError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    body = markdown(result)
    print(body)
    if args.report:
        write_report(Path(args.report), "enhance_scenes", title="Prompt enhancement on EmojiWorld",
                     meta=meta, data=result, body=body, model=result["model"],
                     figures={**result["table"], **({"pictures": result["pictures"]["table"]}
                                                     if "pictures" in result else {})})
    return 0


if __name__ == "__main__":
    sys.exit(main())
