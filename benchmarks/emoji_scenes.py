"""EmojiWorld: scoring scenes of two or three emoji against their captions (docs/emoji-scenes.md).

``--validate`` checks the scorer (``kuosan.metrics.emoji_scenes``) on real scenes, drawn by
``kuosan.data.emoji_scenes`` from the real emoji pictures: N scenes of each kind (single, pair,
row) for the seen group, and N pairs and rows of held-out compositions. Each is scored against

- its own caption: what the scorer gives a perfect picture (its ceiling);
- a wrong layout: the pair's relation reversed, the row's first two emoji swapped, the single
  emoji's position moved to the opposite cell (the centre to the top left);
- a wrong emoji: the first emoji's NAME replaced by another concept's of the same style.

A scorer worth using is high on the first and low on the other two.

``--model PATH_OR_NAME`` has a text-to-image model draw each caption once (``--steps`` 20, the
model's guidance, image i seeded ``--sample-seed`` + i) at its own size, and scores the samples;
the real scenes' scores come beside them, and the seconds each model took per picture (batches
of 32, the model's loading included). ``--compose MODEL`` has a model of single emoji
(emoji-32) draw each caption through ``kuosan.scenes`` (each emoji drawn in its tile of the
caption's layout, the same seeds and steps), scored in the same run beside ``--model``'s.

    OMP_NUM_THREADS=2 python3 benchmarks/emoji_scenes.py --validate
    OMP_NUM_THREADS=2 python3 benchmarks/emoji_scenes.py --model runs/emojiworld-64
    OMP_NUM_THREADS=2 python3 benchmarks/emoji_scenes.py --model runs/emojiworld-64 --compose emoji-32

Writes ``benchmarks/results/emoji_scenes[_TAG].md`` / ``.json`` / ``_grid.png`` and appends a row
to ``benchmarks/results/emoji_scenes_history.jsonl``. Needs the emoji sources (docs/emoji.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from history import record, run_meta

from kuosan.data.emoji import DEFAULT_STYLES, catalogue_pictures
from kuosan.data.emoji_scenes import (
    Scene,
    format_caption,
    random_scene,
    render_scene,
    scene_concepts,
)
from kuosan.data.shapes import CELL_NAMES, POSITIONS
from kuosan.errors import KuosanError
from kuosan.metrics.emoji import load_or_train
from kuosan.metrics.emoji_scenes import (
    SceneSpec,
    concept_index,
    parse,
    score_scene,
    summarise_scenes,
)

RESULTS = Path(__file__).resolve().parent / "results"
OPPOSITE = {"to the left of": "to the right of", "to the right of": "to the left of",
            "above": "below", "below": "above"}
GROUPS = (("seen", "single", "exclude"), ("seen", "pair", "exclude"), ("seen", "row", "exclude"),
          ("held-out pair", "pair", "only"), ("held-out pair", "row", "only"))
KEYS = ("satisfied", "count", "concepts", "concepts_any", "layout", "style")


def draw_scenes(n: int, seed: int, size: int, entries, concepts) -> list[tuple[str, str, Scene]]:
    """(group, kind, scene) for n scenes of each of GROUPS; scene j of group g is drawn with
    ``default_rng((seed, g, j))``."""
    out = []
    for g, (group, kind, holdout) in enumerate(GROUPS):
        for j in range(n):
            rng = np.random.default_rng((seed, g, j))
            out.append((group, kind, random_scene(rng, entries, concepts, size, kind, holdout)))
    return out


def wrong_layout(spec: SceneSpec) -> SceneSpec:
    """The same emoji in another layout (module docstring)."""
    if spec.kind == "pair":
        return replace(spec, relation=OPPOSITE[spec.relation])
    if spec.kind == "row":
        a, b, c = spec.names
        return replace(spec, names=(b, a, c))
    col, row = POSITIONS[spec.position]
    return replace(spec, position=CELL_NAMES[(2 - col, 2 - row)] if (col, row) != (1, 1)
                   else "top left")


def wrong_emoji(spec: SceneSpec, rng: np.random.Generator, names: list[str]) -> SceneSpec:
    """The first emoji replaced by another concept's NAME."""
    while (other := names[int(rng.integers(len(names)))]) in spec.names:
        pass
    return replace(spec, names=(other, *spec.names[1:]))


def score_all(recogniser, pixels: list[np.ndarray], specs: list[SceneSpec], concepts) -> list:
    return [score_scene(recogniser, p, s, concepts) for p, s in zip(pixels, specs, strict=True)]


def rows_by_group(drawn, scores) -> dict[str, dict[str, float]]:
    """summarise_scenes per group, per (group, kind) and over all."""
    rows = {"all": summarise_scenes(scores)}
    for key in dict.fromkeys([g for g, _, _ in drawn] + [f"{g}, {k}" for g, k, _ in drawn]):
        rows[key] = summarise_scenes([s for (g, k, _), s in zip(drawn, scores, strict=True)
                                      if key in (g, f"{g}, {k}")])
    return rows


def table(title: str, rows: dict[str, dict[str, float]]) -> list[str]:
    lines = [f"| {title} | n | " + " | ".join(KEYS) + " |", "|---|---" + "|---" * len(KEYS) + "|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['n']} | " + " | ".join(f"{r[k]:.1f}" for k in KEYS) + " |")
    return lines


def save_grid(path: Path, images: list[np.ndarray], columns: int = 8, scale: int = 3) -> None:
    size = images[0].shape[0]
    rows = (len(images) + columns - 1) // columns
    grid = np.full((rows * (size + 2), columns * (size + 2), 3), 128, dtype=np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, columns)
        grid[r * (size + 2):r * (size + 2) + size, c * (size + 2):c * (size + 2) + size] = im
    Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale),
                                 Image.Resampling.NEAREST).save(path)


def generate(model: str, captions: list[str], steps: int, guidance: float | None, seed: int,
             size: int, compose: bool = False) -> list[np.ndarray]:
    """Image i of ``model`` for captions[i], seeded seed + i; ``compose``: ``model`` draws single
    emoji, laid out by ``kuosan.scenes.ScenePipeline`` on a size × size canvas."""
    from kuosan import Pipeline
    from kuosan.scenes import ScenePipeline

    pipe = Pipeline.load(model)
    if compose:
        pipe = ScenePipeline(pipe, size)
    elif pipe.info.shape != (3, size, size):
        raise KuosanError(f"'{model}' makes {pipe.info.shape} images; the scenes are 3×{size}×{size} "
                          f"(--size)")
    out = []
    for i in range(0, len(captions), 32):
        batch = pipe.generate(captions[i:i + 32], num_inference_steps=steps,
                              guidance_scale=guidance, seed=seed + i)
        out += [np.asarray(image.convert("RGB")) for image in batch]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--validate", action="store_true", help="score real scenes (the scorer's check)")
    p.add_argument("--model", help="checkpoint folder or bundled name to score")
    p.add_argument("--compose", metavar="MODEL",
                   help="a model of single emoji (emoji-32) to score through kuosan.scenes")
    p.add_argument("--n", type=int, default=64, help="scenes per (group, kind); 5 of them")
    p.add_argument("--size", type=int, default=64, help="scene canvas side")
    p.add_argument("--seed", type=int, default=23, help="scene draw")
    p.add_argument("--sample-seed", type=int, default=1000)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--tag", default="")
    p.add_argument("--note", default="", help="what else ran (for the report)")
    p.add_argument("--no-history", action="store_true")
    args = p.parse_args(argv)
    if not (args.validate or args.model or args.compose):
        p.error("say --validate, --model PATH, --compose MODEL, or several")
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    try:
        recogniser, _, all_entries = load_or_train(DEFAULT_STYLES, 32)
        pictures, entries, _ = catalogue_pictures(args.size, DEFAULT_STYLES)
        concepts = scene_concepts(entries)
        index = concept_index(all_entries, recogniser)
        drawn = draw_scenes(args.n, args.seed, args.size, entries, concepts)
        captions = [format_caption(s, entries) for _, _, s in drawn]
        specs = [parse(c) for c in captions]
        real = [render_scene(s, pictures) for _, _, s in drawn]
        result = {**run_meta("emoji_scenes.py", sys.argv[1:] if argv is None else argv, args.note),
                  "n_per_group": args.n, "size": args.size, "tables": {}}
        lines = [f"# EmojiWorld scenes{f' ({args.tag})' if args.tag else ''}", "",
                 (f"`{result['command']}` — {result['date']}, {result['threads']} threads. "
                  f"{args.note}"), "",
                 ("Percentages; `concepts`: stated emoji recognised top 5 in the caption's "
                  "layout; `concepts_any`: in any box."), ""]
        result["tables"]["real"] = rows_by_group(drawn, score_all(recogniser, real, specs, index))
        lines += table("real scenes, own caption", result["tables"]["real"]) + [""]
        if args.validate:
            rng = np.random.default_rng(args.seed)
            names = sorted({entries[i].name for v in concepts.values() for i in v})
            for key, specs2 in (("wrong layout", [wrong_layout(s) for s in specs]),
                                ("wrong emoji", [wrong_emoji(s, rng, names) for s in specs])):
                result["tables"][key] = rows_by_group(drawn, score_all(recogniser, real, specs2,
                                                                       index))
                lines += table(f"real scenes, {key}", result["tables"][key]) + [""]
        columns = [real]
        for key, model, compose in (("samples", args.model, False),
                                    ("composed", args.compose, True)):
            if not model:
                continue
            began = time.perf_counter()
            samples = generate(model, captions, args.steps, args.guidance, args.sample_seed,
                               args.size, compose)
            per_picture = (time.perf_counter() - began) / len(captions)  # loading included
            result["model" if key == "samples" else "compose"] = model
            result.setdefault("seconds_per_picture", {})[key] = round(per_picture, 3)
            result["tables"][key] = rows_by_group(drawn, score_all(recogniser, samples, specs,
                                                                   index))
            what = f"{model} through kuosan.scenes" if compose else model
            lines += table(f"samples of {what} ({per_picture:.2f} s a picture)",
                           result["tables"][key]) + [""]
            columns.append(samples)
        per = max(1, min(8 // len(columns), args.n))
        shown = [g * args.n + j for g in range(len(GROUPS)) for j in range(per)]
        images = [column[i] for i in shown for column in columns]
    except KuosanError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result["seconds"] = round(time.perf_counter() - start, 1)
    base = RESULTS / f"emoji_scenes{'_' + args.tag if args.tag else ''}"
    base.parent.mkdir(parents=True, exist_ok=True)
    grid = base.with_name(base.name + "_grid.png")
    save_grid(grid, images, columns=per * len(columns))  # one row per group
    what = ("real scenes" if len(columns) == 1 else "for each caption: the real scene, then "
            + ", then ".join(f"the sample of {m}" for m in (args.model, args.compose) if m))
    lines += [f"![scenes]({grid.name})", "", f"The grid ({what}), row by row: "
              + "; ".join(f"*{captions[i]}*" for i in shown)]
    base.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    base.with_suffix(".json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    print("\n".join(lines))
    if not args.no_history:
        models = [m for m in (args.model, args.compose and f"{args.compose} (scenes)") if m]
        record(base, "emoji_scenes", model=", ".join(models) or "real", command=result["command"],
               figures={k: {g: r.get("satisfied") for g, r in t.items()}
                        for k, t in result["tables"].items()}, note=args.note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
