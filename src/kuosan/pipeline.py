"""A trained model ready to use: load a checkpoint folder and make images with it.

```python
from kuosan import Pipeline
pipe = Pipeline.load("shapes-32")                     # a checkpoint folder or a bundled name
result = pipe.generate("a red circle", num_images_per_prompt=4, seed=0)
result[0].save("0.png"); result.seeds, result.sampler  # the images and what made them
x = pipe.sample(16, sampler="ddpm", seed=0)           # (16, C, H, W) in model space
```

Every call returns a :class:`~kuosan.result.Result` (a sequence of PIL images, as the list it
used to return, with the settings it ran with). :meth:`Pipeline.batches` makes the images of a
:class:`~kuosan.request.Request` batch by batch, so a long call can be written as it goes and
stopped without losing what was made (the tasks themselves: :mod:`kuosan.tasks`). Every call
is checked against ``pipe.limits`` (:class:`~kuosan.limits.Limits`) before any work.

Seeds: ``seed=k`` gives image i its own generator seeded ``k + i``, for the initial noise and
every later draw, so image i is the same whatever the batch size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
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
    weights_digest,
)
from .data import DataInfo, denormalize
from .defaults import IMG2IMG_STRENGTH, VARY_STRENGTH
from .edit import RESAMPLE_SAMPLERS
from .errors import KuosanError
from .guidance import cfg_model, composed_cfg_model, parse_composition
from .images import pil_to_uint8, to_pil
from .limits import Limits
from .models import build_model
from .precision import Autocast, prepare_module, resolve_precision
from .request import Request
from .result import Result
from .samplers import Generators
from .schedule import NoiseSchedule
from .tasks import TASKS, check, sample_batch


def pick_device(device: str | torch.device | None = "auto") -> torch.device:
    """"auto" → CUDA when present, else CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise KuosanError("--device cuda was asked for, but no CUDA device is available")
    return device


DEFAULT_SAMPLER, DEFAULT_GUIDANCE = "dpmpp_2m", 3.0  # a checkpoint's, unless its config.json names others
INPAINT_RESAMPLE = 5  # RePaint resamplings of Pipeline.inpaint by default (docs/editing.md)


class Pipeline:
    """A denoiser, its noise schedule, what its outputs mean, and the limits of one call.

    ``source`` is what it was loaded as (a bundled model's name or a folder), ``digest`` its
    weights' hash (:func:`kuosan.checkpoint.weights_digest`, once, at load): both go into every
    :class:`~kuosan.result.Result` and PNG."""

    def __init__(self, model: nn.Module, schedule: NoiseSchedule, prediction: str, info: DataInfo,
                 config: dict, device: torch.device, name: str = "", path: Path | None = None, *,
                 limits: Limits | None = None, source: str | None = None,
                 digest: str | None = None, precision: str = "auto", compile: bool = False) -> None:
        self.model, self.schedule, self.prediction = model, schedule, prediction
        self.info, self.config, self.device, self.name = info, config, device, name
        self.precision = resolve_precision(precision, device)  # "fp32" or "bf16"
        prepare_module(model, self.precision, device, compile=compile)
        self.net = Autocast(model, self.precision, device)  # the denoiser's calls, outputs fp32
        self.path = path  # the checkpoint folder it was loaded from
        self.limits = Limits() if limits is None else limits
        self.source = source or name
        self.digest = digest if digest is not None else (weights_digest(path) if path else "")
        self._language = None  # the caption language of enhance_prompt, made on first use

    @classmethod
    def load(cls, path: str | Path, *, weights: str = "ema", device: str | torch.device = "auto",
             limits: Limits | None = None, precision: str = "auto", compile: bool = False
             ) -> Pipeline:
        """Load a checkpoint folder, or a model bundled with the package by name
        (``kuosan/bundled/NAME``); ``weights``: "ema" or "model"; ``limits``: those of every
        call (default :class:`~kuosan.limits.Limits`; ``Limits.none()`` lifts them);
        ``precision``: "auto", "fp32" or "bf16", ``compile``: torch.compile the UNet
        (:mod:`kuosan.precision`)."""
        folder = resolve_model(path)
        config = load_config(folder)
        try:
            if config.get("text_encoder"):
                from .models.conditional import build_text_conditioned

                model = build_text_conditioned(config["model"]["config"], config["text_encoder"])
            else:
                model = build_model(config["model"]["kind"], config["model"]["config"])
            schedule = NoiseSchedule.from_config(config["schedule"])
            info = DataInfo.from_dict(config["data"])
        except (KeyError, TypeError) as err:
            raise KuosanError(f"'{folder / 'config.json'}' is incomplete: missing {err}") from None
        tensors, _ = load_weights(folder, weights)
        load_state_dict_strict(model, tensors, str(folder))
        dev = pick_device(device)
        model.to(dev).eval().requires_grad_(False)
        return cls(model, schedule, config.get("prediction", "eps"), info, config, dev,
                   name=folder.name, path=folder, limits=limits, source=str(path),
                   precision=precision, compile=compile)

    @property
    def is_text_conditioned(self) -> bool:
        return bool(self.config.get("text_encoder"))

    @property
    def clip_x0(self) -> bool:
        return bool(self.config.get("sampling", {}).get("clip_x0", self.info.kind == "image"))

    @property
    def default_guidance(self) -> float:
        """The checkpoint's guidance scale (config.json "sampling" → "guidance"), else 3."""
        return float(self.config.get("sampling", {}).get("guidance", DEFAULT_GUIDANCE))

    @property
    def attribution(self) -> str | None:
        """The credit the model's training data asks of its pictures (config.json
        "attribution", set by ``kuosan export --attribution``), or None."""
        return self.config.get("attribution") or None

    @property
    def styles(self) -> tuple[str, ...]:
        """The art styles the model draws as ", STYLE style" in a caption (config.json
        "styles"; an emoji model's), else ()."""
        return tuple(self.config.get("styles", ()))

    @property
    def default_sampler(self) -> str:
        """The checkpoint's sampler (config.json "sampling" → "sampler"), else "dpmpp_2m"; the
        one ``generate`` and the edits use when ``sampler`` is None."""
        return str(self.config.get("sampling", {}).get("sampler", DEFAULT_SAMPLER))

    @property
    def item_pixels(self) -> int:
        """Pixels of one output (H·W; the values of a vector): the unit of the work limit."""
        shape = self.info.shape
        return math.prod(shape[1:] if self.info.kind == "image" else shape)

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
            return self.net
        scale = self.default_guidance if guidance_scale is None else guidance_scale
        if not any(captions) and not negative_prompt:
            scale = 1.0  # the condition is the null condition: guidance would change nothing
        parts = [parse_composition(c) for c in captions]
        if any(len(p) > 1 for p in parts):  # "… AND …": composable diffusion
            k = max(len(p) for p in parts)  # rows with fewer parts get "" at weight 0
            texts = [[p[i][0] if i < len(p) else "" for p in parts] for i in range(k)]
            weights = torch.tensor([[p[i][1] if i < len(p) else 0.0 for p in parts]
                                    for i in range(k)])
            return composed_cfg_model(self.net, [self.model.encode(t) for t in texts], weights,
                                      self.model.encode([negative_prompt or ""]), scale)
        uncond = self.model.encode([negative_prompt or ""]) if scale != 1.0 else {}
        return cfg_model(self.net, self.model.encode(list(captions)), uncond, scale)

    def inpaint_sampling(self, sampler: str | None, resample: int | None) -> tuple[str, int]:
        """(sampler, resample) an inpainting call runs with: ``resample`` None is
        :data:`INPAINT_RESAMPLE` unless a multistep ``sampler`` is named (then 1); ``sampler``
        None is "ddpm" when resampling, else the checkpoint's."""
        if resample is None:
            resample = INPAINT_RESAMPLE if sampler in (None, *RESAMPLE_SAMPLERS) else 1
        return sampler or ("ddpm" if resample > 1 else self.default_sampler), resample

    def pixels(self, image: Image.Image, what: str, any_size: bool = False, smaller: bool = False
                ) -> Tensor:
        """A PIL image as uint8 pixels (C, H, W) in the model's channels (RGBA on white, gray
        to RGB or RGB to gray as the model needs); the model's size unless ``any_size`` (then
        at least that size, or any size with ``smaller``: outpainting checks its canvas)."""
        if not isinstance(image, Image.Image):
            raise KuosanError(f"{what} must be a PIL image, got {type(image).__name__}")
        if self.info.kind != "image":
            raise KuosanError(f"'{self.name}' models vectors ({self.info.name}), not images")
        c, h, w = self.info.shape
        iw, ih = image.size
        if any_size and not smaller and (iw < w or ih < h):
            raise KuosanError(f"{what} is {iw}×{ih}, smaller than the model's {w}×{h} images")
        if not any_size and (iw, ih) != (w, h):
            raise KuosanError(f"{what} is {iw}×{ih}, but '{self.name}' makes {w}×{h} images: "
                              f"resize it first")
        return pil_to_uint8(image, c)

    # -- the Python API: one method per task, each a Request run to the end --

    def generate(self, prompt: str | Sequence[str] = "", *, num_images_per_prompt: int = 1,
                 num_inference_steps: int = 20, guidance_scale: float | None = None, seed: int = 0,
                 generator: Generators = None, sampler: str | None = None,
                 negative_prompt: str | None = None, batch_size: int = 64, progress: bool = False,
                 enhance_prompt: bool = False, **sampler_kwargs) -> Result:
        """Images for a prompt (or a list of prompts), diffusers' argument names.

        Classifier-free guidance with ``guidance_scale`` (1 = none; default: the checkpoint's,
        :attr:`default_guidance`); the unconditional branch is the empty caption, or
        ``negative_prompt``. Image i of the output (prompts in order, each repeated
        ``num_images_per_prompt`` times) uses the generator seeded ``seed + i``.
        ``enhance_prompt``: each prompt goes through :meth:`enhance_prompt` first; the result's
        prompts are the rewrites and ``settings["user_prompt"]`` holds what was typed.
        """
        typed = prompt
        if enhance_prompt:
            prompt = (self.enhance_prompt(prompt) if isinstance(prompt, str)
                      else [self.enhance_prompt(p) for p in prompt])
        result = self.run(Request.of(
            "generate", prompt=prompt, negative_prompt=negative_prompt, seed=seed,
            num_images_per_prompt=num_images_per_prompt, num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale, generator=generator, sampler=sampler,
            batch_size=batch_size, progress=progress, **sampler_kwargs))
        if not enhance_prompt:
            return result
        user = typed if isinstance(typed, str) else list(typed)
        return replace(result, settings={**result.settings, "user_prompt": user})

    def enhance_prompt(self, text: str) -> str:
        """``text`` in this model's caption language (:mod:`kuosan.enhance`, docs/enhance.md):
        "a crimson ball over a navy box" → "a red circle above a blue square"; ``text``
        unchanged when nothing maps. ShapesWorld and emoji models, and models with a captions.json."""
        from .enhance import enhance_prompt, language_for

        if self._language is None:
            self._language = language_for(self)
        return enhance_prompt(text, self._language)

    def inpaint(self, image: Image.Image | Sequence[Image.Image],
                mask_image: Image.Image | Sequence[Image.Image], prompt: str | Sequence[str] = "", *,
                num_images_per_prompt: int = 1, num_inference_steps: int = 20,
                guidance_scale: float | None = None, seed: int = 0, generator: Generators = None,
                sampler: str | None = None, negative_prompt: str | None = None,
                resample: int | None = None, feather: float = 0.0, batch_size: int = 64,
                progress: bool = False, **sampler_kwargs) -> Result:
        """Repaint the white part of ``mask_image`` so that it fits the rest of ``image`` and,
        with a ``prompt``, shows it; as in DALL·E 2 the prompt describes the whole edited image.

        Pixels outside the mask come back exactly as given (in the model's mode); ``feather``
        (pixels) blends the repainted part softly into the original just inside the mask's
        edge. ``resample`` > 1 adds RePaint's resampling ("ddpm" or "ddim" samplers only;
        ``sampler`` None then means "ddpm"; otherwise None is the checkpoint's sampler). By
        default (``resample`` None) inpainting resamples :data:`INPAINT_RESAMPLE` times with
        "ddpm" unless a multistep ``sampler`` is named (then 1): on ShapesWorld edits that add
        an object beside a kept one it helps (benchmarks/results/editing.md). An image larger
        than the model's size is repainted window by window. The mask must match the image's
        size and be black-and-white (:func:`kuosan.edit.mask_from_image`). Lists of images
        (of one size), masks and prompts, of equal lengths, edit many at once; output image i
        (each input repeated ``num_images_per_prompt`` times) is seeded seed + i.
        """
        return self.run(Request.of(
            "inpaint", image=image, mask_image=mask_image, prompt=prompt,
            negative_prompt=negative_prompt, seed=seed, num_images_per_prompt=num_images_per_prompt,
            num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
            generator=generator, sampler=sampler, resample=resample, feather=feather,
            batch_size=batch_size, progress=progress, **sampler_kwargs))

    def outpaint(self, image: Image.Image, *, left: int = 0, top: int = 0, right: int = 0,
                 bottom: int = 0, prompt: str = "", num_images_per_prompt: int = 1,
                 num_inference_steps: int = 20, guidance_scale: float | None = None, seed: int = 0,
                 generator: Generators = None, sampler: str | None = None,
                 negative_prompt: str | None = None, resample: int = 1, batch_size: int = 64,
                 progress: bool = False, **sampler_kwargs) -> Result:
        """Extend ``image`` by ``left``/``top``/``right``/``bottom`` pixels: inpainting of the new
        border on the larger canvas, window by window (:func:`kuosan.edit.window_plan`: each sees at
        least half a window of known pixels where it can), with ``prompt`` for every window. The
        original pixels are kept exactly."""
        return self.run(Request.of(
            "outpaint", image=image, left=left, top=top, right=right, bottom=bottom, prompt=prompt,
            negative_prompt=negative_prompt, seed=seed, num_images_per_prompt=num_images_per_prompt,
            num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
            generator=generator, sampler=sampler, resample=resample, batch_size=batch_size,
            progress=progress, **sampler_kwargs))

    def img2img(self, image: Image.Image, prompt: str = "", *, strength: float = IMG2IMG_STRENGTH,
                num_images_per_prompt: int = 1, num_inference_steps: int = 20,
                guidance_scale: float | None = None, seed: int = 0, generator: Generators = None,
                sampler: str | None = None, negative_prompt: str | None = None,
                batch_size: int = 64, progress: bool = False, **sampler_kwargs) -> Result:
        """SDEdit (:func:`kuosan.edit.sdedit`): noise ``image`` to ``strength`` (0: returned as
        is; 1: ignored, the result is ``generate``'s for the same seed) and denoise it towards
        ``prompt``; about strength·steps steps run."""
        return self.run(Request.of(
            "img2img", image=image, prompt=prompt, strength=strength,
            negative_prompt=negative_prompt, seed=seed, num_images_per_prompt=num_images_per_prompt,
            num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
            generator=generator, sampler=sampler, batch_size=batch_size, progress=progress,
            **sampler_kwargs))

    def vary(self, image: Image.Image, *, num_images: int = 4, strength: float = VARY_STRENGTH,
             prompt: str = "", **kwargs) -> Result:
        """``num_images`` variations of ``image``: the same composition and content, other
        details; ``strength`` from 0 (the image itself) to 1 (ignores it); an optional
        ``prompt`` guides them. Other arguments as :meth:`img2img`. The default 0.4 keeps the
        source caption true in most of shapes-32's variations (benchmarks/results/editing.md)."""
        return self.run(Request.of("vary", image=image, num_images_per_prompt=num_images,
                                   strength=strength, prompt=prompt, **kwargs))

    def run(self, request: Request) -> Result:
        """All the images of ``request`` (:meth:`batches`, joined)."""
        return Result.join(self.batches(request))

    def batches(self, request: Request) -> Iterator[Result]:
        """The images of ``request`` batch by batch (``request.batch_size`` each), each batch a
        Result as soon as it is made. Everything is checked (the limits too) before this
        returns, so a bad request makes nothing; stopping early keeps the batches yielded."""
        return TASKS[request.task](self, request)

    @torch.no_grad()
    def sample(self, n: int, *, sampler: str = "ddpm", num_inference_steps: int | None = None,
               seed: int = 0, batch_size: int = 256, progress: bool = False, **sampler_kwargs) -> Tensor:
        """``n`` samples in model space, (n, *shape), on the CPU (unconditional: a text model is
        given the empty caption); :meth:`sample_batches` joined."""
        return torch.cat(list(self.sample_batches(
            n, sampler=sampler, num_inference_steps=num_inference_steps, seed=seed,
            batch_size=batch_size, progress=progress, **sampler_kwargs)))

    def sample_batches(self, n: int, *, sampler: str = "ddpm", num_inference_steps: int | None = None,
                       seed: int = 0, batch_size: int = 256, progress: bool = False,
                       **sampler_kwargs) -> Iterator[Tensor]:
        """:meth:`sample`'s samples batch by batch (checked against the limits first);
        ``num_inference_steps`` None: T for "ddpm", 20 for the others."""
        steps = num_inference_steps or (self.schedule.T if sampler == "ddpm" else 20)
        r = Request.of("generate", num_images_per_prompt=n, num_inference_steps=steps, seed=seed,
                       sampler=sampler, batch_size=batch_size, progress=progress, **sampler_kwargs)
        check(self, r, 1, self.item_pixels, [], names={"images": "n"})
        model = self.net
        if self.is_text_conditioned:
            model = cfg_model(self.net, self.model.encode([""]), {}, 1.0)
        return (sample_batch(self, model, len(rows), r, sampler, gens)
                for rows, gens, _ in r.seeded_batches())

    def to_images(self, x: Tensor) -> list[Image.Image]:
        """Samples in model space → PIL images (image data only)."""
        if self.info.kind != "image":
            raise KuosanError(f"'{self.name}' models vectors ({self.info.name}), not images")
        return [to_pil(img) for img in x.clamp(-1, 1)]

    def to_data(self, x: Tensor) -> Tensor:
        """Samples in model space → data space (pixels in [0, 1], or the toy's own units)."""
        return denormalize(x, self.info.normalization)
