"""The ``kuosan`` command: parse flags → one library call → write files. The commands that make
images (sample, generate, the edits) are in :mod:`kuosan.cli_images`; train, eval, export and
serve here.

A user's mistake (``KuosanError``) prints one line, ``kuosan: error: …``, and exits with
status 2; argparse does the same for bad flags. A request past a limit
(:mod:`kuosan.limits`) is refused before any work, naming the flag and the limit;
``--no-limits`` lifts them. Ctrl-C during a long run keeps the images written so far, says how
many, and exits with status 130.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import __version__
from .checkpoint import MODEL, export_checkpoint, load_config
from .cli_images import DEFAULT_MODEL, add_edit, add_generate, add_sample
from .cli_types import (
    LIMIT_FLAGS,
    NO_LIMITS_HELP,
    OUTPAINT_CANVAS,
    add_device_arguments,
    non_negative_int,
    positive_float,
    positive_int,
)
from .errors import KuosanError
from .limits import LimitError
from .metrics.command import add_fid_arguments, run_fid
from .metrics.nll import nll_bound
from .models import UNET_PRESETS
from .pipeline import Pipeline
from .samplers import SAMPLERS
from .train import RESUMABLE, TrainConfig, train

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
    "data": "data", "shapes_mix": "shapes_mix", "balance": "balance", "size": "size", "channels": "channels",
    "preset": "model", "steps": "steps",
    "minutes": "minutes", "batch": "batch_size", "grad_accum": "grad_accum", "lr": "lr",
    "warmup": "warmup_steps", "prediction": "prediction", "schedule": "schedule", "timesteps": "T",
    "weighting": "weighting", "high_noise": "high_noise", "seed": "seed", "sample_every": "sample_every",
    "save_every": "save_every", "log_every": "log_every", "device": "device", "precision": "precision", "compile": "compile",
    "skip_bad": "skip_bad",
    "ema_half_life": "ema_half_life_images", "dropout": "dropout", "grid_size": "grid_size",
    "text_encoder": "text_encoder", "cond_drop": "cond_drop", "lr_decay": "lr_decay",
    "decay_steps": "decay_steps",
    "pos_embed": "pos_embed", "pooled_layout": "pooled_layout",
    "word_skip": "word_skip", "init_from": "init_from", "freeze": "freeze",
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
                   help="digits, shapes (ShapesWorld, RGB), emoji (real emoji in flat and glossy "
                        "styles; needs the emoji sources), emojiworld (scenes of emoji), moons, "
                        "swissroll, gaussians, or a folder of images (png, jpg, webp, bmp)")
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
    p.add_argument("--freeze", default=d.freeze, metavar="PATTERNS",
                   help="keep fixed the parameters whose names match these comma-separated glob "
                        "patterns (e.g. 'unet.down.0.*,unet.out.*'): fine-tune only the rest; "
                        "empty: train them all")
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
    p.add_argument("--balance", type=float, default=d.balance, metavar="ALPHA",
                   help="draw item i with weight n^-ALPHA, n the items of its concept (--data emoji: "
                        "the emoji less its skin tone): 0 uniform, 1 every concept equally often")
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
    p.add_argument("--log-every", type=positive_int, default=d.log_every,
                   help="steps between rows of the run's log.jsonl (loss, lr, steps/s, elapsed s)")
    add_device_arguments(p, legacy_bf16=True)
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
    """The long flags present on the command line, as argparse dests (--bf16: precision)."""
    flags = {t[2:].split("=")[0].replace("-", "_") for t in argv if t.startswith("--")}
    return {"precision" if f == "bf16" else f for f in flags}


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
    add_device_arguments(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-progress", action="store_true")
    add_fid_arguments(p)  # --fid REF and its flags: kuosan.metrics.command
    p.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    if args.fid is not None:
        return run_fid(args)
    if not args.nll:
        raise KuosanError("say what to evaluate: --nll, or --fid REF")
    if args.empty_captions and args.caption_gain:
        raise KuosanError("--caption-gain scores both the own and the empty captions: "
                          "leave out --empty-captions")
    pipe = Pipeline.load(args.model, weights=args.weights, device=args.device,
                         precision=args.precision, compile=args.compile)
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
    p.add_argument("--attribution", default=None, metavar="TEXT",
                   help="the credit the training data's licence asks for (e.g. CC-BY's): kept in "
                   "config.json and written into every PNG the model makes (the Copyright chunk)")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    sampling = {k: v for k, v in (("guidance", args.guidance), ("sampler", args.sampler))
                if v is not None}
    out = export_checkpoint(args.model, args.out, weights=args.weights, half=not args.fp32,
                            sampling=sampling, replace=args.replace, attribution=args.attribution)
    size = (out / MODEL).stat().st_size / 2**20
    print(f"kuosan: exported {args.weights} weights of '{args.model}' to {out} ({size:.1f} MiB)")
    return 0


# ---- info --------------------------------------------------------------------------------------


def add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info", help="what a model is: task, size, network, styles, defaults, training, credit",
        description="Describe checkpoint folders or bundled models (every bundled one when none "
                    "is named) from their files, without loading them: what they draw, the "
                    "network, the styles and captions they know, the sampling defaults, how far "
                    "they were trained, the weights' digest (the PNGs' \"Model hash\") and the "
                    "credit their training data asks for.")
    p.add_argument("models", nargs="*", metavar="MODEL", help="checkpoint folder or bundled model name")
    p.add_argument("--json", action="store_true", help="one JSON object per model, a line each")
    p.set_defaults(func=run_info)


def run_info(args: argparse.Namespace) -> int:
    from .checkpoint import bundled_models
    from .model_info import describe, summary

    infos = [describe(m) for m in (args.models or bundled_models())]
    if args.json:
        print("\n".join(json.dumps(i, ensure_ascii=False) for i in infos))
    else:
        print("\n\n".join("\n".join(summary(i)) for i in infos))
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
    add_device_arguments(p)
    p.add_argument("--no-limits", action="store_true", help=NO_LIMITS_HELP)
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from .limits import WEB, Limits
    from .web import check_listen, serve

    sock = check_listen(args.host, args.port, args.token)  # before loading: fail fast
    try:
        pipe = Pipeline.load(args.model, device=args.device, precision=args.precision,
                             compile=args.compile,
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
    for add in (add_train, add_sample, add_generate, add_edit, add_eval, add_export, add_info,
                add_serve):
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
        names = {**LIMIT_FLAGS, **(OUTPAINT_CANVAS if args.command == "outpaint" else {})}
        print(f"kuosan: error: {err.named(names)}", file=sys.stderr)
        return 2
    except KuosanError as err:
        print(f"kuosan: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `kuosan info | head`: the reader left before the end
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 1


if __name__ == "__main__":
    sys.exit(main())
