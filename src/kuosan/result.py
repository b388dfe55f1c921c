"""What a Pipeline call returns: the images and everything that made them.

```python
result = pipe.generate("a red circle", num_images_per_prompt=4, seed=0)
result[0], len(result), list(result)      # the images, as the list it used to return
result.seeds, result.sampler, result.steps, result.guidance, result.model_hash
result.parameters(2)                      # image 2's settings: what its PNG carries
```
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, overload

from PIL import Image

from . import __version__


@dataclass(frozen=True, eq=False)
class Result(Sequence[Image.Image]):
    """The images of one call (``images``) and what was used, resolved: no None stands for "the
    model's default" here.

    Backward compatibility: ``Pipeline`` methods returned ``list[PIL.Image]`` before; a Result
    is a read-only sequence of those images (``result[i]``, ``len``, iteration, unpacking,
    ``zip``), so code that indexed or looped over the list works unchanged; ``list(result)``
    or ``result.images`` give the plain list (for ``+``, ``.append`` or ``==`` on lists).

    ``prompts`` and ``seeds`` hold one entry per image (``seeds`` is None when the call was
    given ``generator=``: a generator's state is not a seed); ``strength`` is set for vary and
    img2img, ``resample`` for inpaint and outpaint; ``settings`` holds the task's own values
    (``feather``; ``left``/``top``/``right``/``bottom``). ``model`` is the name or folder the
    pipeline was loaded from and ``model_hash`` its weights' digest
    (:func:`kuosan.checkpoint.weights_digest`, computed once at load); ``precision`` the
    network's arithmetic ("fp32" or "bf16", :mod:`kuosan.precision`); ``attribution`` the credit
    the model's training data asks of its pictures (config.json "attribution"), or None.
    """

    task: str
    images: list[Image.Image]
    prompts: list[str]
    negative_prompt: str | None
    seeds: list[int] | None
    sampler: str
    steps: int
    guidance: float
    model: str
    model_hash: str
    strength: float | None = None
    resample: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    precision: str = "fp32"
    attribution: str | None = None
    kuosan_version: str = __version__

    @overload
    def __getitem__(self, i: int) -> Image.Image: ...
    @overload
    def __getitem__(self, i: slice) -> list[Image.Image]: ...
    def __getitem__(self, i):
        return self.images[i]

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self) -> Iterator[Image.Image]:
        return iter(self.images)

    def __repr__(self) -> str:
        return (f"Result({self.task}, {len(self)} images, sampler={self.sampler!r}, "
                f"steps={self.steps}, guidance={self.guidance}, model={self.model!r})")

    def parameters(self, i: int = 0) -> dict[str, Any]:
        """Image ``i``'s settings, the keys that ``kuosan generate --from-png`` reads: prompt,
        negative_prompt, seed (None with ``generator=``), num (1), sampler, steps, guidance,
        model, model_hash, precision, kuosan_version, command (the task), and the task's own (strength,
        resample, feather, left, …)."""
        own = {k: v for k, v in (("strength", self.strength), ("resample", self.resample))
               if v is not None}
        return {"prompt": self.prompts[i], "negative_prompt": self.negative_prompt,
                "seed": None if self.seeds is None else self.seeds[i], "num": 1,
                "sampler": self.sampler, "steps": self.steps, "guidance": self.guidance,
                "model": self.model, "model_hash": self.model_hash, "precision": self.precision,
                "kuosan_version": self.kuosan_version, "command": self.task, **own,
                **self.settings}

    @classmethod
    def join(cls, parts: Iterable[Result]) -> Result:
        """Batches of one call (``Pipeline.batches``) as one Result, images in order."""
        parts = list(parts)
        seeds = None if any(p.seeds is None for p in parts) else [s for p in parts for s in p.seeds]
        return replace(parts[0], images=[im for p in parts for im in p.images],
                       prompts=[t for p in parts for t in p.prompts], seeds=seeds)
