"""Captioned image folders: .txt sidecars, metadata.jsonl, metadata.csv."""

import json

import pytest
from PIL import Image

from kuosan import KuosanError
from kuosan.data import load_dataset


def make_folder(root, names):
    root.mkdir()
    for i, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (20, 20), (10 * i, 0, 0)).save(root / name)
    return root


def test_sidecar_captions(tmp_path):
    root = make_folder(tmp_path / "d", ["a.png", "sub/b.png"])
    (root / "a.txt").write_text("a red circle\n")
    (root / "sub" / "b.txt").write_text("a blue square")
    ds = load_dataset(str(root), size=16)
    assert ds.captions == ["a red circle", "a blue square"]


def test_jsonl_and_csv(tmp_path):
    root = make_folder(tmp_path / "d", ["a.png", "b.png"])
    (root / "metadata.jsonl").write_text("\n".join(json.dumps({"file_name": n, "text": t})
                                                  for n, t in [("b.png", "two"), ("a.png", "one")]))
    assert load_dataset(str(root), size=16).captions == ["one", "two"]
    (root / "metadata.jsonl").unlink()
    (root / "metadata.csv").write_text("file_name,text\na.png,\"one, with comma\"\nb.png,two\n")
    assert load_dataset(str(root), size=16).captions == ["one, with comma", "two"]


def test_uncaptioned_and_partial(tmp_path):
    root = make_folder(tmp_path / "d", ["a.png", "b.png"])
    assert load_dataset(str(root), size=16).captions is None
    (root / "a.txt").write_text("only one")
    with pytest.warns(UserWarning, match="b.png"):
        assert load_dataset(str(root), size=16).captions is None
    (root / "a.txt").unlink()
    (root / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "text": "x"}) + "\n")
    with pytest.raises(KuosanError, match="no caption for 1 image"):
        load_dataset(str(root), size=16)
    (root / "metadata.jsonl").write_text("{broken\n")
    with pytest.raises(KuosanError, match="line 1"):
        load_dataset(str(root), size=16)
