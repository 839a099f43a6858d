"""Loading any checkpoint or weights file for evaluation: mocolab runs and exports, model folders
(`mocolab export --format folder`: model.safetensors + config.json + README.md), safetensors
exports, official MoCo checkpoints, torchvision state_dicts."""

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

MODEL_FILE, CONFIG_FILE = "model.safetensors", "config.json"  # a model folder's weights and metadata


def read_safetensors(path: str | Path) -> tuple[dict, dict]:
    """A safetensors file -> (state_dict, metadata with numbers and lists decoded). A model
    folder's config.json (beside model.safetensors) completes the metadata."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path)
    try:
        sd = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None
    for k, conv in (("width", int), ("image_size", int), ("img_size", int), ("epochs", float),
                    ("mean", json.loads), ("std", json.loads)):
        if k in meta and meta[k] not in ("None", ""):
            try:
                meta[k] = conv(meta[k])
            except ValueError:
                raise CheckpointError(f"{path}: metadata {k}={meta[k]!r} is not a {conv.__name__}") from None
    if path.name == MODEL_FILE and (path.parent / CONFIG_FILE).is_file():
        meta.update(folder_config(path.parent))
    return sd, meta


def folder_config(folder: str | Path) -> dict:
    """A model folder's config.json (arch, width, stem, mean/std, method, epochs, data, ...)."""
    path = Path(folder) / CONFIG_FILE
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"unreadable model folder metadata {path}: {e}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    meta.pop("config", None)  # "config" means a training config to load_for_eval
    return meta


def load_weights(path: str | Path, obj=None) -> tuple[dict, dict]:
    """Any weights file `resolve_entry` gives -> (backbone state_dict, metadata): a training
    checkpoint's metadata is {"config": ...}; an export's is its .json sidecar, a safetensors
    file's its header (and a model folder's config.json); foreign weights have none.
    obj: the file's content (checkpoint.safe_load) when the caller reads more of it than the
    backbone, so that the file is read once; None reads it here."""
    path = Path(path)
    if path.suffix == ".safetensors":
        sd, meta = read_safetensors(path)
        sd, _ = extract_backbone(sd)
        return sd, meta
    sd, meta = extract_backbone(safe_load(path) if obj is None else obj)
    side = path.with_suffix(".json")
    if not meta and side.is_file():
        try:
            meta = json.loads(side.read_text())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"unreadable metadata {side}: {e}") from None
    return sd, meta


def load_for_eval(path: str, features: str, image_size: int | None):
    """Any checkpoint or weights file -> (network to evaluate, config giving its preprocessing)."""
    # --features head also takes f_q's head from a training checkpoint: the file is read once
    obj = safe_load(path) if features == "head" and Path(path).suffix != ".safetensors" else None
    sd, meta = load_weights(path, obj)
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
        if "config" not in meta or obj is None:
            raise CheckpointError("--features head needs a mocolab training checkpoint (it holds the head)")
        cfg.model.bn_splits = 1
        encoder, _ = build_encoder(cfg)  # f_q with its head, whatever the method
        prefix = "encoder_q."
        model = obj["model"]
        encoder.load_state_dict({k[len(prefix):]: v for k, v in model.items() if k.startswith(prefix)})
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
    embed, neighbors, detect/segment --backbone): `random:PRESET`, a model folder (its
    model.safetensors), a run folder (its backbone.pth) or a weights file (training checkpoint,
    export, safetensors export, official MoCo, torchvision) ->
    (name, path of the weights or None, base path for result files)."""
    if entry.startswith("random:"):
        preset = entry[len("random:"):]
        if not preset:
            raise UsageError("random: needs a preset name, for example random:cifar10_cpu")
        return f"random init ({preset})", None, Path(results_dir) / f"random_{Path(preset).stem}_seed{seed}.pth"
    path = Path(entry).expanduser()
    if path.is_dir():
        if (path / MODEL_FILE).is_file():
            path = path / MODEL_FILE
        elif (path / "backbone.pth").is_file():
            path = path / "backbone.pth"
        else:
            raise CheckpointError(f"{path} is a folder without backbone.pth (not a finished run) or "
                                  f"{MODEL_FILE} (not a model folder); {ACCEPTED}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}; {ACCEPTED}")
    name = path.parent.name if path.name in ("backbone.pth", MODEL_FILE) else path.stem
    return name, path, path
