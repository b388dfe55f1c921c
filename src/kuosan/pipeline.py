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

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor, nn

from .checkpoint import (  # noqa: F401 (BUNDLED, bundled_models: importable from here too)
    BUNDLED,
    bundled_models,
    load_config,
    load_state_dict_strict,
    load_weights,
    resolve_model,
)
from .data import DataInfo, denormalize
from .defaults import IMG2IMG_STRENGTH, VARY_STRENGTH
from .edit import (
    RESAMPLE_SAMPLERS,
    composite,
    feather_mask,
    inpaint_windows,
    mask_from_image,
    sdedit,
)
from .errors import KuosanError
from .guidance import cfg_model, composed_cfg_model, parse_composition
from .images import pil_to_uint8, to_pil
from .models import build_model
from .samplers import Generators, sample
from .schedule import NoiseSchedule


def pick_device(device: str | torch.device | None = "auto") -> torch.device:
    """"auto" → CUDA when present, else CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise KuosanError("--device cuda was asked for, but no CUDA device is available")
    return device


INPAINT_RESAMPLE = 5  # RePaint resamplings of Pipeline.inpaint by default (docs/editing.md)
class Pipeline:
    """A denoiser, its noise schedule and what its outputs mean."""

    def __init__(self, model: nn.Module, schedule: NoiseSchedule, prediction: str, info: DataInfo,
                 config: dict, device: torch.device, name: str = "", path: Path | None = None) -> None:
        self.model, self.schedule, self.prediction = model, schedule, prediction
        self.info, self.config, self.device, self.name = info, config, device, name
        self.path = path  # the checkpoint folder it was loaded from

    @classmethod
    def load(cls, path: str | Path, *, weights: str = "ema", device: str | torch.device = "auto") -> Pipeline:
        """Load a checkpoint folder, or a model bundled with the package by name
        (``kuosan/bundled/NAME``); ``weights``: "ema" or "model"."""
        path = resolve_model(path)
        config = load_config(path)
        try:
            if config.get("text_encoder"):
                from .models.conditional import build_text_conditioned

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
        return cls(model, schedule, config.get("prediction", "eps"), info, config, dev, name=path.name,
                   path=path)

    @property
    def is_text_conditioned(self) -> bool:
        return bool(self.config.get("text_encoder"))

    @property
    def clip_x0(self) -> bool:
        return bool(self.config.get("sampling", {}).get("clip_x0", self.info.kind == "image"))

    @property
    def default_guidance(self) -> float:
        """The checkpoint's guidance scale (config.json "sampling" → "guidance"), else 3."""
        return float(self.config.get("sampling", {}).get("guidance", 3.0))

    @property
    def default_sampler(self) -> str:
        """The checkpoint's sampler (config.json "sampling" → "sampler"), else "dpmpp_2m"; the
        one ``generate`` and the edits use when ``sampler`` is None."""
        return str(self.config.get("sampling", {}).get("sampler", "dpmpp_2m"))

    def conditioned(self, captions: Sequence[str], negative_prompt: str | None = None,
                    guidance_scale: float | None = None) -> Callable[[Tensor, Tensor], Tensor]:
        """The model (x_t, t) ↦ output for a batch with these captions (one per row), guided
        with ``guidance_scale`` (default :attr:`default_guidance`; 1 = none) against the empty
        caption or ``negative_prompt``. A caption "A AND B :0.5" composes its parts
        (:func:`kuosan.guidance.parse_composition`, :func:`~kuosan.guidance.composed_cfg_model`):
        out_u + s·Σ_k w_k·(out_k − out_u). A model without text takes only empty captions."""
        if not self.is_text_conditioned:
            if any(captions) or negative_prompt:
                raise KuosanError(f"'{self.name}' is not a text-to-image model: it takes no prompt "
                                  f"(use a model trained with --text-encoder)")
            return self.model
        scale = self.default_guidance if guidance_scale is None else guidance_scale
        if not any(captions) and not negative_prompt:
            scale = 1.0  # the condition is the null condition: guidance would change nothing
        parts = [parse_composition(c) for c in captions]
        if any(len(p) > 1 for p in parts):  # "… AND …": composable diffusion
            k = max(len(p) for p in parts)  # rows with fewer parts get "" at weight 0
            texts = [[p[i][0] if i < len(p) else "" for p in parts] for i in range(k)]
            weights = torch.tensor([[p[i][1] if i < len(p) else 0.0 for p in parts]
                                    for i in range(k)])
            return composed_cfg_model(self.model, [self.model.encode(t) for t in texts], weights,
                                      self.model.encode([negative_prompt or ""]), scale)
        uncond = self.model.encode([negative_prompt or ""]) if scale != 1.0 else {}
        return cfg_model(self.model, self.model.encode(list(captions)), uncond, scale)

    @torch.no_grad()
    def generate(self, prompt: str | Sequence[str] = "", *, num_images_per_prompt: int = 1,
                 num_inference_steps: int = 20, guidance_scale: float | None = None, seed: int = 0,
                 sampler: str | None = None, negative_prompt: str | None = None,
                 batch_size: int = 64, progress: bool = False, **sampler_kwargs) -> list[Image.Image]:
        """Images for a prompt (or a list of prompts), diffusers' argument names.

        Classifier-free guidance with ``guidance_scale`` (1 = none; default: the checkpoint's,
        :attr:`default_guidance`); the unconditional branch is the empty caption, or
        ``negative_prompt``. Image i of the output (prompts in order, each repeated
        ``num_images_per_prompt`` times) uses the generator seeded ``seed + i``.
        """
        sampler = sampler or self.default_sampler
        if not self.is_text_conditioned:
            self.conditioned([prompt] if isinstance(prompt, str) else list(prompt), negative_prompt)
            x = self.sample(num_images_per_prompt, sampler=sampler, num_inference_steps=num_inference_steps,
                            seed=seed, batch_size=batch_size, progress=progress, **sampler_kwargs)
            return self.to_images(x)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        _check_count("num_images_per_prompt", num_images_per_prompt)
        captions = [p for p in prompts for _ in range(num_images_per_prompt)]
        out = []
        for start in range(0, len(captions), batch_size):
            chunk = captions[start:start + batch_size]
            model = self.conditioned(chunk, negative_prompt, guidance_scale)
            out.append(self._sample_with(model, len(chunk), seed + start, sampler, num_inference_steps,
                                         progress, sampler_kwargs))
        return self.to_images(torch.cat(out))

    # -- editing (kuosan.edit): inpaint, outpaint, vary, img2img --

    def inpaint_sampling(self, sampler: str | None, resample: int | None) -> tuple[str, int]:
        """(sampler, resample) an inpainting call runs with: ``resample`` None is
        :data:`INPAINT_RESAMPLE` unless a multistep ``sampler`` is named (then 1); ``sampler``
        None is "ddpm" when resampling, else the checkpoint's."""
        if resample is None:
            resample = INPAINT_RESAMPLE if sampler in (None, *RESAMPLE_SAMPLERS) else 1
        return sampler or ("ddpm" if resample > 1 else self.default_sampler), resample

    def _pixels(self, image: Image.Image, what: str, any_size: bool = False) -> Tensor:
        """A PIL image as uint8 pixels (C, H, W) in the model's channels (RGBA on white, gray
        to RGB or RGB to gray as the model needs); the model's size unless ``any_size`` (then
        at least that size)."""
        if not isinstance(image, Image.Image):
            raise KuosanError(f"{what} must be a PIL image, got {type(image).__name__}")
        if self.info.kind != "image":
            raise KuosanError(f"'{self.name}' models vectors ({self.info.name}), not images")
        c, h, w = self.info.shape
        iw, ih = image.size
        if any_size and (iw < w or ih < h):
            raise KuosanError(f"{what} is {iw}×{ih}, smaller than the model's {w}×{h} images")
        if not any_size and (iw, ih) != (w, h):
            raise KuosanError(f"{what} is {iw}×{ih}, but '{self.name}' makes {w}×{h} images: "
                              f"resize it first")
        return pil_to_uint8(image, c)

    def _edit_batches(self, n: int, seed: int, generator: Generators, batch_size: int
                      ) -> list[tuple[int, Generators]]:
        """(batch size, generators) per batch: image i seeded seed + i, or the given generator
        (one torch.Generator for all n in one batch, or a list of n, one per image)."""
        _check_count("the number of images", n)
        _check_count("batch_size", batch_size)
        if generator is None:
            return [(min(batch_size, n - s), [torch.Generator().manual_seed(seed + s + i)
                                              for i in range(min(batch_size, n - s))])
                    for s in range(0, n, batch_size)]
        if isinstance(generator, torch.Generator):
            return [(n, generator)]
        if len(generator) != n:
            raise KuosanError(f"{len(generator)} generators for {n} images")
        return [(min(batch_size, n - s), list(generator[s:s + batch_size])) for s in range(0, n, batch_size)]

    def _sampling(self, sampler: str, steps: int, generator: Generators, progress: bool,
                  extra: dict) -> dict:
        return {"schedule": self.schedule, "prediction": self.prediction, "sampler": sampler,
                "steps": steps, "generator": generator, "clip_x0": self.clip_x0,
                "device": self.device, "progress": progress, **extra}

    @torch.no_grad()
    def inpaint(self, image: Image.Image | Sequence[Image.Image],
                mask_image: Image.Image | Sequence[Image.Image], prompt: str | Sequence[str] = "", *,
                num_images_per_prompt: int = 1, num_inference_steps: int = 20,
                guidance_scale: float | None = None, seed: int = 0, generator: Generators = None,
                sampler: str | None = None, negative_prompt: str | None = None,
                resample: int | None = None, feather: float = 0.0, batch_size: int = 64, progress: bool = False,
                **sampler_kwargs) -> list[Image.Image]:
        """Repaint the white part of ``mask_image`` so that it fits the rest of ``image`` and,
        with a ``prompt``, shows it; as in DALL·E 2 the prompt describes the whole edited image.

        Pixels outside the mask come back exactly as given (in the model's mode); ``feather``
        (pixels) blends the repainted part softly into the original just inside the mask's
        edge. ``resample`` > 1 adds RePaint's resampling ("ddpm" or "ddim" samplers only;
        ``sampler`` None then means "ddpm"; otherwise None is the checkpoint's sampler). By
        default (``resample`` None) inpainting resamples :data:`INPAINT_RESAMPLE` times with
        "ddpm" unless a multistep ``sampler`` is named (then 1): on ShapesWorld it lifted
        the stage-4 shapes-32's single-object edits from 21 % to 72 %; the current shapes-32
        gets 97 % without and 96 % with it, and 56 % against 31 % on edits that add an object
        beside a kept one (benchmarks/results/editing.md). An
        image larger than the model's size is repainted window by window. The mask must match
        the image's size and be black-and-white (:func:`kuosan.edit.mask_from_image`).
        Lists of images (of one size), masks and prompts, of equal lengths, edit many at once;
        output image i (each input repeated ``num_images_per_prompt`` times) is seeded seed + i.
        """
        images = _as_list(image, Image.Image, "image", "a PIL image")
        masks = _as_list(mask_image, Image.Image, "mask_image", "a PIL image")
        prompts = _as_list("" if prompt is None else prompt, str, "prompt", "a string")
        feather_mask(torch.zeros(1, 1, 1, dtype=torch.bool), feather)  # check it before any work
        count = max(len(images), len(masks), len(prompts))
        for what, items in (("image", images), ("mask_image", masks), ("prompt", prompts)):
            if len(items) not in (1, count):
                raise KuosanError(f"inpaint: {len(items)} {what}s for {count} edits: give one or {count}")
        if len({im.size for im in images}) > 1:
            raise KuosanError("inpaint: the images of one call must have one size")
        pixels = torch.stack([self._pixels(im, "image", any_size=True) for im in images])
        mask = torch.stack([mask_from_image(m, images[0].size, "mask_image") for m in masks])
        _check_count("num_images_per_prompt", num_images_per_prompt)
        edit = torch.arange(count).repeat_interleave(num_images_per_prompt)  # edit of each output
        return self._inpaint_pixels(pixels[edit % len(pixels)], mask[edit % len(mask)],
                                    [prompts[i % len(prompts)] for i in edit.tolist()],
                                    num_inference_steps, guidance_scale, seed, generator, sampler,
                                    negative_prompt, resample, feather, batch_size, progress,
                                    sampler_kwargs)

    def _inpaint_pixels(self, pixels: Tensor, mask: Tensor, prompts: list[str], steps: int,
                        guidance_scale: float | None, seed: int, generator: Generators,
                        sampler: str | None,
                        negative_prompt: str | None, resample: int | None, feather: float,
                        batch_size: int, progress: bool, extra: dict) -> list[Image.Image]:
        """Inpaint uint8 ``pixels`` (N, C, H, W) where ``mask`` (N, 1, H, W) is True, row i with
        ``prompts[i]``; then composite, exact outside the mask. ``sampler`` None: "ddpm" with
        resampling, else the checkpoint's."""
        sampler, resample = self.inpaint_sampling(sampler, resample)
        window = self.info.shape[-1]
        out: dict[int, Tensor] = {}
        start = 0
        for b, gens in self._edit_batches(len(prompts), seed, generator, batch_size):
            rows = list(range(start, start + b))
            start += b
            # a canvas larger than a window is planned per mask, so that image i does not depend
            # on the masks of its batch-mates (one window covers a model-sized canvas whatever
            # the mask)
            groups = [rows] if tuple(pixels.shape[-2:]) == (window, window) else _same_masks(mask, rows)
            for group in groups:
                g = [gens[i - rows[0]] for i in group] if isinstance(gens, list) else gens
                model = self.conditioned([prompts[i] for i in group], negative_prompt, guidance_scale)
                painted = inpaint_windows(model, pixels[group].float() / 127.5 - 1, mask[group], window,
                                          resample=resample,
                                          **self._sampling(sampler, steps, g, progress, extra))
                generated = ((painted.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
                for i, pix, gen in zip(group, pixels[group], generated, strict=True):
                    out[i] = composite(pix, gen, feather_mask(mask[i], feather))
        return [_pil(out[i]) for i in range(len(prompts))]

    @torch.no_grad()
    def outpaint(self, image: Image.Image, *, left: int = 0, top: int = 0, right: int = 0,
                 bottom: int = 0, prompt: str = "", num_images_per_prompt: int = 1,
                 num_inference_steps: int = 20, guidance_scale: float | None = None, seed: int = 0,
                 generator: Generators = None, sampler: str | None = None,
                 negative_prompt: str | None = None, resample: int = 1, batch_size: int = 64,
                 progress: bool = False, **sampler_kwargs) -> list[Image.Image]:
        """Extend ``image`` by ``left``/``top``/``right``/``bottom`` pixels: inpainting of the new
        border on the larger canvas, window by window (:func:`kuosan.edit.window_plan`: each sees at
        least half a window of known pixels where it can), with ``prompt`` for every window. The
        original pixels are kept exactly."""
        pads = {"left": left, "top": top, "right": right, "bottom": bottom}
        for name, value in pads.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise KuosanError(f"{name} must be a number of pixels >= 0, got {value!r}")
        if not any(pads.values()):
            raise KuosanError("outpaint: give at least one of left, top, right, bottom > 0")
        prompt = _as_list("" if prompt is None else prompt, str, "prompt", "a string")[0]
        pixels = self._pixels(image, "image", any_size=True)
        c, h, w = pixels.shape
        _check_count("num_images_per_prompt", num_images_per_prompt)
        canvas = torch.full((c, h + top + bottom, w + left + right), 128, dtype=torch.uint8)
        canvas[:, top:top + h, left:left + w] = pixels
        mask = torch.ones((1, *canvas.shape[1:]), dtype=torch.bool)
        mask[:, top:top + h, left:left + w] = False
        n = num_images_per_prompt
        return self._inpaint_pixels(canvas.expand(n, -1, -1, -1), mask.expand(n, -1, -1, -1),
                                    [prompt] * n, num_inference_steps, guidance_scale, seed,
                                    generator, sampler, negative_prompt, resample, 0.0, batch_size,
                                    progress, sampler_kwargs)

    @torch.no_grad()
    def img2img(self, image: Image.Image, prompt: str = "", *, strength: float = IMG2IMG_STRENGTH,
                num_images_per_prompt: int = 1, num_inference_steps: int = 20,
                guidance_scale: float | None = None, seed: int = 0, generator: Generators = None,
                sampler: str | None = None, negative_prompt: str | None = None,
                batch_size: int = 64, progress: bool = False, **sampler_kwargs) -> list[Image.Image]:
        """SDEdit (:func:`kuosan.edit.sdedit`): noise ``image`` to ``strength`` (0: returned as
        is; 1: ignored, the result is ``generate``'s for the same seed) and denoise it towards
        ``prompt``; about strength·steps steps run."""
        prompt = _as_list("" if prompt is None else prompt, str, "prompt", "a string")[0]
        sampler = sampler or self.default_sampler
        x0 = self._pixels(image, "image").float() / 127.5 - 1
        out = []
        for b, gens in self._edit_batches(num_images_per_prompt, seed, generator, batch_size):
            model = self.conditioned([prompt] * b, negative_prompt, guidance_scale)
            out.append(sdedit(model, x0[None].expand(b, -1, -1, -1).contiguous(), strength,
                              **self._sampling(sampler, num_inference_steps, gens, progress,
                                               sampler_kwargs)).float().cpu())
        return self.to_images(torch.cat(out))

    def vary(self, image: Image.Image, *, num_images: int = 4, strength: float = VARY_STRENGTH,
             prompt: str = "", **kwargs) -> list[Image.Image]:
        """``num_images`` variations of ``image``: the same composition and content, other
        details; ``strength`` from 0 (the image itself) to 1 (ignores it); an optional
        ``prompt`` guides them. Other arguments as :meth:`img2img`. The default 0.4 kept the
        source caption true in 88 % of shapes-32's variations, 0.6 in 58 %
        (benchmarks/results/editing.md)."""
        return self.img2img(image, prompt, strength=strength, num_images_per_prompt=num_images,
                            **kwargs)

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
        _check_count("number of samples", n)
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


def _check_count(what: str, n: object) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise KuosanError(f"{what} must be an integer >= 1, got {n!r}")


def _pil(pixels: Tensor) -> Image.Image:
    """uint8 (C, H, W) → PIL ('L' or 'RGB')."""
    v = pixels.numpy()
    return Image.fromarray(v[0] if v.shape[0] == 1 else v.transpose(1, 2, 0))


def _as_list(value: object, kind: type, what: str, described: str) -> list:
    """``value`` as a list of ``kind`` (one item, or a list or tuple of them)."""
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    for item in items:
        if not isinstance(item, kind):
            raise KuosanError(f"{what} must be {described} or a list of them, got {type(item).__name__}")
    if not items:
        raise KuosanError(f"{what}: the list is empty")
    return items


def _same_masks(mask: Tensor, rows: list[int]) -> list[list[int]]:
    """``rows`` grouped by equal masks (first appearance order)."""
    groups: list[list[int]] = []
    for i in rows:
        for group in groups:
            if torch.equal(mask[group[0]], mask[i]):
                group.append(i)
                break
        else:
            groups.append([i])
    return groups
