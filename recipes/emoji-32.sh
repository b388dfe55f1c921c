#!/usr/bin/env bash
# The recipe of `emoji-32`: a 32×32 text-to-image model of emoji (real things in the flat =
# Twemoji and glossy = Noto styles, docs/emoji.md) trained with kuosan's own `kuosan train`.
#
#   bash recipes/emoji-32.sh [RUN_FOLDER]          # train, or go on training (it resumes)
#   bash recipes/emoji-32.sh RUN_FOLDER anneal     # the decay phase into RUN_FOLDER-anneal
#   bash recipes/emoji-32.sh RUN_FOLDER export     # the bundled fp16 file from the run's EMA
#
# Warmup-stable-decay: the main run keeps a constant learning rate, so it can go on in later
# sessions; a release is a short decay phase from its EMA weights (`--init-from`): 2,400 steps,
# lr 2.5e-4 after 100 warm-up steps, cosine to 0, a short EMA (20,000 images, about 300 steps)
# so that the EMA follows the decay, and concepts drawn more evenly (--balance 0.5: everyday
# things gained 10 points of recognition, docs/emoji-32.md). It writes RUN_FOLDER-anneal (replaced on each anneal) and
# stops after 110 minutes at the latest; export from that folder.
#
# The `s` UNet (3.09 M parameters with the caption maps) reading its captions with the frozen
# all-MiniLM-L6-v2, v target, cosine schedule, batch 64, lr 5e-4 after 200 warm-up steps,
# constant. On the 2-core CPU it runs about 0.48 steps/s (31 images/s) with both threads,
# 0.2–0.27 steps/s with one (the other core busy): one pass over the 6,160 training pictures
# (18,480 captioned items) takes 3–8 minutes. `--steps 100000` is a ceiling, not a plan: the run
# is stopped by hand (Ctrl-C saves) and continued in later sessions; every random draw of step k
# is seeded by (seed, k), so a resumed run gives the weights of a straight one. Where it stands
# against its targets, step by step: docs/emoji-32.md. A GPU, when one is lent, runs the same
# command with `--device cuda --batch 256`.
#
# Needs the emoji sources: pip install -e ".[emoji]" && apt-get install fonts-noto-color-emoji
set -euo pipefail
RUN=${1:-runs/emoji-32}
GUIDANCE=3
ATTRIBUTION="Emoji graphics from Twemoji (https://github.com/twitter/twemoji), Copyright 2019 \
Twitter, Inc and other contributors, licensed under CC-BY 4.0; Noto Color Emoji, Copyright 2013 \
Google Inc., SIL Open Font License 1.1"
COMMON=(--data emoji --size 32 --preset s --text-encoder minilm --cond-drop 0.1
        --schedule cosine --prediction v --batch 64 --sample-every 1000 --save-every 200
        --grid-size 16)

if [ "${2:-}" = export ]; then
  kuosan export "$RUN" --out src/kuosan/bundled/emoji-32 --replace --guidance "$GUIDANCE" \
      --sampler dpmpp_2m --attribution "$ATTRIBUTION"
  exit 0
fi
if [ "${2:-}" = anneal ]; then
  rm -rf "$RUN-anneal"
  kuosan train "${COMMON[@]}" --init-from "$RUN" --lr 2.5e-4 --warmup 100 --lr-decay cosine \
      --ema-half-life 20000 --balance 0.5 --seed 1 --steps 2400 --minutes 110 --out "$RUN-anneal"
  exit 0
fi
RESUME=()
if [ -f "$RUN/training_state.json" ]; then RESUME=(--resume); fi
kuosan train "${COMMON[@]}" --lr 5e-4 --warmup 200 --seed 0 --steps 100000 --out "$RUN" "${RESUME[@]}"
