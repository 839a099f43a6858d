"""Loading any checkpoint or weights file for evaluation: mocolab runs and exports, official
MoCo checkpoints, torchvision state_dicts."""

from __future__ import annotations

import json
from pathlib import Path

from ..checkpoint import CheckpointError, extract_backbone, safe_load
from ..config import Config, from_dict
from ..models.backbones import build_backbone, infer_arch
from ..models.moco import MoCo


def load_for_eval(path: str, features: str, image_size: int | None):
    """Any checkpoint or weights file -> (network to evaluate, config giving its preprocessing)."""
    obj = safe_load(path)
    sd, meta = extract_backbone(obj)
    side = Path(path).with_suffix(".json")
    if not meta and side.is_file():
        meta = json.loads(side.read_text())
    cfg = from_dict(meta["config"]) if "config" in meta else Config()
    if "config" not in meta:  # an export (its .json tells the preprocessing) or foreign weights
        cfg.data.mean, cfg.data.std = meta.get("mean", cfg.data.mean), meta.get("std", cfg.data.std)
        image_size = image_size or meta.get("image_size") or (32 if infer_arch(sd)["stem"] == "cifar" else 224)
    if image_size:
        cfg.data.image_size = image_size
    if features == "head":
        if "config" not in meta:
            raise CheckpointError("--features head needs a mocolab training checkpoint (it holds the head)")
        cfg.model.bn_splits = 1
        model = MoCo(cfg)
        model.load_state_dict(obj["model"])
        return model.encoder_q, cfg
    spec = infer_arch(sd)
    net, _ = build_backbone(spec["arch"], spec["width"], spec["stem"])
    try:
        net.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"the weights in {path} do not fit a {spec['arch']}: {str(e).splitlines()[0]}") from None
    return net, cfg
