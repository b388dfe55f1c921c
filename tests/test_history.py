"""benchmarks/history.py: the append-only history tables of the benchmarks."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from history import (
    REQUIRED,
    append_row,
    git_commit,
    history_path,
    read_history,
    record,
    run_meta,
    write_report,
)

from kuosan.errors import KuosanError

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
RESULTS = BENCHMARKS / "results"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
    return module


def row(**figures) -> dict:
    return {"benchmark": "b", "model": "m", "commit": "abc", "date": "2026-12-04T00:00:00",
            "command": "python3 benchmarks/b.py", "figures": figures}


def test_rows_are_appended_in_order_and_read_back(tmp_path):
    path = tmp_path / "deep" / "b_history.jsonl"
    assert read_history(path) == []
    append_row(path, row(x=1))
    before = path.read_bytes()
    stored = append_row(path, row(x=2, y=float("nan")))
    assert stored["figures"] == {"x": 2, "y": None}  # NaN is not JSON: stored as null
    assert path.read_bytes().startswith(before)  # the old row is kept byte for byte
    assert [r["figures"]["x"] for r in read_history(path)] == [1, 2]
    assert len(path.read_text().splitlines()) == 2
    assert list(tmp_path.glob("deep/.*.tmp")) == []  # no temporary file left behind


def test_a_row_without_a_required_field_is_refused(tmp_path):
    path = tmp_path / "b_history.jsonl"
    for key in REQUIRED:
        bad = row()
        del bad[key]
        with pytest.raises(KuosanError, match=key):
            append_row(path, bad)
    assert not path.exists()


def test_a_broken_table_names_its_line_and_is_not_appended_to(tmp_path):
    path = tmp_path / "b_history.jsonl"
    path.write_text(json.dumps(row()) + "\n{not json\n")
    with pytest.raises(KuosanError, match=r"b_history.jsonl:2"):
        append_row(path, row())
    assert path.read_text().count("\n") == 2
    path.write_text(json.dumps({"model": "m"}) + "\n")
    with pytest.raises(KuosanError, match=r":1: a history row needs benchmark"):
        read_history(path)


def test_record_writes_beside_the_report_with_commit_and_date(tmp_path):
    table = record(tmp_path / "sub" / "editing", "editing", model="shapes-32",
                   command="python3 benchmarks/editing.py", figures={"a": 1})
    assert table == history_path(tmp_path / "sub" / "editing.md", "editing")
    assert table == tmp_path / "sub" / "editing_history.jsonl"
    (stored,) = read_history(table)
    assert stored["commit"] == git_commit() != ""
    assert stored["date"][:4].isdigit() and stored["weights"] is None and stored["note"] == ""


# the benchmarks that append through history.py
WRITERS = ("caption_accuracy", "digits_fid", "editing", "samplers", "text_encoders", "train_speed",
           "enhance", "emoji_probe", "generate_speed")


@pytest.mark.parametrize("path", [p for p in sorted(RESULTS.glob("*_history.jsonl"))
                                  if p.name.removesuffix("_history.jsonl") in WRITERS],
                         ids=lambda p: p.name)
def test_the_committed_tables_parse(path):
    rows = read_history(path)
    assert rows and all(r["benchmark"] + "_history.jsonl" == path.name for r in rows)
    assert [r["date"] for r in rows] == sorted(r["date"] for r in rows)  # appended in time order


def test_write_report_replaces_the_report_and_appends_a_row(tmp_path):
    meta = run_meta("b.py", ["--x", "1 2"], note="n")
    assert meta["command"] == "python3 benchmarks/b.py --x '1 2'"
    for run in (1, 2):
        written = write_report(tmp_path / "b.md", "b", title="B", meta=meta,
                               data={"rows": [run, float("nan")]}, body=f"run {run}\n",
                               model="m", figures={"run": run})
    assert [p.name for p in written] == ["b.json", "b.md", "b_history.jsonl"]
    assert json.loads((tmp_path / "b.json").read_text())["rows"] == [2, None]  # the latest
    md = (tmp_path / "b.md").read_text()
    assert md.startswith("# B\n") and meta["command"] in md and md.endswith("run 2\n")
    assert [r["figures"]["run"] for r in read_history(tmp_path / "b_history.jsonl")] == [1, 2]


@pytest.mark.parametrize("name", ["caption_accuracy", "editing", "digits_fid"])
def test_the_current_report_is_a_row_of_its_history(name):
    """The kept report and its table agree: the row of its run has the figures that the
    script's own history_figures computes from the report."""
    report = json.loads((RESULTS / f"{name}.json").read_text())
    (row,) = [r for r in read_history(RESULTS / f"{name}_history.jsonl")
              if r["date"] == report["meta"]["date"]]
    figures = load_script(name).history_figures
    expected = figures(report) if name == "editing" else figures(report["rows"])
    assert row["figures"] == json.loads(json.dumps(expected))  # as stored: tuples → lists
