"""What a training step draws and updates, as pure functions: the batch's examples (an endless
stream of per-epoch permutations, or weighted draws), its noise levels, the learning rate, the
optimizer (AdamW) and the EMA of the weights. :mod:`kuosan.train`'s Trainer calls them; each
draw comes from a generator seeded by (seed, step, stream), so step k draws the same on any
number of processes and after a resume.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from .errors import KuosanError
from .train_config import TrainConfig


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


def balance_weights(groups: Tensor, alpha: float) -> Tensor:
    """Item weights w_i = n_{g(i)}^-alpha, n_g the number of items of group g: alpha 0 draws
    items uniformly, 1 draws every group equally often (long-tail re-balancing)."""
    counts = torch.bincount(groups).double()
    return counts[groups] ** -alpha


def balanced_indices(weights: Tensor, seed: int, step: int, batch_size: int) -> Tensor:
    """Indices of the global batch of ``step`` drawn ∝ ``weights``, with replacement."""
    return torch.multinomial(weights, batch_size, replacement=True,
                             generator=step_generator(seed, step, 5))


def ema_beta(batch_size: int, images_seen: int, half_life: float, rampup_ratio: float) -> float:
    """β = 0.5^(B / h) with h = min(half_life, rampup_ratio · images seen) (EDM's EMA ramp)."""
    h = half_life
    if rampup_ratio > 0:
        h = min(h, rampup_ratio * images_seen)
    return 0.5 ** (batch_size / max(h, 1e-8))


def freeze(model: nn.Module, patterns: str) -> int:
    """Keep fixed the parameters whose names match one of the comma-separated glob ``patterns``
    (``fnmatch``: "unet.down.0.*,unet.out.*"): requires_grad False, so they get no gradient and
    AdamW leaves them as they are (fine-tuning the rest). Returns how many tensors were frozen; a
    pattern that matches no parameter is an error naming it."""
    wanted = [w.strip() for w in patterns.split(",") if w.strip()]
    names = [name for name, _ in model.named_parameters()]
    for pattern in wanted:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
            tops = sorted({".".join(n.split(".")[:2]) for n in names})
            raise KuosanError(f"--freeze {pattern!r} matches no parameter of the model; names "
                              f"start with {', '.join(tops)} (`kuosan info` counts them)")
    frozen = 0
    for name, p in model.named_parameters():
        if any(fnmatch.fnmatchcase(name, w) for w in wanted):
            p.requires_grad_(False)
            frozen += 1
    return frozen


def adamw(params: Iterable[nn.Parameter], lr: float, weight_decay: float,
          device: torch.device | str) -> torch.optim.AdamW:
    """AdamW (Loshchilov & Hutter 2019), β = (0.9, 0.999): θ ← θ − lr·(m̂/(√v̂ + ε) + λθ).
    Fused (one kernel over all parameters) on CPU and CUDA, in place of torch's default foreach
    kernel, for speed (the gain: ``benchmarks/train_speed.py --variants fp32-before``)."""
    fused = True if torch.device(device).type in ("cpu", "cuda") else None
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay, fused=fused)


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
    o = config.optim
    if o.warmup_steps and step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    end = o.decay_steps if o.decay_steps is not None else config.runtime.steps
    if o.lr_decay == "cosine" and end is not None:
        span = max(end - o.warmup_steps, 1)
        done = min(max(step - o.warmup_steps, 0) / span, 1.0)
        return o.lr * 0.5 * (1 + math.cos(math.pi * done))
    return o.lr


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
