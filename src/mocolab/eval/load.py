"""Loading any checkpoint or weights file for evaluation: mocolab runs and exports, official
MoCo checkpoints, torchvision state_dicts."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..checkpoint import ACCEPTED, CheckpointError, extract_backbone, safe_load
from ..config import Config, from_dict
from ..errors import UsageError
from ..models.backbones import build_backbone, infer_arch
from ..models.encoder import build_encoder
from ..models.vit import VITS, build_vit, infer_vit, timm_vit


def load_for_eval(path: str, features: str, image_size: int | None):
    """Any checkpoint or weights file -> (network to evaluate, config giving its preprocessing)."""
    obj = safe_load(path)
    sd, meta = extract_backbone(obj)
    side = Path(path).with_suffix(".json")
    if not meta and side.is_file():
        meta = json.loads(side.read_text())
    cfg = from_dict(meta["config"]) if "config" in meta else Config()
    try:
        vit = infer_vit(sd)  # None for a ResNet
        arch = None if vit else infer_arch(sd)
    except ValueError as e:  # weights of another kind of network
        raise CheckpointError(f"{path}: {e}") from None
    if "config" not in meta:  # an export (its .json tells the preprocessing) or foreign weights
        cfg.data.mean, cfg.data.std = meta.get("mean", cfg.data.mean), meta.get("std", cfg.data.std)
        image_size = image_size or meta.get("image_size") or (
            vit["img_size"] if vit else 32 if arch["stem"] == "cifar" else 224)
    if image_size:
        cfg.data.image_size = image_size
    if features == "head":
        if "config" not in meta:
            raise CheckpointError("--features head needs a mocolab training checkpoint (it holds the head)")
        cfg.model.bn_splits = 1
        encoder, _ = build_encoder(cfg)  # f_q with its head, whatever the method
        prefix = "encoder_q."
        encoder.load_state_dict({k[len(prefix):]: v for k, v in obj["model"].items() if k.startswith(prefix)})
        return encoder, cfg
    spec = vit or arch
    if vit:
        net = timm_vit(vit["arch"], vit["img_size"])
    else:
        net, _ = build_backbone(spec["arch"], spec["width"], spec["stem"])
    try:
        net.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"the weights in {path} do not fit a {spec['arch']}: {str(e).splitlines()[0]}") from None
    return net, cfg


def random_backbone(preset: str, seed: int = 0, image_size: int | None = None):
    """An untrained backbone of `preset`'s architecture (seeded init) -> (network, config)."""
    from ..config import build_config
    from ..models.backbones import resolve_stem

    cfg = build_config(preset)
    if image_size:
        cfg.data.image_size = image_size
    mc = cfg.model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if mc.arch in VITS:
            net, _ = build_vit(mc.arch, cfg.data.crop_size or cfg.data.image_size)
        else:
            net, _ = build_backbone(mc.arch, mc.width, resolve_stem(mc.stem, cfg.data.image_size), bn_splits=1)
    return net, cfg


def resolve_entry(entry: str, results_dir: Path | str = ".", seed: int = 0):
    """The one resolver of every command that takes weights (knn, linear, finetune, compare, export,
    detect/segment --backbone): `random:PRESET`, a run folder (its backbone.pth) or a checkpoint
    file (training checkpoint, export, official MoCo, torchvision) ->
    (name, path of the weights or None, base path for result files)."""
    if entry.startswith("random:"):
        preset = entry[len("random:"):]
        if not preset:
            raise UsageError("random: needs a preset name, for example random:cifar10_cpu")
        return f"random init ({preset})", None, Path(results_dir) / f"random_{Path(preset).stem}_seed{seed}.pth"
    path = Path(entry).expanduser()
    if path.is_dir():
        if not (path / "backbone.pth").is_file():
            raise CheckpointError(f"{path} is a folder without backbone.pth (not a finished run); {ACCEPTED}")
        path = path / "backbone.pth"
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}; {ACCEPTED}")
    name = path.parent.name if path.name == "backbone.pth" else path.stem
    return name, path, path
