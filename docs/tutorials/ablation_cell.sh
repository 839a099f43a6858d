#!/usr/bin/env bash
# Reproduce one cell of the paper's ablations (docs/tutorials/ablation-cell.md; CI runs it on tiny data
# from tests/test_tutorials.py): MoCo against the memory bank at K 256, the first rows of the
# K table in docs/ablations.md (cifar10_cpu, the first 10,000 CIFAR-10 images, 3 epochs, seed 0).
set -euo pipefail
DATA=${DATA:-../shared/data/cifar10}
OUT=${OUT:-runs/tutorial_ablation}
MOCOLAB=${MOCOLAB:-mocolab}
EPOCHS=${EPOCHS:-3}
LIMIT=${LIMIT:-10000}  # images per split, as the published cells
read -r -a SET <<<"${SET:-run.threads=2}"  # extra overrides for every cell (CI shrinks the network)

$MOCOLAB sweep --preset cifar10_cpu --data "$DATA" --out "$OUT" --epochs "$EPOCHS" --seeds 0 --knn-every 1 \
  --grid method=moco,bank moco.queue_size=256 --set data.limit="$LIMIT" "${SET[@]}"
cat "$OUT/results.md"  # one row per cell: kNN, linear (cached), pretext accuracy, loss, img/s
# The published means at this setting (docs/results.md): MoCo 38.19 %, memory bank 31.53 % kNN.
