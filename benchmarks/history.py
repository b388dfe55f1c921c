"""Benchmark history: one append-only JSON Lines table per benchmark, one row per run.

A benchmark run with ``--report PATH`` writes its report (``PATH.md``, ``PATH.json``: the latest
run, replaced by the next) and appends one row to ``<PATH's folder>/<benchmark>_history.jsonl``:

    {"benchmark": "editing", "model": "shapes-32", "weights": "3f1c…", "commit": "c6eefe9",
     "date": "2026-12-04T04:34:49", "command": "python3 benchmarks/editing.py …",
     "note": "…", "figures": {…}}

``weights`` is the checkpoint's weights digest (``kuosan.checkpoint.weights_digest``; null when
unknown), ``commit`` the repository's commit at the run (``+dirty`` when tracked files had
changes), ``figures`` the benchmark's headline figures (its own function says which). Rows are
never rewritten: the table is read back whole and written again with the new row at the end,
atomically, so a crash leaves the old table or the new one, never half a row.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import shlex
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch

from kuosan.errors import KuosanError

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = ("benchmark", "model", "commit", "date", "command", "figures")


def repo_path(path: str | Path) -> str:
    """``path`` relative to the repository when it lies inside it (reports name no machine's
    folders), else as given."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def nan_to_none(obj: Any) -> Any:
    """JSON has no NaN: NaN → null, recursively (tuples become lists)."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [nan_to_none(v) for v in obj]
    return obj


def git_commit(root: Path = ROOT) -> str:
    """The short commit of the checkout at ``root``, ``+dirty`` when tracked files changed;
    ``"unknown"`` outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, check=True,
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, check=False, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def history_path(report: Path, benchmark: str) -> Path:
    """The history table beside the report ``report`` (a base path, with or without suffix)."""
    return Path(report).parent / f"{benchmark}_history.jsonl"


def read_history(path: Path) -> list[dict[str, Any]]:
    """Every row of a history table, oldest first ([] when the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise KuosanError(f"{path}:{number}: not a JSON line ({err.msg})") from None
        missing = [k for k in REQUIRED if not isinstance(row, dict) or k not in row]
        if missing:
            raise KuosanError(f"{path}:{number}: a history row needs {', '.join(missing)}")
        rows.append(row)
    return rows


def append_row(path: Path, row: dict[str, Any]) -> dict[str, Any]:
    """Append ``row`` (NaN written as null) to the table at ``path``; return it as stored."""
    path = Path(path)
    missing = [k for k in REQUIRED if k not in row]
    if missing:
        raise KuosanError(f"a history row needs {', '.join(missing)}; got {sorted(row)}")
    row = nan_to_none(row)
    line = json.dumps(row, ensure_ascii=False, allow_nan=False)
    read_history(path)  # a table that does not parse is not appended to
    old = path.read_bytes() if path.exists() else b""
    if old and not old.endswith(b"\n"):
        raise KuosanError(f"{path}: the last row has no line end; fix the file by hand")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would follow the table
        with os.fdopen(fd, "wb") as f:
            f.write(old + line.encode("utf-8") + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return row


def record(report: Path, benchmark: str, *, model: str, command: str, figures: dict[str, Any],
           weights: str | None = None, note: str = "", date: str | None = None) -> Path:
    """Append this run's row (commit and date taken now unless given) to the table beside
    ``report``; return the table's path."""
    path = history_path(report, benchmark)
    append_row(path, {"benchmark": benchmark, "model": model, "weights": weights,
                      "commit": git_commit(),
                      "date": date or dt.datetime.now().isoformat(timespec="seconds"),
                      "command": command, "note": note, "figures": figures})
    return path


def run_meta(script: str, argv: list[str], note: str = "", **extra: Any) -> dict[str, Any]:
    """What a report says about its run: date, command, machine, torch, threads, note, extras."""
    return {"date": dt.datetime.now().isoformat(timespec="seconds"),
            "command": shlex.join(["python3", f"benchmarks/{script}", *argv]),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores", "torch": torch.__version__,
            "threads": torch.get_num_threads(), "note": note, **extra}


def write_report(report: Path, benchmark: str, *, title: str, meta: dict[str, Any],
                 data: dict[str, Any], body: str, model: str, figures: dict[str, Any],
                 weights: str | None = None) -> list[Path]:
    """Write ``report``.json (``meta`` and ``data``) and ``report``.md (``title``, the run's
    meta, then ``body``), replacing the last run's, and append this run's row to the history."""
    base = Path(report)
    base = base.with_suffix("") if base.suffix in {".json", ".md"} else base
    base.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = Path(f"{base}.json"), Path(f"{base}.md")
    json_path.write_text(json.dumps(nan_to_none({"meta": meta, **data}), indent=1,
                                    allow_nan=False) + "\n")
    md_path.write_text(f"# {title}\n\n- command: `{meta['command']}`\n- {meta['date']}, "
                       f"{meta['machine']}, torch {meta['torch']}, {meta['threads']} thread(s)\n"
                       f"- note: {meta['note'] or '—'}\n\n{body}")
    table = record(base, benchmark, model=model, weights=weights, command=meta["command"],
                   note=meta["note"], date=meta["date"], figures=figures)
    return [json_path, md_path, table]
