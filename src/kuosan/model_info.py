"""What a model is, read from its folder without loading it: ``kuosan info MODEL``.

    describe("emoji-32")   # {"name": "emoji-32", "task": "text to image", "size": [32, 32], …}
    summary(describe("emoji-32"))   # the same as lines for the terminal

Everything comes from the checkpoint's files: config.json (data, network, schedule, sampling
defaults, styles, attribution), the weights file's header (parameter count and the step it
was saved at, without reading the tensors), captions.json, training_state.json (a run's step
and images seen) and the weights' digest, the "Model hash" every PNG of the model carries.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from .checkpoint import (
    BUNDLED,
    CAPTIONS,
    STATE_JSON,
    load_config,
    resolve_model,
    weights_digest,
    weights_file,
)
from .errors import KuosanError
from .precision import resolve_precision


def weights_header(path: Path) -> tuple[int, int | None]:
    """(number of parameters, step stamp or None) of a safetensors file, from its header."""
    try:
        with safe_open(path, "pt") as f:
            count = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118 (safe_open is no mapping)
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise KuosanError(f"cannot read '{path}': {err}") from None
    return count, int(meta["step"]) if "step" in meta else None


def describe(model: str | Path) -> dict[str, Any]:
    """What the checkpoint folder or bundled model ``model`` holds, as a JSON-able dict."""
    from .pipeline import DEFAULT_GUIDANCE, DEFAULT_SAMPLER, pick_device

    folder = resolve_model(model)
    config = load_config(folder)
    data = config.get("data", {})
    shape = data.get("shape") or [0]
    text = config.get("text_encoder") or None
    kind = data.get("kind", "image")
    task = ("text to image" if text else "images, unconditional") if kind == "image" else "points"
    parameters, stamp = weights_header(weights_file(folder))
    captions = None
    if (folder / CAPTIONS).is_file():
        try:
            captions = len(json.loads((folder / CAPTIONS).read_text())["captions"])
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
            raise KuosanError(f"'{folder / CAPTIONS}' is not a captions file") from None
    trained: dict[str, Any] = {"step": stamp}
    if "exported" in config:
        trained = {**trained, **config["exported"], "exported": True}
    if (folder / STATE_JSON).is_file():
        try:
            state = json.loads((folder / STATE_JSON).read_text())
            trained.update(step=state["step"], images_seen=state.get("images_seen"))
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
            raise KuosanError(f"'{folder / STATE_JSON}' is not a training state") from None
    sampling = config.get("sampling", {})
    device = pick_device("auto")
    network = config["model"]
    return {
        "name": folder.name, "path": str(folder),
        "bundled": folder.resolve().parent == BUNDLED.resolve(),
        "task": task,
        "size": list(reversed(shape[1:])) if kind == "image" else None,
        "channels": shape[0] if kind == "image" else None,
        "data": {"name": data.get("name"), "items": data.get("num_items")},
        "network": {"kind": network.get("kind"), "parameters": parameters,
                    "prediction": config.get("prediction", "eps"),
                    "schedule": config["schedule"].get("type"), "T": config["schedule"].get("T")},
        "text_encoder": text.get("type") if text else None,
        "styles": config.get("styles", []),
        "captions": captions,
        # a text model of single emoji draws scene captions (kuosan.scenes.draws_scenes, from
        # the config here: no model is loaded)
        "scenes": bool(text) and data.get("name") == "emoji",
        "sampler": str(sampling.get("sampler", DEFAULT_SAMPLER)),  # as Pipeline.default_sampler
        "guidance": float(sampling.get("guidance", DEFAULT_GUIDANCE)) if text else None,
        "precision": {"device": device.type, "auto": resolve_precision("auto", device)},
        "trained": trained,
        "digest": weights_digest(folder),
        "attribution": config.get("attribution"),
    }


def summary(info: dict[str, Any]) -> list[str]:
    """``info`` (from :func:`describe`) as aligned lines for the terminal."""
    where = "bundled with kuosan" if info["bundled"] else info["path"]
    lines = [f"{info['name']}  ({where})"]

    def row(label: str, text: str) -> None:
        lines.append(f"  {label:<12}{text}")

    what = info["task"]
    if info["size"]:
        w, h = info["size"]
        what += f", {w}×{h} " + ("RGB" if info["channels"] == 3 else f"{info['channels']} channel(s)")
    data = info["data"]
    if data["name"]:
        items = f", {data['items']:,} items" if data.get("items") else ""
        what += f" (trained on {data['name']}{items})"
    row("task", what)
    net = info["network"]
    encoder = f"; text encoder {info['text_encoder']}" if info["text_encoder"] else ""
    row("network", f"{net['kind']}, {net['parameters'] / 1e6:.2f} M parameters ({net['prediction']} "
                   f"prediction, {net['schedule']} schedule, T = {net['T']}){encoder}")
    if info["styles"]:
        row("styles", ", ".join(info["styles"]))
    if info["captions"] is not None:
        row("captions", f"{info['captions']:,} (captions.json: --enhance maps free words onto them)")
    if info["scenes"]:
        row("scenes", "--scene draws scene captions, each emoji in its place (docs/emoji-scenes.md)")
    guidance = f", guidance {info['guidance']:g}" if info["guidance"] is not None else ""
    precision = info["precision"]
    row("sampling", f"{info['sampler']}{guidance} by default; --precision auto is {precision['auto']} on this "
                    f"machine ({precision['device']})")
    t = info["trained"]
    if t.get("exported"):
        text = f"exported from {t.get('from', '?')}"
        text += f" at step {t['step']:,}" if t.get("step") is not None else ""
        text += f" ({t.get('weights', 'ema')} weights, {t.get('dtype', '?')})"
    elif t.get("step") is not None:
        text = f"step {t['step']:,}"
        text += f", {t['images_seen']:,} items seen" if t.get("images_seen") else ""
    else:
        text = "unknown"
    row("training", text)
    row("digest", info["digest"])
    if info["attribution"]:
        row("attribution", info["attribution"])
    return lines
