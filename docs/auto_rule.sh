#!/usr/bin/env bash
# The sweep behind `moco.m=auto` and `moco.queue_size=auto` (docs/ablations.md, section 5): m and K
# at several run lengths on the first 10,000 CIFAR-10 training images, two seeds each. Lengths 1, 3
# and 10 epochs fit the rule; 5 epochs checks it. Finished cells are skipped and stopped ones
# resumed: rerun after a stop. EPOCHS="1 10" THREADS=1 and EPOCHS="3 5" THREADS=1 run as two
# processes side by side on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/cifar10}
MOCOLAB=${MOCOLAB:-.venv/bin/mocolab}
COMMON=(--preset cifar10_cpu --data "$DATA" --set data.limit=10000 "run.threads=${THREADS:-2}"
        --knn-every 0 --no-linear --seeds 0,1)
for E in ${EPOCHS:-1 3 10 5}; do
  $MOCOLAB sweep "${COMMON[@]}" --out "runs/auto_e$E" --epochs "$E" \
    --grid moco.m=0.9,0.97,0.99,0.997 moco.queue_size=256,1024,4096
done
# the check at 5 epochs: moco.m=auto and moco.queue_size=auto (the fitted rule), the same two seeds
if [ "${CHECK:-1}" = 1 ] && [ -z "${EPOCHS:-}" ]; then  # with the whole sweep only
  for S in 0 1; do
    [ -f "runs/auto_check_e5/seed=$S/summary.json" ] || $MOCOLAB pretrain --preset cifar10_cpu --data "$DATA" \
      --out "runs/auto_check_e5/seed=$S" --epochs 5 --resume auto data.limit=10000 "run.threads=${THREADS:-2}" \
      run.knn_every=0 "run.seed=$S" moco.m=auto moco.queue_size=auto
  done
fi
# the fit and the check's table: python benchmarks/auto_fit.py --fit 1 3 10 --check 5
