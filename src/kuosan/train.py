"""The Trainer: one loop that reads top to bottom, on one CPU or many GPUs.

Scale-out is HF Accelerate's: the same code runs as a plain process, under ``accelerate launch``
or under ``torchrun`` (DistributedDataParallel; gloo on the CPU, NCCL on CUDA).

Determinism. Everything random in step ``k`` comes from generators seeded by ``(seed, k)``: the
examples of the global batch (an endless stream of per-epoch permutations), the timesteps and
the noise. Each rank draws the whole global batch and takes its own rows, so the run does not
depend on the number of processes, and resuming at step k needs no saved RNG state: N steps,
stop, and resume to 2N gives the same weights, bit for bit on the CPU, as 2N steps straight.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import math
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import __version__
from .checkpoint import (
    load_config,
    load_state_dict_strict,
    load_training_state,
    load_weights,
    optimizer_from_tensors,
    optimizer_to_tensors,
    read_tensors,
    resolve_model,
    save_checkpoint,
)
from .conditional import (
    TextConditionedUNet,
    build_text_conditioned,
    drop_captions,
    fold_empty_caption,
    make_text_encoder,
    reads_caption,
)
from .data import ArrayDataset, DataInfo, load_dataset
from .errors import KuosanError
from .guidance import cfg_model
from .images import save_grid, save_png, to_pil
from .models import (
    UNET_PRESETS,
    MLPConfig,
    build_model,
    config_to_dict,
    count_parameters,
    unet_preset,
)
from .objectives import training_loss
from .samplers import sample
from .schedule import PREDICTIONS, NoiseSchedule


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; saved in config.json under "train"."""

    data: str = "digits"
    shapes_mix: dict[str, float] | None = None  # shapes data: caption kind → weight; None: the default mix
    size: int | None = None  # image side; None: the data's own (digits 8) or 32 for folders
    channels: int | None = None  # 1 or 3; None: from the data
    skip_bad: bool = False  # skip unreadable images with a warning instead of stopping
    model: str = "auto"  # a UNet preset (xs, s, m, l), "mlp", or "auto" (by data size)
    dropout: float | None = None  # override the preset's dropout
    schedule: str = "linear"  # linear or cosine
    T: int = 1000
    prediction: str = "eps"  # eps, x0 or v
    weighting: str = "uniform"  # uniform or min_snr
    min_snr_gamma: float = 5.0
    high_noise: float = 0.0  # fraction of examples whose t is drawn from the noisiest steps (with_high_noise)
    steps: int | None = None  # total optimizer steps to reach
    minutes: float | None = None  # wall-clock budget of this invocation
    batch_size: int = 128  # global batch (all processes, all accumulation steps)
    grad_accum: int = 1
    lr: float = 1e-3
    warmup_steps: int = 200
    lr_decay: str = "none"  # none (constant after warm-up) or cosine (to 0 at decay_steps)
    decay_steps: int | None = None  # where the cosine reaches 0; None: at --steps
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_half_life_images: float = 100_000.0  # EMA half-life in images (EDM), ramped up below
    ema_rampup_ratio: float = 0.05  # half-life ≤ this × images seen, so early EMA is not stale
    seed: int = 0
    sample_every: int = 1000  # steps between sample grids (0: only at the end)
    save_every: int = 1000  # steps between checkpoints (0: only at the end)
    log_every: int = 50
    grid_size: int = 64
    grid_sampler: str = "dpmpp_2m"
    grid_steps: int = 20
    device: str = "auto"  # auto, cpu or cuda
    bf16: bool = False  # bf16 autocast (CUDA)
    text_encoder: str | None = None  # transformer (joint), minilm, or a local folder; None: no text
    cond_drop: float = 0.1  # probability of training on the empty caption (classifier-free guidance)
    grid_guidance: float = 3.0  # guidance scale of the sample grids of text-conditioned models
    pos_embed: bool = False  # a learned absolute position code in the UNet (UNetConfig.pos_embed)
    pooled_layout: bool = False  # a map from the pooled caption to the canvas (text models)
    word_skip: bool = False  # the small transformer: a per-word vector added to its output states
    init_from: str | None = None  # start from this checkpoint's EMA weights (fine-tuning)
    new_text_encoder: bool = False  # with init_from: a new --text-encoder on its (unconditional) network

    def check(self) -> None:
        """Raise KuosanError naming the first bad value."""
        positive = {"T": self.T, "batch_size": self.batch_size, "grad_accum": self.grad_accum,
                    "grid_size": self.grid_size, "grid_steps": self.grid_steps,
                    "log_every": self.log_every}
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise KuosanError(f"{name} must be a positive integer, got {value!r}")
        for name in ("sample_every", "save_every", "warmup_steps"):
            if getattr(self, name) < 0:
                raise KuosanError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.steps is None and self.minutes is None:
            raise KuosanError("say how long to train: --steps N (total steps) or --minutes M")
        if self.steps is not None and self.steps < 0:
            raise KuosanError(f"--steps must be >= 0, got {self.steps}")
        if self.minutes is not None and not self.minutes > 0:
            raise KuosanError(f"--minutes must be > 0, got {self.minutes}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise KuosanError(f"--lr must be a positive number, got {self.lr}")
        if self.prediction not in PREDICTIONS:
            raise KuosanError(f"--prediction must be one of {', '.join(PREDICTIONS)}, got {self.prediction!r}")
        if self.schedule not in ("linear", "cosine"):
            raise KuosanError(f"--schedule must be linear or cosine, got {self.schedule!r}")
        if self.weighting not in ("uniform", "min_snr"):
            raise KuosanError(f"--weighting must be uniform or min_snr, got {self.weighting!r}")
        if self.shapes_mix is not None:
            if self.data != "shapes":
                raise KuosanError(f"--shapes-mix applies to --data shapes, not to '{self.data}'")
            from .data.shapes import check_kind_weights

            check_kind_weights(self.shapes_mix)
        if not (isinstance(self.high_noise, (int, float)) and 0.0 <= self.high_noise <= 1.0):
            raise KuosanError(f"--high-noise must be a fraction in [0, 1], got {self.high_noise!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise KuosanError(f"--device must be auto, cpu or cuda, got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise KuosanError("--device cuda was asked for, but no CUDA device is available")
        if not 0.0 <= self.cond_drop <= 1.0:
            raise KuosanError(f"--cond-drop must be in [0, 1], got {self.cond_drop}")
        if self.lr_decay not in ("none", "cosine"):
            raise KuosanError(f"--lr-decay must be none or cosine, got {self.lr_decay!r}")
        if self.lr_decay == "cosine" and self.steps is None and self.decay_steps is None:
            raise KuosanError("--lr-decay cosine decays to 0 at --steps: give --steps N "
                              "(or --decay-steps N)")
        if self.decay_steps is not None and self.decay_steps <= self.warmup_steps:
            raise KuosanError(f"--decay-steps must be more than the warm-up steps "
                              f"({self.warmup_steps}), got {self.decay_steps}")
        if self.new_text_encoder and not (self.init_from and self.text_encoder):
            raise KuosanError("--new-text-encoder swaps the text encoder of --init-from's model: "
                              "give both --init-from CHECKPOINT and --text-encoder NAME")
        if self.model not in ("auto", "mlp", *UNET_PRESETS):
            raise KuosanError(f"--preset must be auto, mlp or one of {', '.join(UNET_PRESETS)}, "
                              f"got {self.model!r}")

    def make_schedule(self) -> NoiseSchedule:
        return NoiseSchedule.cosine(self.T) if self.schedule == "cosine" else NoiseSchedule.linear(self.T)


@dataclass(frozen=True)
class TrainResult:
    """What a run reached."""

    step: int
    images_seen: int
    seconds: float
    last_loss: float
    stopped_by: str  # "steps", "minutes" or "interrupt"

# the TrainConfig fields a resumed run may change (`kuosan train --resume`); the rest come from
# the checkpoint
RESUMABLE = {"steps", "minutes", "sample_every", "save_every", "device", "bf16"}


# ---- pure helpers ------------------------------------------------------------------------------


def step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    """A CPU generator for one purpose (``stream``) in one step, independent of everything else."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 8 + stream)


def batch_indices(seed: int, step: int, batch_size: int, n: int) -> Tensor:
    """Indices of the global batch of ``step``: positions [step·B, (step+1)·B) of an endless stream
    of per-epoch random permutations of range(n)."""
    positions = torch.arange(step * batch_size, (step + 1) * batch_size)
    epochs = positions // n
    out = torch.empty(batch_size, dtype=torch.long)
    for epoch in epochs.unique().tolist():
        perm = torch.randperm(n, generator=step_generator(seed, epoch, 7))
        mask = epochs == epoch
        out[mask] = perm[positions[mask] % n]
    return out


def ema_beta(batch_size: int, images_seen: int, half_life: float, rampup_ratio: float) -> float:
    """β = 0.5^(B / h) with h = min(half_life, rampup_ratio · images seen) (EDM's EMA ramp)."""
    h = half_life
    if rampup_ratio > 0:
        h = min(h, rampup_ratio * images_seen)
    return 0.5 ** (batch_size / max(h, 1e-8))


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, beta: float) -> None:
    """θ_ema ← β·θ_ema + (1 − β)·θ."""
    for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
        p_ema.lerp_(p.detach().to(p_ema.dtype), 1 - beta)
    for b_ema, b in zip(ema.buffers(), model.buffers(), strict=True):
        b_ema.copy_(b)


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warm-up from 0 over ``warmup_steps``, then constant (``lr_decay="none"``) or
    lr·½(1 + cos(π·s)) with s the fraction done of the steps from the warm-up's end to
    ``decay_steps`` (default ``steps``), 0 after it (``"cosine"``)."""
    if config.warmup_steps and step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    end = config.decay_steps if config.decay_steps is not None else config.steps
    if config.lr_decay == "cosine" and end is not None:
        span = max(end - config.warmup_steps, 1)
        done = min(max(step - config.warmup_steps, 0) / span, 1.0)
        return config.lr * 0.5 * (1 + math.cos(math.pi * done))
    return config.lr


def model_spec(config: TrainConfig, info: DataInfo, text_dim: int = 0) -> tuple[str, dict]:
    """(kind, config dict) of the network for this data (``text_dim``: width of the text
    encoder, which then feeds the pooled vector and cross-attention at H/2 and H/4)."""
    if info.kind == "vector":
        if config.model not in ("auto", "mlp"):
            raise KuosanError(f"--preset {config.model} is a UNet, but {info.name} holds vectors: use mlp")
        if config.pos_embed or config.pooled_layout:
            raise KuosanError(f"--pos-embed and --pooled-layout are for UNets, but {info.name} "
                              "holds vectors")
        cfg = MLPConfig(dim=info.shape[0])
        if config.dropout is not None:
            cfg = dataclasses.replace(cfg, dropout=config.dropout)
        return "mlp", config_to_dict(cfg)
    if config.model == "mlp":
        raise KuosanError(f"--preset mlp is for vector data, but {info.name} holds images")
    c, h, _ = info.shape
    name = config.model if config.model != "auto" else ("xs" if h <= 8 else "s" if h <= 16 else "m")
    overrides: dict[str, Any] = {"in_channels": c, "out_channels": c, "image_size": h}
    if config.dropout is not None:
        overrides["dropout"] = config.dropout
    if config.pos_embed:
        overrides["pos_embed"] = True
    if config.pooled_layout:
        if not text_dim:
            raise KuosanError("--pooled-layout maps the caption to the canvas: it needs --text-encoder")
        overrides["pooled_layout"] = True
    if text_dim:
        overrides.update(cond_dim=text_dim, context_dim=text_dim,
                         cross_attn_resolutions=tuple(r for r in (h // 2, h // 4) if r >= 2))
    return "unet", config_to_dict(unet_preset(name, **overrides))


def points_image(points: Tensor, size: int = 256, extent: float = 3.5) -> Tensor:
    """A 2-D scatter as a grayscale image in [−1, 1] (dark points on white), for toy data."""
    p = points[:, :2].float().clamp(-extent, extent)
    ij = ((p + extent) / (2 * extent) * (size - 1)).round().long()
    counts = torch.zeros(size, size)
    counts.index_put_((size - 1 - ij[:, 1], ij[:, 0]), torch.ones(len(p)), accumulate=True)
    ink = (counts / counts.max().clamp(min=1)).sqrt()
    return (1 - 2 * ink)[None]


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


# ---- the trainer ----------------------------------------------------------------------------------


HIGH_NOISE_STEPS = 0.15  # the noisiest fraction of the T steps that `--high-noise` draws from


def with_high_noise(t: Tensor, T: int, fraction: float, generator: torch.Generator) -> Tensor:
    """t with each entry replaced, with probability ``fraction``, by a draw from the noisiest
    steps {⌈0.85·T⌉, …, T−1}.

    The density of t becomes (1 − fraction)/T + fraction/(0.15·T) on those steps. On the x_0
    error the ε target weighs a step by its snr and the v target by snr + 1, so the steps where
    the layout of an image is decided (snr ≪ 1) get little of the loss; drawing them more often
    is how the caption's *where* (ShapesWorld's positions) gets learnt (docs/shapes-32.md).
    """
    low = min(T - 1, math.ceil((1 - HIGH_NOISE_STEPS) * T))
    high = torch.randint(low, T, t.shape, generator=generator)
    pick = torch.rand(t.shape, generator=generator) < fraction
    return torch.where(pick, high, t)


class Trainer:
    """Train a denoiser on a dataset; checkpoints in ``out`` follow :mod:`kuosan.checkpoint`."""

    def __init__(self, config: TrainConfig, out: str | Path, *, resume: bool = False,
                 progress: bool = True) -> None:
        from accelerate import Accelerator

        config.check()
        self.out = Path(out)
        self.progress = progress
        has_ckpt = (self.out / "config.json").exists()
        if resume and not (self.out / "training_state.json").exists():
            raise KuosanError(f"--resume: '{self.out}' holds no training state to resume from")
        if not resume and has_ckpt:
            raise KuosanError(f"'{self.out}' already holds a checkpoint: pass --resume to continue "
                              f"it, or choose another --out")
        self.config = config
        use_cpu = config.device == "cpu" or (config.device == "auto" and not torch.cuda.is_available())
        self.accelerator = Accelerator(cpu=use_cpu, mixed_precision="bf16" if config.bf16 else "no")
        acc = self.accelerator
        if config.batch_size % (acc.num_processes * config.grad_accum):
            raise KuosanError(
                f"--batch {config.batch_size} must be divisible by processes × --grad-accum "
                f"= {acc.num_processes} × {config.grad_accum}")

        self.dataset: ArrayDataset = load_dataset(config.data, size=config.size, channels=config.channels,
                                                  skip_bad=config.skip_bad, seed=config.seed,
                                                  shapes_mix=config.shapes_mix)
        self.info = self.dataset.info
        self.schedule = config.make_schedule()
        self.captions = self.dataset.captions if config.text_encoder else None
        if config.text_encoder and self.captions is None:
            raise KuosanError(f"--text-encoder needs captioned data, and '{config.data}' has no "
                              f"captions (use shapes, or a folder of images with captions)")
        source = None if resume or not config.init_from else resolve_checkpoint(config.init_from)
        stored_from = self.out if resume else source  # the checkpoint this run starts from, if any
        source_config = load_config(stored_from) if stored_from else {}
        with torch.random.fork_rng(devices=[]):  # the initial weights depend on the seed alone
            torch.manual_seed(config.seed)
            encoder = (make_text_encoder(config.text_encoder, self.captions, word_skip=config.word_skip)
                       if self.captions else None)
            if encoder is not None and (resume or (source is not None and not config.new_text_encoder)):
                # the stored encoder (its vocabulary), not one fitted anew on these captions
                encoder = source_text_encoder(stored_from, source_config, encoder,
                                              word_skip=config.word_skip and not resume,
                                              fine_tuning=not resume)
                if not resume:
                    warn_unknown_words(encoder, self.captions, source)
            self.kind, self.model_config = model_spec(config, self.info, encoder.dim if encoder else 0)
            model = build_model(self.kind, self.model_config)
            if encoder is not None:
                model = TextConditionedUNet(model, encoder)
        self.text_config = encoder.config() if encoder is not None else None
        self.ema = copy.deepcopy(model).requires_grad_(False).eval()
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.999),
                                      weight_decay=config.weight_decay)
        self.step, self.images_seen, self.elapsed_before = 0, 0, 0.0
        if resume:
            self._load(model, optimizer, source_config)
        elif source is not None:
            init_weights(model, self.ema, source, new_text_encoder=config.new_text_encoder,
                         source_config=source_config)
            warn_other_target(source, source_config, config.prediction)
            warn_other_schedule(source, source_config, self.schedule)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.ema.to(acc.device)
        self.dataset = self.dataset.to(acc.device)

    # -- checkpoints --

    def checkpoint_config(self) -> dict:
        return {
            "kuosan_version": __version__,
            "model": {"kind": self.kind, "config": self.model_config},
            "schedule": self.schedule.to_config(),
            "prediction": self.config.prediction,
            "data": self.info.to_dict(),
            "sampling": {"clip_x0": self.info.kind == "image"},
            "text_encoder": self.text_config,
            "train": dataclasses.asdict(self.config),
        }

    def _load(self, model: nn.Module, optimizer: torch.optim.Optimizer, stored: dict) -> None:
        """Resume: the weights, optimizer and step of the run's own checkpoint (``stored``: its
        config.json)."""
        if stored["model"] != {"kind": self.kind, "config": self.model_config}:
            raise KuosanError(f"--resume: the model in '{self.out}/config.json' differs from the one "
                              f"these settings build; resume with the run's own settings")
        state, tensors = load_training_state(self.out)
        load_state_dict_strict(model, read_tensors(self.out / "model.safetensors")[0],
                               str(self.out / "model.safetensors"))
        load_state_dict_strict(self.ema, load_weights(self.out, "ema")[0], str(self.out / "ema.safetensors"))
        optimizer_from_tensors(optimizer, state["optimizer"], tensors)
        self.step, self.images_seen = state["step"], state["images_seen"]
        self.elapsed_before = state.get("elapsed_seconds", 0.0)

    def save(self, elapsed: float) -> None:
        acc = self.accelerator
        acc.wait_for_everyone()
        if acc.is_main_process:
            opt = getattr(self.optimizer, "optimizer", self.optimizer)  # unwrap Accelerate's wrapper
            meta, tensors = optimizer_to_tensors(opt)
            save_checkpoint(
                self.out, config=self.checkpoint_config(),
                model=acc.unwrap_model(self.model).state_dict(), ema=self.ema.state_dict(),
                state_json={"images_seen": self.images_seen, "optimizer": meta,
                            "elapsed_seconds": self.elapsed_before + elapsed,
                            "num_processes": acc.num_processes},
                state_tensors=tensors, step=self.step)
        acc.wait_for_everyone()

    def sample_grid(self) -> Path | None:
        """Sample ``grid_size`` images (or 2,000 points) with the EMA weights into samples/step_N.png."""
        if not self.accelerator.is_main_process:
            return None
        cfg = self.config
        image = self.info.kind == "image"
        shape = (cfg.grid_size if image else 2000, *self.info.shape)
        model = self.ema
        if self.captions is not None:  # the grid shows the first captions of the data, guided
            caps = [self.captions[i % len(self.captions)] for i in range(shape[0])]
            model = cfg_model(self.ema, self.ema.encode(caps), self.ema.encode([""]), cfg.grid_guidance)
        x = sample(model, shape, schedule=self.schedule, sampler=cfg.grid_sampler,
                   steps=min(cfg.grid_steps, self.schedule.T), prediction=cfg.prediction,
                   generator=torch.Generator().manual_seed(cfg.seed), device=self.accelerator.device,
                   clip_x0=image)
        path = self.out / "samples" / f"step_{self.step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        if image:
            save_grid(x.float().cpu(), path, upscale=max(1, 64 // self.info.shape[-1]))
        else:
            save_png(to_pil(points_image(x.float().cpu())), path)
        return path

    # -- the loop --

    def train_step(self) -> tuple[float, float]:
        """One optimizer step over the global batch; returns (loss, grad norm)."""
        cfg, acc = self.config, self.accelerator
        world, rank = acc.num_processes, acc.process_index
        idx = batch_indices(cfg.seed, self.step, cfg.batch_size, len(self.dataset))
        g = step_generator(cfg.seed, self.step, 1)
        t = torch.randint(0, self.schedule.T, (cfg.batch_size,), generator=g)
        noise = torch.randn((cfg.batch_size, *self.info.shape), generator=g)
        if cfg.high_noise > 0:  # drawn after the noise, so runs without it keep their draws
            t = with_high_noise(t, self.schedule.T, cfg.high_noise, g)
        captions = None
        if self.captions is not None:
            captions = drop_captions([self.captions[i] for i in idx.tolist()], cfg.cond_drop,
                                     step_generator(cfg.seed, self.step, 2))
        micro = cfg.batch_size // (world * cfg.grad_accum)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(cfg, self.step)
        total = 0.0
        with torch.random.fork_rng(devices=[]):  # dropout: seeded per step, global RNG restored after
            torch.manual_seed(cfg.seed * 1_000_003 + self.step)
            for m in range(cfg.grad_accum):
                rows = slice((m * world + rank) * micro, (m * world + rank + 1) * micro)
                x0 = self.dataset.batch(idx[rows].to(acc.device))
                sync = acc.no_sync(self.model) if m + 1 < cfg.grad_accum else contextlib.nullcontext()
                model = self.model
                if captions is not None:
                    model = functools.partial(self.model, captions=captions[rows])
                with sync, acc.autocast():
                    loss = training_loss(model, x0, self.schedule, prediction=cfg.prediction,
                                         weighting=cfg.weighting, gamma=cfg.min_snr_gamma,
                                         t=t[rows].to(acc.device), noise=noise[rows].to(acc.device)).mean()
                    acc.backward(loss / cfg.grad_accum)
                total += loss.item() / cfg.grad_accum
        clip = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        grad_norm = float(acc.clip_grad_norm_(self.model.parameters(), clip))
        if not math.isfinite(grad_norm) or not math.isfinite(total):
            raise KuosanError(
                f"training diverged at step {self.step}: loss {total:.4g}, gradient norm {grad_norm:.4g}. "
                f"The last good checkpoint in '{self.out}' is kept; try a lower --lr (now {cfg.lr:g})")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.images_seen += cfg.batch_size
        beta = ema_beta(cfg.batch_size, self.images_seen, cfg.ema_half_life_images, cfg.ema_rampup_ratio)
        ema_update(self.ema, acc.unwrap_model(self.model), beta)
        return total, grad_norm

    def _time_is_up(self, start: float) -> bool:
        if self.config.minutes is None:
            return False
        up = torch.tensor(float(time.monotonic() - start >= self.config.minutes * 60))
        if self.accelerator.num_processes > 1:  # every rank stops at the same step
            up = self.accelerator.reduce(up.to(self.accelerator.device), "max").cpu()
        return bool(up.item())

    def fit(self) -> TrainResult:
        cfg, acc = self.config, self.accelerator
        main = acc.is_main_process
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            n_params = count_parameters(acc.unwrap_model(self.model))
            print(f"kuosan: training {self.kind} ({n_params / 1e6:.2f} M parameters) on {self.info.name} "
                  f"{self.info.num_items} × {tuple(self.info.shape)}, {acc.num_processes} process(es) on "
                  f"{acc.device}, batch {cfg.batch_size}, from step {self.step}", flush=True)
        start = time.monotonic()
        stopped_by, loss, log_losses = "steps", float("nan"), []
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not (main and self.progress),
                   unit="step", dynamic_ncols=True)
        interrupted: list[bool] = []
        old_handler = signal.getsignal(signal.SIGINT)
        if main:
            signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
        last_log = (time.monotonic(), self.step)
        try:
            while True:
                if cfg.steps is not None and self.step >= cfg.steps:
                    break
                if self._time_is_up(start):
                    stopped_by = "minutes"
                    break
                if interrupted:
                    stopped_by = "interrupt"
                    break
                self.model.train()
                loss, _ = self.train_step()
                log_losses.append(loss)
                bar.update(1)
                if cfg.minutes is not None:
                    left = cfg.minutes * 60 - (time.monotonic() - start)
                    bar.set_postfix(loss=f"{loss:.4f}", left=f"{max(left, 0) / 60:.1f}min", refresh=False)
                else:
                    bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
                if main and self.step % cfg.log_every == 0:
                    now = time.monotonic()
                    rate = (self.step - last_log[1]) / max(now - last_log[0], 1e-9)
                    self._log({"step": self.step, "loss": sum(log_losses) / len(log_losses),
                               "lr": learning_rate(cfg, self.step - 1), "steps_per_s": rate,
                               "images_seen": self.images_seen,
                               "elapsed_s": self.elapsed_before + now - start})
                    log_losses, last_log = [], (now, self.step)
                if cfg.save_every and self.step % cfg.save_every == 0:
                    self.save(time.monotonic() - start)
                if cfg.sample_every and self.step % cfg.sample_every == 0:
                    self.sample_grid()
        finally:
            bar.close()
            if main:
                signal.signal(signal.SIGINT, old_handler)
        elapsed = time.monotonic() - start
        self.save(elapsed)
        grid = self.sample_grid()
        if main:
            total_s = self.elapsed_before + elapsed
            print(f"kuosan: stopped by {stopped_by} at step {self.step} after {elapsed / 60:.1f} min "
                  f"({self.step / max(total_s, 1e-9):.2f} steps/s overall); checkpoint in {self.out}"
                  + (f", samples in {grid}" if grid else ""), flush=True)
        return TrainResult(self.step, self.images_seen, elapsed, loss, stopped_by)

    def _log(self, record: dict) -> None:
        with open(self.out / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")


def train(config: TrainConfig, out: str | Path, *, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train (or resume) a model into the checkpoint folder ``out``."""
    trainer = Trainer(config, out, resume=resume, progress=progress)
    try:
        return trainer.fit()
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()  # no rank tears the group down while another still saves
            torch.distributed.destroy_process_group()
