"""Scenes drawn by a model of single emoji: an EmojiWorld caption is laid out, each emoji is drawn
in its own tile by the model, and the tiles are put on a white canvas (docs/emoji-scenes.md,
"Scenes from emoji-32").

```python
from kuosan import Pipeline
from kuosan.scenes import ScenePipeline
scenes = ScenePipeline(Pipeline.load("emoji-32"), size=64)
result = scenes.generate("a red apple to the left of a fox face, glossy style", seed=0)
result[0]                                     # a 64×64 PIL image
scenes.layout(result.prompts[0], seed=0)      # its tiles: Tile(caption, x, y, side) each
scenes.enhance_prompt("a shiny puppy on top of a fire truck")
# 'a dog above a fire engine, glossy style'
```

This is layout-grounded generation (LMD, Lian et al. 2023): a layout of boxes from the prompt,
then each box drawn with its own caption. The layout comes from the caption's grammar
(:func:`kuosan.metrics.emoji_scenes.parse`) by EmojiWorld's own geometry
(:func:`kuosan.data.emoji_scenes.place_tiles`: the sizes and places of its training scenes).
Its tiles never overlap and lie on white, so MultiDiffusion's joint denoising (Bar-Tal et al.
2023: each region denoised with its own caption, overlaps averaged) separates into one
independent sample per tile. The model draws "NAME, STYLE style" at its own size, and the picture
is resized (Lanczos) to its tile and put in place, as EmojiWorld's scenes are made from the real
pictures (:func:`kuosan.data.emoji_scenes.render_scene`).

Seeds: image i of a call (seeded ``seed + i``) draws its layout with numpy's
``default_rng(seed + i)`` and its k-th emoji with a torch generator seeded ``3·(seed + i) + k``,
so image i is the same whatever the batch. ``layout_seed=L`` gives every image the layout of
``default_rng(L)``: one layout, each image's own drawings (variations of a scene). What it cannot draw: emoji that touch or overlap, a
background, a caption outside the grammar (:meth:`ScenePipeline.enhance_prompt` maps free words).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from .checkpoint import load_captions
from .data.emoji import split_caption
from .data.emoji_scenes import COUNTS, GRAMMAR_WORDS, article, paste_tiles, place_tiles
from .errors import KuosanError, is_int
from .images import pil_to_uint8
from .limits import check_count
from .metrics.emoji_scenes import parse
from .request import SEED_RANGE, Request
from .result import Result

if TYPE_CHECKING:
    from .enhance_scenes import SceneLanguage
    from .pipeline import Pipeline

__all__ = ["MAX_EMOJI", "SCENE_SIZES", "ScenePipeline", "Tile", "draws_scenes", "is_scene_caption",
           "object_caption", "scene_captions"]

SCENE_SIZES = range(32, 257, 16)  # canvas sides: EmojiWorld's tiles are 0.26-0.55 of the side
MAX_EMOJI = max(COUNTS.values())  # emoji in a scene: the seed of emoji k is 3·(seed + i) + k


@dataclass(frozen=True)
class Tile:
    """One emoji of a scene: the ``caption`` its model draws ("red apple, glossy style") and
    its tile's top-left corner ``(x, y)`` and ``side``, in canvas pixels."""

    caption: str
    x: int
    y: int
    side: int


def object_caption(name: str, style: str | None) -> str:
    """An emoji model's caption of one emoji: "NAME, STYLE style", or "NAME" with no style."""
    return f"{name}, {style} style" if style else name


def scene_captions(captions: Sequence[str]) -> list[str]:
    """Single-emoji captions ("red apple, flat style") as scene captions ("a red apple in the
    center, flat style"), for those whose NAME a scene caption can hold (no ':' and none of
    the grammar's words): the language :class:`~kuosan.enhance_scenes.SceneLanguage` reads."""
    out = []
    for caption in captions:
        name, style = split_caption(caption)
        if name and not GRAMMAR_WORDS.search(name):
            out.append(f"{article(name)} in the center" + (f", {style} style" if style else ""))
    return list(dict.fromkeys(out))


def draws_scenes(pipe: Pipeline) -> bool:
    """Whether ``pipe`` is a text model of single emoji, which draws scene captions one emoji at
    a time (what ``kuosan generate`` hints at and the web page offers)."""
    return pipe.is_text_conditioned and getattr(pipe.info, "name", None) == "emoji"


def is_scene_caption(text: str) -> bool:
    """Whether ``text`` is a caption of EmojiWorld's grammar (it names places or relations)."""
    try:
        parse(text)
    except KuosanError:
        return False
    return True


class ScenePipeline:
    """EmojiWorld scenes drawn by ``pipe``, a text-to-image model of single emoji (module
    docstring), on a ``size`` × ``size`` canvas (a multiple of 16 from 32 to 256); with
    ``layout_seed``, every image has the layout that seed draws."""

    def __init__(self, pipe: Pipeline, size: int = 64, layout_seed: int | None = None) -> None:
        if not pipe.is_text_conditioned or pipe.info.kind != "image":
            raise KuosanError(f"scenes need a text-to-image model of single emoji; '{pipe.name}' "
                              f"is not one")
        if getattr(pipe.info, "name", None) == "emojiworld":
            raise KuosanError(f"'{pipe.name}' draws whole scenes itself (EmojiWorld): give it the "
                              f"caption without --scene")
        if not is_int(size) or size not in SCENE_SIZES:
            raise KuosanError(f"scene size must be a multiple of 16 from {SCENE_SIZES.start} "
                              f"to {SCENE_SIZES.stop - 1}, got {size!r}")
        if layout_seed is not None and (not is_int(layout_seed) or not 0 <= layout_seed < 2**63):
            raise KuosanError(f"layout seed must be an integer from 0 to 2**63 - 1, got "
                              f"{layout_seed!r}")
        self.pipe, self.size, self.layout_seed = pipe, size, layout_seed
        self._language: SceneLanguage | None = None

    def layout(self, caption: str, seed: int) -> list[Tile]:
        """The tiles of ``caption`` (a caption of EmojiWorld's grammar) for the image seeded
        ``seed``, in caption order."""
        spec = parse(caption)
        tiles, _, _ = place_tiles(np.random.default_rng(seed), self.size, spec.kind,
                                  spec.relation, spec.position)
        return [Tile(object_caption(name, spec.style), x, y, side)
                for name, (x, y, side) in zip(spec.names, tiles, strict=True)]

    def generate(self, prompt: str | Sequence[str], *, num_images_per_prompt: int = 1,
                 num_inference_steps: int = 20, guidance_scale: float | None = None, seed: int = 0,
                 sampler: str | None = None, negative_prompt: str | None = None,
                 batch_size: int = 64, progress: bool = False, enhance_prompt: bool = False,
                 **sampler_kwargs) -> Result:
        """Scenes for a caption (or a list), :meth:`kuosan.Pipeline.generate`'s arguments; the
        guidance, sampler and negative prompt apply to each emoji. ``enhance_prompt``: free
        words through :meth:`enhance_prompt` first (``settings["user_prompt"]`` keeps them)."""
        typed = prompt
        if enhance_prompt:
            prompt = (self.enhance_prompt(prompt) if isinstance(prompt, str)
                      else [self.enhance_prompt(p) for p in prompt])
        result = Result.join(self.batches(Request.of(
            "generate", prompt=prompt, negative_prompt=negative_prompt, seed=seed,
            num_images_per_prompt=num_images_per_prompt, num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale, sampler=sampler, batch_size=batch_size,
            progress=progress, **sampler_kwargs)))
        if enhance_prompt:
            user = typed if isinstance(typed, str) else list(typed)
            result = replace(result, settings={**result.settings, "user_prompt": user})
        return result

    def batches(self, request: Request) -> Iterator[Result]:
        """The scenes of a generate ``request``, ``request.batch_size`` at a time. Every
        caption is parsed and the limits checked (on the emoji drawn) before this returns."""
        if request.task != "generate":
            raise KuosanError(f"scenes are only generated, not {request.task!r}: an edit runs on the "
                              f"model itself, at its own size")
        if request.generator is not None:
            raise KuosanError("scenes are seeded with seed= (each emoji has its own seed, "
                              "module kuosan.scenes), not generator=")
        prompts = request.prompts()
        n = len(prompts) * check_count("num_images_per_prompt", request.num_images_per_prompt)
        top = (SEED_RANGE[1] - MAX_EMOJI + 1) // MAX_EMOJI - (n - 1)  # emoji seeds fit torch's
        if not is_int(request.seed) or not 0 <= request.seed <= top:
            raise KuosanError(f"a scene's seed must be an integer from 0 to {top} (its layout is "
                              f"drawn by numpy, image i seeded seed + i), got {request.seed!r}")
        plan = list(request.seeded_batches(len(prompts)))  # checks batch_size
        try:
            layouts = [self.layout(prompts[i // request.num_images_per_prompt],
                                   request.seed + i if self.layout_seed is None else self.layout_seed)
                       for i in range(n)]
        except KuosanError as err:
            raise KuosanError(f"{err} (enhance_prompt, or --enhance, maps free words to one)") from None
        # a scene's work: its emoji, each the model's size; the emoji of a batch are one call
        self.pipe.limits.check(
            images=n, steps=request.num_inference_steps,
            pixels=max(map(len, layouts)) * self.pipe.item_pixels, prompts=prompts,
            negative_prompt=request.negative_prompt)
        self.pipe.limits.check(images=max(sum(len(layouts[i]) for i in rows) for rows, _, _ in plan),
                               names={"images": "batch_size × emoji per scene"})
        return self._batches(request, plan, prompts, layouts)

    def _batches(self, request: Request, plan: list, prompts: list[str],
                 layouts: list[list[Tile]]) -> Iterator[Result]:
        for rows, _, seeds in plan:
            tiles = [t for i in rows for t in layouts[i]]
            gens = [torch.Generator().manual_seed(MAX_EMOJI * (request.seed + i) + k)
                    for i in rows for k in range(len(layouts[i]))]
            drawn = self.pipe.run(replace(request, prompt=[t.caption for t in tiles],
                                          num_images_per_prompt=1, generator=gens))
            pictures = iter(pil_to_uint8(im.convert("RGB"), 3) for im in drawn)
            images = [Image.fromarray(paste_tiles(self.size, [(next(pictures), t.x, t.y, t.side)
                                                               for t in layouts[i]]))
                      for i in rows]
            yield replace(drawn, images=images, seeds=seeds,
                          prompts=[prompts[i // request.num_images_per_prompt] for i in rows],
                          settings={**drawn.settings, "scene": self.size, **(
                              {} if self.layout_seed is None else {"layout_seed": self.layout_seed})})

    def enhance_prompt(self, text: str) -> str:
        """Free words as a scene caption of the emoji this model draws (its captions.json,
        :func:`scene_captions`, :class:`~kuosan.enhance_scenes.SceneLanguage`); unchanged when
        nothing maps."""
        if self._language is None:
            from .enhance_scenes import SceneLanguage

            captions = load_captions(self.pipe.path) if self.pipe.path is not None else None
            if not captions:
                raise KuosanError(f"prompt enhancement for scenes needs the captions of "
                                  f"'{self.pipe.name}' (its captions.json)")
            self._language = SceneLanguage(scene_captions(captions))
        return self._language.rewrite(text).text
