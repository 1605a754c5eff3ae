#!/usr/bin/env bash
# Runs seeds of the confirmatory test one after another, with PLAN.md's commands.
#   bash benchmarks/results/issue9_confirmatory/run_seeds.sh 12 13 14
# Run from the repository root (or a snapshot of its tracked files, so edits made meanwhile do not
# reach a running seed). PYTHON defaults to .venv/bin/python. Each seed works in runs/c/s<N>; the
# SAM2 text pre-training and the random policy's reports are copied from the previous seed's dir.
# Afterwards `record_seed.sh N runs/c` copies each finished seed's reports and RL curve here; then add
# its line to runs.md.
set -u
PYTHON=${PYTHON:-.venv/bin/python}
FLAGS="--rl-steps 96 --sft-steps 600 --train-videos 60 --rl-train-videos 240 --sam2-pretrain-videos 60
       --held-out-videos 24 --eval-samples 128 --sam2-pretrain-steps 600 --decoder-lr-scale 0
       --prompt-align-weight 10 --rl-override reward.weights.keyframe_vs_video=0
       --rl-override reward.weights.progressive=0 --rl-override reward.weights.mask=4
       --rl-override learner.sam_decoder_lr_scale=1 --reuse"
prev=$(ls -d runs/c/s* 2>/dev/null | head -1)
for N in "$@"; do
  W=runs/c/s$N
  mkdir -p "$W"
  if [ -n "$prev" ] && [ "$prev" != "$W" ]; then
    cp -n "$prev"/sam2_text.* "$W"/ 2>/dev/null
    for e in eval_train eval_train_seed2000; do
      mkdir -p "$W/$e" && cp -rn "$prev/$e/base" "$W/$e/" 2>/dev/null
    done
  fi
  echo "[$(date +%T)] seed $N set 1000"
  # shellcheck disable=SC2086
  PYTHONPATH=. "$PYTHON" -m benchmarks.learning_curve --seeds "$N" $FLAGS --work "$W" --out "$W/out" \
    > "$W/log1000.txt" 2>&1 || { echo "seed $N set 1000 failed (see $W/log1000.txt)"; exit 1; }
  echo "[$(date +%T)] seed $N set 2000"
  # shellcheck disable=SC2086
  PYTHONPATH=. "$PYTHON" -m benchmarks.learning_curve --seeds "$N" $FLAGS --held-out-seed 2000 --work "$W" \
    --out "$W/out2000" > "$W/log2000.txt" 2>&1 || { echo "seed $N set 2000 failed (see $W/log2000.txt)"; exit 1; }
  echo "[$(date +%T)] seed $N done"
  prev=$W
done
