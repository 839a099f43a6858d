"""Checkpoints: full training state, written atomically; backbone export for torchvision.

Everything is saved as tensors, numbers, strings, lists and dicts, so that every file loads
with `torch.load(weights_only=True)`: a file handed in by a user can never run code.
"""

from __future__ import annotations

import logging
import pickle
import random
from pathlib import Path

import numpy as np
import torch

from .errors import UserError
from .runfiles import save_torch, write_json


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be used; the message says what was expected."""


def atomic_save(obj, path: str | Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then a rename over `path`: a crash
    at any moment leaves either the old file or the new one, never a torn one. A full disk (or any
    OSError) removes the temporary file, leaves the old one and is one line naming `path`
    (runfiles.WriteError, exit code 2)."""
    save_torch(obj, path)


# What every command that takes weights accepts (eval.load.resolve_entry), in its error messages.
ACCEPTED = "pass a run folder, a checkpoint, an export, official MoCo or torchvision weights"


def safe_load(path: str | Path, map_location="cpu") -> dict:
    """torch.load(weights_only=True) with messages a user can act on."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file; {ACCEPTED}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}; {ACCEPTED}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        with open(path, "rb") as f:
            head = f.read(2)
        if head[:1] != b"\x80" and head != b"PK":  # neither a pickle nor torch.save's zip: text, another format
            raise CheckpointError(f"{path} is not a PyTorch checkpoint (a file saved with torch.save); "
                                  f"{ACCEPTED}") from None
        raise CheckpointError(
            f"refused to load {path}: it holds Python objects other than tensors and plain data, "
            "which could run code; load only weights (a state_dict of tensors)") from None
    except Exception:  # a text file, a truncated or foreign file: what it is not, not the exception
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (a file saved with torch.save), or it is "
                              f"truncated; {ACCEPTED}") from None


def rng_state(generators: dict[str, torch.Generator]) -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": list(random.getstate()[1]) + [random.getstate()[0], random.getstate()[2]],
        "generators": {k: g.get_state() for k, g in generators.items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    py = state["python"]
    random.setstate((py[-2], tuple(py[:-2]), py[-1]))
    for k, g in generators.items():
        if k in state["generators"]:
            g.set_state(state["generators"][k])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def backbone_state_dict(model) -> dict:
    """The query encoder's backbone, with torchvision's key names (no `fc`)."""
    return {k: v.detach().cpu().clone() for k, v in model.encoder_q.backbone.state_dict().items()}


def export_backbone(model, path: str | Path, meta_path: str | Path, meta: dict) -> None:
    """Writes the backbone as a plain torchvision state_dict (`path`) and what it is (`meta_path`,
    JSON). `models.backbones.torchvision_model(arch, width, stem)` loads it with strict=True."""
    atomic_save(backbone_state_dict(model), path)
    write_json(meta_path, meta)


def extract_backbone(obj: dict) -> tuple[dict, dict]:
    """Accepts a mocolab checkpoint, a mocolab export, an official MoCo checkpoint
    (`module.encoder_q.*`) or a torchvision state_dict (our export); returns (backbone_sd, meta)."""
    if not isinstance(obj, dict):
        raise CheckpointError("expected a dict (a state_dict or a checkpoint)")
    meta = {}
    if "model" in obj and "config" in obj:  # a mocolab training checkpoint
        prefix = "encoder_q.backbone."
        sd = {k[len(prefix):]: v for k, v in obj["model"].items() if k.startswith(prefix)}
        meta = {"config": obj["config"]}
    else:
        sd = obj.get("state_dict", obj)
        for prefix in ("module.encoder_q.", "encoder_q.", "module.base_encoder.", "module."):
            if any(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
                break
        vit = "patch_embed.proj.weight" in sd  # an official v3 ViT's `head` is its projector
        sd = {k: v for k, v in sd.items() if not k.startswith("head." if vit else "fc.")}
    if not isinstance(sd, dict) or not ("conv1.weight" in sd or "patch_embed.proj.weight" in sd):
        keys = ", ".join(list(sd)[:5]) if isinstance(sd, dict) else type(sd).__name__
        raise CheckpointError(
            "no ResNet or ViT backbone found: expected a mocolab checkpoint or export, an official MoCo "
            f"checkpoint (module.encoder_q.*) or a torchvision ResNet state_dict; got keys: {keys}")
    return sd, meta


def latest_checkpoint(out: Path) -> Path | None:
    """The newest checkpoint in RUN_DIR/checkpoints that loads (for --resume auto)."""
    ckdir = out / "checkpoints"
    if not ckdir.is_dir():
        return None
    for path in sorted(ckdir.glob("*.pth"), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            safe_load(path)
            return path
        except CheckpointError:
            logging.getLogger("mocolab").warning("skipping unreadable checkpoint %s", path)
    return None


def load_training_checkpoint(resume: str, out: str | Path) -> tuple[Path | None, dict | None]:
    """--resume: 'auto' (the newest valid checkpoint in RUN_DIR `out`; (None, None) when there is
    none), a run folder (its newest valid checkpoint) or a checkpoint path -> (path, state),
    checked to be a training checkpoint."""
    path = latest_checkpoint(Path(out)) if resume == "auto" else Path(resume).expanduser()
    if path is None:
        return None, None
    if path.is_dir():  # another run folder: its newest valid checkpoint
        run, path = path, latest_checkpoint(path)
        if path is None:
            raise CheckpointError(f"--resume {run}: no readable checkpoint in {run / 'checkpoints'}; pass a "
                                  "training checkpoint (RUN/checkpoints/*.pth) or 'auto'")
    state = safe_load(path)
    if not isinstance(state, dict) or not {"model", "optimizer", "progress", "config"} <= set(state):
        raise CheckpointError(f"{path} is not a mocolab training checkpoint (expected the keys model, "
                              "optimizer, progress, config); `mocolab knn` evaluates plain weights")
    logging.getLogger("mocolab").info("resuming from %s", path)
    return path, state

