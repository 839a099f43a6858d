#!/usr/bin/env bash
# The paper's transfer comparison at CPU scale (README "Transfer"; results in benchmarks/RESULTS.md):
# backbones (random init, supervised and MoCo on Imagenette, MoCo on the target's own unlabeled
# training images), then detection on BCCD and segmentation on CamVid, 3 seeds each.
# Every step skips what is finished and resumes what was interrupted: rerun after a stop.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared/data}
M=${MOCOLAB:-.venv/bin/mocolab}
T=(run.threads=${THREADS:-1})
MOCO_EPOCHS=${MOCO_EPOCHS:-40}  # the Imagenette MoCo backbone (epochs, not minutes: the same backbone on a busy machine)
MOCO_K=${MOCO_K:-1024}  # its queue (the preset's); session 10's and 11's tables used MOCO_EPOCHS=20 MOCO_K=4096
MOCO=runs/inette_moco_e${MOCO_EPOCHS}_k$MOCO_K
SUP_EPOCHS=${SUP_EPOCHS:-5}
# per fine-tune, the same for every backbone and seed: the presets' full schedules (bccd_cpu 438
# steps, camvid_cpu 450); ITERS=N shortens every fine-tune to N steps (then into runs/*_itersN)
ITERS=${ITERS:-}
# LABELS=N: fine-tune on N labeled training images only (task.train_images; the same N images for
# every backbone at a seed), into runs/*_labelsN: the few-labels regime. Give ITERS too: the presets
# count epochs (30 BCCD images x 6 epochs would be 45 steps). The few-labels table in RESULTS.md
# (sessions 11 and 12) is LABELS=30 ITERS=150 SEEDS=0,1,2,3,4 bash docs/transfer.sh (its 20-epoch row:
# MOCO_EPOCHS=20 MOCO_K=4096)
LABELS=${LABELS:-}
# SUBSET=S (with LABELS): one fixed labeled subset, drawn with seed S, for every seed (task.subset_seed),
# so that the seeds vary only the fine-tuning; without it each seed draws its own N images
SUBSET=${SUBSET:-}
SEEDS=${SEEDS:-0,1,2}  # fine-tune seeds (and random inits): compare pairs each backbone with random init by seed
SUFFIX=${ITERS:+_iters$ITERS}${LABELS:+_labels$LABELS}${SUBSET:+_subset$SUBSET}

done_run() { [ -f "$1/summary.json" ]; }

# 1. backbones (the imagenette_cpu preset: ResNet-18 width 32, ImageNet stem)
done_run "$MOCO" || $M pretrain --preset imagenette_cpu --data "$SHARED/imagenette" \
  --out "$MOCO" --epochs "$MOCO_EPOCHS" --resume auto run.threads=2 moco.queue_size="$MOCO_K"
done_run runs/inette_sup || $M supervised --preset imagenette_cpu --data "$SHARED/imagenette" --out runs/inette_sup \
  --epochs "$SUP_EPOCHS" --resume auto "${T[@]}"
# the targets' own training images, unlabeled (BCCD trainval; CamVid train)
mkdir -p runs/bccd_trainval_images
while read -r id; do
  ln -sf "$(realpath "$SHARED/bccd/BCCD/JPEGImages/$id.jpg")" "runs/bccd_trainval_images/$id.jpg"
done < "$SHARED/bccd/BCCD/ImageSets/Main/trainval.txt"
SMALL=(optim.batch_size=64 moco.queue_size=256 --epochs 75)  # 292-367 images: 4-5 steps an epoch
done_run runs/bccd_moco || $M pretrain --preset imagenette_cpu --data runs/bccd_trainval_images --out runs/bccd_moco \
  --resume auto "${SMALL[@]}" "${T[@]}"
done_run runs/camvid_moco || $M pretrain --preset imagenette_cpu --data "$SHARED/camvid/train/images" \
  --out runs/camvid_moco --resume auto "${SMALL[@]}" "${T[@]}"
[ -n "${BACKBONES_ONLY:-}" ] && exit 0  # BACKBONES_ONLY=1: the backbones above, no comparison (docs/continued.sh)

# 2. the comparison: the same fine-tuning recipe (preset, ITERS iterations) for every backbone
SET=(--transfer-set ${ITERS:+task.iters=$ITERS} ${LABELS:+task.train_images=$LABELS} ${SUBSET:+task.subset_seed=$SUBSET}
     "${T[@]}")
$M compare random:imagenette_cpu runs/inette_sup "$MOCO" runs/bccd_moco \
  --out "runs/compare_bccd$SUFFIX" --protocols none --detect "$SHARED/bccd/BCCD" --seeds "$SEEDS" "${SET[@]}"
$M compare random:imagenette_cpu runs/inette_sup "$MOCO" runs/camvid_moco \
  --out "runs/compare_camvid$SUFFIX" --protocols none --segment "$SHARED/camvid" --seeds "$SEEDS" "${SET[@]}"
