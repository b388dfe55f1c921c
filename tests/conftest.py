"""Shared fixtures: one tiny text-to-image run, trained once per test session.

How the suite keeps bit-exact tests exact: a float32 result is reproducible only under the same
kernels, and torch picks kernels (and MKL/oneDNN their blocking) by the thread count; setting the
count back does not put oneDNN back in the state it was in. So (1) no test changes torch's thread
count: ``_threads_unchanged`` fails the test that does (a test of a ``--threads`` flag passes the
current count); (2) a bit-exact test makes both runs it compares inside the test, side by side,
never against a run made earlier by a fixture or another test; (3) across processes it pins
``OMP_NUM_THREADS`` in the child's environment. Where exactness cannot hold (a different reduction
order), the test's tolerance says in a comment where its bound comes from. (4) Every test starts
from the same global RNG seed (``_seeded``), so what it draws does not depend on which tests ran
before it; module-level and parametrize-time draws use a seeded ``torch.Generator``, since they
run at collection, before any fixture. docs/testing.md says more, and gives the tolerance rule.
"""

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

import kuosan.data as kd
from kuosan.train import TrainConfig, train

TINY_TEXT = TrainConfig.from_flat(data="shapes", model="s", steps=3, batch_size=8, warmup_steps=1, sample_every=0,
                        save_every=0, grid_size=2, grid_steps=2, text_encoder="transformer",
                        cond_drop=0.5)
TINY_SHAPES_ITEMS = 48


def train_tiny_text(config: TrainConfig, out, resume: bool = False) -> None:
    """Train on a 48-image ShapesWorld (instead of 20,000)."""
    mp = pytest.MonkeyPatch()
    mp.setattr(kd, "SHAPES_ITEMS", TINY_SHAPES_ITEMS)
    try:
        train(config, out, resume=resume, progress=False)
    finally:
        mp.undo()


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def same_pixels(a, b) -> bool:
    """Equal but for 8-bit rounding: ``a`` and ``b`` come from batches of other shapes, for which
    torch may pick other float32 kernels; their rounding (≈ 1e-6 of the scale, times 1 + 2·s for
    guidance s) can carry a value across a rounding boundary, one level at most, never more. In
    fp32 only: bf16 moves pixels by several levels between batch shapes."""
    a, b = np.asarray(a).astype(int), np.asarray(b).astype(int)
    return a.shape == b.shape and int(np.abs(a - b).max()) <= 1


def bag_of_words_embed(vocab: list[str], same: dict[str, str]):
    """A stand-in for MiniLM: each text as the bag of its words of ``vocab`` (a word of ``same``
    counts as its synonym), L2-normalised; a text with none of them gets an "other" column of
    its own."""

    def embed(texts: list[str]) -> torch.Tensor:
        rows = torch.zeros(len(texts), len(vocab) + 1)
        for i, t in enumerate(texts):
            for w in t.replace(",", " ").split():
                if same.get(w, w) in vocab:
                    rows[i, vocab.index(same.get(w, w))] += 1
            rows[i, -1] = float(rows[i].sum() == 0)
        return torch.nn.functional.normalize(rows, dim=-1)

    return embed


def benchmark_module(name: str) -> Iterator[ModuleType]:
    """benchmarks/NAME.py loaded as module NAME for a fixture to yield (registered in
    sys.modules while it is in use: dataclasses look their module up by name)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)


@pytest.fixture(autouse=True)
def _threads_unchanged():
    """Fail a test that changes torch's thread count (it would change later tests' kernels)."""
    n = torch.get_num_threads()
    yield
    changed = torch.get_num_threads()
    if changed != n:
        torch.set_num_threads(n)
        pytest.fail(f"the test changed torch's thread count from {n} to {changed}")


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Start every test from the same global RNG state, whatever ran before it."""
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_text_run(tmp_path_factory):
    """A text-conditioned checkpoint (joint transformer encoder) after 3 steps."""
    out = tmp_path_factory.mktemp("t2i") / "tiny-t2i"
    train_tiny_text(TINY_TEXT, out)
    return out
