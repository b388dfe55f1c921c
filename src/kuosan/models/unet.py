"""The UNet noise predictor: `UNet(x_t, t) -> output` with the same shape as `x_t`.

Architecture of DDPM (Ho et al. 2020) as refined by improved-diffusion (Nichol & Dhariwal 2021):
residual blocks with GroupNorm + SiLU and a scale-shift time embedding, self-attention at chosen
resolutions, stride-2 convolutions down, nearest-neighbour + conv up, skip connections between the
two paths. The last conv of every residual block, every attention projection and the output conv
start at zero, so each block starts as the identity and an untrained UNet outputs 0.

The UNet knows nothing about noise schedules: `t` is a float tensor of (possibly fractional)
timesteps in [0, T-1], embedded sinusoidally as a continuous value.

Shapes: B batch, C channels, H×W pixels, E = 4 · base_channels the embedding width.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kuosan.errors import KuosanError


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of a continuous t: [cos(t·ω_k), sin(t·ω_k)], ω_k = max_period^(-k/(dim/2)).

    As in improved-diffusion (`timestep_embedding`) and the Transformer. `t` has shape [B] (float,
    fractional values allowed); returns float32 [B, dim]. An odd `dim` gets a trailing zero column.
    """
    half = dim // 2
    omega = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    angles = t.float()[:, None] * omega[None, :]  # [B, half]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


@dataclass(frozen=True)
class UNetConfig:
    """Widths, depths and attention of a UNet; saved as JSON in a checkpoint's config.json.

    Channels at level i are `base_channels * channel_mult[i]`; the image is halved between levels,
    so `image_size` must be divisible by 2**(len(channel_mult) - 1). `attn_resolutions` lists the
    resolutions (in pixels) where self-attention follows each residual block; resolutions that do
    not occur at this `image_size` are ignored. The middle block always has attention.
    """

    in_channels: int = 3
    out_channels: int = 3
    image_size: int = 32
    base_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    head_dim: int = 32
    dropout: float = 0.1
    num_groups: int = 32

    def __post_init__(self) -> None:
        for name in ("in_channels", "out_channels", "image_size", "base_channels",
                     "num_res_blocks", "head_dim", "num_groups"):
            _check_int(name, getattr(self, name), minimum=1)
        for name in ("channel_mult", "attn_resolutions"):
            value = getattr(self, name)
            if not isinstance(value, tuple):
                raise KuosanError(f"UNetConfig.{name} must be a tuple of ints, got {value!r}")
            for v in value:
                _check_int(name, v, minimum=1)
        if not self.channel_mult:
            raise KuosanError("UNetConfig.channel_mult must not be empty")
        factor = 2 ** (len(self.channel_mult) - 1)
        if self.image_size % factor:
            raise KuosanError(
                f"UNetConfig.image_size={self.image_size} must be divisible by {factor} "
                f"(2**(len(channel_mult)-1) with channel_mult={self.channel_mult})"
            )
        for mult in self.channel_mult:
            ch = self.base_channels * mult
            if ch % self.num_groups:
                raise KuosanError(
                    f"UNetConfig: {ch} channels (base_channels={self.base_channels} × {mult}) "
                    f"are not divisible by num_groups={self.num_groups}"
                )
            if ch % self.head_dim:
                raise KuosanError(
                    f"UNetConfig: {ch} channels (base_channels={self.base_channels} × {mult}) "
                    f"are not divisible by head_dim={self.head_dim}"
                )
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise KuosanError(f"UNetConfig.dropout must be in [0, 1), got {self.dropout!r}")


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise KuosanError(f"UNetConfig.{name} must be an integer >= {minimum}, got {value!r}")


# Widths/depths/attention only: fill in in_channels, out_channels, image_size from the data with
# dataclasses.replace(UNET_PRESETS["m"], in_channels=1, out_channels=1, image_size=8).
UNET_PRESETS: dict[str, UNetConfig] = {
    # ~0.46 M parameters: 8×8 grayscale digits (attention at the 4×4 level).
    "xs": UNetConfig(in_channels=1, out_channels=1, image_size=8, base_channels=32,
                     channel_mult=(1, 1), num_res_blocks=2, attn_resolutions=(4,),
                     head_dim=32, dropout=0.0, num_groups=8),
    # s, m, l share DDPM's CIFAR-10 layout (Ho et al. 2020) at base width 32, 64, 128.
    # ~2.4 M parameters.
    "s": UNetConfig(base_channels=32, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
                    attn_resolutions=(16,), head_dim=32, dropout=0.1, num_groups=8),
    # ~9.6 M parameters.
    "m": UNetConfig(base_channels=64, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
                    attn_resolutions=(16,), head_dim=32, dropout=0.1, num_groups=32),
    # ~38 M parameters: DDPM's CIFAR-10 network (35.7 M there; scale-shift adds the rest).
    "l": UNetConfig(base_channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
                    attn_resolutions=(16,), head_dim=64, dropout=0.1, num_groups=32),
}


def unet_preset(name: str, **overrides: object) -> UNetConfig:
    """`UNET_PRESETS[name]` with `overrides` (e.g. in_channels=1, image_size=8) applied."""
    if name not in UNET_PRESETS:
        raise KuosanError(f"unknown UNet preset {name!r}; choose one of {sorted(UNET_PRESETS)}")
    fields = set(UNetConfig.__dataclass_fields__)
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise KuosanError(f"unknown UNetConfig field(s) {unknown}; known: {sorted(fields)}")
    return dataclasses.replace(UNET_PRESETS[name], **overrides)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """h = conv(SiLU(GN(x))); h = GN(h)·(1 + scale(emb)) + shift(emb); out = skip(x) + conv(SiLU(h))."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # [B,Cin,H,W], [B,E] -> [B,Cout,H,W]
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb_proj(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = torch.addcmul(shift, self.norm2(h), 1 + scale)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Multi-head self-attention over the H·W positions: x + proj(SDPA(q, k, v)), qkv from GN(x)."""

    def __init__(self, ch: int, head_dim: int, groups: int):
        super().__init__()
        self.num_heads = ch // head_dim
        self.norm = nn.GroupNorm(groups, ch)
        self.qkv = nn.Linear(ch, 3 * ch)
        self.proj = _zero(nn.Linear(ch, ch))

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:  # [B,C,H,W] -> same
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # [B, H·W, C]
        qkv = self.qkv(tokens).unflatten(-1, (3, self.num_heads, c // self.num_heads))
        # q, k, v: [B, heads, H·W, head_dim], unit stride in head_dim (SDPA's fused CPU kernel)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q·kᵀ/√d)·v
        out = self.proj(out.transpose(1, 2).flatten(2))  # [B, H·W, C]
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:  # H×W -> H/2×W/2
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:  # H×W -> 2H×2W
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Stage(nn.ModuleList):
    """A sequence of blocks that all take (h, emb): one residual block + its attention, or a resampler."""

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        for block in self:
            h = block(h, emb)
        return h


class UNet(nn.Module):
    """ε-, x0- or v-predictor over images: forward(x [B,C,H,W], t [B] float) -> [B,out_channels,H,W]."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = cfg = config
        base, groups = cfg.base_channels, cfg.num_groups
        self.emb_dim = emb_dim = 4 * base
        # Time embedding path: sinusoid(t) -> MLP -> emb [B, E]. Conditioning vectors (class
        # labels, pooled text) are to be projected to E and added to emb before the blocks; see
        # `forward_emb`.
        self.time_embed = nn.Sequential(
            nn.Linear(base, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.input_conv = nn.Conv2d(cfg.in_channels, base * cfg.channel_mult[0], 3, padding=1)

        def res_stage(in_ch: int, out_ch: int, resolution: int) -> Stage:
            blocks: list[nn.Module] = [ResBlock(in_ch, out_ch, emb_dim, cfg.dropout, groups)]
            if resolution in cfg.attn_resolutions:
                blocks.append(AttnBlock(out_ch, cfg.head_dim, groups))
            return Stage(blocks)

        ch, res = base * cfg.channel_mult[0], cfg.image_size
        skip_channels = [ch]
        self.down = nn.ModuleList()
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                self.down.append(res_stage(ch, base * mult, res))
                ch = base * mult
                skip_channels.append(ch)
            if level < len(cfg.channel_mult) - 1:
                self.down.append(Stage([Downsample(ch)]))
                skip_channels.append(ch)
                res //= 2

        self.middle = Stage([
            ResBlock(ch, ch, emb_dim, cfg.dropout, groups),
            AttnBlock(ch, cfg.head_dim, groups),
            ResBlock(ch, ch, emb_dim, cfg.dropout, groups),
        ])

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                stage = res_stage(ch + skip_channels.pop(), base * mult, res)
                ch = base * mult
                if level > 0 and i == cfg.num_res_blocks:
                    stage.append(Upsample(ch))
                    res *= 2
                self.up.append(stage)

        self.out = nn.Sequential(
            nn.GroupNorm(groups, ch), nn.SiLU(), _zero(nn.Conv2d(ch, cfg.out_channels, 3, padding=1))
        )

    def time_embedding(self, t: Tensor) -> Tensor:
        """emb = MLP(sinusoid(t)): [B] float timesteps -> [B, E]."""
        sinusoid = timestep_embedding(t, self.config.base_channels)
        return self.time_embed(sinusoid.to(self.time_embed[0].weight.dtype))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """x: [B, in_channels, H, W]; t: [B] (or scalar) float timesteps in [0, T-1]."""
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        return self.forward_emb(x, self.time_embedding(t))

    def forward_emb(self, x: Tensor, emb: Tensor) -> Tensor:
        """The network given the embedding emb [B, E] (time embedding, plus any conditioning)."""
        factor = 2 ** (len(self.config.channel_mult) - 1)
        if x.shape[-1] % factor or x.shape[-2] % factor:
            raise KuosanError(
                f"UNet input of size {tuple(x.shape[-2:])} must have height and width divisible "
                f"by {factor} (2**(len(channel_mult)-1))"
            )
        h = self.input_conv(x)
        skips = [h]
        for stage in self.down:
            h = stage(h, emb)
            skips.append(h)
        h = self.middle(h, emb)
        for stage in self.up:
            h = stage(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)
