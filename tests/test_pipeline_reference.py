"""The bundled shapes-32 reproduces the images it made before the Pipeline was refactored.

tests/data/shapes32_reference/ holds PNGs made by the pre-refactor Pipeline (commit e676402) with
the calls in :func:`reference_images` (few steps, CPU), and ``machine.json`` says where: torch's
version, its CPU kernel level (``torch.backends.cpu.get_cpu_capability()``) and the thread count.
Regenerate them only on purpose: ``python tests/test_pipeline_reference.py --write``.

What the comparison guarantees, and why it is this one:

- On a machine like the one that wrote them (same torch version, CPU kernel level and thread
  count) the pixels must be **equal**, bit for bit: the same float kernels run in the same order,
  so any difference is a change in the code (a seed drawn in another order, a step skipped, a
  batch split otherwise).
- Elsewhere (another CPU's SIMD width or another thread count picks other matmul/conv blockings,
  which sum in another order; a GPU), float32 results differ in the last bits, which the
  sampler carries to the output as differences of order 1e-5 in [-1, 1]. Rounding to 0..255
  (v = round((x + 1)·127.5)) turns that into at most **one level**, and only for values within
  about 1e-3 of a .5 rounding boundary: a few pixels. So there each pixel may differ by ≤ 1 level
  and at most 2 % of the values may differ at all. A real change to the images (another seed,
  sampler, step count, prompt or mask handling) moves most pixels by many levels and fails
  both machines' checks.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kuosan import Pipeline

REFERENCE = Path(__file__).parent / "data" / "shapes32_reference"
MAX_LEVELS = 1  # rounding of a value near .5 on another machine (see the module docstring)
MAX_DIFFERING = 0.02  # share of values that may differ by one level on another machine


def reference_images(pipe: Pipeline) -> dict[str, list[Image.Image]]:
    """The calls the reference was made with: generate, inpaint (RePaint), outpaint, vary."""
    from kuosan.data.shapes import Obj, Scene, render

    source = render(Scene((Obj("circle", "red", "large", (9.0, 16.0), 14.0),), "white", 32))
    mask = np.zeros((32, 32), np.uint8)
    mask[6:26, 18:32] = 255
    return {
        "generate": list(pipe.generate(["a red circle", "a blue square above a green cross"],
                                       num_images_per_prompt=2, num_inference_steps=6, seed=3)),
        "inpaint": list(pipe.inpaint(source, Image.fromarray(mask), "a red circle to the left of a "
                                     "blue square", num_images_per_prompt=2, num_inference_steps=5,
                                     resample=2, seed=1)),
        "outpaint": list(pipe.outpaint(source, right=8, prompt="a red circle",
                                       num_inference_steps=4, seed=2)),
        "vary": list(pipe.vary(source, num_images=2, num_inference_steps=6, seed=4)),
    }


def machine() -> dict:
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads()}


@pytest.fixture(scope="module")
def made():
    # fp32, as the reference was made: `auto` is bf16 on a CPU with native bf16
    return reference_images(Pipeline.load("shapes-32", device="cpu", precision="fp32"))


@pytest.mark.parametrize("task", ["generate", "inpaint", "outpaint", "vary"])
def test_shapes32_reproduces_its_previous_images(made, task):
    for i, img in enumerate(made[task]):
        assert_same_pixels(img, Image.open(REFERENCE / f"{task}_{i}.png"), f"{task} image {i}")


def assert_same_pixels(got: Image.Image, want: Image.Image, what: str) -> None:
    """Equal on a machine like the reference's (machine.json); elsewhere each value within
    MAX_LEVELS and at most MAX_DIFFERING of them different (module docstring)."""
    exact = json.loads((REFERENCE / "machine.json").read_text()) == machine()
    got_px, want_px = np.asarray(got).astype(int), np.asarray(want).astype(int)
    assert got_px.shape == want_px.shape, what
    diff = np.abs(got_px - want_px)
    if exact:
        assert diff.max() == 0, f"{what}: {np.count_nonzero(diff)} values changed"
    else:
        assert diff.max() <= MAX_LEVELS, f"{what}: a value moved {diff.max()} levels"
        assert np.mean(diff > 0) <= MAX_DIFFERING, f"{what}: {np.mean(diff > 0):.1%} differ"


def write() -> None:
    """Write the reference (only with the code it is meant to pin)."""
    REFERENCE.mkdir(parents=True, exist_ok=True)
    pipe = Pipeline.load("shapes-32", device="cpu", precision="fp32")
    for task, images in reference_images(pipe).items():
        for i, img in enumerate(images):
            img.save(REFERENCE / f"{task}_{i}.png")
    (REFERENCE / "machine.json").write_text(json.dumps(machine(), indent=2) + "\n")


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    write()
