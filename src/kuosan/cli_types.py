"""argparse types shared by the ``kuosan`` commands: numbers with a lower bound, and the limits'
names for flags (:mod:`kuosan.limits`)."""

from __future__ import annotations

import argparse
import math

from .limits import SIDES, Limits
from .precision import PRECISIONS


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
               **{s: f"--{s}" for s in SIDES}, "lift": "--no-limits lifts it"}
OUTPAINT_CANVAS = {"pixels": "IMAGE with --left/--top/--right/--bottom"}


def limits_of(args: argparse.Namespace) -> Limits:
    return Limits.none() if args.no_limits else Limits()


def add_device_arguments(p: argparse.ArgumentParser, *, legacy_bf16: bool = False) -> None:
    """``--device`` and ``--precision`` (:mod:`kuosan.precision`); ``legacy_bf16`` also takes
    ``--bf16``, the flag of older versions, as ``--precision bf16``."""
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="the network's arithmetic: fp32, or bf16 autocast; auto = bf16 where the "
                        "hardware does bf16 (a CUDA GPU with bf16, a CPU with AMX-BF16 or "
                        "AVX512-BF16), fp32 elsewhere (docs/speed.md says why)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the UNet (CUDA graphs on a GPU): the first call of each "
                        "shape compiles, about 3 minutes on a 2-core CPU, where it paid off only "
                        "for the s UNet's sampling (docs/speed.md)")
    if legacy_bf16:
        p.add_argument("--bf16", dest="precision", action="store_const", const="bf16",
                       help="the same as --precision bf16")
