"""Vision Transformers for MoCo v3, from timm (its VisionTransformer, not a copy): the class token
(after the final norm) is the backbone's output, N x D, for the head and every evaluation.

The v3 stability trick, as the official vits.py: the patch projection is random (the official
uniform init) and frozen (stop-gradient), and the position embedding is a fixed 2-D sin-cos one
(timm's build_sincos2d_pos_embed: the official embedding up to a fixed order of its channels),
zero for the class token. Other weights use timm's 'moco' init (the official one).

Since the backbone is a timm VisionTransformer with num_classes=0, its state_dict loads with
strict=True into `timm_vit(arch, img_size)` (the export)."""

from __future__ import annotations

import math
import typing

import torch
from torch import nn

if typing.TYPE_CHECKING:
    from timm.models.vision_transformer import VisionTransformer

# MoCo v3's ViT-S has 12 heads (timm's vit_small_patch16_224 has 6). For CIFAR-size images (patch 4,
# 64 patches): ViT-Ti/4 and a smaller ViT-mini/4 (width 128, 4 blocks) for 2 CPU cores, whose training
# step costs 1/6 of ViT-Ti/4's (benchmarks/RESULTS.md, session 11, 'A ViT that learns in 10 minutes')
VITS = {
    "vit_small_patch16": dict(patch_size=16, embed_dim=384, depth=12, num_heads=12),
    "vit_base_patch16": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12),
    "vit_tiny_patch4": dict(patch_size=4, embed_dim=192, depth=12, num_heads=3),
    "vit_mini_patch4": dict(patch_size=4, embed_dim=128, depth=4, num_heads=4),
}


def timm_vit(arch: str, img_size: int = 224, **kw) -> VisionTransformer:
    """timm's VisionTransformer of `arch` without a classifier (the class token N x D out).
    dynamic_img_size: evaluations at another size than training resample the position embedding."""
    # timm imported when a ViT is built
    from timm.models.vision_transformer import VisionTransformer

    if arch not in VITS:
        raise ValueError(f"unknown ViT '{arch}'; choose one of {', '.join(VITS)}")
    return VisionTransformer(img_size=img_size, num_classes=0, global_pool="token", class_token=True,
                             dynamic_img_size=True, **VITS[arch], **kw)


def build_vit(arch: str, img_size: int = 224, *, freeze_patch: bool = True) -> tuple[VisionTransformer, int]:
    """MoCo v3's ViT -> (model, feature dim D)."""
    from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed

    vit = timm_vit(arch, img_size, weight_init="moco")
    h, w = vit.patch_embed.grid_size
    with torch.no_grad():
        pos = build_sincos2d_pos_embed([h, w], vit.embed_dim)  # (h w) x D
        vit.pos_embed.copy_(torch.cat([torch.zeros(1, vit.embed_dim), pos])[None])  # 1 x (1 + h w) x D
    vit.pos_embed.requires_grad_(False)
    if freeze_patch:
        proj = vit.patch_embed.proj  # Conv2d 3 -> D, kernel p x p
        val = math.sqrt(6.0 / float(3 * proj.kernel_size[0] * proj.kernel_size[1] + vit.embed_dim))
        nn.init.uniform_(proj.weight, -val, val)
        nn.init.zeros_(proj.bias)
        proj.weight.requires_grad_(False)
        proj.bias.requires_grad_(False)
    return vit, vit.embed_dim


def infer_vit(sd: dict) -> dict | None:
    """{"arch", "img_size"} of a ViT state_dict (timm key names), or None for another network."""
    if "patch_embed.proj.weight" not in sd:
        return None
    w = sd["patch_embed.proj.weight"]  # D x 3 x p x p
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    grid = math.isqrt(sd["pos_embed"].shape[1] - 1)  # a square grid after the class token's slot
    for name, spec in VITS.items():
        if (spec["patch_size"], spec["embed_dim"], spec["depth"]) == (w.shape[-1], w.shape[0], depth):
            return {"arch": name, "img_size": grid * w.shape[-1]}
    raise ValueError(f"unsupported ViT (patch {w.shape[-1]}, width {w.shape[0]}, depth {depth}); "
                     f"supported: {', '.join(VITS)}")
