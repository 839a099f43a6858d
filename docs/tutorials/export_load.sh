#!/usr/bin/env bash
# Export a backbone to timm, detectron2, torchvision and safetensors, and load each export back
# (docs/tutorials/export.md; CI runs it on tiny data from tests/test_tutorials.py).
# timm's and detectron2's ResNets take width 64 and the ImageNet stem: the backbone below has them.
set -euo pipefail
DATA=${DATA:-../shared/data/imagenette}
OUT=${OUT:-runs/tutorial_export}
MOCOLAB=${MOCOLAB:-mocolab}
EPOCHS=${EPOCHS:-20}
read -r -a SET <<<"${SET:-run.threads=2}"

$MOCOLAB pretrain --preset imagenette_cpu --data "$DATA" --out "$OUT/run" --epochs "$EPOCHS" --overwrite \
  model.width=64 "${SET[@]}"
for format in timm detectron2 torchvision safetensors; do
  ext=$([ $format = detectron2 ] && echo pkl || { [ $format = safetensors ] && echo safetensors || echo pth; })
  $MOCOLAB export "$OUT/run" --format $format --out "$OUT/backbone_$format.$ext" --overwrite
done

# load each export back and check that it computes the same features as the run's own backbone
python - "$OUT" <<'PY'
import json
import pickle
import sys
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file

from mocolab.models.backbones import torchvision_model

out = Path(sys.argv[1])
meta = json.loads((out / "run" / "backbone.json").read_text())
ref = torchvision_model(meta["arch"], meta["width"], meta["stem"]).eval()
ref.load_state_dict(torch.load(out / "run" / "backbone.pth", weights_only=True), strict=True)
x = torch.randn(2, 3, 64, 64)  # 2 images
with torch.no_grad():
    want = ref(x)  # 2 x 512 pooled features

# timm: the sidecar JSON names the model; strict load into timm.create_model(name, num_classes=0)
spec = json.loads((out / "backbone_timm.json").read_text())
model = timm.create_model(spec["timm_model"], pretrained=False, **spec["create_model_kwargs"])
model.load_state_dict(torch.load(out / "backbone_timm.pth", weights_only=True), strict=True)
with torch.no_grad():
    got = model.eval()(x)
print(f"timm: strict load into {spec['timm_model']}, max |diff| of the features {(got - want).abs().max():.1e}")
assert torch.allclose(got, want, atol=1e-4)

# torchvision: the state_dict loads strictly into the matching torchvision ResNet
tv = torchvision_model(meta["arch"], meta["width"], meta["stem"]).eval()
tv.load_state_dict(torch.load(out / "backbone_torchvision.pth", weights_only=True), strict=True)
with torch.no_grad():
    assert torch.allclose(tv(x), want, atol=1e-5)
print("torchvision: strict load, same features")

# safetensors: the weights plus what they are (arch, width, stem, mean/std) as metadata
sd = load_file(out / "backbone_safetensors.safetensors")
tv.load_state_dict(sd, strict=True)
print("safetensors: strict load,", len(sd), "tensors")

# detectron2: the official MoCo converter's layout (what detectron2's DetectionCheckpointer reads)
with open(out / "backbone_detectron2.pkl", "rb") as f:
    d2 = pickle.load(f)  # our own file; a user's .pkl from elsewhere is code: never unpickle one blindly
assert d2["matching_heuristics"] is True
assert "stem.conv1.weight" in d2["model"] and "res2.0.conv1.weight" in d2["model"]
print("detectron2:", len(d2["model"]), "arrays; keys like", next(iter(d2["model"])))
PY
