#!/usr/bin/env bash
# The jointly trained text encoder against the frozen all-MiniLM-L6-v2 (issue 4, item 7): two
# ShapesWorld 32×32 models trained from scratch with the same recipe (that of shapes-32's last
# stages, docs/shapes-32.md) except the encoder, then scored by caption accuracy and by the NLL
# bound given each image's caption and given the empty caption (on images neither model saw).
#
#   bash recipes/encoder-comparison.sh [RUN_PREFIX] [STEPS]
#
# The two trainings run side by side with one thread each (2-core machine: ~57 minutes for
# 1,200 steps); the evaluations run one after the other. Results: docs/text_encoders.md.
set -euo pipefail
RUN=${1:-runs/enc}
STEPS=${2:-1200}
COMMON=(--data shapes --size 32 --preset fast --cond-drop 0.1 --batch 64 --lr 8e-4
        --schedule cosine --prediction v --weighting uniform --pos-embed --pooled-layout
        --high-noise 0.4 --lr-decay cosine --steps "$STEPS" --sample-every 600 --save-every 200
        --grid-size 16 --seed 0 --no-progress)

OMP_NUM_THREADS=1 kuosan train "${COMMON[@]}" --text-encoder transformer --word-skip --out "$RUN-joint" &
OMP_NUM_THREADS=1 kuosan train "${COMMON[@]}" --text-encoder minilm --out "$RUN-minilm" &
wait

OMP_NUM_THREADS=2 python3 benchmarks/caption_accuracy.py --model "$RUN-joint" --model "$RUN-minilm" \
    --steps 20 --guidance 1,3 --threads 2 --report benchmarks/results/encoder_comparison
for model in "$RUN-joint" "$RUN-minilm"; do
    for captions in "" "--empty-captions"; do
        # shellcheck disable=SC2086  # $captions is one flag or none
        OMP_NUM_THREADS=2 kuosan eval "$model" --nll --examples 128 --timesteps 50 --data-seed 100 \
            --batch 128 --json --no-progress $captions
    done
done
