#!/usr/bin/env bash
# The recipe of an EmojiWorld model: 64×64 scenes of two or three real emoji in their places
# ("a red apple to the left of a fox face, glossy style"; docs/emoji-scenes.md), trained with
# kuosan's own `kuosan train`, starting from the bundled emoji-32.
#
#   bash recipes/emojiworld-64.sh [RUN_FOLDER]     # train, or go on training (it resumes)
#
# Why from emoji-32: a scene's emoji are 17–35 pixels wide at 64×64, about the size of the one
# emoji that fills emoji-32's 32×32 canvas, so its network already draws them at that scale; the
# run learns where they go and how many. `--init-from` places self-attention at the source's
# levels (16 of 32 → 32 of 64), so every weight of emoji-32 has its place; the same `s` UNet,
# MiniLM captions, v target and cosine schedule. lr 2.5e-4 after 200 warm-up steps, constant, so
# the run can go on in later sessions (a release would be a short decay, as in emoji-32.sh).
# `--steps 100000` is a ceiling: stop it with Ctrl-C (it saves), go on with the same command.
# The 20,000 scenes are rendered once and cached (about 2 minutes). On the 2-core CPU a step at
# 64×64 costs about seven times one of emoji-32 (docs/emoji-scenes.md gives the measured rate);
# a GPU, when one is lent, runs the same command with `--device cuda --batch 256`.
#
# Needs the emoji sources: pip install -e ".[emoji]" && apt-get install fonts-noto-color-emoji
set -euo pipefail
RUN=${1:-runs/emojiworld-64}
RESUME=()
if [ -f "$RUN/training_state.json" ]; then RESUME=(--resume); fi
kuosan train --data emojiworld --size 64 --preset s --text-encoder minilm --cond-drop 0.1 \
    --schedule cosine --prediction v --batch 64 --lr 2.5e-4 --warmup 200 --seed 0 \
    --init-from emoji-32 --sample-every 1000 --save-every 100 --grid-size 16 --steps 100000 \
    --out "$RUN" "${RESUME[@]}"
