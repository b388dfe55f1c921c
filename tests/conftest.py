"""Shared fixtures: one tiny text-to-image run, trained once per test session."""

import pytest

import kuosan.data as kd
from kuosan.train import TrainConfig, train

TINY_TEXT = TrainConfig(data="shapes", model="s", steps=3, batch_size=8, warmup_steps=1, sample_every=0,
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


@pytest.fixture(scope="session")
def tiny_text_run(tmp_path_factory):
    """A text-conditioned checkpoint (joint transformer encoder) after 3 steps."""
    out = tmp_path_factory.mktemp("t2i") / "tiny-t2i"
    train_tiny_text(TINY_TEXT, out)
    return out
