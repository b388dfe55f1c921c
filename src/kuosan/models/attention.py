"""Attention blocks of the UNet: self-attention over pixels, cross-attention to text tokens.

Both are residual, x + proj(SDPA(q, k, v)), with q from GroupNorm(x) and a zero-initialised
output projection, so each block starts as the identity. Shapes: B batch, C channels, H×W
pixels, L tokens, D the token width (``context_dim``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def zero_init(module: nn.Module) -> nn.Module:
    """The module with every parameter set to 0 (a block that starts as the identity)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class AttnBlock(nn.Module):
    """Multi-head self-attention over the H·W positions: x + proj(SDPA(q, k, v)), qkv from GN(x)."""

    def __init__(self, ch: int, head_dim: int, groups: int):
        super().__init__()
        self.num_heads = ch // head_dim
        self.norm = nn.GroupNorm(groups, ch)
        self.qkv = nn.Linear(ch, 3 * ch)
        self.proj = zero_init(nn.Linear(ch, ch))

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:  # [B,C,H,W] -> same
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # [B, H·W, C]
        qkv = self.qkv(tokens).unflatten(-1, (3, self.num_heads, c // self.num_heads))
        # q, k, v: [B, heads, H·W, head_dim], unit stride in head_dim (SDPA's fused CPU kernel)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q·kᵀ/√d)·v
        out = self.proj(out.transpose(1, 2).flatten(2))  # [B, H·W, C]
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class CrossAttnBlock(nn.Module):
    """Cross-attention from the pixels to the token states (Rombach et al. 2022, LDM):
    x + proj(SDPA(q, k, v, mask)), q = W_q·GN(x), [k, v] = W_kv·context.

    ``context_mask`` [B, L] is True (or 1) for real tokens and False for padding; padding tokens
    get no attention weight. A row without any real token (or ``context=None``) adds nothing:
    the block is then the identity for that row.
    """

    def __init__(self, ch: int, context_dim: int, head_dim: int, groups: int):
        super().__init__()
        self.num_heads = ch // head_dim
        self.norm = nn.GroupNorm(groups, ch)
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
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        out = self.proj(out.transpose(1, 2).flatten(2))  # [B, H·W, C]
        if has_tokens is not None:
            out = out * has_tokens[:, None, None].to(out.dtype)
        return x + out.transpose(1, 2).reshape(b, c, h, w)
