#!/usr/bin/env bash
# cifar10_cpu for 10 minutes as it is (K 512, m 0.98) and with moco.m=auto moco.queue_size=auto,
# the two arms side by side (one thread each, so they share the machine alike), seeds 0 and 1
# (docs/ablations.md, section 5). A pair that was stopped is run again whole (a time budget does
# not resume exactly).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/cifar10}
MOCOLAB=${MOCOLAB:-.venv/bin/mocolab}
for S in ${SEEDS:-0 1}; do
  if [ -f "runs/preset_auto/fixed/seed=$S/summary.json" ] && [ -f "runs/preset_auto/auto/seed=$S/summary.json" ]; then
    continue
  fi
  $MOCOLAB pretrain --preset cifar10_cpu --data "$DATA" --out "runs/preset_auto/fixed/seed=$S" --overwrite \
    --budget-minutes 10 run.threads=1 "run.seed=$S" &
  $MOCOLAB pretrain --preset cifar10_cpu --data "$DATA" --out "runs/preset_auto/auto/seed=$S" --overwrite \
    --budget-minutes 10 run.threads=1 "run.seed=$S" moco.m=auto moco.queue_size=auto &
  wait
done
for f in runs/preset_auto/*/seed=*/summary.json; do
  python3 -c "import json, sys; s = json.load(open(sys.argv[1])); print(sys.argv[1], round(s['knn_top1'], 2), s['steps'],
round(s['images_per_second']), s.get('auto'))" "$f"
done
