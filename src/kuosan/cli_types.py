"""argparse types shared by the ``kuosan`` commands: numbers with a lower bound, and the limits'
names for flags (:mod:`kuosan.limits`)."""

from __future__ import annotations

import argparse
import math

from .limits import SIDES, Limits


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
