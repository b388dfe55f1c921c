"""The ``kuosan`` command: parse flags → one library call → write files.

A user's mistake (``KuosanError``) prints one line, ``kuosan: error: …``, and exits with
status 2; argparse does the same for bad flags. A request past a limit
(:mod:`kuosan.limits`) is refused before any work, naming the flag and the limit;
``--no-limits`` lifts them. Ctrl-C during a long run keeps the images written so far, says how
many, and exits with status 130.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import __version__
from .checkpoint import MODEL, export_checkpoint, load_config
from .data.folder import DECODE_ERRORS, describe_decode_error
from .defaults import IMG2IMG_STRENGTH, VARY_STRENGTH
from .errors import KuosanError
from .images import from_pil, make_grid, save_grid, save_png, to_pil
from .limits import SIDES, LimitError, Limits
from .metadata import png_text, read_parameters
from .metrics.nll import nll_bound
from .models import UNET_PRESETS
from .pipeline import Pipeline
from .request import Request
from .result import Result
from .samplers import SAMPLERS, SPACINGS, model_evaluations
from .train import RESUMABLE, TrainConfig, points_image, train


def _number(kind: type, minimum: float, strict: bool, what: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        ok = math.isfinite(value) and (value > minimum if strict else value >= minimum)
        if not ok:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value

    parse.__name__ = what
    return parse


positive_int = _number(int, 0, True, "a positive integer")
non_negative_int = _number(int, 0, False, "an integer >= 0")
positive_float = _number(float, 0.0, True, "a positive number")
non_negative_float = _number(float, 0.0, False, "a number >= 0")

NO_LIMITS_HELP = ("lift the limits on one call's work (images, steps, resampling, canvas and "
                  "border pixels, prompt length; see kuosan.limits), e.g. for -n over 10,000")
# what the limits are called here (kuosan.limits.LimitError.named)
LIMIT_FLAGS = {"images": "-n", "steps": "--steps", "resample": "--resample", "pixels": "IMAGE",
               "prompt": "PROMPT", "negative_prompt": "--negative",
               **{s: f"--{s}" for s in SIDES}, "work": "-n × --steps × --resample × pixels",
               "lift": "--no-limits lifts it"}
LIMIT_FLAGS_BY_COMMAND = {
    "outpaint": {"pixels": "IMAGE with --left/--top/--right/--bottom"},
    **{command: {"work": "-n × --steps × pixels"} for command in ("sample", "generate", "vary",
                                                                   "img2img")},
}


def _limits(args: argparse.Namespace) -> Limits:
    return Limits.none() if args.no_limits else Limits()


# ---- train -------------------------------------------------------------------------------------


def kind_mix(text: str) -> dict[str, float]:
    """--shapes-mix: "single=0.2,pair=0.6,count=0.2" → {"single": 0.2, ...} (checked by TrainConfig)."""
    out = {}
    for part in text.split(","):
        kind, _, weight = part.partition("=")  # no "=": weight "" fails float()
        try:
            out[kind.strip()] = float(weight)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected KIND=WEIGHT pairs separated by commas "
                                             f"(e.g. single=0.2,pair=0.6,count=0.2), got {part!r}") from None
    return out


# flag dest → TrainConfig field (what a resumed run may change: kuosan.train.RESUMABLE)
TRAIN_FLAGS = {
    "data": "data", "shapes_mix": "shapes_mix", "size": "size", "channels": "channels",
    "preset": "model", "steps": "steps",
    "minutes": "minutes", "batch": "batch_size", "grad_accum": "grad_accum", "lr": "lr",
    "warmup": "warmup_steps", "prediction": "prediction", "schedule": "schedule", "timesteps": "T",
    "weighting": "weighting", "high_noise": "high_noise", "seed": "seed", "sample_every": "sample_every",
    "save_every": "save_every", "device": "device", "bf16": "bf16", "skip_bad": "skip_bad",
    "ema_half_life": "ema_half_life_images", "dropout": "dropout", "grid_size": "grid_size",
    "text_encoder": "text_encoder", "cond_drop": "cond_drop", "lr_decay": "lr_decay",
    "decay_steps": "decay_steps",
    "pos_embed": "pos_embed", "pooled_layout": "pooled_layout",
    "word_skip": "word_skip", "init_from": "init_from",
    "new_text_encoder": "new_text_encoder",
}


def add_train(sub: argparse._SubParsersAction) -> None:
    d = argparse.Namespace(**TrainConfig().to_flat())  # the defaults, by flag name
    p = sub.add_parser(
        "train", help="train a model on a dataset",
        description="Train a diffusion model. The output folder becomes a checkpoint "
                    "(config.json + safetensors) that `kuosan sample` reads; sample grids go to "
                    "OUT/samples/, a log to OUT/log.jsonl. Ctrl-C stops cleanly and saves. "
                    "Many processes: `accelerate launch -m kuosan.cli train …` or "
                    "`torchrun --nproc_per_node N -m kuosan.cli train …`.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default=d.data,
                   help="digits, shapes (ShapesWorld, RGB), moons, swissroll, gaussians, or a folder of "
                        "images (png, jpg, webp, bmp)")
    p.add_argument("--out", required=True, type=Path, help="checkpoint folder to write")
    p.add_argument("--size", type=positive_int, default=None,
                   help="image side in pixels (default: digits 8, folders 32)")
    p.add_argument("--channels", type=int, choices=(1, 3), default=None, help="force grayscale or RGB")
    p.add_argument("--preset", default=d.model, choices=("auto", "mlp", *UNET_PRESETS),
                   help="network: UNet xs (~0.5M), s (~2.4M), m (~10M), l (~38M); mlp for 2-D toys; "
                        "auto picks by data size")
    p.add_argument("--steps", type=non_negative_int, default=None,
                   help="total optimizer steps to reach (counting those before --resume)")
    p.add_argument("--minutes", type=positive_float, default=None,
                   help="wall-clock budget: stop cleanly and save when it is spent")
    p.add_argument("--batch", type=positive_int, default=d.batch_size, help="global batch size")
    p.add_argument("--grad-accum", type=positive_int, default=d.grad_accum, help="gradient accumulation steps")
    p.add_argument("--lr", type=positive_float, default=d.lr, help="peak AdamW learning rate")
    p.add_argument("--warmup", type=non_negative_int, default=d.warmup_steps, help="linear warm-up steps")
    p.add_argument("--lr-decay", choices=("none", "cosine"), default=d.lr_decay,
                   help="after warm-up: constant, or cosine decay to 0 at --steps")
    p.add_argument("--decay-steps", type=positive_int, default=None,
                   help="the step where the cosine decay reaches 0 (default: --steps); a run may "
                        "stop before it")
    p.add_argument("--pos-embed", action="store_true",
                   help="give the UNet a learned code of each pixel's position (for captions that "
                        "say where things are)")
    p.add_argument("--pooled-layout", action="store_true",
                   help="text models: a map from the pooled caption to the canvas (a direct path for "
                        "where things go)")
    p.add_argument("--word-skip", action="store_true",
                   help="--text-encoder transformer: a learned vector per word added to its output "
                        "(keeps every word distinct)")
    p.add_argument("--init-from", default=None, metavar="CHECKPOINT",
                   help="start from this checkpoint's EMA weights (fine-tuning; the same preset and "
                        "text encoder, optionally adding --pos-embed, --pooled-layout, --word-skip)")
    p.add_argument("--new-text-encoder", action="store_true",
                   help="with --init-from: train a new --text-encoder on the checkpoint's network "
                        "(its encoder is left out; it starts as the checkpoint's unconditional model)")
    p.add_argument("--prediction", choices=("eps", "x0", "v"), default=d.prediction, help="training target")
    p.add_argument("--schedule", choices=("linear", "cosine"), default=d.schedule, help="noise schedule")
    p.add_argument("--timesteps", type=positive_int, default=d.T, help="number of diffusion steps T")
    p.add_argument("--weighting", choices=("uniform", "min_snr"), default=d.weighting, help="loss weighting")
    p.add_argument("--shapes-mix", type=kind_mix, default=None, metavar="KIND=W,…",
                   help="--data shapes: how often each caption kind is drawn, e.g. "
                        "single=0.2,pair=0.6,count=0.2 (default: single=0.4,pair=0.35,count=0.25)")
    p.add_argument("--high-noise", type=float, default=d.high_noise, metavar="FRACTION",
                   help="fraction of examples whose timestep is drawn from the noisiest 15%% of steps, "
                        "where a caption decides the layout (default 0: all uniform)")
    p.add_argument("--ema-half-life", type=positive_float, default=d.ema_half_life_images,
                   help="EMA half-life in images")
    p.add_argument("--dropout", type=float, default=None, help="override the preset's dropout")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--sample-every", type=non_negative_int, default=d.sample_every,
                   help="steps between sample grids (0: only at the end)")
    p.add_argument("--save-every", type=non_negative_int, default=d.save_every,
                   help="steps between checkpoints (0: only at the end)")
    p.add_argument("--grid-size", type=positive_int, default=d.grid_size, help="images per sample grid")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=d.device)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (for CUDA)")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images with a warning")
    p.add_argument("--text-encoder", default=None,
                   help="train text-to-image on captioned data: transformer (trained jointly), minilm "
                        "(frozen, offline), or a local transformers folder")
    p.add_argument("--cond-drop", type=float, default=d.cond_drop,
                   help="probability of the empty caption in training (classifier-free guidance)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out (its own settings; --steps/--minutes set the new stop)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    if args.resume and (args.out / "config.json").exists():
        stored = load_config(args.out).get("train", {})
        base = TrainConfig.from_dict(stored)  # nested, or flat from runs before the groups
        explicit = _typed_flags(args._argv) & set(TRAIN_FLAGS)
        changes = {TRAIN_FLAGS[f]: getattr(args, f) for f in explicit if TRAIN_FLAGS[f] in RESUMABLE}
        ignored = sorted(f for f in explicit if TRAIN_FLAGS[f] not in RESUMABLE)
        if ignored:
            print("kuosan: --resume keeps the run's own settings; ignoring --"
                  + ", --".join(f.replace("_", "-") for f in ignored), file=sys.stderr)
        if "steps" in changes or "minutes" in changes:  # a new stopping rule replaces the old one
            changes.setdefault("steps", None)
            changes.setdefault("minutes", None)
        config = base.replace(**changes)
    else:
        config = TrainConfig.from_flat(**{field: getattr(args, flag)
                                          for flag, field in TRAIN_FLAGS.items()})
    train(config, args.out, resume=args.resume, progress=not args.no_progress)
    return 0


def _typed_flags(argv: list[str]) -> set[str]:
    """The long flags present on the command line, as argparse dests."""
    return {t[2:].split("=")[0].replace("-", "_") for t in argv if t.startswith("--")}


# ---- sample ------------------------------------------------------------------------------------


def add_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample", help="draw samples from a trained model",
        description="Draw samples from a checkpoint folder. OUT ending in .png is one grid; any "
                    "other OUT is a folder with one PNG per sample (0000.png, …, written as each "
                    "batch finishes) at the model's resolution and channel count. Models of 2-D "
                    "points write a scatter image (.png) or the points (.csv). By default the "
                    "model's own fast sampler with 20 steps; --sampler ddpm runs DDPM's full "
                    "chain (T steps, usually 1,000).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", type=Path, help="checkpoint folder (from kuosan train)")
    p.add_argument("-n", "--num", type=positive_int, default=16, help="number of samples")
    p.add_argument("--sampler", choices=SAMPLERS, default=None,
                   help="default: the model's (config.json, else dpmpp_2m); ddpm: DDPM's ancestral "
                        "sampler over all T steps")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="denoising steps (default: T for ddpm, 20 for the others; heun evaluates "
                        "the model 2·steps − 1 times)")
    p.add_argument("--spacing", choices=SPACINGS, default=None,
                   help="noise levels of the steps (default: log_snr; ddpm: uniform_t only)")
    p.add_argument("--eta", type=float, default=None,
                   help="stochasticity of ddim (default 0) and dpmpp_2m_sde (default 1)")
    p.add_argument("--seed", type=int, default=0, help="sample i uses its own generator seeded seed + i")
    p.add_argument("--out", type=Path, required=True, help="a .png grid, or a folder")
    p.add_argument("--batch", type=positive_int, default=256, help="samples per batch")
    p.add_argument("--weights", choices=("ema", "model"), default="ema")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-limits", action="store_true", help=NO_LIMITS_HELP)
    p.set_defaults(func=run_sample)


def run_sample(args: argparse.Namespace) -> int:
    out: Path = args.out
    limits = _limits(args)
    limits.check(images=args.num, steps=args.steps)  # what the flags decide, before loading
    pipe = Pipeline.load(args.model, weights=args.weights, device=args.device, limits=limits)
    vector = pipe.info.kind == "vector"
    suffix = out.suffix.lower()
    if suffix not in ((".png", ".csv") if vector else (".png", "")):
        raise KuosanError(f"--out '{out}': use a .png file for a grid or a folder name without a suffix"
                          + (" (or .csv for points)" if vector else ""))
    sampler = args.sampler or pipe.default_sampler
    steps = args.steps or (pipe.schedule.T if sampler == "ddpm" else 20)
    extra = {k: v for k, v in (("eta", args.eta), ("spacing", args.spacing)) if v is not None}
    batches = pipe.sample_batches(args.num, sampler=sampler, num_inference_steps=steps,
                                  seed=args.seed, batch_size=args.batch,
                                  progress=not args.no_progress, **extra)
    made: list[torch.Tensor] = []

    def write(x: torch.Tensor, start: int) -> None:
        if suffix:  # one file of all: written at the end
            made.append(x)
        else:
            for i, img in enumerate(pipe.to_images(x)):
                save_png(img, out / f"{start + i:04d}.png")

    def finish() -> None:
        if not made:
            return
        x = torch.cat(made)
        if suffix == ".csv":
            out.parent.mkdir(parents=True, exist_ok=True)
            np.savetxt(out, pipe.to_data(x).numpy(), delimiter=",")
        elif vector:
            save_png(to_pil(points_image(x)), out)
        else:
            save_grid(x, out, upscale=max(1, 64 // pipe.info.shape[-1]))

    status = _write_as_it_goes(batches, args.num, out, write, finish)
    if status == 0:
        print(f"kuosan: wrote {args.num} samples ({sampler}, {steps} steps, "
              f"{model_evaluations(sampler, steps)} model evaluations each) to {out}")
    return status


def _write_as_it_goes(batches: Iterable, total: int, out: Path,
                      write: Callable[[object, int], None], finish: Callable[[], None]) -> int:
    """``write(batch, start)`` each batch as it comes (a line of progress after each when there
    are several), then ``finish()``. Ctrl-C stops it: ``finish()`` writes what was made, a line
    says how much, and the status is 130 (as a shell reports SIGINT)."""
    done, tty = 0, sys.stderr.isatty()
    try:
        for batch in batches:
            write(batch, done)
            done += len(batch)
            if done < total or tty:
                print(f"kuosan: {done:,} of {total:,} images", file=sys.stderr, flush=True,
                      end="\r" if tty and done < total else "\n")
        finish()
        return 0
    except KeyboardInterrupt:
        finish()
        print(f"\nkuosan: interrupted: {done:,} of {total:,} images written to {out}",
              file=sys.stderr, flush=True)
        return 130
    except OSError as err:
        raise KuosanError(f"--out '{out}': cannot write there ({err.strerror or err})") from None


# ---- generate and the edits: inpaint, outpaint, vary, img2img ------------------------------------

DEFAULT_MODEL = "shapes-32"  # the bundled ShapesWorld text-to-image model
# the one table of tasks: command → the flags (of the same name) that become its Request fields
TASK_FLAGS = {
    "generate": (), "inpaint": ("resample", "feather"), "outpaint": (*SIDES, "resample"),
    "vary": ("strength",), "img2img": ("strength",),
}


def _common_generation_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="checkpoint folder, or a bundled model's name")
    p.add_argument("-n", "--num", type=positive_int, default=1, help="images")
    p.add_argument("--steps", type=positive_int, default=20, help="denoising steps")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale (1 = off; default: the model's)")
    p.add_argument("--negative", default=None, help="negative prompt")
    p.add_argument("--sampler", choices=SAMPLERS, default=None,
                   help="default: the model's (ddpm when resampling)")
    p.add_argument("--seed", type=int, default=0, help="image i uses its own generator seeded seed + i")
    p.add_argument("--out", type=Path, default=Path("out.png"),
                   help="a .png file, or a folder (written as each batch finishes)")
    p.add_argument("--batch", type=positive_int, default=16,
                   help="images per batch (the same images whatever the batch)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--no-limits", action="store_true", help=NO_LIMITS_HELP)
    p.set_defaults(func=run_task)


def add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate", help="text to image",
        description="Generate images for a caption with a text-to-image checkpoint. OUT ending in "
                    ".png is one grid (the image itself when -n 1); any other OUT is a folder of "
                    "0000.png, … (image i seeded seed + i), written as each batch finishes, so "
                    "Ctrl-C keeps what was made. Every PNG carries its generation parameters (a "
                    "'parameters' line and a 'kuosan' JSON chunk); --from-png IMAGE reproduces it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("prompt", nargs="?", default=None,
                   help='the caption; "A AND B :0.5" composes captions (each part guided with '
                        'its weight, default 1; a negative weight guides away from it)')
    _common_generation_flags(p)
    p.set_defaults(model=None)  # None: the bundled model, or the one --from-png names
    p.add_argument("--from-png", type=Path, default=None,
                   help="take prompt, seed, sampler, steps, guidance and model from a kuosan PNG")


def _edit_parser(sub: argparse._SubParsersAction, name: str, help: str, description: str,
                 prompt_help: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=description + " OUT as in `kuosan generate`: "
                       "a .png file (a grid when -n > 1) or a folder; every PNG carries its parameters.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("image", type=Path, help="the image to edit")
    p.add_argument("prompt", nargs="?", default="", help=prompt_help)
    _common_generation_flags(p)
    return p


def add_edit(sub: argparse._SubParsersAction) -> None:
    p = _edit_parser(sub, "inpaint", "repaint a masked part of an image",
                     "Repaint the white part of --mask so that it fits the rest of IMAGE and shows "
                     "the caption, which (as in DALL·E 2) describes the whole edited image. Pixels "
                     "outside the mask are kept exactly.", "caption of the whole edited image")
    p.add_argument("--mask", type=Path, required=True,
                   help="black-and-white image of IMAGE's size: white = repaint, black = keep")
    p.add_argument("--resample", type=positive_int, default=None,
                   help="RePaint resampling: take each step this many times (with --sampler ddpm or "
                        "ddim); default 5 with ddpm, 1 when a multistep --sampler is named")
    p.add_argument("--feather", type=non_negative_float, default=0.0,
                   help="blend the seam over this many pixels inside the mask")

    p = _edit_parser(sub, "outpaint", "extend an image beyond its borders",
                     "Extend IMAGE by --left/--top/--right/--bottom pixels (up to 512 a side unless "
                     "--no-limits: the new border is painted window by window, each seeing at least "
                     "half a window of known pixels where it can). "
                     "The original pixels are kept exactly.", "caption for the extended image")
    for side in SIDES:
        p.add_argument(f"--{side}", type=non_negative_int, default=0, help=f"pixels to add on the {side}")
    p.add_argument("--resample", type=positive_int, default=1,
                   help="RePaint resampling: take each step this many times (with --sampler ddpm or ddim)")

    for name, strength, what in (("vary", VARY_STRENGTH, "variations of an image"),
                                 ("img2img", IMG2IMG_STRENGTH, "redraw an image towards a caption")):
        p = _edit_parser(sub, name, what,
                         "Noise IMAGE part of the way (--strength: 0 returns it, 1 ignores it) and "
                         "denoise it again" + (", guided by the caption." if name == "img2img" else
                                               ": the same composition, other details."),
                         "caption to guide towards" + (" (optional)" if name == "vary" else ""))
        p.add_argument("--strength", type=float, default=strength, help="how far to noise the image, 0..1")
    sub.choices["vary"].set_defaults(num=4)


def _from_png(args: argparse.Namespace) -> None:
    """--from-png: the prompt, seed, sampler, steps, guidance, count and model of a kuosan PNG."""
    try:
        params = read_parameters(args.from_png)
    except KuosanError as err:
        raise KuosanError(f"--from-png: {err}") from None
    if params.get("command", "generate") != "generate":
        raise KuosanError(f"--from-png: '{args.from_png}' was made by `kuosan {params['command']}`, "
                          f"not by `kuosan generate`; its parameters are in its metadata")
    args.prompt, args.negative = params["prompt"], params.get("negative_prompt")
    args.seed, args.sampler = params["seed"], params["sampler"]
    args.steps, args.guidance = params["steps"], params["guidance"]
    args.num = params.get("num", 1)
    args.model = args.model or params["model"]


def _open_image(path: Path, flag: str) -> Image.Image:
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except FileNotFoundError:
        raise KuosanError(f"{flag} '{path}': no such file") from None
    except DECODE_ERRORS as err:
        raise KuosanError(f"{flag} '{path}': not a readable image ({describe_decode_error(err)})") from None


def run_task(args: argparse.Namespace) -> int:
    """generate, inpaint, outpaint, vary, img2img: flags → a Request → its batches → PNGs."""
    task, out = args.command, args.out
    if task == "generate":
        if args.from_png is not None:
            _from_png(args)
        if args.prompt is None:
            raise KuosanError("give a prompt (or --from-png IMAGE)")
        args.model = args.model or DEFAULT_MODEL
    if out.suffix and out.suffix.lower() != ".png":
        raise KuosanError(f"--out '{out}': use a .png file or a folder name without a suffix")
    own = {flag: getattr(args, flag) for flag in TASK_FLAGS[task]}
    limits = _limits(args)
    limits.check(images=args.num, steps=args.steps, resample=own.get("resample") or 1,
                 borders={s: own[s] for s in SIDES if s in own}, prompts=[args.prompt],
                 negative_prompt=args.negative)  # what the flags decide, before any loading
    inputs: dict[str, object] = {}
    if task != "generate":
        for flag, source in (("IMAGE", args.image), ("--mask", getattr(args, "mask", None))):
            if source is not None and out.suffix and out.resolve() == source.resolve():
                raise KuosanError(f"--out '{out}' is the {flag} file itself: choose another --out "
                                  f"(kuosan never writes over its input)")
        inputs = {"image": _open_image(args.image, "IMAGE")}
        if task == "inpaint":
            inputs["mask_image"] = _open_image(args.mask, "--mask")
    pipe = Pipeline.load(args.model, device=args.device, limits=limits)
    request = Request(task, args.prompt, args.negative, args.num, args.steps, args.guidance,
                      args.seed, sampler=args.sampler, batch_size=args.batch, **inputs, **own)
    files = {"image": str(args.image)} if task != "generate" else {}
    if task == "inpaint":
        files["mask"] = str(args.mask)
    status = _write_results(pipe.batches(request), args.num, out, files)
    if status == 0:
        what = f"for {args.prompt!r}" if task == "generate" else f"({task} of '{args.image}')"
        print(f"kuosan: wrote {args.num} image(s) {what} to {out}")
    return status


def _write_results(batches: Iterator[Result], total: int, out: Path, files: dict) -> int:
    """OUT.png: the image (or a grid of all, written at the end); a folder: 0000.png, … (image i
    seeded seed + i) as each batch finishes. Every PNG carries its parameters
    (:func:`kuosan.metadata.png_text`, plus the input ``files``)."""
    made: list[Result] = []

    def write(part: Result, start: int) -> None:
        if out.suffix:
            made.append(part)
        else:
            for i, img in enumerate(part):
                save_png(img, out / f"{start + i:04d}.png", png_text(part, i, files))

    def finish() -> None:
        if not made:
            return
        result = Result.join(made)
        img = result[0] if len(result) == 1 else to_pil(
            make_grid(torch.stack([from_pil(i) for i in result])))
        save_png(img, out, png_text(result, 0 if len(result) == 1 else None, files))

    return _write_as_it_goes(batches, total, out, write, finish)


# ---- eval --------------------------------------------------------------------------------------


def add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="evaluate a trained model",
        description="Evaluate a checkpoint. --nll computes the variational bound on the model's "
                    "training data (or --data): bits/dim for images (8-bit, discretised decoder), "
                    "nats/dim in model space for vectors. A text model is scored given each "
                    "image's caption (--empty-captions: given the empty caption). "
                    "Python: kuosan.metrics.nll.nll_bound.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", type=Path, help="checkpoint folder")
    p.add_argument("--nll", action="store_true", help="negative log-likelihood bound")
    p.add_argument("--data", default=None, help="dataset (default: the one the model was trained on)")
    p.add_argument("--data-seed", type=int, default=None,
                   help="draw of a generated dataset (shapes, toys; default: the training run's "
                        "seed, so its training data; another seed gives images it never saw)")
    p.add_argument("--examples", type=positive_int, default=256, help="data examples to evaluate")
    p.add_argument("--timesteps", type=positive_int, default=None,
                   help="estimate the KL sum from this many random t (unbiased; default: all T)")
    p.add_argument("--batch", type=positive_int, default=256)
    p.add_argument("--empty-captions", action="store_true",
                   help="text models: score each image given the empty caption (the unconditional "
                        "model of classifier-free guidance) instead of its own")
    p.add_argument("--caption-gain", action="store_true",
                   help="text models: score each image given its caption and given the empty one, "
                        "with the same t and noise, and report the difference (what the caption "
                        "is worth) with its paired standard error")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", choices=("ema", "model"), default="ema")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    if not args.nll:
        raise KuosanError("say what to evaluate: --nll")
    if args.empty_captions and args.caption_gain:
        raise KuosanError("--caption-gain scores both the own and the empty captions: "
                          "leave out --empty-captions")
    pipe = Pipeline.load(args.model, weights=args.weights, device=args.device)
    for flag, asked in (("--empty-captions", args.empty_captions), ("--caption-gain", args.caption_gain)):
        if asked and not pipe.is_text_conditioned:
            raise KuosanError(f"{flag} applies to text models, and '{args.model}' is not one")
    captions = "gain" if args.caption_gain else "empty" if args.empty_captions else "own"
    result = nll_bound(pipe, data=args.data, data_seed=args.data_seed, examples=args.examples,
                       timesteps=args.timesteps, batch_size=args.batch, captions=captions,
                       seed=args.seed, progress=not args.no_progress)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    t, unit = result["terms"], result["unit"]
    print(f"NLL bound: {result['nll']:.4f} ± {result['stderr']:.4f} {unit} on {result['examples']} "
          f"examples of {result['data']} (prior {t['prior']:.4f}, diffusion {t['diffusion']:.4f}, "
          f"decoder {t['decoder']:.4f})"
          + (f", given {result['captions']} captions" if "captions" in result else ""))
    if args.caption_gain:
        print(f"given the empty caption: {result['nll_empty']:.4f} ± {result['stderr_empty']:.4f} "
              f"{unit}; the caption is worth {result['caption_gain']:.4f} ± "
              f"{result['caption_gain_stderr']:.4f} {unit} (paired: the same t and noise)")
    return 0


# ---- export ------------------------------------------------------------------------------------


def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="a slim checkpoint for sampling (EMA weights, fp16)",
        description="Write a slim inference checkpoint of a training run: config.json and one "
                    "model.safetensors (the EMA weights by default, in float16 unless --fp32), "
                    "without the optimizer state. Every kuosan command loads it like the run itself.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", type=Path, help="checkpoint folder of a training run")
    p.add_argument("--out", type=Path, required=True, help="folder to write")
    p.add_argument("--weights", choices=("ema", "model"), default="ema")
    p.add_argument("--fp32", action="store_true", help="keep float32 weights")
    p.add_argument("--guidance", type=float, default=None,
                   help="the default guidance scale that generate and the edit commands use")
    p.add_argument("--sampler", choices=SAMPLERS, default=None,
                   help="the default sampler that generate and the edit commands use")
    p.add_argument("--replace", action="store_true",
                   help="overwrite an exported checkpoint already in --out (not a training run)")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    sampling = {k: v for k, v in (("guidance", args.guidance), ("sampler", args.sampler))
                if v is not None}
    out = export_checkpoint(args.model, args.out, weights=args.weights, half=not args.fp32,
                            sampling=sampling, replace=args.replace)
    size = (out / MODEL).stat().st_size / 2**20
    print(f"kuosan: exported {args.weights} weights of '{args.model}' to {out} ({size:.1f} MiB)")
    return 0


# ---- serve -------------------------------------------------------------------------------------


def add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="the local web page: text to image and editing in the browser",
        description="Serve a page for generating and editing images with one model, at "
                    "http://HOST:PORT/ (the JSON API: docs/web.md). Ctrl-C stops it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL, help="checkpoint folder or bundled model name")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (0.0.0.0 opens it to the network: needs --token)")
    p.add_argument("--port", type=int, default=7860, help="port (0: any free one)")
    p.add_argument("--outputs", default="outputs",
                   help="folder of the finished images (PNGs with their parameters): the history")
    p.add_argument("--token", default=None,
                   help="a secret clients send as 'Authorization: Bearer TOKEN' (the page: open "
                        "it once with ?token=TOKEN); required for any --host but loopback")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--no-limits", action="store_true", help=NO_LIMITS_HELP)
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from .limits import WEB
    from .web import check_listen, serve

    sock = check_listen(args.host, args.port, args.token)  # before loading: fail fast
    try:
        pipe = Pipeline.load(args.model, device=args.device,
                             limits=Limits.none() if args.no_limits else WEB)
        serve(pipe, str(args.model), sock, args.outputs, args.token)
    except KeyboardInterrupt:
        print("kuosan: stopped", flush=True)
    finally:
        sock.close()
    return 0


# ---- main --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kuosan", description="kuosan (扩散): diffusion models — train, sample, evaluate.")
    parser.add_argument("--version", action="version", version=f"kuosan {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (add_train, add_sample, add_generate, add_edit, add_eval, add_export, add_serve):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args, unparsed = parser.parse_known_args(argv)
    # argparse fills an optional positional (the caption) before it sees a later one:
    # `kuosan inpaint IMAGE --mask MASK "caption"` leaves the caption over; take it here.
    if (len(unparsed) == 1 and not unparsed[0].startswith("-")
            and getattr(args, "prompt", "missing") in ("", None)):
        args.prompt, unparsed = unparsed[0], []
    if unparsed:
        parser.error(f"unrecognized arguments: {' '.join(unparsed)}")
    args._argv = argv
    try:
        return args.func(args)
    except LimitError as err:
        names = {**LIMIT_FLAGS, **LIMIT_FLAGS_BY_COMMAND.get(args.command, {})}
        print(f"kuosan: error: {err.named(names)}", file=sys.stderr)
        return 2
    except KuosanError as err:
        print(f"kuosan: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
