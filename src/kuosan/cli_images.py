"""The ``kuosan`` commands that make images: ``sample``, ``generate`` and the edits
(``inpaint``, ``outpaint``, ``vary``, ``img2img``). Each parses its flags, makes one Pipeline
call and writes its files as each batch finishes; Ctrl-C keeps what was written, says how much,
and exits with status 130.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .cli_types import (
    NO_LIMITS_HELP,
    add_device_arguments,
    limits_of,
    non_negative_float,
    non_negative_int,
    positive_int,
)
from .data.folder import DECODE_ERRORS, describe_decode_error
from .defaults import GENERATE_BATCH, IMG2IMG_STRENGTH, VARY_STRENGTH
from .errors import KuosanError
from .images import from_pil, make_grid, save_grid, save_png, to_pil
from .limits import SIDES
from .metadata import png_text, read_parameters
from .pipeline import Pipeline
from .request import Request
from .result import Result
from .samplers import SAMPLERS, SPACINGS, model_evaluations
from .scenes import ScenePipeline, draws_scenes, is_scene_caption
from .train import points_image

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
    add_device_arguments(p)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-limits", action="store_true", help=NO_LIMITS_HELP)
    p.set_defaults(func=run_sample)


def run_sample(args: argparse.Namespace) -> int:
    out: Path = args.out
    limits = limits_of(args)
    limits.check(images=args.num, steps=args.steps)  # what the flags decide, before loading
    pipe = Pipeline.load(args.model, weights=args.weights, device=args.device,
                         precision=args.precision, compile=args.compile, limits=limits)
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

    def save_all(parts: list[torch.Tensor]) -> None:
        x = torch.cat(parts)
        if suffix == ".csv":
            out.parent.mkdir(parents=True, exist_ok=True)
            np.savetxt(out, pipe.to_data(x).numpy(), delimiter=",")
        elif vector:
            save_png(to_pil(points_image(x)), out)
        else:
            save_grid(x, out, upscale=max(1, 64 // pipe.info.shape[-1]))

    status = _write_as_it_goes(batches, args.num, out, lambda x, i, k: save_png(
        to_pil(x[i]), out / f"{k:04d}.png"), save_all)
    if status == 0:
        print(f"kuosan: wrote {args.num} samples ({sampler}, {steps} steps, "
              f"{model_evaluations(sampler, steps)} model evaluations each) to {out}")
    return status


def _write_as_it_goes(batches: Iterable, total: int, out: Path,
                      save_one: Callable[[Any, int, int], None],
                      save_all: Callable[[list], None]) -> int:
    """A folder OUT: ``save_one(batch, i, k)`` writes item i of each batch as it comes, as
    file k; a file OUT: ``save_all(batches)`` writes them all at the end. A line of progress
    follows each batch. Ctrl-C stops it: what was made is kept (a file OUT: written with what
    there is), a line says how much, and the status is 130 (as a shell reports SIGINT)."""
    done, made, tty = 0, [], sys.stderr.isatty()
    try:
        try:
            for batch in batches:
                for i in range(len(batch)):
                    if not out.suffix:
                        save_one(batch, i, done)
                    done += 1
                made += [batch] if out.suffix else []
                if done < total or tty:
                    print(f"kuosan: {done:,} of {total:,} images", file=sys.stderr, flush=True,
                          end="\r" if tty and done < total else "\n")
        except KeyboardInterrupt:
            if made:
                save_all(made)
            print(f"\nkuosan: interrupted: {done:,} of {total:,} images written to {out}",
                  file=sys.stderr, flush=True)
            return 130
        if made:
            save_all(made)
        return 0
    except OSError as err:
        raise KuosanError(f"--out '{out}': cannot write there ({err.strerror or err})") from None


# ---- generate and the edits: inpaint, outpaint, vary, img2img ------------------------------------

DEFAULT_MODEL = "emoji-32"  # the bundled emoji text-to-image model (docs/emoji-32.md)
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
    p.add_argument("--batch", type=positive_int, default=None,
                   help=f"images per batch (default {GENERATE_BATCH['cpu']} on the CPU, "
                        f"{GENERATE_BATCH['cuda']} on CUDA; the same images whatever the batch)")
    add_device_arguments(p)
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
                   help="take prompt, seed, sampler, steps, guidance, model and precision from a "
                        "kuosan PNG")
    p.add_argument("--enhance", action="store_true",
                   help="rewrite the prompt into the model's caption language first "
                        "(docs/enhance.md); the PNG keeps the rewrite and, as user_prompt, the "
                        "prompt as typed")
    p.add_argument("--scene", type=positive_int, nargs="?", const=64, default=None, metavar="SIZE",
                   help="draw a scene caption ('a red apple to the left of a fox face, glossy "
                        "style') with a model of single emoji: each emoji drawn by the model in "
                        "its place on a SIZE×SIZE canvas (64 when SIZE is left out; "
                        "docs/emoji-scenes.md)")
    p.add_argument("--layout-seed", type=non_negative_int, default=None, metavar="L",
                   help="with --scene: every image has the layout seed L draws (the same places, "
                        "each image its own drawings); default: image i's own seed")


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
    """--from-png: the prompt, seed, sampler, steps, guidance, count, model and precision of a
    kuosan PNG (its precision unless --precision names one: the same arithmetic makes the same
    pixels; a PNG from before precision was recorded was made in fp32)."""
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
    args.scene = args.scene or params.get("scene")
    if args.layout_seed is None:
        args.layout_seed = params.get("layout_seed")
    if args.precision == "auto":
        args.precision = params.get("precision", "fp32")


def _open_image(path: Path, flag: str) -> Image.Image:
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except FileNotFoundError:
        raise KuosanError(f"{flag} '{path}': no such file") from None
    except DECODE_ERRORS as err:
        raise KuosanError(f"{flag} '{path}': not a readable image ({describe_decode_error(err)})") from None


def default_batch(device: torch.device) -> int:
    """Images per batch when --batch is not given: ``GENERATE_BATCH`` of the device's type."""
    return GENERATE_BATCH.get(device.type, GENERATE_BATCH["cpu"])


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
    if getattr(args, "layout_seed", None) is not None and args.scene is None:
        raise KuosanError("--layout-seed places the emoji of a scene: it needs --scene")
    own = {flag: getattr(args, flag) for flag in TASK_FLAGS[task]}
    limits = limits_of(args)
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
    pipe: Pipeline | ScenePipeline = Pipeline.load(
        args.model, device=args.device, precision=args.precision, compile=args.compile,
        limits=limits)
    batch = args.batch or default_batch(pipe.device)
    if getattr(args, "scene", None) is not None:
        pipe = ScenePipeline(pipe, args.scene, args.layout_seed)
    elif task == "generate" and draws_scenes(pipe) and is_scene_caption(args.prompt):
        print("kuosan: hint: this is a scene caption; --scene draws each emoji in its place",
              file=sys.stderr)
    extra = {"user_prompt": args.prompt} if getattr(args, "enhance", False) else {}
    if extra:
        args.prompt = pipe.enhance_prompt(args.prompt)
        print(f"kuosan: --enhance: {extra['user_prompt']!r} → {args.prompt!r}"
              + ("" if args.prompt != extra["user_prompt"] else " (unchanged)"))
    request = Request(task, prompt=args.prompt, negative_prompt=args.negative,
                      num_images_per_prompt=args.num, num_inference_steps=args.steps,
                      guidance_scale=args.guidance, seed=args.seed, sampler=args.sampler,
                      batch_size=batch, **inputs, **own)
    files = {"image": str(args.image)} if task != "generate" else extra
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
    def save_all(parts: list[Result]) -> None:
        result = Result.join(parts)
        img = result[0] if len(result) == 1 else to_pil(
            make_grid(torch.stack([from_pil(i) for i in result])))
        save_png(img, out, png_text(result, 0 if len(result) == 1 else None, files))

    return _write_as_it_goes(batches, total, out, lambda part, i, k: save_png(
        part[i], out / f"{k:04d}.png", png_text(part, i, files)), save_all)
