#!/usr/bin/env bash
# Seed 18 of the longer-SFT pilot, after seed 14's run (pid $1) ends; exports SFT checkpoints every 300 steps.
set -u
while kill -0 "$1" 2>/dev/null; do sleep 20; done
PYTHON=.venv/bin/python
N=18; W=runs/L/s$N
mkdir -p "$W/eval_train"
cp -n runs/p/s14/sam2_text.* "$W"/; cp -rn runs/p/s14/eval_train/base "$W/eval_train/"
echo "[$(date +%T)] seed $N start"
PYTHONPATH=. "$PYTHON" -m benchmarks.learning_curve --seeds "$N" --rl-steps 96 --sft-steps 1200 --train-videos 60 \
  --rl-train-videos 240 --sam2-pretrain-videos 60 --held-out-videos 24 --eval-samples 128 --sam2-pretrain-steps 600 \
  --decoder-lr-scale 0 --prompt-align-weight 10 --rl-override reward.weights.keyframe_vs_video=0 \
  --rl-override reward.weights.progressive=0 --rl-override reward.weights.mask=4 \
  --rl-override learner.sam_decoder_lr_scale=1 --sft-override sft.export_every=300 --reuse --work "$W" --out "$W/out" \
  > "$W/log.txt" 2>&1
echo "[$(date +%T)] seed $N exit $?"
