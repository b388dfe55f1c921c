"""What one Pipeline call is asked to do, as a value: the command and the web server build a
:class:`Request` and hand it to :meth:`kuosan.Pipeline.batches`; the Pipeline's methods
(``generate``, ``inpaint``, …) build one from their arguments.

Field names are the Python API's (diffusers' pipelines); None means "the model's default"
(:attr:`~kuosan.Pipeline.default_sampler`, :attr:`~kuosan.Pipeline.default_guidance`, the
task's strength or resampling), resolved in the :class:`~kuosan.result.Result`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from .errors import KuosanError
from .samplers import Generators

TASKS = ("generate", "inpaint", "outpaint", "vary", "img2img")
EDITS = TASKS[1:]  # the tasks that take an image


@dataclass(frozen=True)
class Request:
    """One call: the ``task`` (:data:`TASKS`) and its arguments.

    Every task: ``prompt`` (a string, or a list: generate and inpaint), ``negative_prompt``,
    ``num_images_per_prompt``, ``num_inference_steps``, ``guidance_scale``, ``seed`` (image i
    seeded ``seed + i``) or ``generator``, ``sampler`` and its ``sampler_kwargs`` (eta,
    spacing, …), ``batch_size``, ``progress``, ``callback`` (called as ``callback(x_t, t,
    output)`` after each model evaluation: the web server's progress and cancel). Edits: ``image``; inpaint: ``mask_image``
    (white = repaint), ``feather``; inpaint and outpaint: ``resample``; outpaint: ``left``,
    ``top``, ``right``, ``bottom``; vary and img2img: ``strength``.
    """

    task: str
    prompt: str | list[str] = ""
    negative_prompt: str | None = None
    num_images_per_prompt: int = 1
    num_inference_steps: int = 20
    guidance_scale: float | None = None
    seed: int = 0
    generator: Generators = None
    sampler: str | None = None
    image: Image.Image | list[Image.Image] | None = None
    mask_image: Image.Image | list[Image.Image] | None = None
    left: int = 0
    top: int = 0
    right: int = 0
    bottom: int = 0
    strength: float | None = None
    resample: int | None = None
    feather: float = 0.0
    batch_size: int = 64
    progress: bool = False
    sampler_kwargs: dict[str, Any] = field(default_factory=dict)
    callback: Callable[[Any, Any, Any], None] | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise KuosanError(f"unknown task {self.task!r}: expected one of {', '.join(TASKS)}")
        if self.task in EDITS and self.image is None:
            raise KuosanError(f"{self.task} needs an image")
        if self.task == "inpaint" and self.mask_image is None:
            raise KuosanError("inpaint needs a mask_image (white = repaint)")
