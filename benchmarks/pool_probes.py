"""Several emoji probe reports of one model, pooled: the rule that makes a release the default.

    python3 benchmarks/pool_probes.py A.json B.json [...]

Each report (``benchmarks/results/emoji_probe[_TAG].json``) must come from its own draw of
captions (a different ``--seed``), so that no caption counts twice. For the targets over all of a
group's captions (seen top-5 ≥ 80 %, held-out style top-5 ≥ 50 %) it adds up the captions right
in every report, k = Σ kᵢ of n = Σ nᵢ, and gives k/n with Wilson's 95 % interval. The attribute
targets (seen tone and gender ≥ 70 %) are over the captions that carry the attribute, which the
reports do not count, so they must pass in every report. The verdict is PASS when every pooled
target and every per-report attribute target passes (docs/emoji-32.md, "The rule for the
default").
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from compare_probes import read_report
from emoji_probe import TARGETS, wilson_interval

POOLED = ("top1", "top5", "style")  # figures over all of a group's captions: they add up


def pooled_targets(reports: list[dict]) -> list[dict]:
    """Each target of TARGETS over the reports: pooled counts for POOLED figures, else the lowest
    report's figure; a target with no caption in any report (or a NaN figure) fails."""
    seeds = [r.get("seed") for r in reports]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"the reports share a caption draw (seeds {seeds}): pool only "
                         "reports of different --seed")
    out = []
    for group, key, bound in TARGETS:
        rows = [r["groups"].get(group, {}) for r in reports]
        if key in POOLED:
            n = sum(int(row.get("n", 0)) for row in rows)
            k = sum(round(row[key] * row["n"] / 100) for row in rows if row.get("n"))
            value = 100 * k / n if n else float("nan")
            target = {"target": f"{group} {key} >= {bound:g} %", "value": value, "n": n, "k": k,
                      "how": "pooled"}
            if n:
                target["interval"] = wilson_interval(value, n)
        else:
            values = [float(row.get(key, float("nan"))) for row in rows]
            value = float("nan") if any(math.isnan(v) for v in values) else min(values)
            target = {"target": f"{group} {key} >= {bound:g} %", "value": value,
                      "how": "lowest of " + ", ".join(f"{v:.1f}" for v in values)}
        target["pass"] = bool(value >= bound)  # NaN >= bound is False
        out.append(target)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("reports", type=Path, nargs="+", help="probe reports (.json), one per draw")
    args = p.parse_args(argv)
    try:
        reports = [read_report(path, "groups", "is not an emoji probe report (no \"groups\")")
                   for path in args.reports]
        targets = pooled_targets(reports)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path, r in zip(args.reports, reports, strict=True):
        print(f"- {path}: model {r.get('model')}, step {r.get('step')}, seed {r.get('seed')}")
    print("\n| target | figure | how | 95 % interval | verdict |\n|---|---|---|---|---|")
    for t in targets:
        how = f"{t['k']} of {t['n']} captions" if "n" in t else t["how"]
        interval = "{:.1f}–{:.1f}".format(*t["interval"]) if "interval" in t else ""
        print(f"| {t['target']} | {t['value']:.1f} | {how} | {interval} | "
              f"{'PASS' if t['pass'] else 'FAIL'} |")
    print(f"\n{'PASS' if all(t['pass'] for t in targets) else 'FAIL'}: "
          f"{sum(t['pass'] for t in targets)} of {len(targets)} targets")
    return 0


if __name__ == "__main__":
    sys.exit(main())
