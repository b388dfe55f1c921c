#!/usr/bin/env bash
# The bundled model's network taught to read the frozen all-MiniLM-L6-v2 instead of its jointly
# trained encoder (an experiment on ShapesWorld's pair captions; not shipped: docs/shapes-32.md).
#
#   bash recipes/shapes-32-minilm.sh [SOURCE_RUN] [OUT]
#
# SOURCE_RUN is stage 6 of recipes/shapes-32.sh (the bundled model's run; the bundled fp16 weights,
# `shapes-32`, work as well). `--new-text-encoder` leaves the source's encoder out and starts the
# run as the source's unconditional model (its empty caption folded into biases, the maps that
# read the caption at zero). The schedule, target, weighting, position code and layout map are
# the source's; half the captions are pairs. 2,700 steps, ~80 minutes on 2 CPU cores.
set -euo pipefail
SOURCE=${1:-runs/shapes32-hn}
OUT=${2:-runs/shapes32-minilm}

OMP_NUM_THREADS=2 kuosan train --data shapes --size 32 --preset fast --schedule cosine \
    --text-encoder minilm --new-text-encoder --init-from "$SOURCE" \
    --prediction v --weighting uniform --high-noise 0.4 --pos-embed --pooled-layout \
    --cond-drop 0.1 --batch 64 --lr 8e-4 --lr-decay cosine --steps 2700 \
    --shapes-mix single=0.3,pair=0.5,count=0.2 --seed 7 \
    --sample-every 900 --save-every 150 --grid-size 16 --no-progress --out "$OUT"

OMP_NUM_THREADS=2 python3 benchmarks/caption_probe.py --model shapes-32 --model "$OUT" --threads 2
