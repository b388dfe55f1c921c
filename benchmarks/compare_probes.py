"""Two emoji probe reports side by side, caption by caption: is B's difference from A more than
the draw of captions?

    python3 benchmarks/compare_probes.py A.json B.json [--figure top5]

Both reports (``benchmarks/results/emoji_probe[_TAG].json``) must come from the same captions and
sample seeds (the same ``--seed``, ``--sample-seed`` and ``--counts``), so each caption is a
pair: right in A and in B, in one only, or in neither. For each group it prints A's and B's
percentages, the captions right in only A and only B, and McNemar's exact test: the two-sided
binomial p-value of the discordant pairs (only-A vs only-B) under "A and B are equally good",
p = min(1, 2·P[X ≤ min(a, b)]), X ~ Binomial(a + b, 1/2). A p-value above 0.05 means the
difference is within what the captions' draw gives by chance.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

FIGURES = ("top1", "top5", "style")


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: 2·P[X ≤ min(a, b)], X ~ Binomial(a + b, 1/2), at most 1."""
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)


def paired(a: list[dict], b: list[dict], figure: str) -> dict[str, dict]:
    """Per group: n, A %, B %, only A, only B, p (McNemar) for ``figure`` of the per-caption rows."""
    if [(r["caption"], r["group"]) for r in a] != [(r["caption"], r["group"]) for r in b]:
        raise ValueError("the two reports probed different captions: use the same --seed, "
                         "--sample-seed and --counts")
    out: dict[str, dict] = {}
    for group in dict.fromkeys(r["group"] for r in a):
        pairs = [(x[figure], y[figure]) for x, y in zip(a, b, strict=True) if x["group"] == group]
        n = len(pairs)
        only_a = sum(x and not y for x, y in pairs)
        only_b = sum(y and not x for x, y in pairs)
        out[group] = {"n": n, "a": 100 * sum(x for x, _ in pairs) / n,
                      "b": 100 * sum(y for _, y in pairs) / n, "only_a": only_a,
                      "only_b": only_b, "p": mcnemar_exact(only_a, only_b)}
    return out


def read_report(path: Path, key: str, missing: str) -> dict:
    """The probe report at ``path``, which must hold ``key``; else ValueError '{path} {missing}'."""
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read the probe report {path}: {e}") from None
    if not isinstance(report, dict) or key not in report:
        raise ValueError(f"{path} {missing}")
    return report


def _rows(path: Path) -> list[dict]:
    return read_report(path, "per_caption",
                       "has no per-caption results (\"per_caption\"): rerun the probe")["per_caption"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("a", type=Path, help="the first probe report (.json)")
    p.add_argument("b", type=Path, help="the second probe report (.json)")
    p.add_argument("--figure", choices=FIGURES, default="top5")
    args = p.parse_args(argv)
    try:
        table = paired(_rows(args.a), _rows(args.b), args.figure)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"A = {args.a}\nB = {args.b}\n\n{args.figure} (%), caption by caption:\n")
    print("| group | n | A | B | only A | only B | McNemar p |\n|---|---|---|---|---|---|---|")
    for group, r in table.items():
        print(f"| {group} | {r['n']} | {r['a']:.1f} | {r['b']:.1f} | {r['only_a']} | "
              f"{r['only_b']} | {r['p']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
