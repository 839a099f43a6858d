#!/usr/bin/env bash
# The paper's ablations at the CIFAR-10 scale on 2 CPU cores (docs/ablations.md). Each sweep
# skips finished cells and resumes interrupted ones: rerun this script after a stop.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/cifar10}
MOCOLAB=${MOCOLAB:-.venv/bin/mocolab}
COMMON=(--preset cifar10_cpu --data "$DATA" --set data.limit=10000 run.threads=2 --knn-every 1)
# cells first run without --seeds are seed 0: named so, they are reused by the two-seed sweeps
for d in runs/ablation_k/cells/* runs/ablation_m/cells/* runs/ablation_e2e_batch/cells/*; do
  case "$d" in *seed=*) ;; *) [ -d "$d" ] && mv "$d" "${d}__seed=0" ;; esac
done
# 1. momentum m of the key encoder (the paper's Table 1 row)
$MOCOLAB sweep "${COMMON[@]}" --out runs/ablation_m --epochs 3 --seeds 0,1 --grid moco.m=0,0.9,0.98,0.99,0.999
# 2. Shuffle BN on and off, MoCo and end-to-end, two seeds (appendix A.9)
$MOCOLAB sweep "${COMMON[@]}" --out runs/ablation_shuffle --epochs 5 --seeds 0,1 \
  --grid method=moco,e2e moco.shuffle_bn=true,false
# 3. end-to-end against the batch: its dictionary is the batch (K = batch - 1), lr scaled linearly
$MOCOLAB sweep "${COMMON[@]}" --out runs/ablation_e2e_batch --epochs 3 --seeds 0,1 \
  --grid method=e2e optim.batch_size=64,128,256
# 4. dictionary size K per mechanism (the paper's Figure 3), two seeds; e2e's K is the batch - 1
$MOCOLAB sweep "${COMMON[@]}" --out runs/ablation_k --epochs 3 --seeds 0,1 \
  --grid method=moco,bank,e2e moco.queue_size=256,1024,4096
