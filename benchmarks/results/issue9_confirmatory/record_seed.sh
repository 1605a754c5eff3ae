#!/usr/bin/env bash
# Copies a finished seed's reports and RL curve from its work dir into this folder (PLAN.md layout)
# and prints the timings for its runs.md row.
#   bash benchmarks/results/issue9_confirmatory/record_seed.sh 17 /work/exp/runs/c
set -euo pipefail
N=$1
RUNS=${2:-runs/c}
HERE=$(cd "$(dirname "$0")" && pwd)
W="$RUNS/s$N"
for log in log1000.txt log2000.txt; do
  grep -q "wrote .*learning_curve.json" "$W/$log" || { echo "seed $N: $W/$log has not finished" >&2; exit 1; }
done
for e in eval_train eval_train_seed2000; do
  for p in sft rl; do
    mkdir -p "$HERE/$e/${p}_s$N"
    cp "$W/$e/${p}_s$N/report.json" "$HERE/$e/${p}_s$N/"
  done
done
mkdir -p "$HERE/curves"
cp "$W/out/learning_curve.json" "$HERE/curves/learning_curve_s$N.json"
grep -h "pre-train\|SFT seed\|RL seed\|wrote .*learning_curve" "$W"/log1000.txt "$W"/log2000.txt
