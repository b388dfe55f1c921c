"""A quick caption probe of text-to-image models on ShapesWorld: how many fresh captions of each
kind (pair, single, count) each model satisfies, and where pair images fail.

Smaller and faster than ``caption_accuracy.py`` (208 captions, one setting, a few minutes on 2
CPU threads), for deciding between checkpoints during development; the README's figures come from
``caption_accuracy.py``. Captions are drawn with ``default_rng(seed)`` (pair, then single, then
count captions, training distribution); caption j of a kind is generated in batches of 32 seeded
``1000 + start of its batch`` (``Pipeline.generate(..., seed=...)``), the same for every model.

    OMP_NUM_THREADS=2 python3 benchmarks/caption_probe.py --model shapes-32 --model runs/other

Pair breakdown: the fraction of pair images with exactly two objects found, and among those the
fraction whose objects have every stated attribute and the fraction whose relation holds.

``--prompts`` sets how a pair caption is put to the model (the image is always scored against the
caption): ``caption`` as it is; ``paraphrase`` composed with its mirror ("A left of B AND B right
of A": two true captions of the same picture); ``layout`` as each object alone at a place the
relation implies ("A at the left AND B at the right"; above/below: top and bottom), a
hand-written layout planner; ``caption+layout`` the caption and both of those. Each part is
guided with weight ``--part-weight`` (composable diffusion, :func:`kuosan.guidance.composed_cfg_model`).
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import torch

from kuosan import Pipeline
from kuosan.data.shapes import CaptionSpec, format_caption, sample_spec
from kuosan.metrics.shapes import score
from kuosan.samplers import SAMPLERS

KINDS = {"pair": 96, "single": 64, "count": 48}
PROMPTS = ("caption", "paraphrase", "layout", "caption+layout")
MIRROR = {"to the left of": "to the right of", "to the right of": "to the left of",
          "above": "below", "below": "above"}
PLACES = {"to the left of": ("left", "right"), "to the right of": ("right", "left"),
          "above": ("top", "bottom"), "below": ("bottom", "top")}  # (first, second) object


def prompt_for(spec: CaptionSpec, style: str = "caption", weight: float = 1.0) -> str:
    """What the model is given for ``spec``: its caption, or for a pair one of the composed
    prompts of ``--prompts`` (module docstring), each part at ``weight``."""
    caption = format_caption(spec)
    if spec.kind != "pair" or style == "caption":
        return caption
    first, second = spec.objects
    mirror = format_caption(dataclasses.replace(spec, objects=(second, first),
                                                relation=MIRROR[spec.relation]))
    alone = [format_caption(CaptionSpec("single", (dataclasses.replace(o, position=place),),
                                        background=spec.background))
             for o, place in zip(spec.objects, PLACES[spec.relation], strict=True)]
    parts = {"paraphrase": [caption, mirror], "layout": alone,
             "caption+layout": [caption, *alone]}[style]
    return " AND ".join(f"{p} :{weight:g}" if weight != 1 else p for p in parts)


def draw_specs(seed: int, counts: dict[str, int] = KINDS) -> dict[str, list]:
    """``counts[kind]`` fresh captions (specs) of each kind, training distribution, drawn in the
    order of ``counts`` from ``default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    return {k: [sample_spec(rng, kind=k, holdout="exclude") for _ in range(n)] for k, n in counts.items()}


def pair_breakdown(results: list) -> dict[str, float]:
    """Where pair images fail: the % with exactly two objects found, and of those the % whose
    objects have every stated attribute (shape, colour, size) and the % whose relation holds."""
    two = [r for r in results if len(r.found) == 2]
    attrs = [all(v is not False for v in (r.shape, r.colour, r.size)) for r in two]
    nan = float("nan")
    return {"two objects %": 100 * len(two) / len(results) if results else nan,
            "attributes % (of two)": 100 * float(np.mean(attrs)) if two else nan,
            "relation % (of two)": 100 * float(np.mean([bool(r.relation) for r in two])) if two else nan}


def probe(model: str, specs: dict, steps: int, guidance: float, prompts: str = "caption",
          part_weight: float = 1.0, sampler: str | None = None) -> dict[str, float | str]:
    pipe = Pipeline.load(model)
    row: dict[str, float | str] = {"model": model}
    for kind, kind_specs in specs.items():
        captions = [prompt_for(s, prompts, part_weight) for s in kind_specs]
        images = []
        for start in range(0, len(captions), 32):
            images += pipe.generate(captions[start:start + 32], num_inference_steps=steps,
                                    guidance_scale=guidance, seed=1000 + start, sampler=sampler)
        results = [score(im, s) for im, s in zip(images, kind_specs, strict=True)]
        row[kind] = f"{sum(r.satisfied for r in results)}/{len(results)}"
        if kind == "pair":
            row.update(pair_breakdown(results))
    return row


def kind_counts(text: str) -> dict[str, int]:
    """``--counts pair=96,single=64,count=48`` -> {kind: n}."""
    try:
        counts = {k.strip(): int(n) for k, n in (item.split("=") for item in text.split(","))}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected KIND=N,… (e.g. pair=96,single=64), got {text!r}") from None
    bad = sorted(set(counts) - set(KINDS)) + [k for k, n in counts.items() if n < 1]
    if bad:
        raise argparse.ArgumentTypeError(f"kinds are {', '.join(KINDS)}, each with N ≥ 1; bad: {', '.join(bad)}")
    return counts


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", action="append", required=True, help="checkpoint or bundled name (repeat)")
    p.add_argument("--seed", type=int, default=21, help="caption generator")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=3.0,
                   help="the same for every model (not each one's default; default 3)")
    p.add_argument("--sampler", choices=SAMPLERS, default=None, help="default: each model's own")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--counts", type=kind_counts, default=KINDS, metavar="KIND=N,…",
                   help="captions of each kind (default pair=96,single=64,count=48)")
    p.add_argument("--prompts", choices=PROMPTS, default="caption",
                   help="how a pair caption is put to the model (module docstring)")
    p.add_argument("--part-weight", type=float, default=1.0,
                   help="the weight of each part of a composed pair prompt")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    specs = draw_specs(args.seed, args.counts)
    rows = [probe(m, specs, args.steps, args.guidance, args.prompts, args.part_weight, args.sampler)
            for m in args.model]
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.1f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    sampler = args.sampler or "the model's own"
    print(f"\n{args.steps} steps, sampler {sampler}, guidance {args.guidance}, pair prompts {args.prompts} "
          f"(part weight {args.part_weight:g}), caption seed {args.seed}, "
          f"{torch.get_num_threads()} thread(s), torch {torch.__version__}")


if __name__ == "__main__":
    main()
