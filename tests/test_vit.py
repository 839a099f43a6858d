"""MoCo v3's ViTs from timm: the class token out, the frozen random patch projection and fixed
sin-cos positions through training steps, and the export's strict load into timm's model."""

import functools

import torch
from conftest import tiny_config
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed

from mocolab.config import ARCHS
from mocolab.methods import build_method
from mocolab.models.vit import VITS, timm_vit
from mocolab.optim import build_optimizer
from mocolab.step import train_step


@functools.lru_cache(maxsize=1)
def _shared():
    """One untrained method for the tests that only read it."""
    return _method()


def _method():
    cfg = tiny_config(**{"model.arch": "vit_tiny_patch4", "moco.method": "mocov3", "model.head": "mlp3_bn",
                         "model.predictor_dim": 32, "optim.name": "adamw", "optim.weight_decay": 0.1})
    torch.manual_seed(0)
    return build_method(cfg), cfg


def test_class_token_and_fixed_embeddings():
    assert set(VITS) <= set(ARCHS)
    method, _ = _shared()
    vit = method.encoder_q.backbone
    x = torch.randn(2, 3, 16, 16)
    f = vit(x)  # N x D: the class token after the final norm
    assert f.shape == (2, 192) and method.feature_dim == 192
    torch.testing.assert_close(f, vit.forward_features(x)[:, 0])
    assert torch.equal(vit.pos_embed[0, 0], torch.zeros(192))  # the class token's
    torch.testing.assert_close(vit.pos_embed[0, 1:], build_sincos2d_pos_embed([4, 4], 192))
    assert vit(torch.randn(1, 3, 32, 32)).shape == (1, 192)  # another size: positions resampled


def test_patch_projection_and_positions_stay_frozen_through_steps():
    method, cfg = _method()
    opt = build_optimizer(method.learnable_params(), cfg.optim, 1e-3)
    vit = method.encoder_q.backbone
    frozen = {n: p.clone() for n, p in vit.named_parameters() if not p.requires_grad}
    assert set(frozen) == {"pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"}
    blocks = vit.blocks[0].attn.qkv.weight.clone()
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        views = (torch.randn(8, 3, 16, 16, generator=g), torch.randn(8, 3, 16, 16, generator=g))
        train_step(method, opt, views, m=0.9)
    for n, p in vit.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]) and p.grad is None, n
    assert not torch.equal(vit.blocks[0].attn.qkv.weight, blocks)  # the rest trains
    assert torch.equal(method.encoder_k.backbone.patch_embed.proj.weight, frozen["patch_embed.proj.weight"])


def test_export_loads_strictly_into_timm():
    method, _ = _shared()
    vit = method.encoder_q.backbone.eval()
    ref = timm_vit("vit_tiny_patch4", 16)
    ref.load_state_dict(vit.state_dict(), strict=True)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(ref.eval()(x), vit(x))


def test_a_vit_checkpoint_loads_for_evaluation(tmp_path):
    from mocolab.checkpoint import atomic_save
    from mocolab.eval.load import load_for_eval
    from mocolab.models.vit import infer_vit

    method, cfg = _shared()
    vit = method.encoder_q.backbone.eval()
    assert infer_vit(vit.state_dict()) == {"arch": "vit_tiny_patch4", "img_size": 16}
    atomic_save({"model": method.state_dict(), "config": cfg.to_dict()}, tmp_path / "final.pth")
    atomic_save(vit.state_dict(), tmp_path / "backbone.pth")  # the run's export, without its .json
    x = torch.randn(2, 3, 16, 16)
    for name in ("final.pth", "backbone.pth"):
        net, c = load_for_eval(str(tmp_path / name), "backbone", None)
        assert c.data.image_size == 16
        torch.testing.assert_close(net.eval()(x), vit(x))


def test_mocolab_export_to_timm_round_trip(tmp_path):
    import json

    import pytest
    import timm

    from mocolab.checkpoint import atomic_save
    from mocolab.export import export

    method, cfg = _shared()
    vit = method.encoder_q.backbone.eval()
    atomic_save({"model": method.state_dict(), "config": cfg.to_dict()}, tmp_path / "final.pth")
    info = export(tmp_path / "final.pth", "timm", tmp_path / "vit.pth")
    side = json.loads((tmp_path / "vit.json").read_text())
    assert side["timm_model"] == info["timm_model"] == "vit_tiny_patch16_224"
    ref = timm.create_model(side["timm_model"], pretrained=False, **side["create_model_kwargs"])
    ref.load_state_dict(torch.load(tmp_path / "vit.pth", weights_only=True), strict=True)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(ref.eval()(x), vit(x))
    with pytest.raises(ValueError, match="timm only"):
        export(tmp_path / "final.pth", "torchvision", tmp_path / "tv.pth")


def test_every_cifar_vit_is_recognised_from_its_weights():
    """infer_vit tells ViT-Ti/4 from ViT-mini/4 (and each from its image size), so evaluations rebuild the right one."""
    from mocolab.models.vit import VITS, build_vit, infer_vit

    for arch in ("vit_tiny_patch4", "vit_mini_patch4"):
        vit, dim = build_vit(arch, 32)
        assert dim == VITS[arch]["embed_dim"] and len(vit.blocks) == VITS[arch]["depth"]
        assert infer_vit(vit.state_dict()) == {"arch": arch, "img_size": 32}
