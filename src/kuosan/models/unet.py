"""The UNet noise predictor: `UNet(x_t, t) -> output` with the same shape as `x_t`.

Architecture of DDPM (Ho et al. 2020) as refined by improved-diffusion (Nichol & Dhariwal 2021):
residual blocks with GroupNorm + SiLU and a scale-shift time embedding, self-attention at chosen
resolutions, stride-2 convolutions down, nearest-neighbour + conv up, skip connections between the
two paths. The last conv of every residual block, every attention projection and the output conv
start at zero, so each block starts as the identity and an untrained UNet outputs 0.

The UNet knows nothing about noise schedules: `t` is a float tensor of (possibly fractional)
timesteps in [0, T-1], embedded sinusoidally as a continuous value.

Conditioning (all off by default), `UNet(x_t, t, class_labels=, pooled=, context=, context_mask=)`:
    class_labels [B] long   emb += class_embed[label]; label num_classes is the null class (CFG)
    pooled       [B, Dp]    emb += W·pooled (a pooled text vector, Dp = cond_dim)
    context      [B, L, D]  cross-attention to token states at `cross_attn_resolutions` and in
    context_mask [B, L]     the middle block (D = context_dim); mask True = real token, False = pad
The class embedding, the pooled projection and every cross-attention output projection start at
zero, so at initialisation the output does not depend on the condition.

Position (`pos_embed`, off by default): convolutions and attention are translation-equivariant
and know where a pixel lies only from the zero padding at the borders, so a caption's "at the top
left" is hard to learn. With `pos_embed` a learned code of each pixel's canvas coordinates
(`PositionEmbedding`: Fourier features, then a zero-initialised linear map) is added to the
features after the input conv and to the tokens of every attention block. Its maps start at
zero, so weights trained without it load into a UNet with it and compute the same function
(`kuosan train --init-from`).

Layout from the caption (`pooled_layout`, off by default; needs `cond_dim`): a map added to the
features after the input conv, L[b, c, i, j] = Σ_k A_b[c, k]·f_k(i, j) with A_b = W·pooled_b
reshaped to [C, F] and f the pixel's Fourier coordinate features. It is a direct path from the
caption to *where* things go (linear in the pooled vector), which attention with a position code
learns only slowly; W starts at zero.

Shapes: B batch, C channels, H×W pixels, E = 4 · base_channels the embedding width.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kuosan.errors import KuosanError, is_int
from kuosan.models.attention import (
    AttnBlock,
    CrossAttnBlock,
    PositionEmbedding,
    coord_features,
    zero_init,
)


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


class TimeEmbedding(nn.Sequential):
    """emb = Linear·SiLU·Linear(sinusoid(t)): [B] float timesteps -> [B, out_dim] (DDPM's time
    MLP; shared by the UNet and the MLP denoiser)."""

    def __init__(self, sinusoid_dim: int, out_dim: int) -> None:
        super().__init__(nn.Linear(sinusoid_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))
        self.sinusoid_dim = sinusoid_dim

    def forward(self, t: Tensor) -> Tensor:
        sinusoid = timestep_embedding(t, self.sinusoid_dim)
        return super().forward(sinusoid.to(self[0].weight.dtype))


@dataclass(frozen=True)
class UNetConfig:
    """Widths, depths, attention and conditioning of a UNet; saved as JSON in config.json.

    Channels at level i are `base_channels * channel_mult[i]`; the image is halved between levels,
    so `image_size` must be divisible by 2**(len(channel_mult) - 1). `attn_resolutions` lists the
    resolutions (in pixels) where self-attention follows each residual block; resolutions that do
    not occur at this `image_size` are ignored. The middle block always has attention.

    Conditioning, 0 / () = off: `num_classes` > 0 adds a learned class embedding (num_classes + 1
    rows, the last is the null class); `cond_dim` > 0 adds a projected pooled vector of that size;
    `context_dim` > 0 adds cross-attention to token states of that width in the middle block and,
    after each residual block (and its self-attention), at the `cross_attn_resolutions`.
    `pos_embed` adds a learned absolute position code, `pooled_layout` a map from the pooled
    vector to the canvas (see the module docstring).
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
    num_classes: int = 0
    cond_dim: int = 0
    context_dim: int = 0
    cross_attn_resolutions: tuple[int, ...] = ()
    pos_embed: bool = False
    pooled_layout: bool = False

    def __post_init__(self) -> None:
        for name in ("in_channels", "out_channels", "image_size", "base_channels",
                     "num_res_blocks", "head_dim", "num_groups"):
            _check_int(name, getattr(self, name), minimum=1)
        for name in ("num_classes", "cond_dim", "context_dim"):
            _check_int(name, getattr(self, name), minimum=0)
        for name in ("channel_mult", "attn_resolutions", "cross_attn_resolutions"):
            value = getattr(self, name)
            if not isinstance(value, tuple):
                raise KuosanError(f"UNetConfig.{name} must be a tuple of ints, got {value!r}")
            for v in value:
                _check_int(name, v, minimum=1)
        if self.cross_attn_resolutions and not self.context_dim:
            raise KuosanError(
                f"UNetConfig.cross_attn_resolutions={self.cross_attn_resolutions} needs "
                "context_dim > 0 (the width of the token states to attend to)"
            )
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
        for name in ("pos_embed", "pooled_layout"):
            if not isinstance(getattr(self, name), bool):
                raise KuosanError(f"UNetConfig.{name} must be true or false, got {getattr(self, name)!r}")
        if self.pooled_layout and not self.cond_dim:
            raise KuosanError("UNetConfig.pooled_layout needs cond_dim > 0 (a pooled caption vector)")
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise KuosanError(f"UNetConfig.dropout must be in [0, 1), got {self.dropout!r}")


def _check_int(name: str, value: object, minimum: int) -> None:
    if not is_int(value) or value < minimum:
        raise KuosanError(f"UNetConfig.{name} must be an integer >= {minimum}, got {value!r}")


# Widths/depths/attention only: fill in in_channels, out_channels, image_size from the data with
# dataclasses.replace(UNET_PRESETS["m"], in_channels=1, out_channels=1, image_size=8).
UNET_PRESETS: dict[str, UNetConfig] = {
    # ~0.46 M parameters: 8×8 grayscale digits (attention at the 4×4 level).
    "xs": UNetConfig(in_channels=1, out_channels=1, image_size=8, base_channels=32,
                     channel_mult=(1, 1), num_res_blocks=2, attn_resolutions=(4,),
                     head_dim=32, dropout=0.0, num_groups=8),
    # ~1.3 M parameters: a CPU-sized 32×32 network (three levels 32/16/8, one residual block
    # each, attention at 8×8); about 1.7× the training throughput of s. The shapes-32 recipe.
    "fast": UNetConfig(base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
                       attn_resolutions=(8,), head_dim=32, dropout=0.0, num_groups=8),
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


class Dropout(nn.Module):
    """Dropout, y = x·m/(1 − p) with m ~ Bernoulli(1 − p) per element while training, x otherwise.

    On the CPU the mask is read off 16-bit lanes of random int64 words (one word draws four
    elements; p rounded to a multiple of 1/65536, and 1 − p of that p rescales, so E[y] = x
    exactly): torch's CPU ``bernoulli_``, which ``nn.Dropout`` calls, draws every element on its
    own and took 6–9 % of an `s` UNet's training step in a profile on two Zen 4 cores (the gain:
    ``benchmarks/train_speed.py --variants fp32-before``). Elsewhere (CUDA) it is ``F.dropout``.
    Both draw from torch's generator of the device, so a seeded step draws the same mask."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        dropped = round(self.p * 65536)  # int16 lanes: P(lane < -32768 + dropped) = dropped / 65536
        words = torch.randint(-(2 ** 63), 2 ** 63 - 1, ((x.numel() + 3) // 4,), dtype=torch.int64)
        keep = words.view(torch.int16)[: x.numel()].view(x.shape) >= dropped - 32768
        return x * keep.to(x.dtype) * (65536 / (65536 - dropped))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ResBlock(nn.Module):
    """h = conv(SiLU(GN(x))); h = GN(h)·(1 + scale(emb)) + shift(emb); out = skip(x) + conv(SiLU(h))."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # [B,Cin,H,W], [B,E] -> [B,Cout,H,W]
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb_proj(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        # a multiply and an add: torch.addcmul broadcasting [B,C,1,1] is 6–7× slower in bf16
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


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
        return self.conv(upsample_nearest_2x(x))


def upsample_nearest_2x(x: Tensor) -> Tensor:
    """Nearest-neighbour ×2 upsampling, [B,C,H,W] -> [B,C,2H,2W]; equal to
    ``F.interpolate(x, scale_factor=2, mode="nearest")`` but 2–4× faster on the CPU (forward and
    backward), where the interpolate kernel is slow for this case."""
    b, c, h, w = x.shape
    return x[:, :, :, None, :, None].expand(b, c, h, 2, w, 2).reshape(b, c, 2 * h, 2 * w)


class Stage(nn.ModuleList):
    """A sequence of blocks: one residual block + its attention(s), or a resampler. Every block
    takes (h, emb) except cross-attention, which takes (h, context, context_mask)."""

    def forward(
        self, h: Tensor, emb: Tensor, context: Tensor | None = None,
        context_mask: Tensor | None = None,
    ) -> Tensor:
        for block in self:
            if isinstance(block, CrossAttnBlock):
                h = block(h, context, context_mask)
            else:
                h = block(h, emb)
        return h


class UNet(nn.Module):
    """ε-, x0- or v-predictor over images: forward(x [B,C,H,W], t [B] float, **cond)
    -> [B,out_channels,H,W]; `cond` as in the module docstring."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = cfg = config
        base, groups = cfg.base_channels, cfg.num_groups
        self.emb_dim = emb_dim = 4 * base
        # Time embedding path: sinusoid(t) -> MLP -> emb [B, E]; the class embedding and the
        # projected pooled vector are added to it (`condition_embedding`).
        self.time_embed = TimeEmbedding(base, emb_dim)
        if cfg.num_classes:  # row num_classes is the null class of classifier-free guidance
            self.class_embed = zero_init(nn.Embedding(cfg.num_classes + 1, emb_dim))
        if cfg.cond_dim:  # no bias: pooled = 0 adds nothing, like pooled=None
            self.cond_proj = zero_init(nn.Linear(cfg.cond_dim, emb_dim, bias=False))
        self.input_conv = nn.Conv2d(cfg.in_channels, base * cfg.channel_mult[0], 3, padding=1)
        pos = cfg.pos_embed
        if pos:
            self.input_pos = PositionEmbedding(base * cfg.channel_mult[0])
        if cfg.pooled_layout:  # pooled [B, Dp] -> A [B, C, F] (F Fourier features per pixel)
            self.layout_proj = zero_init(nn.Linear(
                cfg.cond_dim, base * cfg.channel_mult[0] * 4 * PositionEmbedding.num_freqs, bias=False))

        def cross_attn(ch: int) -> CrossAttnBlock:
            return CrossAttnBlock(ch, cfg.context_dim, cfg.head_dim, groups, pos_embed=pos)

        def res_stage(in_ch: int, out_ch: int, resolution: int) -> Stage:
            blocks: list[nn.Module] = [ResBlock(in_ch, out_ch, emb_dim, cfg.dropout, groups)]
            if resolution in cfg.attn_resolutions:
                blocks.append(AttnBlock(out_ch, cfg.head_dim, groups, pos_embed=pos))
            if resolution in cfg.cross_attn_resolutions:
                blocks.append(cross_attn(out_ch))
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
            AttnBlock(ch, cfg.head_dim, groups, pos_embed=pos),
            *([cross_attn(ch)] if cfg.context_dim else []),
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
            nn.GroupNorm(groups, ch), nn.SiLU(),
            zero_init(nn.Conv2d(ch, cfg.out_channels, 3, padding=1)),
        )

    def time_embedding(self, t: Tensor) -> Tensor:
        """emb = MLP(sinusoid(t)): [B] float timesteps -> [B, E]."""
        return self.time_embed(t)

    def condition_embedding(
        self, emb: Tensor, class_labels: Tensor | None = None, pooled: Tensor | None = None
    ) -> Tensor:
        """emb + class_embed[class_labels] + W·pooled; a condition given as None adds nothing."""
        cfg, batch = self.config, emb.shape[0]
        if class_labels is not None:
            if not cfg.num_classes:
                raise KuosanError("class_labels given to a UNet with num_classes=0")
            _check_shape("class_labels", class_labels, (batch,))
            if class_labels.is_floating_point():
                raise KuosanError(f"class_labels must be integers, got {class_labels.dtype}")
            emb = emb + self.class_embed(class_labels.to(emb.device))
        if pooled is not None:
            if not cfg.cond_dim:
                raise KuosanError("pooled given to a UNet with cond_dim=0")
            _check_shape("pooled", pooled, (batch, cfg.cond_dim))
            emb = emb + self.cond_proj(pooled.to(emb.device, self.cond_proj.weight.dtype))
        return emb

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        *,
        class_labels: Tensor | None = None,
        pooled: Tensor | None = None,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
    ) -> Tensor:
        """x: [B, in_channels, H, W]; t: [B] (or scalar) float timesteps in [0, T-1].

        class_labels [B] (num_classes = the null class), pooled [B, cond_dim], context
        [B, L, context_dim] with context_mask [B, L] (True = real token; None = all real).
        Each condition left as None adds nothing, so `forward(x, t)` is the unconditional
        network (for a class-conditional UNet that differs from the null class label).
        """
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        emb = self.condition_embedding(self.time_embedding(t), class_labels, pooled)
        layout = self.layout_map(pooled, *x.shape[-2:]) if pooled is not None else None
        if context is not None:
            if not self.config.context_dim:
                raise KuosanError("context given to a UNet with context_dim=0")
            _check_shape("context", context, (x.shape[0], None, self.config.context_dim))
            if context_mask is not None:
                _check_shape("context_mask", context_mask, tuple(context.shape[:2]))
        elif context_mask is not None:
            raise KuosanError("context_mask given without context")
        return self.forward_emb(x, emb, context, context_mask, layout)

    def layout_map(self, pooled: Tensor, height: int, width: int) -> Tensor | None:
        """L = A·f(i, j) with A = W·pooled as [B, C, F]: [B, C, H, W] (None without pooled_layout)."""
        if not self.config.pooled_layout:
            return None
        w = self.layout_proj.weight
        a = self.layout_proj(pooled.to(w.device, w.dtype)).unflatten(-1, (-1, 4 * PositionEmbedding.num_freqs))
        f = coord_features(height, width, PositionEmbedding.num_freqs, w.device).to(w.dtype)  # [HW, F]
        return (a @ f.T).unflatten(-1, (height, width))

    def forward_emb(
        self, x: Tensor, emb: Tensor, context: Tensor | None = None,
        context_mask: Tensor | None = None, layout: Tensor | None = None,
    ) -> Tensor:
        """The network given the embedding emb [B, E] (time embedding, plus any conditioning),
        the token states for cross-attention (None: no tokens) and the layout map added after
        the input conv (None: none)."""
        factor = 2 ** (len(self.config.channel_mult) - 1)
        if x.shape[-1] % factor or x.shape[-2] % factor:
            raise KuosanError(
                f"UNet input of size {tuple(x.shape[-2:])} must have height and width divisible "
                f"by {factor} (2**(len(channel_mult)-1))"
            )
        h = self.input_conv(x)
        if self.config.pos_embed:  # [H·W, C] -> [1, C, H, W]
            h = h + self.input_pos(*h.shape[-2:]).T.reshape(1, -1, *h.shape[-2:])
        if layout is not None:
            h = h + layout
        skips = [h]
        for stage in self.down:
            h = stage(h, emb, context, context_mask)
            skips.append(h)
        h = self.middle(h, emb, context, context_mask)
        for stage in self.up:
            h = stage(torch.cat([h, skips.pop()], dim=1), emb, context, context_mask)
        return self.out(h)


def _check_shape(name: str, value: Tensor, shape: tuple[int | None, ...]) -> None:
    """Raise KuosanError unless value.shape matches shape (None = any size)."""
    ok = value.ndim == len(shape) and all(
        s is None or s == v for s, v in zip(shape, value.shape, strict=True))
    if not ok:
        expected = "[" + ", ".join("L" if s is None else str(s) for s in shape) + "]"
        raise KuosanError(f"UNet {name} has shape {list(value.shape)}, expected {expected}")
