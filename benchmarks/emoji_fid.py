"""FID per style for an emoji model (issue 19), with its real-data floor at the same n.

For each style s of the model, ``default_rng([seed, s])`` draws n of the real pictures of s
(every picture of the catalogue in s, held-out ones too) as the **floor** set; the rest of them
are the **reference**. The model draws one sample for the caption of each floor picture, so the
samples and the floor ask for exactly the same things, and the floor's FID is what a model that
drew real pictures would score at this n (FID is biased upwards at small n, so only the gap to
the floor means something). KID (unbiased in n), precision and recall come beside it. Features:
the standard FID Inception (``kuosan.metrics.features``), cached for real pictures.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from kuosan.data.emoji import EmojiEntry
from kuosan.errors import KuosanError
from kuosan.metrics.evaluate import ImageSet, default_cache_dir, evaluate
from kuosan.metrics.features import FeatureMap, get_feature_map

COLUMNS = ("n_source", "fid", "fid_floor", "kid", "kid_floor", "precision", "recall",
           "precision_floor", "recall_floor")


def split(entries: list[EmojiEntry], style: str, n: int, seed: int) -> tuple[list[int], list[int]]:
    """(floor, reference) indices into ``entries``: n random pictures of ``style``, and the rest."""
    pool = np.array([i for i, e in enumerate(entries) if e.style == style])
    if n < 2 or n > len(pool) - 2:
        raise KuosanError(f"--fid: n must be 2..{len(pool) - 2} for style {style!r}, got {n}")
    rng = np.random.default_rng([seed, sum(map(ord, style))])
    pick = np.zeros(len(pool), dtype=bool)
    pick[rng.choice(len(pool), size=n, replace=False)] = True
    return pool[pick].tolist(), pool[~pick].tolist()


def fid_per_style(make: Callable[[list[str], int], torch.Tensor], pictures: torch.Tensor,
                  entries: list[EmojiEntry], styles: tuple[str, ...], n: int, seed: int,
                  sample_seed: int, fmap: FeatureMap | None = None, cache: bool = True,
                  progress: bool = True) -> dict[str, dict]:
    """{style: FID, KID, precision and recall of n samples and of the n real floor pictures
    against the rest}; ``make(captions, seed)`` draws uint8 (N, 3, H, W) samples; ``fmap``:
    the features (default the FID Inception)."""
    fmap = fmap or get_feature_map("inception")
    out = {}
    for k, style in enumerate(styles):
        floor, ref = split(entries, style, n, seed)
        samples = make([entries[i].caption for i in floor], sample_seed + k * n)
        result = evaluate(
            ImageSet(f"{style} samples", samples, cacheable=False),
            ImageSet(f"emoji {style} reference (seed {seed}, n {n})", pictures[ref]), fmap,
            kid_=True, pr=True, floor=ImageSet(f"emoji {style} floor (seed {seed}, n {n})",
                                               pictures[floor]),
            cache_dir=default_cache_dir() if cache else None, progress=progress)
        out[style] = {c: result[c] for c in COLUMNS} | {"n_ref": result["n_ref"]}
    return out


def fid_lines(rows: dict[str, dict]) -> list[str]:
    """The report's table: FID and KID (×1000) of the samples beside the real floor."""
    if not rows:
        return []
    lines = [("FID per style (`--fid N`, benchmarks/emoji_fid.py; Inception features; samples of the "
              "captions of n real pictures of the style against the other real pictures of it; "
              "floor = those n real pictures themselves):"), "",
             "| style | n | ref | FID | floor | KID×1000 | floor | precision | recall | floor P/R |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {s} | {r['n_source']} | {r['n_ref']} | {r['fid']:.2f} | {r['fid_floor']:.2f} | "
              f"{1000 * r['kid']:.2f} | {1000 * r['kid_floor']:.2f} | {r['precision']:.2f} | "
              f"{r['recall']:.2f} | {r['precision_floor']:.2f}/{r['recall_floor']:.2f} |"
              for s, r in rows.items()]
    return [*lines, ""]
