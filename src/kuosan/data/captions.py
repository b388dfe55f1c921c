"""Captions for a folder of images (the user's own text-to-image data).

Three layouts, the first that is present wins:

1. ``metadata.jsonl`` in the folder: one JSON object a line with ``file_name`` (relative to the
   folder) and ``text`` (diffusers' / Hugging Face's ImageFolder convention);
2. ``metadata.csv`` with ``file_name`` and ``text`` columns;
3. a ``.txt`` file beside each image with the same stem (``cat.png`` → ``cat.txt``).

A folder with none of them is uncaptioned (``None``). With .txt sidecars for only some images the
folder is uncaptioned too, with a warning naming one that lacks it; a metadata file that misses
an image is an error naming it.
"""

from __future__ import annotations

import csv
import json
import warnings
from collections.abc import Sequence
from pathlib import Path

from kuosan.errors import KuosanError


def _from_table(table: dict[str, str], root: Path, paths: Sequence[Path], source: Path) -> list[str]:
    captions, missing = [], []
    for p in paths:
        key = p.relative_to(root).as_posix()
        if key in table:
            captions.append(table[key])
        else:
            missing.append(key)
    if missing:
        raise KuosanError(f"'{source}' has no caption for {len(missing)} image(s), e.g. '{missing[0]}'")
    return captions


def _read_jsonl(path: Path) -> dict[str, str]:
    table = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            table[Path(row["file_name"]).as_posix()] = str(row["text"])
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise KuosanError(f"'{path}' line {n}: expected a JSON object with file_name and text "
                              f"({err})") from None
    return table


def _read_csv(path: Path) -> dict[str, str]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"file_name", "text"} <= set(reader.fieldnames):
            raise KuosanError(f"'{path}' needs the columns file_name and text, has {reader.fieldnames}")
        return {Path(row["file_name"]).as_posix(): row["text"] for row in reader}


def read_captions(root: str | Path, paths: Sequence[Path]) -> list[str] | None:
    """The caption of each image in ``paths`` (files under ``root``), or None if uncaptioned."""
    root = Path(root)
    for name, reader in (("metadata.jsonl", _read_jsonl), ("metadata.csv", _read_csv)):
        source = root / name
        if source.is_file():
            return _from_table(reader(source), root, paths, source)
    sidecars = [p.with_suffix(".txt") for p in paths]
    present = [s.is_file() for s in sidecars]
    if not any(present):
        return None
    if not all(present):
        lacking = paths[present.index(False)]
        warnings.warn(f"{present.count(True)} of {len(paths)} images in '{root}' have a .txt caption "
                      f"but '{lacking.name}' (and {present.count(False) - 1} more) do not: the folder "
                      f"is treated as uncaptioned", stacklevel=2)
        return None
    return [s.read_text(encoding="utf-8").strip() for s in sidecars]
