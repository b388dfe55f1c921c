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

from pathlib import Path

import torch
from PIL import Image
from torch import Tensor, nn

from .checkpoint import load_config, load_state_dict_strict, load_weights
from .data import DataInfo, denormalize
from .errors import KuosanError
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


class Pipeline:
    """A denoiser, its noise schedule and what its outputs mean."""

    def __init__(self, model: nn.Module, schedule: NoiseSchedule, prediction: str, info: DataInfo,
                 config: dict, device: torch.device, name: str = "") -> None:
        self.model, self.schedule, self.prediction = model, schedule, prediction
        self.info, self.config, self.device, self.name = info, config, device, name

    @classmethod
    def load(cls, path: str | Path, *, weights: str = "ema", device: str | torch.device = "auto") -> Pipeline:
        """Load a checkpoint folder (``weights``: "ema" or "model")."""
        path = Path(path)
        config = load_config(path)
        try:
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
    def clip_x0(self) -> bool:
        return bool(self.config.get("sampling", {}).get("clip_x0", self.info.kind == "image"))

    @torch.no_grad()
    def sample(self, n: int, *, sampler: str = "ddpm", num_inference_steps: int | None = None,
               seed: int = 0, batch_size: int = 256, progress: bool = False, **sampler_kwargs) -> Tensor:
        """``n`` samples in model space, (n, *shape), on the CPU."""
        if n < 1:
            raise KuosanError(f"number of samples must be >= 1, got {n}")
        out = []
        for start in range(0, n, batch_size):
            b = min(batch_size, n - start)
            generators = [torch.Generator().manual_seed(seed + start + i) for i in range(b)]
            x = sample(self.model, (b, *self.info.shape), schedule=self.schedule, sampler=sampler,
                       steps=num_inference_steps, generator=generators, prediction=self.prediction,
                       clip_x0=self.clip_x0, device=self.device, progress=progress, **sampler_kwargs)
            out.append(x.float().cpu())
        return torch.cat(out)

    def to_images(self, x: Tensor) -> list[Image.Image]:
        """Samples in model space → PIL images (image data only)."""
        if self.info.kind != "image":
            raise KuosanError(f"'{self.name}' models vectors ({self.info.name}), not images")
        return [to_pil(img) for img in x.clamp(-1, 1)]

    def to_data(self, x: Tensor) -> Tensor:
        """Samples in model space → data space (pixels in [0, 1], or the toy's own units)."""
        return denormalize(x, self.info.normalization)
