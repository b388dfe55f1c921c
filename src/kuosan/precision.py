"""How the network runs: its arithmetic (fp32, or bf16 autocast where the hardware runs bf16
natively), and compiled or not.

Under bf16 autocast the convolutions and matmuls of the network run in bfloat16 (8-bit
mantissa, fp32's exponent range, so no loss scaling); everything the algorithm's exactness rests
on stays fp32:

- the weights and the optimizer state (autocast casts per op; the master weights are fp32), and
  EMA, which averages those fp32 weights;
- the noise schedule (ᾱ_t and every coefficient made from it) and x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε;
- the loss, w(t)·‖out − target‖², computed on the output cast to fp32;
- every sampler's state (x_t, x̂_0, a solver's history) and the guidance combination
  out_u + s·(out_c − out_u): :class:`Autocast` hands back fp32.

``auto`` picks (:func:`resolve_precision`):

- **CUDA**: bf16 where the device supports it (Ampere and newer), else fp32.
- **CPU with native bf16** (AMX-BF16 or AVX512-BF16: Intel Sapphire Rapids and newer, AMD Zen 4
  and newer): bf16. On a 2-core AMD EPYC Zen 4 (AVX512-BF16) the UNet's training step ran
  1.44–1.57× (`s`) and 1.71–1.88× (`m`) as fast as fp32, its sampling step 1.38–1.42× and
  1.54–1.61× (batch 16; the `s` UNet's 1.71× at batch 256), text-to-image 1.53–1.70×
  (shapes-32) and 1.57–1.58× (emoji-32); quality held: the digits' 10-minute benchmark (1.23×
  the steps, the same FID), the ShapesWorld caption benchmark and the emoji probe of emoji-32
  sampled in bf16, and ShapesWorld text-to-image models trained in bf16 against fp32 (from
  scratch: within the spread between two seeds; shapes-32 trained on: 394 of 400 captions
  agree; docs/speed.md).
- **CPU without native bf16** (e.g. an AMD EPYC with AVX2): fp32. bf16 is emulated there:
  autocast made the `s` UNet's training step 8× and its sampling step 6× *slower* than fp32,
  even with channels-last (docs/speed.md, ``benchmarks/train_speed.py --variants``).

``--precision fp32`` keeps fp32 on any hardware (results then agree across machines to fp32's
last bits; bf16 results differ in theirs).

On a CPU without native bf16, bf16 also puts the network in channels-last memory order (NHWC),
the layout oneDNN's emulated bf16 convolutions work in: without it each convolution reorders its
input (measured on that AVX2 CPU: a bf16 sampling step of 16 images took 13.4 s without, 2.2 s
with). With native bf16 the network stays in its own order (NCHW): there channels-last made
training slower (the `m` UNet 1.31× over fp32 against 1.48× without it, the `s` 1.15× against
1.22×) and sampling no faster (docs/speed.md).

``compile`` (:func:`compile_network`, ``--compile``) hands the UNet to ``torch.compile``, in
place: its parameter names and checkpoints are unchanged. The first call of each input shape
compiles (minutes on a 2-core CPU, said in the log); later calls run the fused code. On CUDA it
uses mode "reduce-overhead" (CUDA graphs: one launch for the whole step, the cure for small
networks whose step time is kernel launches). Off by default: on an AVX2 CPU it made training
0.88× as fast and sampling 1.06× after 9 minutes of compiling (docs/speed.md); it is meant for
GPUs, where it is not yet measured.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .errors import KuosanError

PRECISIONS = ("auto", "fp32", "bf16")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` does bf16 arithmetic in hardware: a CUDA device with bf16 support, or a
    CPU with AMX-BF16 or AVX512-BF16 (``torch.cpu.get_capabilities()``)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        caps = torch.cpu.get_capabilities()
        return bool(caps.get("amx_bf16") or caps.get("avx512_bf16"))
    return False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """"fp32" or "bf16" for ``precision`` ("auto", "fp32", "bf16") on ``device``: auto is bf16
    where the device does bf16 in hardware (:func:`native_bf16`), fp32 elsewhere (module
    docstring)."""
    if precision not in PRECISIONS:
        raise KuosanError(f"--precision: '{precision}' is not one of {', '.join(PRECISIONS)}")
    device = torch.device(device)
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def prepare_module(model: nn.Module, precision: str, device: torch.device | str, *,
                   compile: bool = False) -> nn.Module:
    """``model`` made ready to run: in the memory order its arithmetic wants (channels-last for
    bf16 on a CPU that emulates it, oneDNN's layout; unchanged otherwise), and its UNet compiled
    if asked (:func:`compile_network`). In place; returns ``model``."""
    device = torch.device(device)
    if precision == "bf16" and device.type == "cpu" and not native_bf16(device):
        model.to(memory_format=torch.channels_last)
    if compile:
        compile_network(model, device)
    return model


def autocast(precision: str, device: torch.device | str) -> torch.autocast:
    """The autocast context of ``precision`` ("fp32" or "bf16", resolved) on ``device``."""
    device_type = torch.device(device).type
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16")


class Autocast:
    """``model`` run under :func:`autocast`; (x_t, t, **cond) ↦ its output as fp32. With fp32 it
    is ``model`` itself in effect (no autocast, no copy)."""

    def __init__(self, model: Callable[..., Tensor], precision: str,
                 device: torch.device | str) -> None:
        self.model, self.precision, self.device = model, precision, torch.device(device)

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        if self.precision != "bf16":
            return self.model(*args, **kwargs)
        with autocast(self.precision, self.device):
            return self.model(*args, **kwargs).float()


def compile_network(model: nn.Module, device: torch.device | str) -> nn.Module:
    """``model``'s UNet compiled in place (``nn.Module.compile``; a text-to-image model's text
    encoder, which takes Python strings, stays eager); mode "reduce-overhead" (CUDA graphs) on
    CUDA, the default elsewhere. Returns ``model``."""
    unet = getattr(model, "unet", model)
    mode = "reduce-overhead" if torch.device(device).type == "cuda" else None
    unet.compile(mode=mode)
    return model
