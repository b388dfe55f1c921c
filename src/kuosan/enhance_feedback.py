"""Visual feedback for prompt enhancement: draw a few candidates from the top rewrites, keep
the one whose picture best matches (BeautifulPrompt's reward from generated pictures).

    from kuosan.enhance import ShapesLanguage
    from kuosan.enhance_feedback import generate_with_feedback
    fb = generate_with_feedback(pipe, "a crimson ball over a navy box", ShapesLanguage(), k=4)
    fb.image, fb.prompt, fb.rewards

Cost: k pictures instead of one, plus k reward calls (`shapes_reward`: the ShapesWorld scorer,
about 3 ms at 32×32), so it is off by default.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from kuosan.enhance import CaptionLanguage, Rewrite
from kuosan.errors import KuosanError, is_int
from kuosan.metrics.shapes import score

__all__ = ["Feedback", "best_candidate", "feedback_plan", "generate_with_feedback",
           "shapes_reward"]

Reward = Callable[[Image.Image, str], float]


def shapes_reward(image: Image.Image, caption: str) -> float:
    """r = 10·satisfied + (number of stated attributes right, of shape, colour, size,
    position, relation, count, background): the ShapesWorld scorer reading the picture."""
    result = score(image, caption)
    flags = result[1:8]
    return 10.0 * bool(result.satisfied) + sum(1.0 for f in flags if f)


def best_candidate(images: Sequence[Image.Image], target: str, reward: Reward) -> tuple[int,
                                                                                          list]:
    """(index of the image with the highest reward(image, target), the rewards); ties go to
    the earliest (the top rewrite at the first seed comes first)."""
    rewards = [float(reward(im, target)) for im in images]
    return int(np.argmax(rewards)), rewards


def feedback_plan(rewrite: Rewrite, k: int) -> list[str]:
    """The prompts of k candidates: the top rewrites in turn (r0, r1, …, r0, r1, …); candidate
    i is drawn with seed + i, so candidate 0 is the picture without feedback."""
    if not is_int(k) or k < 1:
        raise KuosanError(f"the number of feedback candidates must be an integer >= 1, got {k!r}")
    pool = list(rewrite.candidates) or [rewrite.text]
    return [pool[i % len(pool)] for i in range(k)]


class Feedback(NamedTuple):
    """The kept image and its prompt; every candidate's prompt, seed and reward."""

    image: Image.Image
    prompt: str
    rewrite: Rewrite
    prompts: list[str]
    seeds: list[int]
    rewards: list[float]
    chosen: int


def generate_with_feedback(pipe: Any, text: str, language: CaptionLanguage, *, k: int = 4,
                           seed: int = 0, reward: Reward = shapes_reward,
                           **generate_kwargs: Any) -> Feedback:
    """Rewrite `text`, draw k pictures from the top rewrites (`feedback_plan`; candidate i
    seeded seed + i), and keep the one whose picture best matches the top rewrite
    by `reward`. Cost: k pictures instead of one (k·t_image) plus k reward calls."""
    rw = language.rewrite(text)
    prompts = feedback_plan(rw, k)
    images = pipe.generate(prompts, seed=seed, **generate_kwargs)
    chosen, rewards = best_candidate(images, rw.text, reward)
    return Feedback(images[chosen], prompts[chosen], rw, prompts,
                    [seed + i for i in range(k)], rewards, chosen)
