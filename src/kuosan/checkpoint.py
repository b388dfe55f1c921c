"""Checkpoints: a folder of ``config.json`` and safetensors files; no pickle anywhere.

A trained model is a folder (the DESIGN's Checkpoints contract)::

    config.json                   model, schedule, prediction, data normalisation, format version
    model.safetensors             the trained weights
    ema.safetensors               their exponential moving average (what sampling uses by default)
    training_state.safetensors    optimizer tensors, for exact resume
    training_state.json           step, images seen, optimizer hyper-parameters, …

Every file is written to a temporary name in the same folder, flushed to disk and then renamed
into place (``os.replace`` is atomic), so a crash never leaves a half-written file where a good
one was. Each file is stamped with the training step; loading checks the stamps agree, so a
crash between two renames is detected instead of silently mixing two steps.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .errors import KuosanError

FORMAT_VERSION = 1
CONFIG = "config.json"
MODEL = "model.safetensors"
EMA = "ema.safetensors"
STATE_TENSORS = "training_state.safetensors"
STATE_JSON = "training_state.json"
CAPTIONS = "captions.json"  # a captioned run's distinct training captions (prompt enhancement)


# ---- atomic writes ------------------------------------------------------------------------------


def _atomic(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)``, fsync, then rename the temporary file onto ``path``. The file
    keeps the mode of the one it replaces, else gets rw-r--r-- (a temporary file is made
    owner-only, which a checkpoint meant to be shared must not inherit)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")

    _atomic(Path(path), write)


def write_tensors(path: Path, tensors: Mapping[str, Tensor], step: int) -> None:
    """Write a safetensors file atomically, stamped with ``step`` in its metadata."""
    plain = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    _atomic(Path(path), lambda tmp: save_file(plain, tmp, metadata={"step": str(step)}))


def read_tensors(path: Path) -> tuple[dict[str, Tensor], int | None]:
    """Read a safetensors file and its step stamp; a clear error if it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise KuosanError(f"missing checkpoint file '{path}'")
    try:
        tensors = load_file(path)

        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise KuosanError(f"cannot read '{path}': {err}") from None
    step = int(meta["step"]) if "step" in meta else None
    return tensors, step


# ---- saving ------------------------------------------------------------------------------------


def save_checkpoint(
    folder: str | Path,
    *,
    config: dict,
    model: Mapping[str, Tensor],
    ema: Mapping[str, Tensor] | None = None,
    state_json: dict | None = None,
    state_tensors: Mapping[str, Tensor] | None = None,
    step: int = 0,
) -> None:
    """Write a checkpoint folder. All files are written to temporary names first and renamed at
    the end, config last but one and the training state last, so a reader sees either the old
    checkpoint or the new one."""
    folder = Path(folder)
    config = {**config, "format_version": FORMAT_VERSION}
    write_tensors(folder / MODEL, model, step)
    if ema is not None:
        write_tensors(folder / EMA, ema, step)
    write_json(folder / CONFIG, config)
    if state_json is not None:
        write_tensors(folder / STATE_TENSORS, state_tensors or {}, step)
        write_json(folder / STATE_JSON, {**state_json, "step": step})


def write_captions(folder: str | Path, captions: Sequence[str]) -> None:
    """``captions.json``: {"captions": the distinct captions, sorted}, what a text model was
    trained to read (:func:`kuosan.enhance.language_for` maps free text onto them)."""
    write_json(Path(folder) / CAPTIONS, {"captions": sorted({c for c in captions if c})})


def load_captions(folder: str | Path) -> list[str] | None:
    """The training captions of a checkpoint folder (``captions.json``), or None without one."""
    path = Path(folder) / CAPTIONS
    if not path.is_file():
        return None
    try:
        captions = json.loads(path.read_text()).get("captions")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
        raise KuosanError(f"'{path}' is not a captions file: {err}") from None
    if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
        raise KuosanError(f"'{path}' is not a captions file: 'captions' must be a list of strings")
    return captions


def export_checkpoint(source: str | Path, dest: str | Path, *, weights: str = "ema",
                      half: bool = True, sampling: Mapping[str, Any] | None = None,
                      replace: bool = False, attribution: str | None = None) -> Path:
    """A slim inference checkpoint from a training run: ``config.json`` (with ``sampling``
    defaults merged in, e.g. {"guidance": 3.0}) and ``model.safetensors`` holding the ``weights``
    ("ema" or "model"), floating tensors in float16 when ``half`` (they load into the float32
    model), and ``attribution`` when given: the credit that the training data's licence asks of
    the model and its pictures (config.json "attribution"; written into every PNG the model
    makes). The run's ``captions.json`` comes along when it has one. ``dest`` must not hold a checkpoint already, unless ``replace`` and it holds a slim
    one (never a training run's folder, nor ``source`` itself)."""
    source, dest = Path(source), Path(dest)
    config = load_config(source)
    tensors, step = load_weights(source, weights)
    if (dest / CONFIG).exists():
        if not replace:
            raise KuosanError(f"'{dest}' already holds a checkpoint: choose another --out "
                              "(or --replace an exported one)")
        if dest.resolve() == source.resolve() or (dest / STATE_JSON).exists():
            raise KuosanError(f"'{dest}' is the source or a training run's folder: --replace "
                              "only overwrites another exported checkpoint")
    if half:
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    config["sampling"] = {**config.get("sampling", {}), **(sampling or {})}
    if attribution is not None:
        if not attribution.strip():
            raise KuosanError("--attribution: give the credit's text, not an empty string")
        config["attribution"] = attribution.strip()
    # the run folder's name: a local path would mean nothing on another machine
    init = config.get("train", {}).get("init", {})
    if init.get("init_from"):
        init["init_from"] = Path(init["init_from"]).name
    config["exported"] = {"from": source.resolve().name, "weights": weights, "step": step,
                          "dtype": "float16" if half else "as trained"}
    dest.mkdir(parents=True, exist_ok=True)
    # a replaced checkpoint's old config goes first: a crash before the new one is written leaves
    # a folder that does not load, never new weights under the old config
    (dest / CONFIG).unlink(missing_ok=True)
    write_tensors(dest / MODEL, tensors, step or 0)
    captions = load_captions(source)
    if captions is not None:
        write_captions(dest, captions)
    else:
        (dest / CAPTIONS).unlink(missing_ok=True)  # not a stale one from a replaced export
    if captions and config["data"].get("name") == "emoji" and "styles" not in config:
        from .data.emoji import caption_styles  # a run from before "styles" was recorded

        config["styles"] = caption_styles(captions)
    write_json(dest / CONFIG, config)
    return dest


# ---- loading -----------------------------------------------------------------------------------


BUNDLED = Path(__file__).parent / "bundled"  # models shipped in the package, a folder each


def bundled_models() -> list[str]:
    """Names of the models shipped with the package (``Pipeline.load(name)``)."""
    if not BUNDLED.is_dir():
        return []
    return sorted(p.name for p in BUNDLED.iterdir() if (p / "config.json").is_file())


def resolve_model(name_or_path: str | Path) -> Path:
    """A checkpoint folder: the path itself if it exists, else a model bundled with the package
    under that name (``src/kuosan/bundled/NAME``). An unknown bare name gets a clear error."""
    path = Path(name_or_path)
    if path.exists() or len(path.parts) != 1:
        return path
    bundled = BUNDLED / path.name
    if (bundled / "config.json").is_file():
        return bundled
    names = ", ".join(bundled_models()) or "none"
    raise KuosanError(f"'{name_or_path}' is neither a checkpoint folder nor a model bundled with "
                      f"this kuosan version (bundled: {names})")


def load_config(folder: str | Path) -> dict:
    """Read and check a checkpoint's ``config.json``."""
    folder = Path(folder)
    if not folder.exists():
        raise KuosanError(f"checkpoint folder '{folder}' does not exist")
    if not folder.is_dir():
        raise KuosanError(f"'{folder}' is not a checkpoint folder (it is a file)")
    path = folder / CONFIG
    if not path.is_file():
        raise KuosanError(f"'{folder}' is not a kuosan checkpoint: it has no {CONFIG}")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise KuosanError(f"'{path}' is not valid JSON: {err}") from None
    if not isinstance(config, dict) or "model" not in config or "schedule" not in config:
        raise KuosanError(f"'{path}' is not a kuosan config (no 'model' or 'schedule' entry)")
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise KuosanError(
            f"'{path}' has format version {version!r}; this kuosan reads version {FORMAT_VERSION}"
        )
    return config


def weights_file(folder: str | Path, which: str = "ema") -> Path:
    """The weights file of a checkpoint: ``which="ema"`` (the raw weights if there is no EMA
    file) or ``"model"``."""
    folder = Path(folder)
    if which not in ("ema", "model"):
        raise KuosanError(f"unknown weights {which!r}: expected ema or model")
    return folder / EMA if which == "ema" and (folder / EMA).is_file() else folder / MODEL


def load_weights(folder: str | Path, which: str = "ema") -> tuple[dict[str, Tensor], int | None]:
    """The model weights (:func:`weights_file`) and their step stamp."""
    return read_tensors(weights_file(folder, which))


def weights_digest(folder: str | Path) -> str:
    """The first 12 hex digits of the SHA-256 of the checkpoint's EMA file (else its model file):
    the "Model hash" that generated PNGs carry."""
    import hashlib

    digest = hashlib.sha256()
    with open(weights_file(folder), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def load_state_dict_strict(module: nn.Module, tensors: Mapping[str, Tensor], source: str) -> None:
    """Load weights, naming the file when keys or shapes do not match (never strict=False)."""
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise KuosanError(
            f"'{source}' does not match the model in config.json: "
            f"missing {missing[:3]}{'…' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'…' if len(unexpected) > 3 else ''}"
        )
    for k, v in tensors.items():
        if own[k].shape != v.shape:
            raise KuosanError(f"'{source}': tensor {k} has shape {tuple(v.shape)}, "
                              f"the model expects {tuple(own[k].shape)}")
    module.load_state_dict(dict(tensors), strict=True)


def load_training_state(folder: str | Path) -> tuple[dict, dict[str, Tensor]]:
    """The training state (JSON and tensors), checked against the model files' step stamps."""
    folder = Path(folder)
    path = folder / STATE_JSON
    if not path.is_file():
        raise KuosanError(f"'{folder}' has no {STATE_JSON}: nothing to resume")
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise KuosanError(f"'{path}' is not valid JSON: {err}") from None
    tensors, step = read_tensors(folder / STATE_TENSORS)
    for name in (MODEL, EMA, STATE_TENSORS):
        file_step = step if name == STATE_TENSORS else (
            read_tensors(folder / name)[1] if (folder / name).is_file() else state["step"])
        if file_step != state["step"]:
            raise KuosanError(
                f"checkpoint '{folder}' is inconsistent: {name} is from step {file_step}, "
                f"{STATE_JSON} from step {state['step']} (an interrupted save?)"
            )
    return state, tensors


# ---- optimizer state as tensors + JSON ----------------------------------------------------------


def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict, dict[str, Tensor]]:
    """Split ``optimizer.state_dict()`` into JSON (param groups, scalars) and named tensors."""
    sd = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"state.{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return {"param_groups": sd["param_groups"], "scalars": scalars}, tensors


def optimizer_from_tensors(
    optimizer: torch.optim.Optimizer, meta: dict, tensors: Mapping[str, Tensor]
) -> None:
    """Inverse of :func:`optimizer_to_tensors`."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for idx, st in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(st)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
