"""Denoising networks and their configs.

A model is named by a kind (a key of `MODELS`) and a config dataclass; `config_to_dict` gives the
JSON-able dict stored in a checkpoint's config.json and `config_from_dict` reads it back.

    cfg = dataclasses.replace(UNET_PRESETS["s"], in_channels=1, out_channels=1, image_size=8)
    model = build_model("unet", config_to_dict(cfg))
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from kuosan.errors import KuosanError
from kuosan.models.mlp import MLPConfig, MLPDenoiser
from kuosan.models.unet import UNET_PRESETS, UNet, UNetConfig, timestep_embedding, unet_preset

__all__ = [
    "MODELS",
    "UNET_PRESETS",
    "MLPConfig",
    "MLPDenoiser",
    "UNet",
    "UNetConfig",
    "build_model",
    "config_from_dict",
    "config_to_dict",
    "count_parameters",
    "timestep_embedding",
    "unet_preset",
]

# kind -> (config dataclass, model class); the kind is what a checkpoint's config.json names.
MODELS: dict[str, tuple[type, type[nn.Module]]] = {
    "unet": (UNetConfig, UNet),
    "mlp": (MLPConfig, MLPDenoiser),
}


def _lookup(kind: str) -> tuple[type, type[nn.Module]]:
    if kind not in MODELS:
        raise KuosanError(f"unknown model kind {kind!r}; choose one of {sorted(MODELS)}")
    return MODELS[kind]


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A config dataclass as a JSON-able dict (tuples become lists)."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"expected a config dataclass instance, got {type(cfg).__name__}")

    def plain(value: Any) -> Any:
        return [plain(v) for v in value] if isinstance(value, (tuple, list)) else value

    return {f.name: plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def config_from_dict(kind: str, d: dict[str, Any]) -> Any:
    """The config dataclass of model `kind` from a dict (lists become tuples; missing keys take
    their defaults; unknown keys raise KuosanError naming them)."""
    config_cls, _ = _lookup(kind)
    if not isinstance(d, dict):
        raise KuosanError(f"{kind} model config must be a JSON object, got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise KuosanError(
            f"unknown key(s) {unknown} in {kind} model config; known keys: {sorted(known)}"
        )
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    return config_cls(**values)


def build_model(kind: str, config: dict[str, Any] | Any) -> nn.Module:
    """The model of `kind` built from a config dict (as in config.json) or a config dataclass."""
    config_cls, model_cls = _lookup(kind)
    if isinstance(config, config_cls):
        return model_cls(config)
    if dataclasses.is_dataclass(config):
        raise KuosanError(f"model kind {kind!r} needs a {config_cls.__name__}, "
                          f"got a {type(config).__name__}")
    return model_cls(config_from_dict(kind, config))


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters (all, or only those with requires_grad)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
