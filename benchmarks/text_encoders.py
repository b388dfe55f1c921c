"""Encode time per caption of the text encoders on ShapesWorld captions (CPU, forward only).

    OMP_NUM_THREADS=1 python3 benchmarks/text_encoders.py --threads 1 [--cache] \
        [--report benchmarks/results/text_encoders]

Protocol: 2,000 captions from `make_shapes_dataset(2000, seed=0)`; each encoder encodes the first
1 and the first 64 captions once untimed, then three timed times under `torch.no_grad()`; the best
of three is reported per caption. `--cache` also times two passes of a `CachedEncoder(MiniLM)`
over all 2,000 captions in batches of 64. `--report PATH` writes
PATH.json and PATH.md (the latest run) and appends one row to `text_encoders_history.jsonl` beside
them (benchmarks/history.py).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from history import run_meta, write_report

from kuosan.data.shapes import make_shapes_dataset
from kuosan.models.text import (
    CachedEncoder,
    CharTokenizer,
    MiniLMEncoder,
    SmallTransformerEncoder,
    TextEncoder,
    WordTokenizer,
)


def best_seconds(encoder: TextEncoder, captions: list[str], repeats: int = 3) -> float:
    with torch.no_grad():
        encoder.encode(captions)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            encoder.encode(captions)
            best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", action="store_true", help="also time a cached MiniLM over all captions")
    p.add_argument("--note", default="", help="free text recorded in the report")
    p.add_argument("--report", type=Path, default=None,
                   help="write PATH.json and PATH.md; append to the history")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    _, captions = make_shapes_dataset(2000, size=32, seed=0)
    printed: list[str] = []

    def say(line: str) -> None:  # print, and keep the line for the report
        printed.append(line)
        print(line)

    say(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); {len(set(captions))} "
        f"distinct of 2000 captions, at most {max(map(len, captions))} characters")
    encoders = {
        "minilm": MiniLMEncoder(),
        "small transformer, char tokenizer, dim 256, depth 4": SmallTransformerEncoder(CharTokenizer()).eval(),
        "small transformer, word tokenizer, dim 256, depth 4":
            SmallTransformerEncoder(WordTokenizer.fit(captions)).eval(),
    }
    figures: dict[str, dict[str, float]] = {}
    say(f"{'encoder':54s} {'batch 1':>14s} {'batch 64':>14s} {'L@64':>5s}")
    for name, encoder in encoders.items():
        per = [1000 * best_seconds(encoder, captions[:b]) / b for b in (1, 64)]
        length = encoder.encode(captions[:64]).tokens.shape[1]
        figures[name] = {"ms_per_caption_batch1": round(per[0], 2),
                         "ms_per_caption_batch64": round(per[1], 2), "tokens_at_64": length}
        say(f"{name:54s} {per[0]:9.1f} ms/c {per[1]:9.1f} ms/c {length:5d}")
    if args.cache:
        cached = CachedEncoder(MiniLMEncoder())
        passes = []
        for _ in range(2):
            start = time.perf_counter()
            for i in range(0, len(captions), 64):
                cached.encode(captions[i:i + 64])
            passes.append(time.perf_counter() - start)
        figures["cached minilm, 2000 captions"] = {"first_pass_s": round(passes[0], 2),
                                                   "second_pass_s": round(passes[1], 3)}
        say(f"cached MiniLM over 2000 captions: first pass {passes[0]:.2f} s ({cached.misses} "
            f"misses), second pass {passes[1]:.3f} s")
    if args.report is not None:
        written = write_report(args.report, "text_encoders",
                               title="Text encoders: encode time per caption",
                               meta=run_meta("text_encoders.py", argv, args.note),
                               data={"figures": figures}, body="```\n" + "\n".join(printed) + "\n```\n",
                               model="; ".join(figures), figures=figures)
        print("wrote " + ", ".join(map(str, written)))

if __name__ == "__main__":
    main()
