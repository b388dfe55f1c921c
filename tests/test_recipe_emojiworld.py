"""recipes/emojiworld-64.sh picks where its run starts: the run folder's own state (an exact
resume), else the weights carried in checkpoints/emojiworld-64, else the bundled emoji-32; and its
`carry` mode exports the run's EMA there. A stand-in `kuosan` on PATH prints the arguments the
recipe gives it, so no training runs here.
"""

import os
import stat
import subprocess
from pathlib import Path

import pytest

RECIPE = Path(__file__).parents[1] / "recipes" / "emojiworld-64.sh"
CARRY = Path(__file__).parents[1] / "checkpoints" / "emojiworld-64"


@pytest.fixture
def run_recipe(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "kuosan"
    fake.write_text('#!/usr/bin/env bash\necho "kuosan $*"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}

    def run(*args: str) -> str:
        done = subprocess.run(["bash", str(RECIPE), *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, check=True)
        return done.stdout

    return run


def test_a_run_folder_with_state_resumes_with_its_own_settings(tmp_path, run_recipe):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "training_state.json").write_text("{}")
    out = run_recipe("run")
    assert "--resume" in out and "--out run" in out
    assert "--init-from" not in out and "--preset" not in out  # the run keeps its own


def test_a_new_run_starts_from_the_carried_weights_when_there_are_some(tmp_path, run_recipe):
    carried = tmp_path / "checkpoints" / "emojiworld-64"
    carried.mkdir(parents=True)
    (carried / "config.json").write_text("{}")
    out = run_recipe("run")
    assert "--init-from checkpoints/emojiworld-64 --warmup 50" in out and "--resume" not in out


def test_a_new_run_without_carried_weights_starts_from_emoji_32(tmp_path, run_recipe):
    out = run_recipe("run")
    assert "--init-from emoji-32 --warmup 200" in out and "--size 64" in out


def test_carry_exports_the_run_into_the_checkpoints_folder(tmp_path, run_recipe):
    out = run_recipe("run", "carry")
    assert out.startswith("kuosan export run --out checkpoints/emojiworld-64 --replace")
    assert "--attribution Emoji graphics from Twemoji" in out and "train" not in out


@pytest.mark.skipif(not (CARRY / "config.json").exists(), reason="no carried EmojiWorld weights")
def test_the_carried_weights_load_and_draw_a_64_pixel_scene():
    from kuosan import Pipeline

    pipe = Pipeline.load(str(CARRY))
    images = pipe.generate(["a red apple to the left of a fox face, glossy style"],
                           num_inference_steps=2, seed=0).images
    assert images[0].size == (64, 64)
