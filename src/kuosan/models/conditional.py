"""A UNet conditioned on captions through a text encoder: one module to train, save and load.

``TextConditionedUNet(unet, encoder)`` maps ``(x_t, t, captions=[...])`` — or already encoded
conditions ``pooled``, ``context``, ``context_mask`` — to the UNet's output. The caption ""
is the unconditional (null) condition of classifier-free guidance: training replaces each
caption by "" with probability ``cond_drop`` (:func:`drop_captions`).

A trainable encoder (the small transformer, trained jointly as in GLIDE) is a registered
submodule, so its weights live in ``model.safetensors`` beside the UNet's (keys ``text.*``). A
frozen one (MiniLM, a local transformers model) is held outside the module tree: it is rebuilt
from config.json on load and never copied into the EMA or the checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..errors import KuosanError
from . import build_model
from .attention import CrossAttnBlock, PositionEmbedding
from .text import (
    CachedEncoder,
    HFEncoder,
    MiniLMEncoder,
    SmallTransformerEncoder,
    TextEncoder,
    WordTokenizer,
    text_encoder_from_config,
)
from .unet import UNet


class TextConditionedUNet(nn.Module):
    """UNet + text encoder; the pooled caption vector joins the time embedding, the token states
    feed cross-attention."""

    def __init__(self, unet: UNet, encoder: TextEncoder) -> None:
        super().__init__()
        self.unet = unet
        if encoder.trainable:
            self.text = encoder
        else:
            self.__dict__["_frozen_text"] = CachedEncoder(encoder) if not isinstance(
                encoder, CachedEncoder) else encoder

    @property
    def encoder(self) -> TextEncoder:
        return self.text if "text" in self._modules else self.__dict__["_frozen_text"]

    def encode(self, captions: Sequence[str]) -> dict[str, Tensor]:
        """Conditions for the UNet from captions: pooled (B, D), context (B, L, D), context_mask."""
        enc = self.encoder.encode(list(captions))
        device = next(self.unet.parameters()).device
        return {"pooled": enc.pooled.to(device), "context": enc.tokens.to(device),
                "context_mask": enc.mask.to(device)}

    def forward(self, x: Tensor, t: Tensor, captions: Sequence[str] | None = None,
                **cond: Tensor | None) -> Tensor:
        if captions is not None:
            cond = self.encode(captions)
        return self.unet(x, t, **cond)

    def to(self, *args, **kwargs) -> TextConditionedUNet:  # the frozen encoder moves too
        super().to(*args, **kwargs)
        frozen = self.__dict__.get("_frozen_text")
        if frozen is not None:
            frozen.to(*args, **kwargs)
        return self


# the UNet's maps that read the text encoder's output (its token states or pooled vector)
CAPTION_MAPS = (".kv.weight", "cond_proj.weight", "layout_proj.weight")


def reads_caption(key: str) -> bool:
    """Whether the weight ``key`` of a `TextConditionedUNet` maps the text encoder's output."""
    return key.startswith("unet.") and key.endswith(CAPTION_MAPS)


@torch.no_grad()
def fold_empty_caption(model: TextConditionedUNet) -> dict[str, Tensor]:
    """The UNet's weights but the maps that read the caption (`reads_caption`; keys as in
    ``model.state_dict()``), with ``model``'s encoding of the empty caption folded into biases, so
    that with those maps at zero the UNet computes, for any caption, what ``model`` computes given
    the empty one: each cross-attention key/value bias becomes kv(h̄) for h̄ the mean of the empty
    caption's token states (exact when it has one token, as the jointly trained transformer's
    <bos>), the time embedding's last bias gains cond_proj(pooled), and the input position code
    gains the layout map's matrix A = layout_proj(pooled) (the same Fourier features)."""
    unet = model.unet
    enc = model.encode([""])
    pooled, tokens, mask = enc["pooled"], enc["context"][0], enc["context_mask"][0]
    h_bar = tokens[mask].mean(dim=0) if mask.any() else tokens.new_zeros(tokens.shape[-1])
    state = {f"unet.{k}": v.clone() for k, v in unet.state_dict().items()}
    for name, block in unet.named_modules():
        if isinstance(block, CrossAttnBlock):
            state[f"unet.{name}.kv.bias"] = block.kv(h_bar.to(block.kv.weight.dtype))
    if getattr(unet, "cond_proj", None) is not None:
        last = len(unet.time_embed) - 1  # TimeEmbedding: Linear, SiLU, Linear
        state[f"unet.time_embed.{last}.bias"] += unet.cond_proj(pooled)[0]
    if getattr(unet, "layout_proj", None) is not None:
        if not unet.config.pos_embed:
            raise KuosanError("a source with --pooled-layout but no --pos-embed: its layout map "
                              "cannot be folded into a position code")
        a = unet.layout_proj(pooled)[0].unflatten(-1, (-1, 4 * PositionEmbedding.num_freqs))
        state["unet.input_pos.proj.weight"] += a
    return {k: v for k, v in state.items() if not reads_caption(k)}


def drop_captions(captions: Sequence[str], p: float, generator: torch.Generator) -> list[str]:
    """Each caption replaced by "" (the null condition) with probability p, drawn from generator."""
    if not 0.0 <= p <= 1.0:
        raise KuosanError(f"caption dropout must be in [0, 1], got {p}")
    keep = torch.rand(len(captions), generator=generator) >= p
    return [c if k else "" for c, k in zip(captions, keep.tolist(), strict=True)]


def make_text_encoder(spec: str, captions: Sequence[str], word_skip: bool = False) -> TextEncoder:
    """The encoder named by ``--text-encoder``: "transformer" (trained jointly; a word vocabulary
    fitted on the training captions; ``word_skip``: see SmallTransformerEncoder), "minilm"
    (frozen, offline), or a local transformers folder."""
    if spec == "transformer":
        return SmallTransformerEncoder(WordTokenizer.fit(captions), dim=128, depth=3, heads=4,
                                       max_length=32, word_skip=word_skip)
    if word_skip:
        raise KuosanError("--word-skip is for the jointly trained transformer encoder")
    if spec == "minilm":
        return MiniLMEncoder()
    return HFEncoder(spec)


def build_text_conditioned(unet_config: dict, text_config: dict) -> TextConditionedUNet:
    """Rebuild from config.json (weights are loaded afterwards, strictly, by the caller)."""
    return TextConditionedUNet(build_model("unet", unet_config), text_encoder_from_config(text_config))
