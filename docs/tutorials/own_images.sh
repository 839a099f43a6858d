#!/usr/bin/env bash
# Own images -> backbone -> embeddings -> detection (docs/tutorials/own-images.md; CI runs it on tiny
# data from tests/test_tutorials.py). Every size is a variable: the defaults are a real run.
set -euo pipefail
IMAGES=${IMAGES:-../shared/data/bccd/BCCD/JPEGImages}  # any folder of images, no labels needed
VOC=${VOC:-../shared/data/bccd/BCCD}                     # a small labeled detection set (VOC layout)
OUT=${OUT:-runs/tutorial}
MOCOLAB=${MOCOLAB:-mocolab}
EPOCHS=${EPOCHS:-75}   # pretraining epochs (a few hundred images: 4-5 steps an epoch)
ITERS=${ITERS:-438}    # detection fine-tuning iterations (bccd_cpu's full schedule)
# read -a: extra key=value overrides, e.g. PRETRAIN_SET="optim.batch_size=16" (CI shrinks the sizes)
read -r -a PRETRAIN_SET <<<"${PRETRAIN_SET:-optim.batch_size=64 moco.queue_size=256}"
read -r -a DETECT_SET <<<"${DETECT_SET:-}"

# 1. a MoCo backbone from the unlabeled images (imagenette_cpu: ResNet-18 width 32, ImageNet stem)
$MOCOLAB pretrain --preset imagenette_cpu --data "$IMAGES" --out "$OUT/backbone" --epochs "$EPOCHS" \
  --overwrite "${PRETRAIN_SET[@]}"

# 2. embeddings with the Python API: the backbone's pooled features of every image, and each image's
#    nearest neighbour (mocolab.load takes a run folder, an export, any checkpoint or random:PRESET)
python - "$OUT/backbone" "$IMAGES" "$OUT/embeddings.npy" <<'PY'
import sys

import numpy as np
import torch
from mocolab.api import embed, load, neighbors

model = load(sys.argv[1])  # the backbone, its eval transform and metadata
emb = embed(model, sys.argv[2])  # features N x D, with the images' relative paths
sims, idx = neighbors(emb, k=1)  # the nearest other image of each, by cosine (N x 1)
for i in range(min(3, len(emb.paths))):
    print(f"{emb.paths[i]}: nearest {emb.paths[idx[i, 0]]} (cosine {sims[i, 0]:.3f})")
feats = torch.nn.functional.normalize(torch.as_tensor(np.asarray(emb.features)), dim=1)  # N x D, unit length
np.save(sys.argv[3], feats.numpy())
print(f"embeddings: {tuple(feats.shape)} -> {sys.argv[3]}")
PY

# 3. detection: Faster R-CNN fine-tuned from the backbone (bccd_cpu), VOC AP on the test split
$MOCOLAB detect --backbone "$OUT/backbone" --data "$VOC" --out "$OUT/detect" --iters "$ITERS" \
  --overwrite "${DETECT_SET[@]}"
python -c "import json, sys; d = json.load(open(sys.argv[1])); print('detection AP50:', d.get('AP50', d))" \
  "$OUT/detect/detect.json"
