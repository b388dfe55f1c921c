"""What one Pipeline call is asked to do, as a value: the command and the web server build a
:class:`Request` and hand it to :meth:`kuosan.Pipeline.batches`; the Pipeline's methods
(``generate``, ``inpaint``, …) build one from their arguments.

Field names are the Python API's (diffusers' pipelines); None means "the model's default"
(:attr:`~kuosan.Pipeline.default_sampler`, :attr:`~kuosan.Pipeline.default_guidance`, the
task's strength or resampling), resolved in the :class:`~kuosan.result.Result`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from PIL import Image

from .errors import KuosanError, is_int
from .limits import check_count
from .samplers import Generators

TASKS = ("generate", "inpaint", "outpaint", "vary", "img2img")
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed takes
EDITS = TASKS[1:]  # the tasks that take an image


@dataclass(frozen=True)
class Request:
    """One call: the ``task`` (:data:`TASKS`) and its arguments.

    Every task: ``prompt`` (a string, or a list: generate and inpaint), ``negative_prompt``,
    ``num_images_per_prompt``, ``num_inference_steps``, ``guidance_scale``, ``seed`` (image i
    seeded ``seed + i``) or ``generator``, ``sampler`` and its ``sampler_kwargs`` (eta,
    spacing, …), ``batch_size``, ``progress``, ``callback`` (called as ``callback(x_t, t,
    output)`` after each model evaluation: the web server's progress and cancel). Edits:
    ``image``; inpaint: ``mask_image``
    (white = repaint), ``feather``; inpaint and outpaint: ``resample``; outpaint: ``left``,
    ``top``, ``right``, ``bottom``; vary and img2img: ``strength``.

    Images are made in batches of ``batch_size``: :meth:`seeded_batches`.
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

    @classmethod
    def of(cls, task: str, **kwargs: Any) -> Request:
        """A Request from a Pipeline method's keyword arguments: those that are not fields of
        Request (eta, spacing, …) go to ``sampler_kwargs``; a prompt None is ""."""
        known = {f.name for f in fields(cls)}
        own = {k: v for k, v in kwargs.items() if k in known}
        if own.get("prompt", "") is None:
            own["prompt"] = ""
        return cls(task, **own, sampler_kwargs={k: v for k, v in kwargs.items() if k not in known})

    def prompts(self) -> list[str]:
        """``prompt`` as a list (one string, or a list or tuple of them)."""
        return as_list(self.prompt, str, "prompt", "a string")

    def images(self, what: str = "image") -> list[Image.Image]:
        """``image`` (or ``mask_image``) as a list of PIL images."""
        return as_list(getattr(self, what), Image.Image, what, "a PIL image")

    def seeded_batches(self, edits: int = 1) -> Iterator[tuple[range, Generators, list[int] | None]]:
        """(rows, generators, seeds) of each batch of the ``edits × num_images_per_prompt``
        images: image i gets its own generator seeded ``seed + i`` (so it is the same whatever
        the batch size), unless ``generator`` is given: one torch.Generator draws for all in
        one batch, a list gives one per image (then seeds is None). Checked now; lazy after:
        nothing is made for batches not reached."""
        n = edits * check_count("num_images_per_prompt", self.num_images_per_prompt)
        size = check_count("batch_size", self.batch_size)
        gen = self.generator
        if gen is None and (not is_int(self.seed)
                            or not SEED_RANGE[0] <= self.seed <= SEED_RANGE[1] - (n - 1)):
            raise KuosanError(f"seed must be an integer from {SEED_RANGE[0]} to "
                              f"{SEED_RANGE[1] - (n - 1)} (for {n} images, seeded seed + i), "
                              f"got {self.seed!r}")
        if isinstance(gen, torch.Generator):
            return iter([(range(n), gen, None)])
        if gen is not None and len(gen) != n:
            raise KuosanError(f"{len(gen)} generators for {n} images")
        rows = (range(start, min(n, start + size)) for start in range(0, n, size))
        if gen is not None:
            return ((r, list(gen[r.start:r.stop]), None) for r in rows)
        return ((r, [torch.Generator().manual_seed(self.seed + i) for i in r], [self.seed + i for i in r])
                for r in rows)


def as_list(value: object, kind: type, what: str, described: str) -> list:
    """``value`` as a list of ``kind`` (one item, or a list or tuple of them)."""
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    for item in items:
        if not isinstance(item, kind):
            raise KuosanError(f"{what} must be {described} or a list of them, got {type(item).__name__}")
    if not items:
        raise KuosanError(f"{what}: the list is empty")
    return items
