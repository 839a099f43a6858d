#!/usr/bin/env bash
# MoCo v3 at the CIFAR-10 scale on 2 CPU cores (issue: MoCo v3; results in benchmarks/RESULTS.md):
# 1. the v3 method on cifar10_cpu's ResNet-10 against MoCo v2 at equal epochs: the same settings as
#    docs/ablations.sh's Shuffle BN sweep (first 10,000 images, 5 epochs, seeds 0 and 1), whose
#    MoCo cells (runs/ablation_shuffle, shuffle_bn=true) are the v2 figures;
# 2. cifar10_vit_cpu (ViT-mini/4) at the same equal epochs;
# 3. cifar10_vit_cpu for 10 minutes on the full training set (the 10-minute figure).
# Each sweep skips finished cells and resumes interrupted ones: rerun after a stop.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/cifar10}
M=${MOCOLAB:-.venv/bin/mocolab}
THREADS=${THREADS:-2}
COMMON=(--data "$DATA" --set data.limit=10000 run.threads=$THREADS --knn-every 1 --epochs 5 --seeds 0,1)
# v3 on a ResNet: symmetric loss over the batch, predictor (hidden 512), m 0.99 -> 1; tau 0.2 (as
# cifar10_cpu) and 1.0 (the official ResNet-50 value)
$M sweep --preset cifar10_cpu "${COMMON[@]}" --out runs/v3_resnet \
  --grid method=mocov3 moco.m=0.99 model.predictor_dim=512 moco.T=0.2,1.0
$M sweep --preset cifar10_vit_cpu "${COMMON[@]}" --out runs/v3_vit_mini --grid method=mocov3
[ -f runs/vit_10m/summary.json ] || $M pretrain --preset cifar10_vit_cpu --data "$DATA" --out runs/vit_10m \
  --budget-minutes 10 --resume auto run.threads=$THREADS
