"""benchmarks/caption_accuracy.py on a tiny (untrained) text model: report structure, not values."""

import json
from types import SimpleNamespace

import pytest
import torch
from conftest import benchmark_module
from PIL import Image

from kuosan.data.shapes import is_heldout
from kuosan.metrics.shapes import ATTRIBUTES, parse
from kuosan.train import TrainConfig, train


@pytest.fixture(scope="module")
def bench():
    yield from benchmark_module("caption_accuracy")


@pytest.fixture(scope="module")
def text_model(tiny_text_run):
    return tiny_text_run


def test_report_structure_and_counts(bench, text_model, tmp_path, capsys):
    report = tmp_path / "out" / "capacc"
    threads = torch.get_num_threads()  # the flag's path, without changing the process's state
    argv = ["--model", str(text_model), "-n", "6", "--heldout-n", "3", "--steps", "2",
            "--guidance", "1,2", "--threads", str(threads), "--report", str(report), "--note", "tiny test"]
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out

    data = json.loads((tmp_path / "out" / "capacc.json").read_text())
    md = (tmp_path / "out" / "capacc.md").read_text()
    meta = data["meta"]
    assert meta["note"] == "tiny test" and meta["threads"] == threads and meta["torch"]
    assert "--heldout-n 3" in meta["command"] and meta["command"] in md
    assert meta["models"]["tiny-t2i"]["encoder"] == "transformer"

    captions = data["captions"]
    assert len(captions) == 9
    assert [c["heldout"] for c in captions] == [False] * 6 + [True] * 3
    for c in captions:  # each caption is in the grammar, and held out exactly when marked
        assert is_heldout(parse(c["text"])) == c["heldout"]
        assert parse(c["text"]).kind == c["kind"]
    # the two caption streams are independent: more held-out captions leave the seen ones alone
    assert [c.text for c in bench.draw_captions(6, 5, 0)[:6]] == [c["text"] for c in captions[:6]]

    rows = data["rows"]
    assert [(r["steps"], r["guidance"]) for r in rows] == [(2, 1.0), (2, 2.0)]
    for r in rows:
        assert r["model"] == "tiny-t2i" and r["encoder"] == "transformer"
        counts = r["counts"]
        assert counts["single"] + counts["pair"] + counts["count"] == 6
        assert counts["heldout"] == 3 and counts["all"] == 9
        bits = r["satisfied"]
        assert len(bits) == 9 and set(bits) <= {"0", "1"}
        for group, acc in r["accuracy"].items():  # each accuracy is the share of its bits
            idx = [i for i, c in enumerate(captions) if group == "all"
                   or (c["heldout"] if group == "heldout" else not c["heldout"] and c["kind"] == group)]
            assert len(idx) == counts[group]
            if idx:
                # a ratio of small integers: approx's default rel 1e-6 ≫ its float rounding
                assert acc == pytest.approx(sum(bits[i] == "1" for i in idx) / len(idx))
            else:
                assert acc is None
        assert set(r["attributes"]["all"]) == {"satisfied", *ATTRIBUTES}
        assert r["images_per_s"] > 0 and not r["is_target"]  # 20 steps was not run

    # tables: printed and in the .md, one line per row, header columns as documented
    for text in (printed, md):
        lines = text.splitlines()
        head = next(i for i, line in enumerate(lines) if line.startswith("| model | encoder |"))
        assert "single % (n=" in lines[head] and "held-out % (n=3)" in lines[head]
        assert "all % (n=9)" in lines[head] and "images/s" in lines[head]
        assert sum(line.startswith("| tiny-t2i |") for line in lines) == 2 * len(rows)
        assert "targets not measured" in text
    # the sample grid: at most 16 of the captions, at the closest setting to the targets one
    grid = Image.open(tmp_path / "out" / "capacc_tiny-t2i.png")
    assert grid.size == (4 * (4 * 34 + 2), 4 * (3 * 34 + 2))  # 9 images: 4 columns, 3 rows
    assert data["grids"]["tiny-t2i"] == {"file": "capacc_tiny-t2i.png", "steps": 2, "guidance": 2.0}
    for i, c in enumerate(captions):
        assert f"{i + 1}. {c['text']}" in md
    # one row appended to the history table beside the report, its figures from the report
    history = (tmp_path / "out" / "caption_accuracy_history.jsonl").read_text().splitlines()
    assert len(history) == 1
    row = json.loads(history[0])
    assert row["model"] == "tiny-t2i" and row["command"] == meta["command"]
    assert row["weights"] == meta["models"]["tiny-t2i"]["weights"] and row["date"] == meta["date"]
    assert row["figures"] == bench.history_figures(rows)
    assert [s["all_pct"] for s in row["figures"]["settings"]] == [
        round(100 * r["accuracy"]["all"], 1) for r in rows]


def test_targets_setting_is_added_at_20_steps(bench):
    pipe = SimpleNamespace(default_guidance=4.0)
    assert bench.settings_for(pipe, [10, 20], [1.0, 2.0]) == [
        (10, 1.0), (10, 2.0), (20, 1.0), (20, 2.0), (20, 4.0)]
    assert bench.settings_for(pipe, [10], [1.0]) == [(10, 1.0)]
    default = SimpleNamespace(default_guidance=3.0)
    assert bench.settings_for(default, [20], [1.0, 3.0]) == [(20, 1.0), (20, 3.0)]
    assert bench.is_target(default, 20, 3.0) and not bench.is_target(default, 10, 3.0)


def test_row_marks_pass_and_fail(bench):
    row = bench.Row("m", "transformer", 20, 3.0, {}, {}, {}, 1.0, 1.0, "", is_target=True,
                    targets={"single": True, "pair": True, "heldout": False})
    assert bench.target_cell(row).startswith("**FAIL**")
    row.targets["heldout"] = True
    assert bench.target_cell(row).startswith("**PASS**")


def test_error_for_a_model_without_text(bench, tmp_path, capsys):
    digits = tmp_path / "digits"
    train(TrainConfig.from_flat(data="digits", model="xs", steps=1, batch_size=8, sample_every=0,
                      save_every=0, grid_size=2, grid_steps=2), digits, progress=False)
    assert bench.main(["--model", str(digits), "-n", "2", "--heldout-n", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a text-to-image model" in err and str(digits) in err
    assert bench.main(["--model", str(tmp_path / "missing"), "-n", "2"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_precisions_run_side_by_side(bench, text_model, tmp_path):
    """--precision fp32,bf16: each model once per precision, labelled by it, on the same captions."""
    out = bench.run(bench.parse_args(["--model", str(text_model), "-n", "2", "--heldout-n", "0",
                                      "--steps", "1", "--guidance", "1", "--precision", "fp32,bf16"]),
                    [])
    models = out["meta"]["models"]
    assert list(models) == ["tiny-t2i (fp32)", "tiny-t2i (bf16)"]
    assert [m["precision"] for m in models.values()] == ["fp32", "bf16"]
    assert [r.model for r in out["rows"]] == list(models)
    (line,) = [x for x in bench.paired_lines(out["rows"]) if x.startswith("- ")]
    a, b = (r.satisfied for r in out["rows"])
    agree = sum(x == y for x, y in zip(a, b, strict=True))
    assert line.startswith(f"- 1 steps, guidance 1: tiny-t2i (fp32) and tiny-t2i (bf16) agree on {agree} of 2")
    for bad in ("fp16", "fp32,fp32", ""):
        with pytest.raises(SystemExit):
            bench.parse_args(["--model", "m", "--precision", bad])
