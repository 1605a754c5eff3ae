#!/usr/bin/env bash
# Issue 9 exploratory pilot: confirmatory recipe + one RL override, seeds given, set 1000 only.
set -u
PYTHON=.venv/bin/python
TAG=$1; shift; EXTRA=$1; shift
FLAGS="--rl-steps 96 --sft-steps 600 --train-videos 60 --rl-train-videos 240 --sam2-pretrain-videos 60
       --held-out-videos 24 --eval-samples 128 --sam2-pretrain-steps 600 --decoder-lr-scale 0
       --prompt-align-weight 10 --rl-override reward.weights.keyframe_vs_video=0
       --rl-override reward.weights.progressive=0 --rl-override reward.weights.mask=4
       --rl-override learner.sam_decoder_lr_scale=1 --reuse"
for N in "$@"; do
  W=runs/p/s$N
  mkdir -p "$W"
  prev=$(ls -d runs/p/s* | head -1)
  if [ "$prev" != "$W" ]; then cp -n "$prev"/sam2_text.* "$W"/ 2>/dev/null; mkdir -p $W/eval_train; cp -rn "$prev/eval_train/base" "$W/eval_train/" 2>/dev/null; fi
  echo "[$(date +%T)] seed $N $TAG start"
  PYTHONPATH=. "$PYTHON" -m benchmarks.learning_curve --seeds "$N" $FLAGS $EXTRA --work "$W" --out "$W/out_$TAG" \
    > "$W/log_$TAG.txt" 2>&1 || { echo "seed $N failed"; exit 1; }
  echo "[$(date +%T)] seed $N $TAG done"
done
