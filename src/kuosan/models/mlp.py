"""A residual MLP denoiser for vectors (2-D toy data): `MLPDenoiser(x_t [B,D], t [B]) -> [B,D]`.

Like the UNet it knows nothing about noise schedules: `t` is a float tensor of (possibly
fractional) timesteps in [0, T-1], embedded sinusoidally then by a small MLP.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from kuosan.errors import KuosanError, is_int
from kuosan.models.unet import TimeEmbedding


@dataclass(frozen=True)
class MLPConfig:
    """dim: data dimension; hidden: width; depth: residual blocks; time_embed_dim: sinusoid width."""

    dim: int = 2
    hidden: int = 256
    depth: int = 4
    time_embed_dim: int = 64
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("dim", "hidden", "depth", "time_embed_dim"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise KuosanError(f"MLPConfig.{name} must be an integer >= 1, got {value!r}")
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise KuosanError(f"MLPConfig.dropout must be in [0, 1), got {self.dropout!r}")


class MLPBlock(nn.Module):
    """h + fc2(dropout(SiLU(fc1(LN(h)) + emb_proj(emb)))), fc2 zero-initialised."""

    def __init__(self, hidden: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.emb_proj = nn.Linear(emb_dim, hidden)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, hidden)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:  # [B, hidden], [B, E] -> [B, hidden]
        a = F.silu(self.fc1(self.norm(h)) + self.emb_proj(F.silu(emb)))
        return h + self.fc2(self.dropout(a))


class MLPDenoiser(nn.Module):
    """forward(x [B, dim], t [B] float) -> [B, dim]."""

    def __init__(self, config: MLPConfig):
        super().__init__()
        self.config = cfg = config
        self.emb_dim = emb_dim = 4 * cfg.time_embed_dim
        self.time_embed = TimeEmbedding(cfg.time_embed_dim, emb_dim)
        self.input = nn.Linear(cfg.dim, cfg.hidden)
        self.blocks = nn.ModuleList(
            MLPBlock(cfg.hidden, emb_dim, cfg.dropout) for _ in range(cfg.depth)
        )
        self.out_norm = nn.LayerNorm(cfg.hidden)
        self.output = nn.Linear(cfg.hidden, cfg.dim)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def time_embedding(self, t: Tensor) -> Tensor:
        """emb = MLP(sinusoid(t)): [B] float timesteps -> [B, 4·time_embed_dim]."""
        return self.time_embed(t)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        return self.forward_emb(x, self.time_embedding(t))

    def forward_emb(self, x: Tensor, emb: Tensor) -> Tensor:
        """The network given the embedding emb [B, E] (time embedding, plus any conditioning)."""
        h = self.input(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.output(F.silu(self.out_norm(h)))
