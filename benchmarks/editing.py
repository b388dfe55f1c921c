"""Editing on ShapesWorld, scored automatically: inpainting, outpainting, variations (issue 5).

Protocol. Every case is drawn with ``np.random.default_rng([seed, task, i])`` and edited with
the image's generator seeded ``seed + i``; ``kuosan.metrics.shapes.score`` and ``find_objects``
check the results. Pixels outside the mask are compared with the source bit for bit.

Every call uses the model's own sampler and guidance (config.json) unless said otherwise.

(a) Inpainting, ``-n`` cases per task, the mask the old object's bounding box grown by
``--margin`` px (or, for "add", an empty square of the canvas), the caption describing the
whole edited image (DALL·E 2):
- replace: a one-object scene; the object is replaced by another colour *and* shape, caption
  "a <colour> <shape> at the <cell>" (the cell of the mask); the single-object edit;
- replace-in-pair: the second object of a two-object scene is replaced, caption
  "a <first> <relation> a <new>" with the scene's relation;
- add: a one-object scene in the left or right column; a new object is asked for on the other
  side, "a <new> to the right of a <old>" (the DALL·E 2 example), in an empty 18×18 mask there.
Success: the image satisfies its caption (one-to-one, no other object) and the object found for
the new one has its centre inside the mask; and no pixel outside the mask changed.

(b) Outpainting: a one-object scene whose object is cut by the right border (2 to side/2 px
outside it) is extended by 16 px on the right, caption "a <colour> <shape>". Success: the
original pixels are intact, exactly one object is found, it has the object's colour and
shape and it spans the seam (no broken half-object).

(c) Variations of ``--vary-n`` seen captions' images, 4 each, at each strength: faithfulness
(the fraction still satisfying the source caption), diversity (mean pairwise RMS distance of
the 4, pixels in [0, 1]) and distance to the source.

    OMP_NUM_THREADS=2 python3 benchmarks/editing.py --model shapes-32 --threads 2 \\
        --report benchmarks/results/editing
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from kuosan import KuosanError, Pipeline
from kuosan.data.shapes import (
    COLOURS,
    HELDOUT,
    SHAPES,
    Obj,
    Scene,
    format_caption,
    render,
    sample_scene,
    sample_spec,
)
from kuosan.images import from_pil, make_grid, to_pil
from kuosan.metrics.shapes import find_objects, score
from kuosan.pipeline import INPAINT_RESAMPLE

INPAINT_TASKS = ("replace", "replace-in-pair", "add")
TARGET = 0.80  # replace (single-object edits) at 20 steps
CELL_PHRASE = {"center": "in the center"}


def art(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def phrase(colour: str, shape: str, size: str | None = None) -> str:
    words = " ".join(w for w in (size, colour, shape) if w)
    return f"{art(words)} {words}"


def with_background(caption: str, background: str) -> str:
    return caption if background == "white" else f"{caption} on a {background} background"


def new_object(rng: np.random.Generator, old: Obj) -> tuple[str, str]:
    """A colour and a shape both unlike the old object's, never a held-out pair."""
    options = [(c, s) for c in COLOURS for s in SHAPES
               if c != old.colour and s != old.shape and (c, s) not in HELDOUT]
    return options[int(rng.integers(len(options)))]


def box_mask(box: tuple[float, float, float, float], margin: float, size: int = 32) -> np.ndarray:
    x0, y0, x1, y1 = box
    m = np.zeros((size, size), dtype=np.uint8)
    r0, r1 = max(int(np.floor(y0 - margin)), 0), min(int(np.ceil(y1 + margin)), size)
    c0, c1 = max(int(np.floor(x0 - margin)), 0), min(int(np.ceil(x1 + margin)), size)
    m[r0:r1, c0:c1] = 255
    return m


def cell_of(found_or_obj_centre: tuple[float, float], size: int = 32) -> str:
    from kuosan.data.shapes import CELL_NAMES

    cx, cy = found_or_obj_centre
    return CELL_NAMES[(min(int(cx / (size / 3)), 2), min(int(cy / (size / 3)), 2))]


def inpaint_case(task: str, rng: np.random.Generator, margin: float) -> dict[str, Any]:
    """(source image, mask, caption) of one inpainting case."""
    if task in ("replace", "add"):
        spec = sample_spec(rng, "single")
        scene = sample_scene(spec, rng)
        if task == "add":
            while cell_of(scene.objects[0].centre).split()[-1] not in ("left", "right"):
                scene = sample_scene(sample_spec(rng, "single"), rng)
    else:
        scene = sample_scene(sample_spec(rng, "pair"), rng)
    old = scene.objects[-1]
    colour, shape = new_object(rng, old)
    if task == "replace":
        mask = box_mask(old.box(), margin)
        ys, xs = np.nonzero(mask)
        where = cell_of(((xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2))
        where = CELL_PHRASE.get(where, f"at the {where}")
        caption = f"{phrase(colour, shape)} {where}"
    elif task == "replace-in-pair":
        first = scene.objects[0]
        mask = box_mask(old.box(), margin)
        dx, dy = old.centre[0] - first.centre[0], old.centre[1] - first.centre[1]
        relation = (("to the left of" if dx > 0 else "to the right of") if abs(dx) >= abs(dy)
                    else ("above" if dy > 0 else "below"))
        caption = f"{phrase(first.colour, first.shape)} {relation} {phrase(colour, shape)}"
    else:  # add on the empty side, the same row
        x, y = old.centre
        new_x = 32 - x
        side = 18
        mask = box_mask((new_x - side / 2, y - side / 2, new_x + side / 2, y + side / 2), 0)
        mask[box_mask(old.box(), 2) > 0] = 0
        relation = "to the right of" if new_x > x else "to the left of"
        caption = f"{phrase(colour, shape)} {relation} {phrase(old.colour, old.shape)}"
    return {"image": render(scene), "mask": Image.fromarray(mask),
            "caption": with_background(caption, scene.background), "new": (colour, shape)}


def inpaint_success(result: Image.Image, case: dict[str, Any]) -> tuple[bool, bool]:
    """(caption satisfied with the new object's centre in the mask, outside pixels intact)."""
    src, out = np.asarray(case["image"]), np.asarray(result)
    keep = np.asarray(case["mask"]) < 128
    intact = bool(np.array_equal(src[keep], out[keep]))
    s = score(result, case["caption"])
    colour, shape = case["new"]
    m = np.asarray(case["mask"]) >= 128
    placed = any(f.colour == colour and f.shape == shape
                 and m[min(int(f.centre[1]), 31), min(int(f.centre[0]), 31)] for f in s.found)
    return bool(s.satisfied and placed), intact


def outpaint_case(rng: np.random.Generator) -> dict[str, Any]:
    shape, colour = SHAPES[int(rng.integers(4))], None
    colours = [c for c in COLOURS if (c, shape) not in HELDOUT]
    colour = colours[int(rng.integers(len(colours)))]
    size = ("small", "large")[int(rng.integers(2))]
    side = {"small": 8.0, "large": 14.0}[size]
    overhang = float(rng.uniform(2, side / 2))
    y = float(rng.uniform(side / 2 + 1, 32 - side / 2 - 1))
    background = ("white", "white", "black", "gray")[int(rng.integers(4))]
    scene = Scene((Obj(shape, colour, size, (32 - side / 2 + overhang, y), side),), background, 32)
    return {"image": render(scene), "caption": with_background(phrase(colour, shape), background),
            "object": (colour, shape)}


def outpaint_success(result: Image.Image, case: dict[str, Any]) -> tuple[bool, bool]:
    src, out = np.asarray(case["image"]), np.asarray(result)
    intact = bool(np.array_equal(out[:, :32], src))
    _, found = find_objects(result)
    colour, shape = case["object"]
    ok = (len(found) == 1 and found[0].colour == colour and found[0].shape == shape
          and found[0].centre[0] - found[0].side / 2 < 32 < found[0].centre[0] + found[0].side / 2)
    return bool(ok), intact


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def run(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    pipe = Pipeline.load(args.model, device=args.device)
    if not pipe.is_text_conditioned or pipe.info.shape != (3, 32, 32):
        raise KuosanError(f"'{args.model}' is not a 32×32 ShapesWorld text-to-image model")
    common = {"num_inference_steps": args.steps, "guidance_scale": args.guidance}
    variants = [(pipe.default_sampler, 1)] + ([("ddpm", args.resample)] if args.resample > 1 else [])
    rows, examples = [], {}
    for t, task in enumerate(INPAINT_TASKS):
        cases = [inpaint_case(task, np.random.default_rng([args.seed, t, i]), args.margin)
                 for i in range(args.n)]
        for sampler, resample in variants:
            n = args.n if resample == 1 else min(args.n, args.resample_n)
            start = time.perf_counter()
            results = pipe.inpaint([c["image"] for c in cases[:n]], [c["mask"] for c in cases[:n]],
                                   [c["caption"] for c in cases[:n]], seed=args.seed,
                                   sampler=sampler, resample=resample, **common)  # case i: seed + i
            seconds = time.perf_counter() - start
            scored = [inpaint_success(r, c) for r, c in zip(results, cases, strict=False)]
            rows.append({"task": f"inpaint: {task}", "sampler": sampler, "resample": resample, "n": n,
                         "success": float(np.mean([s for s, _ in scored])),
                         "intact": float(np.mean([k for _, k in scored])),
                         "seconds_per_image": seconds / n})
            print(f"[inpaint {task} {sampler} r={resample}: {pct(rows[-1]['success'])} % of {n}]",
                  flush=True)
            if resample == 1:
                examples[task] = [(c["image"], c["mask"], r, c["caption"])
                                  for c, r in zip(cases[:6], results[:6], strict=True)]
    cases = [outpaint_case(np.random.default_rng([args.seed, 10, i])) for i in range(args.n)]
    start = time.perf_counter()
    results = [pipe.outpaint(c["image"], right=16, prompt=c["caption"], seed=args.seed + i, **common)[0]
               for i, c in enumerate(cases)]
    seconds = time.perf_counter() - start
    scored = [outpaint_success(r, c) for r, c in zip(results, cases, strict=True)]
    rows.append({"task": "outpaint: complete a cut object (+16 px right)", "sampler": pipe.default_sampler,
                 "resample": 1, "n": args.n, "success": float(np.mean([s for s, _ in scored])),
                 "intact": float(np.mean([k for _, k in scored])), "seconds_per_image": seconds / args.n})
    print(f"[outpaint: {pct(rows[-1]['success'])} %]", flush=True)
    examples["outpaint"] = [(c["image"], None, r, c["caption"]) for c, r in zip(cases[:6], results[:6],
                                                                              strict=True)]
    vary_rows = []
    rng = np.random.default_rng([args.seed, 20])
    sources = []
    while len(sources) < args.vary_n:
        spec = sample_spec(rng, str(rng.choice(["single", "pair"])))
        sources.append((render(sample_scene(spec, rng)), format_caption(spec)))
    for strength in args.strengths:
        faithful, diversity, distance = [], [], []
        for i, (img, caption) in enumerate(sources):
            variations = pipe.vary(img, num_images=4, strength=strength, prompt=caption,
                                   seed=args.seed + 4 * i, **common)
            x = [from_pil(v).numpy() * 0.5 for v in variations]  # [0, 1] units
            faithful += [score(v, caption).satisfied for v in variations]
            diversity += [float(np.sqrt(((a - b) ** 2).mean())) for a, b in itertools.combinations(x, 2)]
            src = from_pil(img).numpy() * 0.5
            distance += [float(np.sqrt(((a - src) ** 2).mean())) for a in x]
        vary_rows.append({"strength": strength, "faithfulness": float(np.mean(faithful)),
                          "diversity": float(np.mean(diversity)), "distance": float(np.mean(distance))})
        print(f"[vary strength {strength}: faithful {pct(vary_rows[-1]['faithfulness'])} %]", flush=True)
        if strength == 0.6:
            examples["vary"] = [(sources[i][0], None, v, sources[i][1]) for i in range(2)
                                for v in pipe.vary(sources[i][0], num_images=4, strength=strength,
                                                   prompt=sources[i][1], seed=args.seed + 4 * i,
                                                   **common)][:6]
    meta = {"date": dt.datetime.now().isoformat(timespec="seconds"),
            "command": shlex.join(["python3", "benchmarks/editing.py", *argv]),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
            "device": str(pipe.device), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "model": str(args.model), "steps": args.steps,
            "guidance": pipe.default_guidance if args.guidance is None else args.guidance,
            "margin": args.margin, "seed": args.seed, "note": args.note}
    return {"meta": meta, "rows": rows, "vary": vary_rows, "examples": examples}


def markdown(result: dict[str, Any], pictures: dict[str, str]) -> str:
    meta = result["meta"]
    lines = ["# Editing on ShapesWorld", "",
             f"{meta['steps']} steps, guidance {meta['guidance']:g}, mask margin {meta['margin']} px.", "",
             "| task | sampler | resample | n | success % | outside pixels intact % | s/image |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['task']} | {r['sampler']} | {r['resample']} | {r['n']} | {pct(r['success'])} | "
                     f"{pct(r['intact'])} | {r['seconds_per_image']:.2f} |")
    # the verdict judges what `Pipeline.inpaint` does by default: the RePaint row if one ran
    replace = [r for r in result["rows"] if r["task"] == "inpaint: replace"]
    default = next((r for r in replace if r["resample"] == INPAINT_RESAMPLE), replace[0])
    verdict = "PASS" if default["success"] >= TARGET else "FAIL"
    lines += ["", f"Target: single-object edits (replace) ≥ {pct(TARGET)} % at 20 steps, with "
              f"{default['sampler']} r={default['resample']}: {pct(default['success'])} % — {verdict}"
              + ("" if meta["steps"] == 20 else f" (measured at {meta['steps']} steps)"),
              "", ("| variation strength | faithful % (source caption holds) | diversity (RMS between variations) "
              "| distance to source (RMS) |"), "|---|---|---|---|"]
    for r in result["vary"]:
        lines.append(f"| {r['strength']:g} | {pct(r['faithfulness'])} | {r['diversity']:.3f} | {r['distance']:.3f} |")
    lines += ["", f"- command: `{meta['command']}`",
              (f"- {meta['date']}, {meta['machine']}, device {meta['device']}, torch {meta['torch']}, "
              f"{meta['threads']} thread(s), seed {meta['seed']}"), f"- note: {meta['note'] or '—'}"]
    for name, file in pictures.items():
        lines += ["", f"### {name}: `{file}` (source | mask | result per row)", ""]
        lines += [f"{i + 1}. {caption}" for i, (*_, caption) in enumerate(result["examples"][name])]
    return "\n".join(lines) + "\n"


def example_picture(rows: list, path: Path) -> Path:
    """One row per example: source, mask (or nothing), result, each upscaled 2×."""
    cells = []
    width = max(r[2].size[0] for r in rows)
    for src, mask, out, _ in rows:
        for img in (src, mask.convert("RGB") if mask is not None else Image.new("RGB", src.size, "white"), out):
            canvas = Image.new("RGB", (width, out.size[1]), (255, 255, 255))
            canvas.paste(img.convert("RGB"), (0, 0))
            cells.append(from_pil(canvas))
    grid = to_pil(make_grid(torch.stack(cells), nrow=3))
    grid = grid.resize((grid.size[0] * 2, grid.size[1] * 2), Image.NEAREST)
    grid.save(path)
    return path


def write_report(result: dict[str, Any], base: Path) -> list[Path]:
    base.parent.mkdir(parents=True, exist_ok=True)
    pictures = {name: example_picture(rows, Path(f"{base}_{name}.png")).name
                for name, rows in result["examples"].items()}
    payload = {k: v for k, v in result.items() if k != "examples"}
    Path(f"{base}.json").write_text(json.dumps(payload, indent=1) + "\n")
    Path(f"{base}.md").write_text(markdown(result, pictures))
    return [Path(f"{base}.json"), Path(f"{base}.md"), *(base.parent / p for p in pictures.values())]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="shapes-32", help="checkpoint folder or bundled model name")
    p.add_argument("-n", type=int, default=100, help="cases per inpainting task and for outpainting")
    p.add_argument("--vary-n", type=int, default=25, help="source images for the variations")
    p.add_argument("--strengths", type=float, nargs="+", default=[0.2, 0.4, 0.6, 0.8, 1.0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=None, help="default: the model's")
    p.add_argument("--margin", type=float, default=2.0, help="px added around the old object's box")
    p.add_argument("--resample", type=int, default=INPAINT_RESAMPLE,
                   help="also run RePaint (ddpm) with this many resamplings (1: skip)")
    p.add_argument("--resample-n", type=int, default=50, help="cases per task for the RePaint rows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--note", default="")
    p.add_argument("--report", type=Path, default=None, help="write PATH.json, PATH.md, PATH_*.png")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    try:
        result = run(args, argv)
        print(markdown(result, {}))
        if args.report is not None:
            print("wrote " + ", ".join(str(p) for p in write_report(result, args.report)))
    except KuosanError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
