#!/usr/bin/env bash
# The recipe of an EmojiWorld model: 64×64 scenes of two or three real emoji in their places
# ("a red apple to the left of a fox face, glossy style"; docs/emoji-scenes.md), trained with
# kuosan's own `kuosan train`, starting from the bundled emoji-32.
#
#   bash recipes/emojiworld-64.sh [RUN_FOLDER]         # train, or go on training (it resumes)
#   bash recipes/emojiworld-64.sh RUN_FOLDER carry     # the run's EMA, fp16, into checkpoints/
#
# Where it starts: RUN_FOLDER's own state when it has one (an exact resume); else the weights
# carried in checkpoints/emojiworld-64 (committed, so the run outlives a machine: run folders are
# not in git, and a new machine starts without them); else the bundled emoji-32. A start from the
# carried weights is not an exact resume: the optimizer's moments start again (50 warm-up steps)
# and the EMA starts from the carried EMA. checkpoints/emojiworld-64/LEGS.md lists the legs.
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
CARRY=checkpoints/emojiworld-64
# its scenes are made of emoji-32's pictures, so it owes their credit too (docs/emoji.md)
ATTRIBUTION="Emoji graphics from Twemoji (https://github.com/twitter/twemoji), Copyright 2019 \
Twitter, Inc and other contributors, licensed under CC-BY 4.0; Noto Color Emoji, Copyright 2013 \
Google Inc., SIL Open Font License 1.1"
if [ "${2:-}" = carry ]; then
  kuosan export "$RUN" --out "$CARRY" --replace --guidance 3 --sampler dpmpp_2m \
      --attribution "$ATTRIBUTION"
  exit
fi
# what a resumed run may change; the rest it keeps from its own config.json
RUNTIME=(--sample-every 1000 --save-every 100 --steps 100000 --out "$RUN")
if [ -f "$RUN/training_state.json" ]; then
  exec kuosan train --resume "${RUNTIME[@]}"
fi
if [ -f "$CARRY/config.json" ]; then START=(--init-from "$CARRY" --warmup 50)
else START=(--init-from emoji-32 --warmup 200); fi
kuosan train --data emojiworld --size 64 --preset s --text-encoder minilm --cond-drop 0.1 \
    --schedule cosine --prediction v --batch 64 --lr 2.5e-4 --seed 0 --grid-size 16 \
    "${START[@]}" "${RUNTIME[@]}"
