"""The pretraining optimizer: SGD (MoCo v1/v2: weight decay on every parameter, as the official
code), LARS (MoCo v3 ResNets) or AdamW (MoCo v3 ViTs). LARS and AdamW leave biases and norm
parameters (every parameter of at most one dimension) out of weight decay, and LARS out of its
adaptation too. Frozen parameters (a ViT's patch projection) are left out altogether.

LARS is timm's (timm.optim.Lars, maintained, with per-group options): its trust ratio is
trust_coeff |w| / (|g| + wd |w|), the LARS paper's, where the official MoCo v3 code uses
trust_coeff |w| / |g + wd w|; with wd 1e-6 the two differ by well under 1e-5 relatively."""

from __future__ import annotations

import torch

OPTIMIZERS = ("sgd", "lars", "adamw")


def param_groups(params, weight_decay: float) -> list[dict]:
    """params: parameters, or groups (dicts, with an lr_scale say) -> each split in two, trainable
    parameters only: >= 2-D weights decayed and adapted; biases and norm weights with weight
    decay 0 and, for LARS, no adaptation (always_adapt False)."""
    params = list(params)
    groups = params if params and isinstance(params[0], dict) else [{"params": params}]
    out = []
    for g in groups:
        ps = [p for p in g["params"] if p.requires_grad]
        extra = {k: v for k, v in g.items() if k != "params"}
        out += [{**extra, "params": [p for p in ps if p.ndim > 1], "weight_decay": weight_decay, "always_adapt": True},
                {**extra, "params": [p for p in ps if p.ndim <= 1], "weight_decay": 0.0, "always_adapt": False}]
    return out


def build_optimizer(params, optim_cfg, lr: float) -> torch.optim.Optimizer:
    """params: what method.learnable_params() returns (parameters or groups); optim_cfg: an
    OptimConfig (name, momentum, weight_decay); lr: the scaled base lr (the engine sets each
    step's lr on every group, times its lr_scale)."""
    name, wd = getattr(optim_cfg, "name", "sgd"), optim_cfg.weight_decay
    if name == "sgd":  # as before: every parameter (frozen ones get no gradient, so no update)
        return torch.optim.SGD(params, lr=lr, momentum=optim_cfg.momentum, weight_decay=wd)
    groups = param_groups(params, wd)
    if name == "lars":
        from timm.optim import Lars

        return Lars(groups, lr=lr, momentum=optim_cfg.momentum)
    if name == "adamw":
        for g in groups:
            del g["always_adapt"]
        return torch.optim.AdamW(groups, lr=lr)  # betas (0.9, 0.999), as the official code
    raise ValueError(f"unknown optimizer '{name}'; choose {', '.join(OPTIMIZERS)}")
