#!/usr/bin/env bash
# Issue 9 exploratory pilot: the confirmatory recipe with a longer (1200-step) prompt-aligned SFT.
# Reuses this machine's SAM2 text pre-training and random-policy evaluation from runs/p/s14.
set -u
PYTHON=.venv/bin/python
FLAGS="--rl-steps 96 --sft-steps 1200 --train-videos 60 --rl-train-videos 240 --sam2-pretrain-videos 60
       --held-out-videos 24 --eval-samples 128 --sam2-pretrain-steps 600 --decoder-lr-scale 0
       --prompt-align-weight 10 --rl-override reward.weights.keyframe_vs_video=0
       --rl-override reward.weights.progressive=0 --rl-override reward.weights.mask=4
       --rl-override learner.sam_decoder_lr_scale=1 --reuse"
for N in "$@"; do
  W=runs/L/s$N
  mkdir -p "$W/eval_train"
  cp -n runs/p/s14/sam2_text.* "$W"/; cp -rn runs/p/s14/eval_train/base "$W/eval_train/"
  echo "[$(date +%T)] seed $N start"
  PYTHONPATH=. "$PYTHON" -m benchmarks.learning_curve --seeds "$N" $FLAGS --work "$W" --out "$W/out" \
    > "$W/log.txt" 2>&1 || { echo "seed $N failed"; exit 1; }
  echo "[$(date +%T)] seed $N done"
done
