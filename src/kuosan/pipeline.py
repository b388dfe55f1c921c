"""A trained model ready to use: load a checkpoint folder and sample from it.

```python
from kuosan import Pipeline
pipe = Pipeline.load("runs/digits")
x = pipe.sample(16, sampler="ddpm", num_inference_steps=100, seed=0)   # (16, C, H, W) in model space
images = pipe.to_images(x)                                              # list[PIL.Image]
```

Seeds: ``seed=k`` gives sample i its own generator seeded ``k + i``, for the initial noise and
every later draw, so sample i is the same whatever the batch size.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor, nn

from .checkpoint import load_config, load_state_dict_strict, load_weights
from .data import DataInfo, denormalize
from .errors import KuosanError
from .guidance import cfg_model
from .images import to_pil
from .models import build_model
from .samplers import sample
from .schedule import NoiseSchedule


def pick_device(device: str | torch.device | None = "auto") -> torch.device:
    """"auto" → CUDA when present, else CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise KuosanError("--device cuda was asked for, but no CUDA device is available")
    return device


def resolve_model(name_or_path: str | Path) -> Path:
    """A checkpoint folder: the path itself if it exists, else a model bundled with the package
    under that name (``src/kuosan/bundled/NAME``). An unknown bare name gets a clear error."""
    path = Path(name_or_path)
    if path.exists() or len(path.parts) != 1:
        return path
    bundled = Path(__file__).parent / "bundled" / path.name
    if bundled.is_dir():
        return bundled
    raise KuosanError(f"'{name_or_path}' is neither a checkpoint folder nor a model bundled with "
                      f"this kuosan version (none is bundled yet)")


class Pipeline:
    """A denoiser, its noise schedule and what its outputs mean."""

    def __init__(self, model: nn.Module, schedule: NoiseSchedule, prediction: str, info: DataInfo,
                 config: dict, device: torch.device, name: str = "") -> None:
        self.model, self.schedule, self.prediction = model, schedule, prediction
        self.info, self.config, self.device, self.name = info, config, device, name

    @classmethod
    def load(cls, path: str | Path, *, weights: str = "ema", device: str | torch.device = "auto") -> Pipeline:
        """Load a checkpoint folder, or a model bundled with the package by name
        (``kuosan/bundled/NAME``); ``weights``: "ema" or "model"."""
        path = resolve_model(path)
        config = load_config(path)
        try:
            if config.get("text_encoder"):
                from .conditional import build_text_conditioned

                model = build_text_conditioned(config["model"]["config"], config["text_encoder"])
            else:
                model = build_model(config["model"]["kind"], config["model"]["config"])
            schedule = NoiseSchedule.from_config(config["schedule"])
            info = DataInfo.from_dict(config["data"])
        except (KeyError, TypeError) as err:
            raise KuosanError(f"'{path / 'config.json'}' is incomplete: missing {err}") from None
        tensors, _ = load_weights(path, weights)
        load_state_dict_strict(model, tensors, str(path))
        dev = pick_device(device)
        model.to(dev).eval().requires_grad_(False)
        return cls(model, schedule, config.get("prediction", "eps"), info, config, dev, name=path.name)

    @property
    def is_text_conditioned(self) -> bool:
        return bool(self.config.get("text_encoder"))

    @property
    def clip_x0(self) -> bool:
        return bool(self.config.get("sampling", {}).get("clip_x0", self.info.kind == "image"))

    @torch.no_grad()
    def generate(self, prompt: str | Sequence[str] = "", *, num_images_per_prompt: int = 1,
                 num_inference_steps: int = 20, guidance_scale: float = 3.0, seed: int = 0,
                 sampler: str = "dpmpp_2m", negative_prompt: str | None = None,
                 batch_size: int = 64, progress: bool = False, **sampler_kwargs) -> list[Image.Image]:
        """Images for a prompt (or a list of prompts), diffusers' argument names.

        Classifier-free guidance with ``guidance_scale`` (1 = none); the unconditional branch is
        the empty caption, or ``negative_prompt``. Image i of the output (prompts in order, each
        repeated ``num_images_per_prompt`` times) uses the generator seeded ``seed + i``.
        """
        if not self.is_text_conditioned:
            if prompt or negative_prompt:
                raise KuosanError(f"'{self.name}' is not a text-to-image model: it takes no prompt "
                                  f"(use sample, or a model trained with --text-encoder)")
            x = self.sample(num_images_per_prompt, sampler=sampler, num_inference_steps=num_inference_steps,
                            seed=seed, batch_size=batch_size, progress=progress, **sampler_kwargs)
            return self.to_images(x)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if num_images_per_prompt < 1:
            raise KuosanError(f"num_images_per_prompt must be >= 1, got {num_images_per_prompt}")
        captions = [p for p in prompts for _ in range(num_images_per_prompt)]
        uncond = self.model.encode([negative_prompt or ""])
        out = []
        for start in range(0, len(captions), batch_size):
            chunk = captions[start:start + batch_size]
            model = cfg_model(self.model, self.model.encode(chunk), uncond, guidance_scale)
            out.append(self._sample_with(model, len(chunk), seed + start, sampler, num_inference_steps,
                                         progress, sampler_kwargs))
        return self.to_images(torch.cat(out))

    def _sample_with(self, model: nn.Module, b: int, seed: int, sampler: str, steps: int | None,
                     progress: bool, sampler_kwargs: dict) -> Tensor:
        generators = [torch.Generator().manual_seed(seed + i) for i in range(b)]
        x = sample(model, (b, *self.info.shape), schedule=self.schedule, sampler=sampler, steps=steps,
                   generator=generators, prediction=self.prediction, clip_x0=self.clip_x0,
                   device=self.device, progress=progress, **sampler_kwargs)
        return x.float().cpu()

    @torch.no_grad()
    def sample(self, n: int, *, sampler: str = "ddpm", num_inference_steps: int | None = None,
               seed: int = 0, batch_size: int = 256, progress: bool = False, **sampler_kwargs) -> Tensor:
        """``n`` samples in model space, (n, *shape), on the CPU (unconditional: a text model is
        given the empty caption)."""
        if n < 1:
            raise KuosanError(f"number of samples must be >= 1, got {n}")
        model = self.model
        if self.is_text_conditioned:
            model = cfg_model(self.model, self.model.encode([""]), {}, 1.0)
        out = []
        for start in range(0, n, batch_size):
            b = min(batch_size, n - start)
            out.append(self._sample_with(model, b, seed + start, sampler, num_inference_steps, progress,
                                         sampler_kwargs))
        return torch.cat(out)

    def to_images(self, x: Tensor) -> list[Image.Image]:
        """Samples in model space → PIL images (image data only)."""
        if self.info.kind != "image":
            raise KuosanError(f"'{self.name}' models vectors ({self.info.name}), not images")
        return [to_pil(img) for img in x.clamp(-1, 1)]

    def to_data(self, x: Tensor) -> Tensor:
        """Samples in model space → data space (pixels in [0, 1], or the toy's own units)."""
        return denormalize(x, self.info.normalization)
