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

Guidance wraps the model, not the denoiser (:mod:`kuosan.samplers.denoiser`): the combination
needs no conversion, and combining the model's own outputs, before the denoiser turns them into
x̂_0 (and clips it, where asked), keeps every image what it was bit for bit.

Composed prompts ("A AND B :0.5", Composable Diffusion, Liu et al. 2022) sum the parts'
guidance directions, out = out_u + s·Σ_k w_k·(out_k − out_u) (:func:`composed_cfg_model`,
prompts split by :func:`parse_composition`); its weights on the K + 1 outputs sum to 1 as well.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence

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


def concat_conditions(*conditions: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Conditions stacked along the batch, [first; second; …], for one model call. All need the
    same keys (a missing ``context_mask`` means all tokens are real); ``context`` and
    ``context_mask`` are padded to the longest token length."""
    first = conditions[0]
    for other in conditions[1:]:
        if set(first) - {"context_mask"} != set(other) - {"context_mask"}:
            raise KuosanError(f"cannot batch conditions with different keys: {sorted(first)} and "
                              f"{sorted(other)}")
    tokens = ("context", "context_mask")
    out = {k: torch.cat([c[k] for c in conditions]) for k in first if k not in tokens}
    if "context" in first:
        length = max(c["context"].shape[1] for c in conditions)
        padded = [pad_tokens(c["context"], c.get("context_mask"), length) for c in conditions]
        out["context"] = torch.cat([ctx for ctx, _ in padded])
        out["context_mask"] = torch.cat([mask for _, mask in padded])
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
    return composed_cfg_model(model, [cond], None, uncond, guidance_scale)


def composed_cfg_model(
    model: Callable[..., Tensor], conds: Sequence[Cond], weights: Tensor | None, uncond: Cond,
    guidance_scale: float,
) -> ModelFn:
    """Composable diffusion (Liu et al. 2022, the conjunction "AND"): the guided model
    (x_t, t) ↦ out_u + s·Σ_k w_k·(out_k − out_u), with out_k = model(x_t, t, **conds[k]),
    out_u = model(x_t, t, **uncond) and s = ``guidance_scale``.

    ``weights`` is [K] or [K, B] (one weight per condition and row; None: all 1); a negative
    weight guides away from its condition (the paper's "NOT"), a zero weight leaves a row's
    padding condition out. One condition of weight 1 is :func:`cfg_model`: then s = 1 is no
    guidance, one call on the condition alone. Otherwise the K + 1 branches run as one call on
    a (K + 1)-fold batch when their keys match, as K + 1 calls when they do not. Valid for ε-,
    x_0- and v-prediction alike, as the weights on the K + 1 outputs sum to 1 (module docstring).
    """
    scale = float(guidance_scale)
    if not math.isfinite(scale):
        raise KuosanError(f"guidance_scale must be a finite number, got {guidance_scale!r}")
    if not conds:
        raise KuosanError("composed guidance needs at least one condition")
    conds, uncond = [_present(c) for c in conds], _present(uncond)
    if weights is not None:
        weights = torch.as_tensor(weights, dtype=torch.float32)
        if weights.ndim not in (1, 2) or weights.shape[0] != len(conds):
            raise KuosanError(f"weights must be [K] or [K, B] with K = {len(conds)} conditions, "
                              f"got shape {list(weights.shape)}")
        if not bool(torch.isfinite(weights).all()):
            raise KuosanError("composition weights must be finite numbers")

    if len(conds) == 1 and weights is None and scale == 1.0:
        cond = conds[0]

        def conditional(x: Tensor, t: Tensor) -> Tensor:
            return model(x, t, **_fit_batch(cond, x.shape[0], "cond"))
        return conditional

    keys = {frozenset(set(c) - {"context_mask"}) for c in [*conds, uncond]}
    batched = len(keys) == 1

    def guided(x: Tensor, t: Tensor) -> Tensor:
        b = x.shape[0]
        if weights is not None and weights.ndim == 2 and weights.shape[1] not in (1, b):
            raise KuosanError(f"weights have {weights.shape[1]} rows and x_t has {b}")
        t = t.expand(b) if t.ndim == 0 else t
        cs = [_fit_batch(c, b, "cond") for c in conds]
        u = _fit_batch(uncond, b, "uncond")
        n = len(cs) + 1
        if batched:
            outs = model(torch.cat([x] * n), torch.cat([t] * n), **concat_conditions(*cs, u)).chunk(n)
        else:
            outs = [model(x, t, **c) for c in (*cs, u)]
        out_uncond = outs[-1]
        deltas = [o - out_uncond for o in outs[:-1]]
        if weights is not None:  # [K] or [K, B] -> broadcast over each row's output
            w = weights.to(x.device, x.dtype)
            w = w.reshape(*w.shape, *[1] * (x.ndim + 1 - w.ndim))
            deltas = [w[k] * d for k, d in enumerate(deltas)]
        delta = deltas[0]
        for d in deltas[1:]:
            delta = delta + d
        return out_uncond + scale * delta

    return guided


_AND = re.compile(r"(?<!\S)AND(?!\S)")  # the word AND, between spaces or at an end
_WEIGHT = re.compile(r"(?<!\S):\s*([-+]?(?:\d+\.?\d*|\.\d+))$")  # " :W" ending a part


def parse_composition(prompt: str) -> list[tuple[str, float]]:
    """The parts of a composed prompt and their weights, for :func:`composed_cfg_model`:
    "a red circle AND a blue square :0.5" → [("a red circle", 1.0), ("a blue square", 0.5)].

    Parts are joined by the upper-case word AND (Composable Diffusion's and AUTOMATIC1111's
    syntax); each may end in a weight " :W" (a space before the colon; negative: guide away from
    it). A prompt without AND is one part of weight 1, returned as it is."""
    if not _AND.search(prompt):
        return [(prompt, 1.0)]
    parts = []
    for part in _AND.split(prompt):
        part = part.strip()
        match = _WEIGHT.search(part)
        text, weight = (part[:match.start()].rstrip(), float(match.group(1))) if match else (part, 1.0)
        if not text:
            raise KuosanError(f"prompt {prompt!r} has an empty part: AND joins two captions, "
                              "e.g. \"a red circle AND a blue square\"")
        parts.append((text, weight))
    return parts


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
