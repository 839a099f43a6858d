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

# 2. embeddings: the backbone's pooled features of every image, and each image's nearest neighbour
python - "$OUT/backbone" "$IMAGES" "$OUT/embeddings.npy" <<'PY'
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2 as T
from PIL import Image

from mocolab.models.backbones import torchvision_model

run, images, out = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
meta = json.loads((run / "backbone.json").read_text())  # arch, width, stem, mean/std of the export
model = torchvision_model(meta["arch"], meta["width"], meta["stem"])
model.load_state_dict(torch.load(run / "backbone.pth", weights_only=True), strict=True)
model.eval()
size = meta.get("image_size", 96)
tf = T.Compose([T.Resize(size), T.CenterCrop(size), T.ToImage(), T.ToDtype(torch.float32, scale=True),
                T.Normalize(meta["mean"], meta["std"])])
files = sorted(p for p in images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
with torch.no_grad():
    x = torch.stack([tf(Image.open(f).convert("RGB")) for f in files])  # N x 3 x S x S
    feats = torch.nn.functional.normalize(model(x), dim=1)  # N x D, unit length
np.save(out, feats.numpy())
sim = feats @ feats.T  # N x N cosine similarity
sim.fill_diagonal_(-2)
nearest = sim.argmax(1)
for i in range(min(3, len(files))):
    print(f"{files[i].name}: nearest {files[nearest[i]].name} (cosine {sim[i, nearest[i]]:.3f})")
print(f"embeddings: {tuple(feats.shape)} -> {out}")
PY

# 3. detection: Faster R-CNN fine-tuned from the backbone (bccd_cpu), VOC AP on the test split
$MOCOLAB detect --backbone "$OUT/backbone" --data "$VOC" --out "$OUT/detect" --iters "$ITERS" \
  --overwrite "${DETECT_SET[@]}"
python -c "import json, sys; d = json.load(open(sys.argv[1])); print('detection AP50:', d.get('AP50', d))" \
  "$OUT/detect/detect.json"
