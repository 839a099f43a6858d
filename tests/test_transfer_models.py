"""Detection and segmentation models on mocolab backbones (tiny widths and images)."""

import copy

import pytest
import torch
from torch import nn
from torchvision.models import resnet as tvr
from torchvision.ops import FrozenBatchNorm2d

from mocolab.models.backbones import build_backbone
from mocolab.transfer.models import (
    build_detector,
    build_segmenter,
    detection_loss,
    dilate_stages,
    load_backbone,
    segmentation_loss,
    set_norm,
)

MEAN, STD = [0.4, 0.45, 0.5], [0.2, 0.25, 0.3]
SMALL = {"min_size": 64, "max_size": 96, "fpn_channels": 16, "representation_size": 32,
         "box_convs": 1, "anchor_sizes": (8, 16, 32, 64, 128), "rpn_pre_nms_top_n_train": 50,
         "rpn_post_nms_top_n_train": 20, "rpn_pre_nms_top_n_test": 50,
         "rpn_post_nms_top_n_test": 20, "rpn_batch_size_per_image": 32,
         "box_batch_size_per_image": 16, "box_detections_per_img": 10}
PARTS = {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}


def backbone(arch="resnet18", width=8, stem="imagenet", seed=0):
    torch.manual_seed(seed)
    net, _ = build_backbone(arch, width, stem)
    return net, {"arch": arch, "width": width, "stem": stem, "mean": MEAN, "std": STD}


def batch():
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 64, 80, generator=g), torch.rand(3, 72, 64, generator=g)]
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0], [30.0, 10.0, 70.0, 40.0]]),
                "labels": torch.tensor([1, 3])},
               {"boxes": torch.tensor([[10.0, 12.0, 50.0, 60.0]]), "labels": torch.tensor([2])}]
    return images, targets


def train_step(model):
    model.train()
    images, targets = batch()
    loss, logs = detection_loss(model, images, targets)
    assert set(logs) == PARTS and torch.isfinite(loss)
    assert all(not v.requires_grad for v in logs.values())
    loss.backward()
    return loss


@pytest.mark.parametrize("arch,norm", [("resnet10", "bn"), ("resnet18", "frozen"),
                                       ("resnet50", "bn"), ("resnet50", "frozen"),
                                       ("resnet10", "syncbn")])
def test_fpn_detector(arch, norm):
    net, meta = backbone(arch)
    model = build_detector(net, meta, num_classes=3, head="fpn", norm=norm, **SMALL)
    assert model.roi_heads.box_predictor.cls_score.out_features == 4  # + background
    train_step(model)
    assert net.conv1.weight.grad is not None and net.layer4[0].conv1.weight.grad is not None
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if norm == "frozen":
        assert not bns and any(isinstance(m, FrozenBatchNorm2d) for m in net.modules())
        assert not any("bn" in n or "downsample.1" in n for n, _ in net.named_parameters())
    else:
        assert bns and all(m.weight.grad is not None for m in bns)
        kind = nn.SyncBatchNorm if norm == "syncbn" else nn.BatchNorm2d
        assert all(type(m) is kind for m in model.modules()
                   if isinstance(m, nn.modules.batchnorm._BatchNorm))
        assert any(isinstance(m, kind) for m in model.backbone.fpn.modules())
    model.eval()
    with torch.no_grad():
        out = model(batch()[0])
    assert len(out) == 2 and all(set(o) == {"boxes", "scores", "labels"} for o in out)
    assert out[0]["boxes"].shape[-1] == 4 and out[0]["scores"].shape == out[0]["labels"].shape


def test_detector_normalises_with_meta_and_freezes_stages():
    net, meta = backbone("resnet10")
    model = build_detector(net, meta, 2, trainable_layers=2, **SMALL)
    assert model.transform.image_mean == MEAN and model.transform.image_std == STD
    assert (model.transform.min_size, model.transform.max_size) == ((64,), 96)
    trainable = {n.split(".")[0] for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {"layer3", "layer4"}


@pytest.mark.parametrize("norm", ["bn", "frozen"])
def test_c4_detector(norm):
    net, meta = backbone("resnet50")
    model = build_detector(net, meta, 3, head="c4", norm=norm, **SMALL)
    head = model.roi_heads.box_head
    assert head[0] is net.layer4  # res5 is the box head
    assert isinstance(head[1], nn.BatchNorm2d) == (norm == "bn")  # the extra norm after res5
    if norm == "bn":
        assert head[1].num_features == 8 * 8 * 4
    assert model.backbone.out_channels == 8 * 4 * 4 and "layer4" not in dict(
        model.backbone.named_children())
    train_step(model)
    assert net.conv1.weight.grad is not None and net.layer4[0].conv2.weight.grad is not None


def test_c4_refuses_cifar_stem():
    net, meta = backbone("resnet18", stem="cifar")
    with pytest.raises(ValueError, match="c4 needs the ImageNet stem") as e:
        build_detector(net, meta, 2, head="c4")
    assert "\n" not in str(e.value)


def test_frozen_norm_keeps_pretrained_statistics():
    net, _ = backbone("resnet18", stem="cifar")
    net.train()
    with torch.no_grad():
        for _ in range(3):  # non-trivial running statistics
            net(torch.randn(4, 3, 16, 16) * 2 + 1)
    ref = copy.deepcopy(net).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        want = ref(x)
    frozen = set_norm(net, "frozen")
    old = {n: m for n, m in ref.named_modules() if isinstance(m, nn.BatchNorm2d)}
    new = {n: m for n, m in frozen.named_modules() if isinstance(m, FrozenBatchNorm2d)}
    assert old.keys() == new.keys()
    for n, m in old.items():
        for k in ("running_mean", "running_var", "weight", "bias"):
            assert torch.equal(getattr(new[n], k), getattr(m, k))
    frozen.train()  # frozen statistics: train mode changes nothing
    with torch.no_grad():
        torch.testing.assert_close(frozen(x), want)


def test_set_norm_rejects_unknown():
    with pytest.raises(ValueError, match="unknown norm"):
        set_norm(backbone()[0], "gn")


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
@pytest.mark.parametrize("head", ["fcn", "deeplabv3"])
def test_segmenter(arch, head):
    net, meta = backbone(arch)
    model = build_segmenter(net, meta, 5, head=head)
    x = torch.rand(2, 3, 64, 48)
    with torch.no_grad():
        feats = model.net.backbone(x)["out"]  # layer4: output stride 8
    assert feats.shape[-2:] == (8, 6) and feats.shape[1] == 8 * 8 * (4 if arch == "resnet50" else 1)
    model.train()
    logits = model(x)
    assert logits.shape == (2, 5, 64, 48)
    mask = torch.randint(0, 5, (2, 64, 48))
    mask[:, :4] = 255
    loss = segmentation_loss(logits, mask, ignore_index=255)
    assert torch.isfinite(loss)
    loss.backward()
    assert net.conv1.weight.grad is not None and torch.isfinite(net.conv1.weight.grad).all()


def test_segmenter_normalises_aux_and_undilated():
    net, meta = backbone("resnet10")
    model = build_segmenter(net, meta, 3, aux=True, dilate=False).train()
    x = torch.rand(2, 3, 64, 64)
    out, aux = model(x)
    assert out.shape == aux.shape == (2, 3, 64, 64)
    assert torch.isfinite(segmentation_loss((out, aux), torch.zeros(2, 64, 64, dtype=torch.long)))
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 3, 64, 64)
        feats = model.net.backbone((x - torch.tensor(MEAN).view(1, 3, 1, 1))
                                   / torch.tensor(STD).view(1, 3, 1, 1))
        torch.testing.assert_close(model(x), model.net(
            (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1))["out"])
    assert feats["out"].shape[-1] == 2  # stride 32 without dilation


def test_cifar_stem_segmenter_is_stride_8_and_syncbn():
    net, meta = backbone("resnet10", stem="cifar")
    model = build_segmenter(net, meta, 3, norm="syncbn")
    assert any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    assert not any(type(m) is nn.BatchNorm2d for m in model.modules())
    with torch.no_grad():
        assert model.net.backbone(torch.rand(1, 3, 32, 32))["out"].shape[-1] == 4
        assert model.eval()(torch.rand(1, 3, 32, 32)).shape == (1, 3, 32, 32)


def test_dilation_matches_torchvision_for_bottleneck():
    ref = tvr.ResNet(tvr.Bottleneck, [1, 2, 2, 2], width_per_group=64,
                     replace_stride_with_dilation=[False, True, True])
    net = tvr.ResNet(tvr.Bottleneck, [1, 2, 2, 2])
    dilate_stages([net.layer3, net.layer4])
    got = {n: (m.stride, m.dilation, m.padding) for n, m in net.named_modules()
           if isinstance(m, nn.Conv2d)}
    want = {n: (m.stride, m.dilation, m.padding) for n, m in ref.named_modules()
            if isinstance(m, nn.Conv2d)}
    assert got == want


def test_dilation_for_basicblock():
    net, _ = backbone("resnet18")
    dilate_stages([net.layer3, net.layer4])
    conv = {n: (m.stride[0], m.dilation[0]) for n, m in net.named_modules()
            if isinstance(m, nn.Conv2d) and n.startswith(("layer3", "layer4"))}
    assert conv["layer3.0.conv1"] == (1, 1) and conv["layer3.0.conv2"] == (1, 2)
    assert conv["layer3.1.conv1"] == (1, 2) and conv["layer4.0.conv1"] == (1, 2)
    assert conv["layer4.0.conv2"] == (1, 4) and conv["layer4.1.conv2"] == (1, 4)
    assert conv["layer4.0.downsample.0"] == (1, 1)


def test_load_backbone_from_file_and_run_folder(tmp_path):
    net, _ = backbone("resnet18", width=8, stem="cifar", seed=3)
    (tmp_path / "run").mkdir()
    for path in (tmp_path / "w.pth", tmp_path / "run" / "backbone.pth"):
        torch.save(net.state_dict(), path)
    for src in (tmp_path / "w.pth", tmp_path / "run"):
        got, meta = load_backbone(str(src))
        assert {k: meta[k] for k in ("arch", "width", "stem")} == {
            "arch": "resnet18", "width": 8, "stem": "cifar"}
        assert len(meta["mean"]) == len(meta["std"]) == 3 and meta["source"].endswith(".pth")
        for k, v in net.state_dict().items():
            assert torch.equal(got.state_dict()[k], v)


def test_load_backbone_random():
    a, meta = load_backbone("random:cifar10_cpu", seed=1)
    b, _ = load_backbone("random:cifar10_cpu", seed=1)
    assert meta["arch"] in ("resnet10", "resnet18", "resnet34", "resnet50")
    assert meta["stem"] == "cifar" and "random:cifar10_cpu" in meta["source"]
    assert torch.equal(a.conv1.weight, b.conv1.weight)
    with pytest.raises(ValueError, match="random: needs a preset"):
        load_backbone("random:")


def test_detection_loss_needs_train_mode():
    net, meta = backbone("resnet10")
    model = build_detector(net, meta, 3, **SMALL).eval()
    with pytest.raises(ValueError, match="train mode"), torch.no_grad():
        detection_loss(model, *batch())
