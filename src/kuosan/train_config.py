"""What defines a training run: :class:`TrainConfig`, six frozen groups saved as JSON.

```python
config = TrainConfig(data=DataConfig("shapes"), runtime=RuntimeConfig(steps=1000))
config = TrainConfig.from_flat(data="shapes", steps=1000)   # the flat names of the CLI's flags
config.replace(steps=2000)                                   # flat names too
json.dumps(config.to_dict())                                 # {"data": {...}, "model": {...}, ...}
TrainConfig.from_dict(stored)                                # nested, or the flat dict of older runs
```

Checkpoints written before the groups hold one flat dict under "train" (the names of
:data:`FLAT_NAMES`); :meth:`TrainConfig.from_dict` reads both.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import KuosanError, is_int
from .precision import PRECISIONS
from .schedule import PREDICTIONS, NoiseSchedule


def _check_positive_ints(**values: Any) -> None:
    for name, value in values.items():
        if not is_int(value) or value < 1:
            raise KuosanError(f"{name} must be a positive integer, got {value!r}")


def _check_choice(flag: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise KuosanError(f"{flag} must be one of {', '.join(choices)}, got {value!r}")


@dataclass(frozen=True)
class DataConfig:
    """The data: a built-in name or a folder, its size, and the dataset's own options."""

    name: str = "digits"
    size: int | None = None  # image side; None: the data's own (digits 8) or 32 for folders
    channels: int | None = None  # 1 or 3; None: from the data
    skip_bad: bool = False  # skip unreadable images with a warning instead of stopping
    shapes_mix: dict[str, float] | None = None  # ShapesWorld: caption kind → weight; None: default
    balance: float = 0.0  # item i drawn ∝ n_g^-balance, n_g the items of its concept (0: uniform)

    def check(self) -> None:
        if not (isinstance(self.balance, (int, float)) and 0 <= self.balance <= 1):
            raise KuosanError(f"--balance must be between 0 and 1, got {self.balance!r}")
        if self.shapes_mix is not None:
            if self.name != "shapes":
                raise KuosanError(f"--shapes-mix applies to --data shapes, not to '{self.name}'")
            from .data.shapes import check_kind_weights

            check_kind_weights(self.shapes_mix)


@dataclass(frozen=True)
class ModelConfig:
    """The denoiser: network, noise schedule, prediction target and text encoder."""

    preset: str = "auto"  # a UNet preset (xs, s, m, l), "mlp", or "auto" (by data size)
    dropout: float | None = None  # override the preset's dropout
    schedule: str = "linear"  # linear or cosine
    T: int = 1000
    prediction: str = "eps"  # eps, x0 or v
    text_encoder: str | None = None  # transformer (joint), minilm, or a local folder; None: no text
    pos_embed: bool = False  # a learned absolute position code in the UNet (UNetConfig.pos_embed)
    pooled_layout: bool = False  # a map from the pooled caption to the canvas (text models)
    word_skip: bool = False  # the small transformer: a per-word vector added to its output states

    def check(self) -> None:
        from .models import UNET_PRESETS

        _check_positive_ints(T=self.T)
        _check_choice("--prediction", self.prediction, PREDICTIONS)
        _check_choice("--schedule", self.schedule, ("linear", "cosine"))
        _check_choice("--preset", self.preset, ("auto", "mlp", *UNET_PRESETS))

    def make_schedule(self) -> NoiseSchedule:
        return NoiseSchedule.cosine(self.T) if self.schedule == "cosine" else NoiseSchedule.linear(self.T)


@dataclass(frozen=True)
class OptimConfig:
    """The optimisation: seed, batch, learning rate, EMA, and what the loss draws and weighs."""

    seed: int = 0
    batch_size: int = 128  # global batch (all processes, all accumulation steps)
    grad_accum: int = 1
    lr: float = 1e-3
    warmup_steps: int = 200
    lr_decay: str = "none"  # none (constant after warm-up) or cosine (to 0 at decay_steps)
    decay_steps: int | None = None  # where the cosine reaches 0; None: at the run's steps
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_half_life_images: float = 100_000.0  # EMA half-life in images (EDM), ramped up below
    ema_rampup_ratio: float = 0.05  # half-life ≤ this × images seen, so early EMA is not stale
    weighting: str = "uniform"  # uniform or min_snr
    min_snr_gamma: float = 5.0
    high_noise: float = 0.0  # fraction of examples whose t is drawn from the noisiest steps
    cond_drop: float = 0.1  # probability of training on the empty caption (classifier-free guidance)
    freeze: str = ""  # comma-separated glob patterns of parameter names kept fixed (kuosan.optim.freeze)

    def check(self) -> None:
        _check_positive_ints(batch_size=self.batch_size, grad_accum=self.grad_accum)
        if self.warmup_steps < 0:
            raise KuosanError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise KuosanError(f"--lr must be a positive number, got {self.lr}")
        _check_choice("--weighting", self.weighting, ("uniform", "min_snr"))
        _check_choice("--lr-decay", self.lr_decay, ("none", "cosine"))
        if self.decay_steps is not None and self.decay_steps <= self.warmup_steps:
            raise KuosanError(f"--decay-steps must be more than the warm-up steps "
                              f"({self.warmup_steps}), got {self.decay_steps}")
        if not (isinstance(self.high_noise, (int, float)) and 0.0 <= self.high_noise <= 1.0):
            raise KuosanError(f"--high-noise must be a fraction in [0, 1], got {self.high_noise!r}")
        if not 0.0 <= self.cond_drop <= 1.0:
            raise KuosanError(f"--cond-drop must be in [0, 1], got {self.cond_drop}")


@dataclass(frozen=True)
class InitConfig:
    """Where the weights start: fresh (seeded), or a checkpoint's (fine-tuning,
    :mod:`kuosan.finetune`)."""

    init_from: str | None = None  # start from this checkpoint's EMA weights
    new_text_encoder: bool = False  # with init_from: a new text encoder on its network


@dataclass(frozen=True)
class GridConfig:
    """The sample grids drawn while training (samples/step_N.png)."""

    every: int = 1000  # steps between sample grids (0: only at the end)
    size: int = 64
    sampler: str = "dpmpp_2m"
    steps: int = 20
    guidance: float = 3.0  # guidance scale of the grids of text-conditioned models

    def check(self) -> None:
        _check_positive_ints(grid_size=self.size, grid_steps=self.steps)
        if self.every < 0:
            raise KuosanError(f"sample_every must be >= 0, got {self.every}")


@dataclass(frozen=True)
class RuntimeConfig:
    """When to stop, save and log, and where to run: what a resumed run may change."""

    steps: int | None = None  # total optimizer steps to reach
    minutes: float | None = None  # wall-clock budget of this invocation
    save_every: int = 1000  # steps between checkpoints (0: only at the end)
    log_every: int = 50
    device: str = "auto"  # auto, cpu or cuda
    precision: str = "auto"  # auto, fp32 or bf16 (kuosan.precision; auto: bf16 on CUDA)
    compile: bool = False  # torch.compile the UNet (kuosan.precision.compile_network)

    def check(self) -> None:
        _check_positive_ints(log_every=self.log_every)
        if self.save_every < 0:
            raise KuosanError(f"save_every must be >= 0, got {self.save_every}")
        if self.steps is None and self.minutes is None:
            raise KuosanError("say how long to train: --steps N (total steps) or --minutes M")
        if self.steps is not None and self.steps < 0:
            raise KuosanError(f"--steps must be >= 0, got {self.steps}")
        if self.minutes is not None and not self.minutes > 0:
            raise KuosanError(f"--minutes must be > 0, got {self.minutes}")
        _check_choice("--device", self.device, ("auto", "cpu", "cuda"))
        _check_choice("--precision", self.precision, PRECISIONS)
        if self.device == "cuda" and not torch.cuda.is_available():
            raise KuosanError("--device cuda was asked for, but no CUDA device is available")


GROUPS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig,
                           "init": InitConfig, "grid": GridConfig, "runtime": RuntimeConfig}
# flat names (older checkpoints, the CLI's flags) that differ from the name in their group
_RENAMED = {"data": ("data", "name"), "model": ("model", "preset"), "sample_every": ("grid", "every"),
            "grid_size": ("grid", "size"), "grid_sampler": ("grid", "sampler"),
            "grid_steps": ("grid", "steps"), "grid_guidance": ("grid", "guidance")}
FLAT_NAMES: dict[str, tuple[str, str]] = {
    **{f.name: (group, f.name) for group, cls in GROUPS.items() for f in dataclasses.fields(cls)
       if (group, f.name) not in _RENAMED.values()},
    **_RENAMED,
}


def _legacy(stored: dict[str, Any]) -> dict[str, Any]:
    """``stored`` with the settings of older versions renamed: ``bf16`` (a bool, before
    ``precision``) becomes precision "bf16" or "fp32", what that run used."""
    if "bf16" not in stored:
        return stored
    out = {k: v for k, v in stored.items() if k != "bf16"}
    out.setdefault("precision", "bf16" if stored["bf16"] else "fp32")
    return out


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; saved in config.json under "train"."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    init: InitConfig = field(default_factory=InitConfig)
    grid: GridConfig = field(default_factory=GridConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    @classmethod
    def from_flat(cls, **flat: Any) -> TrainConfig:
        """The config from the flat names of older checkpoints and the CLI (:data:`FLAT_NAMES`)."""
        return cls().replace(**flat)

    def replace(self, **flat: Any) -> TrainConfig:
        """This config with the fields of the flat names in ``flat`` replaced."""
        unknown = sorted(set(flat) - set(FLAT_NAMES))
        if unknown:
            raise KuosanError(f"unknown training setting(s): {', '.join(unknown)}")
        changes: dict[str, dict[str, Any]] = {}
        for name, value in flat.items():
            group, key = FLAT_NAMES[name]
            changes.setdefault(group, {})[key] = value
        return dataclasses.replace(self, **{group: dataclasses.replace(getattr(self, group), **kw)
                                            for group, kw in changes.items()})

    def to_flat(self) -> dict[str, Any]:
        """The flat dict of older checkpoints (every name of :data:`FLAT_NAMES`)."""
        return {name: getattr(getattr(self, group), key) for name, (group, key) in FLAT_NAMES.items()}

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """JSON-able nested dict: one object per group."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, stored: dict[str, Any]) -> TrainConfig:
        """The config saved by :meth:`to_dict`, or the flat dict of a checkpoint written before
        the groups; keys it does not know (from other versions) are left out."""
        nested = bool(stored) and set(stored) <= set(GROUPS) and all(
            isinstance(v, dict) for v in stored.values())
        if not nested:
            return cls.from_flat(**{k: v for k, v in _legacy(stored).items() if k in FLAT_NAMES})
        groups = {}
        for group, sub in stored.items():
            sub = _legacy(sub) if group == "runtime" else sub
            names = {f.name for f in dataclasses.fields(GROUPS[group])}
            groups[group] = GROUPS[group](**{k: v for k, v in sub.items() if k in names})
        return cls(**groups)

    def check(self) -> None:
        """Raise KuosanError naming the first bad value."""
        for group in GROUPS:
            check = getattr(getattr(self, group), "check", None)
            if check is not None:
                check()
        optim, runtime = self.optim, self.runtime
        if optim.lr_decay == "cosine" and runtime.steps is None and optim.decay_steps is None:
            raise KuosanError("--lr-decay cosine decays to 0 at --steps: give --steps N "
                              "(or --decay-steps N)")
        if self.init.new_text_encoder and not (self.init.init_from and self.model.text_encoder):
            raise KuosanError("--new-text-encoder swaps the text encoder of --init-from's model: "
                              "give both --init-from CHECKPOINT and --text-encoder NAME")
