#!/usr/bin/env bash
# Continued pretraining (issue 27; results in benchmarks/RESULTS.md): the Imagenette MoCo backbone
# continued for MINUTES on BCCD's and on CamVid's unlabeled training images (`pretrain --init`), then
# the few-labels transfer comparison (LABELS labeled images, ITERS steps, SEEDS, each paired with
# random init) against the Imagenette backbone alone, supervised Imagenette, and MoCo from scratch
# on the target (docs/transfer.sh builds those). Every step skips what is finished and resumes
# what was interrupted: rerun after a stop.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared/data}
M=${MOCOLAB:-.venv/bin/mocolab}
MINUTES=${MINUTES:-10}
LABELS=${LABELS:-30}
ITERS=${ITERS:-150}
SEEDS=${SEEDS:-0,1,2,3,4}
MOCO=runs/inette_moco_e${MOCO_EPOCHS:-40}_k${MOCO_K:-1024}

# 1. the backbones: Imagenette MoCo and supervised, MoCo from scratch on each target
BACKBONES_ONLY=1 bash docs/transfer.sh

# 2. the Imagenette backbone continued on each target's images (the from-scratch runs' batch and
# queue; the two side by side, one thread each: a budget is wall-clock time)
SMALL=(optim.batch_size=64 moco.queue_size=256 run.threads=1)
cont() {  # target images, run folder
  [ -f "$2/summary.json" ] || $M pretrain --preset imagenette_cpu --init "$MOCO" --data "$1" --out "$2" \
    --budget-minutes "$MINUTES" --resume auto "${SMALL[@]}"
}
cont runs/bccd_trainval_images runs/bccd_moco_cont > runs/bccd_moco_cont.log 2>&1 & a=$!
cont "$SHARED/camvid/train/images" runs/camvid_moco_cont > runs/camvid_moco_cont.log 2>&1 & b=$!
wait $a; wait $b

# 3. the few-labels comparison, both tasks at once, one thread each
SET=(--transfer-set task.iters="$ITERS" task.train_images="$LABELS" run.threads=1)
$M compare random:imagenette_cpu runs/inette_sup "$MOCO" runs/bccd_moco runs/bccd_moco_cont \
  --out "runs/compare_bccd_cont_iters${ITERS}_labels$LABELS" --protocols none --detect "$SHARED/bccd/BCCD" \
  --seeds "$SEEDS" "${SET[@]}" > runs/compare_bccd_cont.log 2>&1 & a=$!
$M compare random:imagenette_cpu runs/inette_sup "$MOCO" runs/camvid_moco runs/camvid_moco_cont \
  --out "runs/compare_camvid_cont_iters${ITERS}_labels$LABELS" --protocols none --segment "$SHARED/camvid" \
  --seeds "$SEEDS" "${SET[@]}" > runs/compare_camvid_cont.log 2>&1 & b=$!
wait $a; wait $b
