#!/usr/bin/env bash
# The recipe of the bundled model `shapes-32` (kuosan/bundled/shapes-32): a ShapesWorld 32×32
# text-to-image model trained with kuosan's own `kuosan train` on the 2-core CPU machine, then
# exported as fp16 EMA weights with its default guidance scale.
#
#   bash recipes/shapes-32.sh [RUN_FOLDER]
#
# Every random draw of training step k is seeded by (seed, k), so the same command gives the same
# weights on the same machine and torch build (the run was made with --minutes and stopped at the
# step count below; `--steps N` reaches the same step). Time: ~95 minutes on 2 CPU cores.
set -euo pipefail
RUN=${1:-runs/shapes-32}
STEPS=3769
GUIDANCE=2

kuosan train --data shapes --size 32 --preset fast --text-encoder transformer --cond-drop 0.1 \
    --batch 64 --lr 8e-4 --schedule cosine --weighting min_snr --seed 0 \
    --steps "$STEPS" --sample-every 500 --save-every 250 --grid-size 36 --out "$RUN"
kuosan export "$RUN" --out src/kuosan/bundled/shapes-32 --guidance "$GUIDANCE" --sampler dpmpp_2m
