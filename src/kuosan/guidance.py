"""Classifier-free guidance (Ho & Salimans 2022) as a wrapper over the model, and the condition
dropout that trains a model for it.

A condition is a dict of the model's keyword arguments, ``model(x_t, t, **cond) -> output``; for
the UNet (:mod:`kuosan.models.unet`):

    class_labels  [B] long      the null condition is the class index num_classes
    pooled        [B, Dp]       the null condition is the encoding of the empty caption ""
    context       [B, L, D]     token states; different lengths are padded with zero states
    context_mask  [B, L] bool   True = real token (missing: every token is real)

Guidance scale s (diffusers' and EDM2's convention: s = 1 is no guidance, s = 0 is the
unconditional model):

    out = out_uncond + s·(out_cond − out_uncond)

A negative prompt takes the place of the unconditional branch: ``uncond`` is then the negative
prompt's encoding (diffusers' convention). The guided output is the same whether the model
predicts ε, x_0 or v: at fixed (x_t, t) each of ε̂, x̂_0, v̂ is an affine function of the
others whose coefficients do not depend on the condition, and the guidance weights (1 − s, s)
sum to 1, so guiding then converting equals converting then guiding (EDM2's
``ref_Dx.lerp(Dx, guidance)`` on the denoiser D(x; σ) is the same thing).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from .errors import KuosanError

ModelFn = Callable[[Tensor, Tensor], Tensor]
Cond = Mapping[str, Tensor | None]

DEFAULT_COND_DROP_PROB = 0.1  # condition dropout in training (Ho & Salimans 2022 use 0.1–0.2)


def _present(cond: Cond) -> dict[str, Tensor]:
    """The entries of ``cond`` that are not None."""
    return {k: v for k, v in cond.items() if v is not None}


def _fit_batch(cond: Mapping[str, Tensor], batch: int, what: str) -> dict[str, Tensor]:
    """``cond`` with every batch-1 tensor expanded to ``batch`` rows (one prompt, many images)."""
    out = {}
    for key, value in cond.items():
        if value.ndim == 0 or value.shape[0] not in (1, batch):
            raise KuosanError(f"{what}[{key!r}] has shape {list(value.shape)}: expected a "
                              f"leading batch dimension of 1 or {batch}")
        out[key] = value.expand(batch, *value.shape[1:])
    return out


def pad_tokens(context: Tensor, mask: Tensor | None, length: int) -> tuple[Tensor, Tensor]:
    """Token states [B, L, D] and their mask [B, L] (None = all real) padded to ``length``
    tokens with zero states and mask False; returns (context [B, length, D], mask bool)."""
    b, n = context.shape[:2]
    if mask is None:
        mask = torch.ones(b, n, dtype=torch.bool, device=context.device)
    mask = mask.to(torch.bool)
    if length > n:
        context = torch.cat([context, context.new_zeros(b, length - n, *context.shape[2:])], 1)
        mask = torch.cat([mask, mask.new_zeros(b, length - n)], 1)
    return context, mask


def concat_conditions(
    first: Mapping[str, Tensor], second: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """Two conditions stacked along the batch, [first; second], for one model call. Both need the
    same keys (a missing ``context_mask`` means all tokens are real); ``context`` and
    ``context_mask`` are padded to the longer of the two token lengths."""
    if set(first) - {"context_mask"} != set(second) - {"context_mask"}:
        raise KuosanError(f"cannot batch conditions with different keys: {sorted(first)} and "
                          f"{sorted(second)}")
    tokens = ("context", "context_mask")
    out = {k: torch.cat([first[k], second[k]]) for k in first if k not in tokens}
    if "context" in first:
        length = max(first["context"].shape[1], second["context"].shape[1])
        ctx_a, mask_a = pad_tokens(first["context"], first.get("context_mask"), length)
        ctx_b, mask_b = pad_tokens(second["context"], second.get("context_mask"), length)
        out["context"] = torch.cat([ctx_a, ctx_b])
        out["context_mask"] = torch.cat([mask_a, mask_b])
    return out


def cfg_model(
    model: Callable[..., Tensor], cond: Cond, uncond: Cond, guidance_scale: float
) -> ModelFn:
    """The guided model (x_t, t) ↦ out_uncond + s·(out_cond − out_uncond), s = ``guidance_scale``,
    with out_cond = model(x_t, t, **cond) and out_uncond = model(x_t, t, **uncond).

    For :func:`kuosan.samplers.sample`. s = 1 is no guidance: one model call per step on the
    condition alone, ``uncond`` is never evaluated. Otherwise both branches run as one call on a
    doubled batch (token states padded to one length) when ``cond`` and ``uncond`` have the same
    keys, as two calls when they do not. Valid for ε-, x_0- and v-prediction alike (module
    docstring). ``uncond`` is the null condition, or a negative prompt's encoding. Tensors with
    a batch of 1 are broadcast to the batch of x_t. None entries are left out.
    """
    scale = float(guidance_scale)
    if not math.isfinite(scale):
        raise KuosanError(f"guidance_scale must be a finite number, got {guidance_scale!r}")
    cond, uncond = _present(cond), _present(uncond)

    if scale == 1.0:
        def conditional(x: Tensor, t: Tensor) -> Tensor:
            return model(x, t, **_fit_batch(cond, x.shape[0], "cond"))
        return conditional

    batched = set(cond) - {"context_mask"} == set(uncond) - {"context_mask"}

    def guided(x: Tensor, t: Tensor) -> Tensor:
        b = x.shape[0]
        t = t.expand(b) if t.ndim == 0 else t
        c, u = _fit_batch(cond, b, "cond"), _fit_batch(uncond, b, "uncond")
        if batched:
            out = model(torch.cat([x, x]), torch.cat([t, t]), **concat_conditions(c, u))
            out_cond, out_uncond = out.chunk(2)
        else:
            out_cond, out_uncond = model(x, t, **c), model(x, t, **u)
        return out_uncond + scale * (out_cond - out_uncond)

    return guided


def drop_conditions(
    cond: Cond, p: float, generator: torch.Generator | None, null: Cond
) -> dict[str, Tensor]:
    """Condition dropout for classifier-free guidance training: example i keeps its condition
    unless u_i < p, u_i ~ U[0, 1), and is otherwise given the null condition (all keys of an
    example together).

    ``null`` holds the null value of each key of ``cond`` with a batch of 1 (or B): the class
    index num_classes for ``class_labels``, the empty caption's encoding for ``pooled`` and
    ``context``/``context_mask``. The B uniforms are drawn on the CPU from ``generator`` (one
    ``torch.rand`` per call, whatever p), so the result is deterministic given its state.
    """
    if not (isinstance(p, (int, float)) and 0.0 <= p <= 1.0):
        raise KuosanError(f"condition dropout probability must be in [0, 1], got {p!r}")
    cond, null = _present(cond), _present(null)
    if not cond:
        raise KuosanError("drop_conditions needs at least one condition")
    missing = sorted(set(cond) - set(null) - {"context_mask"})
    if missing:
        raise KuosanError(f"no null value given for condition(s) {missing}")
    if "context_mask" in cond and "context" not in cond:
        raise KuosanError("context_mask given without context")
    batch = max((v.shape[0] for v in cond.values() if v.ndim), default=1)
    cond = _fit_batch(cond, batch, "cond")
    null = _fit_batch({k: v for k, v in null.items() if k in cond or k == "context_mask"},
                      batch, "null")
    drop = torch.rand(batch, generator=generator) < p  # [B] bool, on the CPU
    if "context" in cond:
        length = max(cond["context"].shape[1], null["context"].shape[1])
        cond["context"], cond["context_mask"] = pad_tokens(
            cond["context"], cond.get("context_mask"), length)
        null["context"], null["context_mask"] = pad_tokens(
            null["context"], null.get("context_mask"), length)
    out = {}
    for key, value in cond.items():
        mask = drop.to(value.device).reshape(batch, *[1] * (value.ndim - 1))
        out[key] = torch.where(mask, null[key].to(value.device, value.dtype), value)
    return out
