"""The ``kuosan`` command: parse flags → build a config → one library call.

A user's mistake (``KuosanError``) prints one line, ``kuosan: error: …``, and exits with
status 2; argparse does the same for bad flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from .defaults import IMG2IMG_STRENGTH, VARY_STRENGTH

if TYPE_CHECKING:
    import torch
from .errors import KuosanError


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


# flag dest → TrainConfig field
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
# what a resumed run may change; everything else comes from the checkpoint
RESUMABLE = {"steps", "minutes", "sample_every", "save_every", "device", "bf16"}


def add_train(sub: argparse._SubParsersAction) -> None:
    from .models import UNET_PRESETS
    from .train import TrainConfig

    d = TrainConfig()
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
    from .checkpoint import load_config
    from .train import TrainConfig, train

    if args.resume and (args.out / "config.json").exists():
        stored = load_config(args.out).get("train", {})
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        base = TrainConfig(**{k: v for k, v in stored.items() if k in known})
        explicit = _typed_flags(args._argv) & set(TRAIN_FLAGS)
        changes = {TRAIN_FLAGS[f]: getattr(args, f) for f in explicit if TRAIN_FLAGS[f] in RESUMABLE}
        ignored = sorted(f for f in explicit if TRAIN_FLAGS[f] not in RESUMABLE)
        if ignored:
            print("kuosan: --resume keeps the run's own settings; ignoring --"
                  + ", --".join(f.replace("_", "-") for f in ignored), file=sys.stderr)
        if "steps" in changes or "minutes" in changes:  # a new stopping rule replaces the old one
            changes.setdefault("steps", None)
            changes.setdefault("minutes", None)
        config = dataclasses.replace(base, **changes)
    else:
        config = TrainConfig(**{field: getattr(args, flag) for flag, field in TRAIN_FLAGS.items()})
    train(config, args.out, resume=args.resume, progress=not args.no_progress)
    return 0


def _typed_flags(argv: list[str]) -> set[str]:
    """The long flags present on the command line, as argparse dests."""
    return {t[2:].split("=")[0].replace("-", "_") for t in argv if t.startswith("--")}


# ---- sample ------------------------------------------------------------------------------------


def add_sample(sub: argparse._SubParsersAction) -> None:
    from .samplers import SAMPLERS, SPACINGS

    p = sub.add_parser(
        "sample", help="draw samples from a trained model",
        description="Draw samples from a checkpoint folder. OUT ending in .png is one grid; any "
                    "other OUT is a folder with one PNG per sample (0000.png, …) at the model's "
                    "resolution and channel count. Models of 2-D points write a scatter image "
                    "(.png) or the points (.csv).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", type=Path, help="checkpoint folder (from kuosan train)")
    p.add_argument("-n", "--num", type=positive_int, default=16, help="number of samples")
    p.add_argument("--sampler", choices=SAMPLERS, default="ddpm")
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
    p.set_defaults(func=run_sample)


def run_sample(args: argparse.Namespace) -> int:
    import numpy as np

    from .images import save_grid, save_images, save_png, to_pil
    from .pipeline import Pipeline
    from .train import points_image

    out: Path = args.out
    pipe = Pipeline.load(args.model, weights=args.weights, device=args.device)
    suffix = out.suffix.lower()
    allowed = (".png", ".csv") if pipe.info.kind == "vector" else (".png", "")
    if suffix not in allowed:
        raise KuosanError(f"--out '{out}': use a .png file for a grid or a folder name without a suffix"
                          + (" (or .csv for points)" if pipe.info.kind == "vector" else ""))
    from .samplers import model_evaluations

    steps = args.steps or (pipe.schedule.T if args.sampler == "ddpm" else 20)
    extra = {k: v for k, v in (("eta", args.eta), ("spacing", args.spacing)) if v is not None}
    x = pipe.sample(args.num, sampler=args.sampler, num_inference_steps=steps, seed=args.seed,
                    batch_size=args.batch, progress=not args.no_progress, **extra)
    if pipe.info.kind == "vector":
        out.parent.mkdir(parents=True, exist_ok=True)
        if suffix == ".csv":
            np.savetxt(out, pipe.to_data(x).numpy(), delimiter=",")
        else:
            save_png(to_pil(points_image(x)), out)
    elif suffix == ".png":
        save_grid(x, out, upscale=max(1, 64 // pipe.info.shape[-1]))
    else:
        save_images(x, out)
    print(f"kuosan: wrote {args.num} samples ({args.sampler}, {steps} steps, "
          f"{model_evaluations(args.sampler, steps)} model evaluations each) to {out}")
    return 0


# ---- generate ----------------------------------------------------------------------------------

GENERATION_KEYS = ("prompt", "negative_prompt", "seed", "sampler", "steps", "guidance", "model",
                   "model_hash", "kuosan_version")


def add_generate(sub: argparse._SubParsersAction) -> None:
    from .samplers import SAMPLERS

    p = sub.add_parser(
        "generate", help="text to image",
        description="Generate images for a caption with a text-to-image checkpoint. OUT ending in "
                    ".png is one grid (the image itself when -n 1); any other OUT is a folder of "
                    "0000.png, … (image i seeded seed + i). Every PNG carries its generation parameters (a 'parameters' "
                    "line and a 'kuosan' JSON chunk); --from-png IMAGE reproduces it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("prompt", nargs="?", default=None,
                   help='the caption; "A AND B :0.5" composes captions (each part guided with '
                        'its weight, default 1; a negative weight guides away from it)')
    _common_generation_flags(p, SAMPLERS)
    p.set_defaults(model=None)  # None: the bundled model, or the one --from-png names
    p.add_argument("--from-png", type=Path, default=None,
                   help="take prompt, seed, sampler, steps, guidance and model from a kuosan PNG")
    p.set_defaults(func=run_generate)


def _params_from_png(path: Path) -> dict:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            text = dict(getattr(img, "text", {}))
    except (OSError, UnidentifiedImageError) as err:
        raise KuosanError(f"--from-png: cannot read '{path}': {err}") from None
    if "kuosan" not in text:
        raise KuosanError(f"--from-png: '{path}' carries no kuosan generation parameters")
    try:
        params = json.loads(text["kuosan"])
    except json.JSONDecodeError as err:
        raise KuosanError(f"--from-png: '{path}' has a damaged kuosan chunk: {err}") from None
    missing = [k for k in ("prompt", "seed", "sampler", "steps", "guidance", "model")
               if not isinstance(params, dict) or k not in params]
    if missing:
        raise KuosanError(f"--from-png: the kuosan chunk of '{path}' lacks {', '.join(missing)}")
    return params


DEFAULT_MODEL = "shapes-32"  # the bundled ShapesWorld text-to-image model


def run_generate(args: argparse.Namespace) -> int:
    from .pipeline import Pipeline

    if args.from_png is not None:
        params = _params_from_png(args.from_png)
        if params.get("command", "generate") != "generate":
            raise KuosanError(f"--from-png: '{args.from_png}' was made by `kuosan {params['command']}`, "
                              f"not by `kuosan generate`; its parameters are in its metadata")
        args.prompt = params["prompt"]
        args.negative = params.get("negative_prompt")
        args.seed, args.sampler = params["seed"], params["sampler"]
        args.steps, args.guidance = params["steps"], params["guidance"]
        args.num = params.get("num", 1)
        args.model = args.model or params["model"]
    if args.prompt is None:
        raise KuosanError("give a prompt (or --from-png IMAGE)")
    args.model = args.model or DEFAULT_MODEL
    _check_out(args.out)
    pipe = Pipeline.load(args.model, device=args.device)
    args.guidance = pipe.default_guidance if args.guidance is None else args.guidance
    args.sampler = args.sampler or pipe.default_sampler
    images = pipe.generate(args.prompt, num_images_per_prompt=args.num, num_inference_steps=args.steps,
                           guidance_scale=args.guidance, seed=args.seed, sampler=args.sampler,
                           negative_prompt=args.negative)
    _write_images(images, args, pipe, {"command": "generate"})
    print(f"kuosan: wrote {len(images)} image(s) for {args.prompt!r} to {args.out}")
    return 0


def _check_out(out: Path) -> None:
    if out.suffix and out.suffix.lower() != ".png":
        raise KuosanError(f"--out '{out}': use a .png file or a folder name without a suffix")


def _write_images(images: list, args: argparse.Namespace, pipe, extra: dict) -> None:
    """OUT.png: the image (or a grid of all); a folder: 0000.png, … (image i seeded seed + i);
    every PNG carries its parameters (an A1111-style 'parameters' line and a 'kuosan' JSON chunk)."""
    from .checkpoint import weights_digest
    from .images import generation_metadata, save_png

    digest = weights_digest(pipe.path)

    def metadata(seed: int, num: int, size: tuple[int, int]) -> dict[str, str]:
        return generation_metadata(
            {"prompt": args.prompt or "", "negative_prompt": args.negative, "seed": seed, "num": num,
             "sampler": args.sampler, "steps": args.steps, "guidance": args.guidance,
             "model": str(args.model), "model_hash": digest, "kuosan_version": __version__, **extra},
            size)

    out: Path = args.out
    try:
        if out.suffix:  # one file: the image, or a grid of all of them
            import torch

            from .images import from_pil, make_grid, to_pil

            img = images[0] if len(images) == 1 else to_pil(make_grid(torch.stack([from_pil(i) for i in images])))
            save_png(img, out, metadata(args.seed, len(images), images[0].size))
        else:
            for i, img in enumerate(images):
                save_png(img, out / f"{i:04d}.png", metadata(args.seed + i, 1, img.size))
    except OSError as err:
        raise KuosanError(f"--out '{out}': cannot write there ({err.strerror or err})") from None


# ---- editing: inpaint, outpaint, vary, img2img ---------------------------------------------------


def _edit_parser(sub: argparse._SubParsersAction, name: str, help: str, description: str,
                 prompt_help: str) -> argparse.ArgumentParser:
    from .samplers import SAMPLERS

    p = sub.add_parser(name, help=help, description=description + " OUT as in `kuosan generate`: "
                       "a .png file (a grid when -n > 1) or a folder; every PNG carries its parameters.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("image", type=Path, help="the image to edit")
    p.add_argument("prompt", nargs="?", default="", help=prompt_help)
    _common_generation_flags(p, SAMPLERS)
    return p


def _common_generation_flags(p: argparse.ArgumentParser, samplers: tuple[str, ...]) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="checkpoint folder, or a bundled model's name")
    p.add_argument("-n", "--num", type=positive_int, default=1, help="images")
    p.add_argument("--steps", type=positive_int, default=20, help="denoising steps")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale (1 = off; default: the model's)")
    p.add_argument("--negative", default=None, help="negative prompt")
    p.add_argument("--sampler", choices=samplers, default=None,
                   help="default: the model's (ddpm when resampling)")
    p.add_argument("--seed", type=int, default=0, help="image i uses its own generator seeded seed + i")
    p.add_argument("--out", type=Path, default=Path("out.png"), help="a .png file, or a folder")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")


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
    p.set_defaults(func=run_edit)

    p = _edit_parser(sub, "outpaint", "extend an image beyond its borders",
                     "Extend IMAGE by --left/--top/--right/--bottom pixels (any amount: the new "
                     "border is painted window by window, each seeing at least half a window of known "
                     "pixels where it can). "
                     "The original pixels are kept exactly.", "caption for the extended image")
    for side in ("left", "top", "right", "bottom"):
        p.add_argument(f"--{side}", type=non_negative_int, default=0, help=f"pixels to add on the {side}")
    p.add_argument("--resample", type=positive_int, default=1,
                   help="RePaint resampling: take each step this many times (with --sampler ddpm or ddim)")
    p.set_defaults(func=run_edit)

    for name, strength, what in (("vary", VARY_STRENGTH, "variations of an image"),
                                 ("img2img", IMG2IMG_STRENGTH, "redraw an image towards a caption")):
        p = _edit_parser(sub, name, what,
                         "Noise IMAGE part of the way (--strength: 0 returns it, 1 ignores it) and "
                         "denoise it again" + (", guided by the caption." if name == "img2img" else
                                               ": the same composition, other details."),
                         "caption to guide towards" + (" (optional)" if name == "vary" else ""))
        p.add_argument("--strength", type=float, default=strength, help="how far to noise the image, 0..1")
        p.set_defaults(func=run_edit)
    sub.choices["vary"].set_defaults(num=4)


def _open_image(path: Path, flag: str):
    from PIL import Image

    from .data.folder import DECODE_ERRORS, describe_decode_error

    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except FileNotFoundError:
        raise KuosanError(f"{flag} '{path}': no such file") from None
    except DECODE_ERRORS as err:
        raise KuosanError(f"{flag} '{path}': not a readable image ({describe_decode_error(err)})") from None


def run_edit(args: argparse.Namespace) -> int:
    from .pipeline import Pipeline

    _check_out(args.out)
    for flag, source in (("IMAGE", args.image), ("--mask", getattr(args, "mask", None))):
        if source is not None and args.out.suffix and args.out.resolve() == source.resolve():
            raise KuosanError(f"--out '{args.out}' is the {flag} file itself: choose another --out "
                              f"(kuosan never writes over its input)")
    image = _open_image(args.image, "IMAGE")
    mask = _open_image(args.mask, "--mask") if args.command == "inpaint" else None
    pipe = Pipeline.load(args.model, device=args.device)
    args.guidance = pipe.default_guidance if args.guidance is None else args.guidance
    if args.command in ("inpaint", "outpaint"):  # resolved here to go into the PNG's parameters
        args.sampler, args.resample = pipe.inpaint_sampling(args.sampler, args.resample)
    else:
        args.sampler = args.sampler or pipe.default_sampler
    common = {"num_inference_steps": args.steps, "guidance_scale": args.guidance, "seed": args.seed,
              "sampler": args.sampler, "negative_prompt": args.negative}
    extra: dict = {"command": args.command, "image": str(args.image)}
    if args.command == "inpaint":
        extra.update(mask=str(args.mask), resample=args.resample, feather=args.feather)
        images = pipe.inpaint(image, mask, args.prompt, num_images_per_prompt=args.num,
                              resample=args.resample, feather=args.feather, **common)
    elif args.command == "outpaint":
        pads = {k: getattr(args, k) for k in ("left", "top", "right", "bottom")}
        extra.update(pads, resample=args.resample)
        images = pipe.outpaint(image, prompt=args.prompt, num_images_per_prompt=args.num,
                               resample=args.resample, **pads, **common)
    else:
        extra["strength"] = args.strength
        images = pipe.img2img(image, args.prompt, strength=args.strength,
                              num_images_per_prompt=args.num, **common)
    _write_images(images, args, pipe, extra)
    print(f"kuosan: wrote {len(images)} image(s) ({args.command} of '{args.image}') to {args.out}")
    return 0


# ---- eval --------------------------------------------------------------------------------------


def add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="evaluate a trained model",
        description="Evaluate a checkpoint. --nll computes the variational bound on the model's "
                    "training data (or --data): bits/dim for images (8-bit, discretised decoder), "
                    "nats/dim in model space for vectors. A text model is scored given each "
                    "image's caption (--empty-captions: given the empty caption).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", type=Path, metavar="SOURCE",
                   help="checkpoint folder (with --fid also a bundled model or a folder of images)")
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
    from .metrics.command import add_fid_arguments

    add_fid_arguments(p)  # --fid REF and its flags: kuosan.metrics.command
    p.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    import torch

    from .data import load_dataset
    from .objectives import variational_bound
    from .pipeline import Pipeline

    if args.fid is not None:
        from .metrics.command import run_fid

        return run_fid(args)
    if not args.nll:
        raise KuosanError("say what to evaluate: --nll, or --fid REF")
    pipe = Pipeline.load(args.model, weights=args.weights, device=args.device)
    train_cfg = pipe.config.get("train", {})
    spec = args.data or train_cfg.get("data")
    if spec is None:
        raise KuosanError(f"'{args.model}' does not name its training data: pass --data")
    shape, image = tuple(pipe.info.shape), pipe.info.kind == "image"
    data_seed = train_cfg.get("seed", 0) if args.data_seed is None else args.data_seed
    ds = load_dataset(spec, size=shape[-1] if image else None, channels=shape[0] if image else None,
                      seed=data_seed)
    if tuple(ds.info.shape) != shape:
        raise KuosanError(f"data '{spec}' has items of shape {ds.info.shape}, the model expects {shape}")
    text = pipe.is_text_conditioned
    if text and ds.captions is None:
        raise KuosanError(f"'{args.model}' is a text model and data '{spec}' has no captions")
    for flag, asked in (("--empty-captions", args.empty_captions), ("--caption-gain", args.caption_gain)):
        if asked and not text:
            raise KuosanError(f"{flag} applies to text models, and '{args.model}' is not one")
    if args.empty_captions and args.caption_gain:
        raise KuosanError("--caption-gain scores both the own and the empty captions: "
                          "leave out --empty-captions")
    g = torch.Generator().manual_seed(args.seed)
    idx = torch.randperm(len(ds), generator=g)[: args.examples]
    passes = ("own", "empty") if args.caption_gain else ("empty" if args.empty_captions else "own",)
    bounds: dict[str, list] = {name: [] for name in passes}
    for start in range(0, len(idx), args.batch):
        batch = idx[start:start + args.batch]
        x0 = ds.batch(batch).to(pipe.device)
        if image:  # the discretised decoder scores the 8-bit grid
            x0 = torch.round((x0 + 1) * 127.5) / 127.5 - 1
        state = g.get_state()
        for name in passes:  # every pass draws the same t and noise (paired)
            g.set_state(state)
            model = pipe.model
            if text:  # each image's caption (or the empty one), encoded once for all timesteps
                captions = ["" if name == "empty" else ds.captions[i] for i in batch.tolist()]
                with torch.no_grad():
                    cond = pipe.model.encode(captions)
                model = functools.partial(pipe.model, **cond)
            bounds[name].append(variational_bound(
                model, x0, pipe.schedule, prediction=pipe.prediction,
                decoder="discretized" if image else "gaussian", clip_x0=image,
                timesteps=args.timesteps, generator=g, progress=not args.no_progress))
    dims = math.prod(shape)
    scale = dims * (math.log(2) if image else 1.0)
    per_dim = {name: {k: torch.cat([getattr(b, k) for b in bs]).cpu() / scale
                      for k in ("prior", "diffusion", "decoder", "total")} for name, bs in bounds.items()}
    unit = "bits/dim" if image else "nats/dim"
    first = per_dim[passes[0]]
    total = first["total"]
    result = {
        "model": str(args.model), "data": spec, "examples": len(idx), "unit": unit,
        "data_seed": data_seed,
        "nll": total.mean().item(), "stderr": _stderr(total),
        "terms": {k: first[k].mean().item() for k in ("prior", "diffusion", "decoder")},
        "timesteps": args.timesteps or pipe.schedule.T - 1,
        **({"captions": passes[0]} if text else {}),
    }
    if args.caption_gain:  # empty − own, per image: what its caption is worth
        gain = per_dim["empty"]["total"] - total
        result.update({"nll_empty": per_dim["empty"]["total"].mean().item(),
                       "stderr_empty": _stderr(per_dim["empty"]["total"]),
                       "caption_gain": gain.mean().item(), "caption_gain_stderr": _stderr(gain)})
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        t = result["terms"]
        print(f"NLL bound: {result['nll']:.4f} ± {result['stderr']:.4f} {unit} on {len(idx)} examples of "
              f"{spec} (prior {t['prior']:.4f}, diffusion {t['diffusion']:.4f}, decoder {t['decoder']:.4f})"
              + (f", given {result['captions']} captions" if text else ""))
        if args.caption_gain:
            print(f"given the empty caption: {result['nll_empty']:.4f} ± {result['stderr_empty']:.4f} "
                  f"{unit}; the caption is worth {result['caption_gain']:.4f} ± "
                  f"{result['caption_gain_stderr']:.4f} {unit} (paired: the same t and noise)")
    return 0


def _stderr(values: torch.Tensor) -> float:
    """The standard error of the mean of ``values``: std / √n."""
    return (values.std() / math.sqrt(len(values))).item()


# ---- export ------------------------------------------------------------------------------------


def add_export(sub: argparse._SubParsersAction) -> None:
    from .samplers import SAMPLERS

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
    from .checkpoint import MODEL, export_checkpoint

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
                    "http://HOST:PORT/ (the JSON API is described in kuosan.web). Ctrl-C stops it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL, help="checkpoint folder or bundled model name")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=non_negative_int, default=7860, help="port (0: any free one)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from .pipeline import Pipeline
    from .web import WebApp, make_server

    pipe = Pipeline.load(args.model, device=args.device)
    server = make_server(WebApp(pipe, str(args.model)), args.host, args.port)
    host, port = server.server_address[:2]
    print(f"kuosan: serving '{args.model}' at http://{host}:{port}/ (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("kuosan: stopped", flush=True)
    finally:
        server.server_close()
    return 0


# ---- main --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kuosan", description="kuosan (扩散): diffusion models — train, sample, evaluate.")
    parser.add_argument("--version", action="version", version=f"kuosan {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_train(sub)
    add_sample(sub)
    add_generate(sub)
    add_edit(sub)
    add_eval(sub)
    add_export(sub)
    add_serve(sub)
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
    except KuosanError as err:
        print(f"kuosan: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
