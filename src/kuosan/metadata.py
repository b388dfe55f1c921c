"""Generation parameters in PNG text chunks: written with every image the command and the web
page make, read back by ``kuosan generate --from-png``.

Two chunks: ``kuosan``, JSON of :meth:`kuosan.result.Result.parameters` (what reproduces the
image), and ``parameters``, the one-paragraph line AUTOMATIC1111's web UI writes, which other
tools show::

    a red circle
    Negative prompt:
    Steps: 20, Sampler: dpmpp_2m, CFG scale: 2.0, Seed: 0, Size: 32x32, Model hash: 1a2b…,
    Model: shapes-32, Version: kuosan 0.1.0
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from .errors import KuosanError
from .result import Result

# the keys every kuosan chunk holds; others (command, strength, resample, …) go into the
# parameters line as "Key: value"
GENERATION_KEYS = ("prompt", "negative_prompt", "seed", "num", "sampler", "steps", "guidance",
                   "model", "model_hash", "kuosan_version")
# what --from-png needs from a chunk (PNGs written since the chunk was introduced hold them)
REQUIRED = ("prompt", "seed", "sampler", "steps", "guidance", "model")


def png_text(result: Result, index: int | None = None, extra: dict[str, Any] | None = None
             ) -> dict[str, str]:
    """The PNG text chunks of image ``index`` of ``result``; ``index`` None: one grid of all its
    images (the first image's seed, ``num`` = their count). ``extra`` adds keys to the JSON
    (the command writes the input files' names: ``image``, ``mask``). A model with an
    attribution (its training data's licence credit) adds the ``Copyright`` chunk."""
    params = result.parameters(index or 0)
    if index is None:
        params["num"] = len(result)
    params.update(extra or {})
    chunks = parameters_text(params, result[index or 0].size)
    if result.attribution:  # PNG's registered keyword for a copyright notice
        chunks["Copyright"] = result.attribution
    return chunks


def parameters_text(params: dict[str, Any], size: tuple[int, int]) -> dict[str, str]:
    """PNG text chunks for a dict of parameters (:func:`png_text`'s keys) and an image ``size``
    (W, H): the ``kuosan`` JSON chunk and the A1111-style ``parameters`` line."""
    own = {k: v for k, v in params.items() if k not in GENERATION_KEYS and k != "command"}
    edit = "".join(f", {k.replace('_', ' ').capitalize()}: {v}" for k, v in own.items())
    num = params.get("num", 1)
    line = (f"{params['prompt']}\nNegative prompt: {params.get('negative_prompt') or ''}\n"
            f"Steps: {params['steps']}, Sampler: {params['sampler']}, CFG scale: {params['guidance']}, "
            f"Seed: {params['seed']}, Size: {size[0]}x{size[1]}, Model hash: {params['model_hash']}, "
            f"Model: {params['model']}{edit}, Version: kuosan {params['kuosan_version']}"
            + (f", Batch: {num}" if num > 1 else ""))
    return {"parameters": line, "kuosan": json.dumps(params)}


def read_parameters(path: str | Path) -> dict[str, Any]:
    """The kuosan parameters a PNG carries (the JSON chunk), checked for :data:`REQUIRED`; a
    KuosanError naming the file when it has none or they are damaged."""
    try:
        with Image.open(path) as img:
            text = dict(getattr(img, "text", {}))
    except (OSError, UnidentifiedImageError) as err:
        raise KuosanError(f"cannot read '{path}': {err}") from None
    if "kuosan" not in text:
        raise KuosanError(f"'{path}' carries no kuosan generation parameters")
    try:
        params = json.loads(text["kuosan"])
    except json.JSONDecodeError as err:
        raise KuosanError(f"'{path}' has a damaged kuosan chunk: {err}") from None
    missing = [k for k in REQUIRED if not isinstance(params, dict) or k not in params]
    if missing:
        raise KuosanError(f"the kuosan chunk of '{path}' lacks {', '.join(missing)}")
    return params
