"""Attention blocks of the UNet: self-attention over pixels, cross-attention to text tokens.

Both are residual, x + proj(SDPA(q, k, v)), with q from GroupNorm(x) and a zero-initialised
output projection, so each block starts as the identity. Shapes: B batch, C channels, H×W
pixels, L tokens, D the token width (``context_dim``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def zero_init(module: nn.Module) -> nn.Module:
    """The module with every parameter set to 0 (a block that starts as the identity)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


# Most scores per head (queries × keys) for which :func:`attention` materialises the score matrix
# when training in bf16 on the CPU: up to 16×16 self-attention (256²). SDPA's fused CPU kernel has
# a slow bf16 backward: at 4×4–8×8 positions the three-op form trained 2–6× as fast, at 16×16 as
# fast or faster; at 32×32 (1024²) it was 1.2–1.5× slower, and forward-only (sampling) the fused
# kernel is as fast or faster. The `s` UNet's bf16 training step gained 1.10× (two Zen 4 cores).
SMALL_ATTENTION = 256 * 256


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """softmax(q·kᵀ/√d)·v over q [B, heads, N, d], k and v [B, heads, L, d]; ``mask`` (bool,
    broadcast to [B, heads, N, L]) keeps the scores where it is True.

    SDPA's fused kernel, except when autograd records it (training) in bf16 on the CPU with at
    most :data:`SMALL_ATTENTION` scores per head: there it is three ops ((q/√d)·kᵀ, a softmax
    accumulated in fp32, ·v), the form most attention code runs in half precision."""
    n, d = q.shape[-2:]
    if (q.dtype != torch.bfloat16 or q.device.type != "cpu" or not torch.is_grad_enabled()
            or not (q.requires_grad or k.requires_grad or v.requires_grad)
            or n * k.shape[-2] > SMALL_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    scores = (q * d ** -0.5) @ k.transpose(-1, -2)  # [B, heads, N, L]
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1) @ v


def coord_features(height: int, width: int, num_freqs: int, device: torch.device | None = None) -> Tensor:
    """Fourier features of each pixel centre's canvas coordinates (u across, v down, both in
    (−1, 1)): [sin(2^k·π·u), cos(2^k·π·u), sin(2^k·π·v), cos(2^k·π·v)] for k < num_freqs.

    Returns float32 [H·W, 4·num_freqs], pixels in row-major order. The coordinates are relative
    to the canvas, so "top left" means the same at every resolution.
    """
    v = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height * 2 - 1
    u = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width * 2 - 1
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    freqs = math.pi * 2.0 ** torch.arange(num_freqs, device=device, dtype=torch.float32)
    au, av = uu.reshape(-1, 1) * freqs, vv.reshape(-1, 1) * freqs  # [H·W, num_freqs]
    return torch.cat([au.sin(), au.cos(), av.sin(), av.cos()], dim=-1)


class PositionEmbedding(nn.Module):
    """A learned absolute position code, P = W·coord_features(H, W): [H·W, C], W zero at the
    start (so a block given it starts as the block without it)."""

    num_freqs = 4

    def __init__(self, ch: int):
        super().__init__()
        self.proj = zero_init(nn.Linear(4 * self.num_freqs, ch))

    def forward(self, height: int, width: int) -> Tensor:  # -> [H·W, C]
        w = self.proj.weight
        return self.proj(coord_features(height, width, self.num_freqs, w.device).to(w.dtype))


class AttnBlock(nn.Module):
    """Multi-head self-attention over the H·W positions: x + proj(SDPA(q, k, v)), qkv from GN(x)
    (+ P, a learned position code, with ``pos_embed``)."""

    def __init__(self, ch: int, head_dim: int, groups: int, pos_embed: bool = False):
        super().__init__()
        self.num_heads = ch // head_dim
        self.norm = nn.GroupNorm(groups, ch)
        self.pos = PositionEmbedding(ch) if pos_embed else None
        self.qkv = nn.Linear(ch, 3 * ch)
        self.proj = zero_init(nn.Linear(ch, ch))

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:  # [B,C,H,W] -> same
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # [B, H·W, C]
        if self.pos is not None:
            tokens = tokens + self.pos(h, w)
        qkv = self.qkv(tokens).unflatten(-1, (3, self.num_heads, c // self.num_heads))
        # q, k, v: [B, heads, H·W, head_dim], unit stride in head_dim (SDPA's fused CPU kernel)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = attention(q, k, v)  # softmax(q·kᵀ/√d)·v
        out = self.proj(out.transpose(1, 2).flatten(2))  # [B, H·W, C]
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class CrossAttnBlock(nn.Module):
    """Cross-attention from the pixels to the token states (Rombach et al. 2022, LDM):
    x + proj(SDPA(q, k, v, mask)), q = W_q·(GN(x) + P), [k, v] = W_kv·context, where P is a
    learned position code (``pos_embed``; without it P = 0): with it a pixel's query knows where
    on the canvas it is, so a caption's "at the top left" can select the pixels it speaks of.

    ``context_mask`` [B, L] is True (or 1) for real tokens and False for padding; padding tokens
    get no attention weight. A row without any real token (or ``context=None``) adds nothing:
    the block is then the identity for that row.
    """

    def __init__(self, ch: int, context_dim: int, head_dim: int, groups: int,
                 pos_embed: bool = False):
        super().__init__()
        self.num_heads = ch // head_dim
        self.norm = nn.GroupNorm(groups, ch)
        self.pos = PositionEmbedding(ch) if pos_embed else None
        self.q = nn.Linear(ch, ch)
        self.kv = nn.Linear(context_dim, 2 * ch)
        self.proj = zero_init(nn.Linear(ch, ch))

    def forward(
        self, x: Tensor, context: Tensor | None, context_mask: Tensor | None = None
    ) -> Tensor:  # [B,C,H,W], [B,L,D], [B,L] -> [B,C,H,W]
        if context is None or context.shape[1] == 0:
            return x
        b, c, h, w = x.shape
        heads, head_dim = self.num_heads, c // self.num_heads
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # [B, H·W, C]
        if self.pos is not None:
            tokens = tokens + self.pos(h, w)
        q = self.q(tokens).unflatten(-1, (heads, head_dim)).transpose(1, 2)  # [B, heads, H·W, d]
        kv = self.kv(context.to(self.kv.weight.dtype)).unflatten(-1, (2, heads, head_dim))
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # [B, heads, L, d] each
        attn_mask, has_tokens = None, None
        if context_mask is not None:
            keep = context_mask.to(device=x.device, dtype=torch.bool)  # [B, L]
            has_tokens = keep.any(dim=1)  # [B]
            # A row of all-False would give softmax over nothing (NaN): let it attend to every
            # token, then drop its output below.
            keep = keep | ~has_tokens[:, None]
            attn_mask = keep[:, None, None, :]  # [B, 1, 1, L], broadcast over heads and queries
        out = attention(q, k, v, attn_mask)
        out = self.proj(out.transpose(1, 2).flatten(2))  # [B, H·W, C]
        if has_tokens is not None:
            out = out * has_tokens[:, None, None].to(out.dtype)
        return x + out.transpose(1, 2).reshape(b, c, h, w)
