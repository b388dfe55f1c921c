"""Fine-tuning: starting a run from a checkpoint's weights (``--init-from``), optionally with a
new text encoder on its network (``--new-text-encoder``, the source's empty caption folded in).

The :class:`kuosan.train.Trainer` calls :func:`resolve_checkpoint` and :func:`source_text_encoder`
while it builds the model, and :func:`start_from` once it is built; everything that compares the
source with the run (its text encoder's vocabulary, target and schedule) warns here.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import load_config, load_state_dict_strict, load_weights, resolve_model
from .errors import KuosanError
from .models.conditional import build_text_conditioned, fold_empty_caption, reads_caption
from .schedule import NoiseSchedule
from .train_config import TrainConfig


def resolve_checkpoint(name_or_path: str) -> Path:
    """The checkpoint folder of ``--init-from``: a folder with config.json, or a bundled model."""
    path = resolve_model(name_or_path)
    if not (path / "config.json").is_file():
        raise KuosanError(f"--init-from: '{name_or_path}' holds no config.json (not a checkpoint)")
    return path


def source_text_encoder(source: Path, source_config: dict, encoder: Any, word_skip: bool = False,
                        fine_tuning: bool = False) -> Any:
    """The text encoder of the checkpoint ``source`` (``--init-from``'s, or the run's own on
    ``--resume``; ``source_config`` its config.json), which must be of the kind this run asks for:
    the jointly trained transformer keeps the source's vocabulary, so its weights fit whatever
    the captions now are. ``word_skip`` adds the (zero-initialised) per-word skip to a
    transformer that lacks it; ``fine_tuning``: ``source`` is ``--init-from``'s."""
    from .models.text import text_encoder_from_config

    stored = source_config.get("text_encoder")
    if stored is None:
        raise KuosanError(f"'{source}' has no text encoder, but this run trains one")
    if stored.get("type") != encoder.config().get("type"):
        raise KuosanError(f"'{source}' has a {stored.get('type')} text encoder, "
                          f"this run asks for {encoder.config().get('type')}"
                          + (" (to train a new encoder on its network, add --new-text-encoder)"
                             if fine_tuning else ""))
    if word_skip and stored.get("type") == "transformer":
        stored = {**stored, "word_skip": True}
    return text_encoder_from_config(stored)


def unknown_words(encoder: Any, captions: Sequence[str]) -> tuple[list[str], float]:
    """(the words of ``captions`` outside a word tokenizer's vocabulary, sorted; the fraction
    of caption words they make up). ([], 0.0) for other encoders."""
    tokenizer = getattr(encoder, "tokenizer", None)
    if getattr(tokenizer, "kind", None) != "word":
        return [], 0.0
    known, unknown, total, missed = set(tokenizer.words), set(), 0, 0
    for caption in captions:
        words = tokenizer.split(caption)
        total += len(words)
        for w in words:
            if w not in known:
                unknown.add(w)
                missed += 1
    return sorted(unknown), missed / max(total, 1)


def source_attention(model_config: dict, source_config: dict) -> dict:
    """A UNet's ``model_config`` with self-attention at the levels of the source UNet's
    (``source_config``, its config.json): a source resolution r at size S becomes r·H/S at this
    size H, so a run at another size (64×64 from a 32×32 checkpoint) has a place for every source
    weight, and a resumed run keeps its own. Cross-attention is already placed by level (H/2, H/4)."""
    source = source_config.get("model") or {}
    if source.get("kind") != "unet" or "attn_resolutions" not in source.get("config", {}):
        return model_config
    size, ours = source["config"]["image_size"], model_config["image_size"]
    return {**model_config,
            "attn_resolutions": [r * ours // size for r in source["config"]["attn_resolutions"]]}


def warn_other_target(source: Path, source_config: dict, prediction: str) -> None:
    """Warn when the source of ``--init-from`` (its config.json: ``source_config``) was trained for
    another target than this run."""
    theirs = source_config.get("prediction", "eps")
    if theirs != prediction:
        print(f"kuosan: warning: '{source}' was trained for the {theirs} target and this run trains "
              f"--prediction {prediction}: it starts from the weights, not from the same model "
              f"(pass --prediction {theirs} to keep it)", file=sys.stderr)


def warn_other_schedule(source: Path, source_config: dict, schedule: NoiseSchedule) -> None:
    """Warn when the source of ``--init-from`` was trained with another noise schedule than this
    run's (its network then meets noise levels it was not trained for at every t)."""
    theirs = source_config.get("schedule")
    ours = schedule.to_config()
    if theirs and theirs != ours:
        print(f"kuosan: warning: '{source}' was trained with the {theirs.get('type')} schedule "
              f"(T = {theirs.get('T')}) and this run uses {ours['type']} (T = {ours['T']}): it "
              f"starts from the weights, not from the same model (pass --schedule "
              f"{theirs.get('type')} --timesteps {theirs.get('T')} to keep it)", file=sys.stderr)


def warn_unknown_words(encoder: Any, captions: Sequence[str], source: Path) -> None:
    words, fraction = unknown_words(encoder, captions)
    if words:
        shown = ", ".join(words[:8]) + (", …" if len(words) > 8 else "")
        print(f"kuosan: warning: {len(words)} word(s) of the captions ({fraction:.0%} of all words) "
              f"are not in the vocabulary of '{source}' and read as <unk>: {shown}",
              file=sys.stderr, flush=True)


# optional parts of a network (a piece of their weights' names) and the flag that adds them
OPTIONAL_PARTS = {".pos.": "--pos-embed", "input_pos.": "--pos-embed",
                  "layout_proj.": "--pooled-layout", "skip_embedding.": "--word-skip"}


def _flag_of_part(key: str) -> str | None:
    return next((flag for piece, flag in OPTIONAL_PARTS.items() if piece in key), None)


def source_unconditional(source: Path, source_config: dict,
                         tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``source``'s UNet weights (``tensors``: its EMA; ``source_config``: its config.json) with
    its empty caption folded in (`fold_empty_caption`): neither the caption maps nor the text
    encoder."""
    if not source_config.get("text_encoder"):
        raise KuosanError(f"--new-text-encoder: '{source}' is not a text model, so it has no text "
                          "encoder to replace")
    model = build_text_conditioned(source_config["model"]["config"], source_config["text_encoder"])
    load_state_dict_strict(model, tensors, str(source))
    return fold_empty_caption(model)


def init_weights(model: nn.Module, ema: nn.Module, source: Path, new_text_encoder: bool = False,
                 source_config: dict | None = None) -> None:
    """Copy ``source``'s EMA weights into the model and its EMA (fine-tuning, ``--init-from``).

    Every source tensor must exist in the model with the same shape. Model tensors that the source
    lacks keep their initial values, which must be zero (the maps of ``--pos-embed`` and
    ``--pooled-layout``), so the model starts as the source's function.

    ``new_text_encoder`` (``--new-text-encoder``): the source's text encoder is left out (the model
    keeps its new one), the maps that read the caption (`reads_caption`: cross-attention's
    key/value map, the pooled-caption and layout maps) start at zero, and the source's encoding
    of the empty caption is folded into biases (`source_unconditional`), so the model starts as
    the source's unconditional model (given any caption, what the source draws for the empty
    one) and learns to read the new encoder from there. ``source_config``: its config.json
    (read when not given).
    """
    tensors, _ = load_weights(source, "ema")
    own = model.state_dict()
    if new_text_encoder:
        tensors = source_unconditional(source, source_config or load_config(source), tensors)
        own = {k: (torch.zeros_like(v) if reads_caption(k) else v) for k, v in own.items()}
    unexpected = sorted(set(tensors) - set(own))
    flags = [_flag_of_part(k) for k in unexpected]
    if unexpected and all(flags):
        raise KuosanError(f"--init-from: '{source}' has parts this run leaves out: add "
                          + " ".join(sorted(set(flags))))
    if unexpected:
        raise KuosanError(f"--init-from: '{source}' has weights this model lacks "
                          f"({', '.join(unexpected[:3])}{'…' if len(unexpected) > 3 else ''}); "
                          "use the source's --preset and text encoder")
    for k, v in tensors.items():
        if own[k].shape != v.shape:
            hint = (" (another text encoder? add --new-text-encoder)"
                    if reads_caption(k) or k.startswith("text.") else "")
            raise KuosanError(f"--init-from: '{source}' tensor {k} has shape {tuple(v.shape)}, "
                              f"this model's is {tuple(own[k].shape)}{hint}")
    # tensors the source lacks must start at zero (the zero-initialised maps of --pos-embed and
    # --pooled-layout), so that the model starts as the source's function; a new text encoder's
    # own weights are the exception
    fresh = sorted(set(own) - set(tensors))
    not_identity = [k for k in fresh if torch.count_nonzero(own[k])
                    and not (new_text_encoder and k.startswith("text."))]
    if not_identity:
        raise KuosanError(f"--init-from: '{source}' lacks weights of this model "
                          f"({', '.join(not_identity[:3])}{'…' if len(not_identity) > 3 else ''}); "
                          "use the source's --preset and text encoder")
    full = {**own, **{k: v.to(own[k].dtype) for k, v in tensors.items()}}
    model.load_state_dict(full, strict=True)
    ema.load_state_dict(full, strict=True)
    print(f"kuosan: starting from the EMA weights of '{source}'"
          + (f" ({len(fresh)} new tensors start at zero)" if fresh else "")
          + (", with a new text encoder" if new_text_encoder else ""), flush=True)


def start_from(model: nn.Module, ema: nn.Module, source: Path, source_config: dict,
               config: TrainConfig) -> None:
    """Fine-tuning: ``source``'s EMA weights into the model and its EMA (:func:`init_weights`),
    then a warning for each way the source was trained differently from this run."""
    init_weights(model, ema, source, new_text_encoder=config.init.new_text_encoder,
                 source_config=source_config)
    warn_other_target(source, source_config, config.model.prediction)
    warn_other_schedule(source, source_config, config.model.make_schedule())
