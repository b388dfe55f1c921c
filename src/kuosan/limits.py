"""Every limit on one call's work, in one place: the Python API, the command and the web server
check a request here before any work, and a value past a limit is refused naming its argument
(``num_images_per_prompt``), flag (``-n``) or field (``num``) and the limit.

```python
from kuosan import Pipeline
from kuosan.limits import Limits
pipe = Pipeline.load("shapes-32")                          # Limits() by default
pipe = Pipeline.load("shapes-32", limits=Limits.none())    # lifted (`kuosan … --no-limits`)
pipe = Pipeline.load("shapes-32", limits=Limits(images=100_000))
```

The work of a call is counted as images × steps × resample × canvas pixels (a model evaluation
costs about the same per pixel; classifier-free guidance doubles every term alike, so it is
left out). The defaults are sized on the 2-core CPU this project is developed on, where the
bundled shapes-32 (32×32, guided) takes about 60 ms per image and step in batches of 16-64
(one thread; measured with ``Pipeline.generate`` at 5 steps, December 2026). The default model,
emoji-32 (3.09 M parameters), costs about 1.7 times as much per image-step in fp32, 1.5 in bf16
(``benchmarks/generate_speed.py --model shapes-32,emoji-32``, docs/speed.md), so its largest call
takes up to 1.7 times as long.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields

from .errors import KuosanError, is_int
from .guidance import parse_composition


@dataclass(frozen=True)
class Limits:
    """The most one call may ask for; None lifts a limit.

    - ``images`` 10,000 per call: ``kuosan generate -n 5000`` (a folder for an FID) fits; a
      typo of a few extra zeros does not.
    - ``steps`` 1,000: the number of noise levels of the usual T = 1000 schedule, so DDPM's
      full chain (``kuosan sample --sampler ddpm``) fits.
    - ``resample`` 50: RePaint's resampling; its paper uses 10, and every resampling costs a
      whole extra pass.
    - ``border`` 512 pixels per outpainted side: 16 windows of a 32-pixel model on each side.
    - ``pixels`` 1024×1024 per canvas (an outpainted or inpainted image).
    - ``prompt_chars`` 1,000 characters: ten times the longest ShapesWorld caption, and past
      what the text encoders read (MiniLM's 256 tokens); a guard against a pasted file.
    - ``prompt_parts`` 8 ``AND`` parts: each part is one more model evaluation per step.
    - ``work`` 2.56e8 = 10,000 images × 25 steps × 32×32 pixels: about four hours of the
      2-core CPU at 60 ms per image-step of shapes-32.
    """

    images: int | None = 10_000
    steps: int | None = 1_000
    resample: int | None = 50
    border: int | None = 512
    pixels: int | None = 1024 * 1024
    prompt_chars: int | None = 1_000
    prompt_parts: int | None = 8
    work: int | None = 10_000 * 25 * 32 * 32

    @classmethod
    def none(cls) -> Limits:
        """No limits at all (``--no-limits``): the caller takes on any cost."""
        return cls(**{f.name: None for f in fields(cls)})

    def as_dict(self) -> dict[str, int | None]:
        """The limits by name (the web server's /api/info)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def check(self, *, images: int | None = None, steps: int | None = None, resample: int = 1,
              pixels: int | None = None, borders: Mapping[str, int] | None = None,
              prompts: Iterable[str] = (), negative_prompt: str | None = None,
              names: Mapping[str, str] | None = None) -> None:
        """Refuse a call past a limit, before any work: a :class:`LimitError` naming the argument
        (``names`` maps a limit to the caller's name for it: :data:`API_NAMES` by default). A
        value not given (None), or not an integer (the caller's own checks say what is wrong
        with it), is not checked; the work is checked when images, steps and pixels are."""
        names = {**API_NAMES, **(names or {})}
        numbers = {"images": images, "steps": steps, "resample": resample, **(borders or {}),
                   "pixels": pixels}
        numbers = {k: v for k, v in numbers.items() if is_int(v)}  # the rest: not checked here
        for key, value in numbers.items():
            limit = getattr(self, "border" if key in SIDES else key)
            if limit is not None and value > limit:
                raise LimitError(key, value, limit, names)
        for key, prompt in [*(("prompt", p) for p in prompts), ("negative_prompt", negative_prompt)]:
            if prompt is None:
                continue
            if self.prompt_chars is not None and len(prompt) > self.prompt_chars:
                raise LimitError("prompt_chars", len(prompt), self.prompt_chars, names, key)
            parts = len(parse_composition(prompt))
            if self.prompt_parts is not None and parts > self.prompt_parts:
                raise LimitError("prompt_parts", parts, self.prompt_parts, names, key)
        if self.work is not None and {"images", "steps", "resample", "pixels"} <= set(numbers):
            work = images * steps * resample * pixels
            if work > self.work:
                factors = (("images", images), ("steps", steps), ("resample", resample),
                           ("pixels", pixels))
                raise LimitError("work", work, self.work, names,
                                 tuple((k, v) for k, v in factors if k != "resample" or v != 1))


# The web server's (``kuosan serve``; ``--no-limits`` lifts them too): anyone who can reach the
# page may send a request, so one request is held to about a minute of the 2-core CPU.
WEB = Limits(
    images=16,  # a page's batch: a 4×4 grid
    steps=200,  # well past the 20-50 the samplers need (docs/samplers.md)
    resample=10,  # RePaint's paper value
    border=128,  # 4 windows of a 32-pixel model on a side
    pixels=256 * 256,  # an inpainted canvas (uploads for vary/img2img are resized to the model's)
    prompt_chars=500,
    prompt_parts=4,  # AND parts: each adds one model evaluation per step, outside the work count
    work=1_000 * 32 * 32,  # 1,000 image-steps of 32×32 at ~60 ms each: about a minute
)

SIDES = ("left", "top", "right", "bottom")

# what each limit is called in the Python API (Pipeline's arguments); the command and the web
# server pass their own names (flags, JSON fields) to Limits.check
API_NAMES = {"images": "num_images_per_prompt", "steps": "num_inference_steps",
             "resample": "resample", "pixels": "image", "prompt": "prompt",
             "negative_prompt": "negative_prompt", **{s: s for s in SIDES},
             "lift": "Pipeline.load(…, limits=Limits.none()) lifts it"}

_UNITS = {"images": "images in one call", "steps": "steps", "resample": "resamplings",
          "pixels": "pixels of canvas", "border": "pixels on a side",
          "prompt_chars": "characters", "prompt_parts": "AND parts", "work": "pixel-steps"}


class LimitError(KuosanError):
    """A request past one of :class:`Limits`: ``key`` (a field of Limits, or a side), the
    ``value`` asked for and the ``limit``; the message names the argument as ``names`` say."""

    def __init__(self, key: str, value: int, limit: int, names: Mapping[str, str],
                 detail: str | tuple = "") -> None:
        self.key, self.value, self.limit, self.names, self.detail = key, value, limit, names, detail
        super().__init__(str(self))

    def named(self, names: Mapping[str, str]) -> LimitError:
        """The same error, naming the argument as another shell calls it (flags, JSON fields)."""
        return LimitError(self.key, self.value, self.limit, {**self.names, **names}, self.detail)

    def __str__(self) -> str:
        kind = "border" if self.key in SIDES else self.key
        if kind in ("prompt_chars", "prompt_parts"):
            name, asked = self.names[self.detail], f"{self.value} {_UNITS[kind]}"
        elif kind == "work":  # detail: the factors, ((limit, value), …), pixels last
            name = " × ".join([*(self.names[k] for k, _ in self.detail[:-1]), "pixels"])
            asked = "×".join(str(v) for _, v in self.detail) + f" = {self.value:.3g}"
        else:
            name, asked = self.names[self.key], f"{self.value}"
        limit = f"{self.limit:.3g}" if kind == "work" else f"{self.limit:,}"
        return (f"{name}: {asked} is over the limit of {limit} {_UNITS[kind]} "
                f"({self.names['lift']})")


def check_count(what: str, n: object) -> int:
    """``n`` if it is an integer >= 1, else a KuosanError naming ``what``."""
    if not is_int(n) or n < 1:
        raise KuosanError(f"{what} must be an integer >= 1, got {n!r}")
    return n

