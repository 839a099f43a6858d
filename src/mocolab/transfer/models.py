"""Detection and segmentation models on a mocolab backbone, from torchvision's building blocks.

Detection: torchvision's FasterRCNN with an FPN (`BackboneWithFPN`) or the paper's C4 layout
(RPN on res4, res5 as the RoI box head, an extra BN after res5 as in MoCo's detectron2 config).
Segmentation: torchvision's FCN / DeepLabV3 on a dilated backbone (output stride 8).
Normalisation: "bn" (BN trained everywhere, the paper's "feature normalization"), "syncbn" (the
same across GPUs under torchrun) or "frozen" (FrozenBatchNorm2d with the pretrained statistics).
The builders modify the backbone they are given (norm layers, dilation, frozen stages).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import (
    FastRCNNConvFCHead,
    FastRCNNPredictor,
    TwoMLPHead,
)
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.segmentation import FCN, DeepLabV3
from torchvision.models.segmentation.deeplabv3 import DeepLabHead
from torchvision.models.segmentation.fcn import FCNHead
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign

from ..checkpoint import CheckpointError
from ..config import ConfigError
from ..eval.load import load_for_eval, random_backbone, resolve_entry
from ..models.backbones import WideResNet, infer_arch
from ..models.splitbn import SplitBatchNorm

NORMS = ("bn", "syncbn", "frozen")


def load_backbone(src: str, seed: int = 0, image_size: int | None = None):
    """Anything `mocolab knn` accepts (a run folder, a checkpoint or weights file,
    `random:PRESET`) -> (WideResNet, meta {arch, width, stem, mean, std, image_size, name, source})."""
    name, path, _ = resolve_entry(src, seed=seed)
    if path is None:
        net, cfg = random_backbone(src[len("random:"):], seed, image_size)
        source = f"{src} (seed {seed})"
    else:
        net, cfg = load_for_eval(str(path), "backbone", image_size)
        source = str(path)
    try:
        arch = infer_arch(net.state_dict())
    except ValueError as e:  # a ViT
        raise CheckpointError(f"{source}: detection and segmentation take a ResNet backbone ({e})") from None
    meta = dict(arch, mean=[float(v) for v in cfg.data.mean],
                std=[float(v) for v in cfg.data.std], image_size=cfg.data.image_size,
                name=name, source=source)
    return net, meta


def _frozen_bn(module: nn.Module) -> nn.Module:
    """Every BatchNorm2d below `module` -> FrozenBatchNorm2d with its statistics and affine."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, child.eps)
            frozen.load_state_dict(child.state_dict())  # drops num_batches_tracked
            setattr(module, name, frozen.to(child.running_mean.device))
        else:
            _frozen_bn(child)
    return module


def set_norm(module: nn.Module, norm: str) -> nn.Module:
    """Sets the normalisation of `module` (in place where possible; use the return value)."""
    if norm not in NORMS:
        raise ValueError(f"unknown norm '{norm}'; choose one of {', '.join(NORMS)}")
    for m in module.modules():  # SplitBatchNorm with splits=1 is exactly BatchNorm2d
        if isinstance(m, SplitBatchNorm):
            m.splits = 1
    if norm == "frozen":
        return _frozen_bn(module)
    if norm == "syncbn":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return module


def _stage_channels(backbone: WideResNet) -> list[int]:
    """Output channels of layer1..layer4: width * expansion * 2^i."""
    exp = type(backbone.layer1[0]).expansion
    return [backbone.conv1.out_channels * exp * 2 ** i for i in range(4)]


def freeze_stages(backbone: WideResNet, trainable_layers: int) -> None:
    """torchvision's rule (`_resnet_fpn_extractor`): train the last `trainable_layers` of
    layer4, layer3, layer2, layer1, conv1 (+ bn1 when 5)."""
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be in [0, 5], got {trainable_layers}")
    train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
    train += ["bn1"] if trainable_layers == 5 else []
    for name, p in backbone.named_parameters():
        if not any(name.startswith(t) for t in train):
            p.requires_grad_(False)


def build_detector(backbone: WideResNet, meta: dict, num_classes: int, *, head: str = "fpn",
                   norm: str = "bn", min_size: int = 800, max_size: int = 1333,
                   fpn_channels: int = 256, trainable_layers: int = 5,
                   anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512),
                   aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0),
                   representation_size: int = 1024, box_convs: int = 4, **rcnn_kw) -> FasterRCNN:
    """Faster R-CNN with `num_classes` foreground classes. head "fpn": FPN on layer1..4 (+ pool),
    with BN in the FPN, a 2-conv RPN head and a `box_convs`-conv + FC box head for bn/syncbn
    (torchvision's v2 builders), no norm and a two-FC box head for frozen (v1). head "c4": the
    paper's R50-C4 (ImageNet stem only). `rcnn_kw` go to FasterRCNN (rpn_pre_nms_top_n_train,
    rpn_post_nms_top_n_test, box_batch_size_per_image, box_detections_per_img, ...)."""
    if head not in ("fpn", "c4"):
        raise ValueError(f"unknown detection head '{head}'; choose fpn or c4")
    set_norm(backbone, "frozen" if norm == "frozen" else "bn")
    freeze_stages(backbone, trainable_layers)
    bn = None if norm == "frozen" else nn.BatchNorm2d
    chans = _stage_channels(backbone)
    common = {"min_size": min_size, "max_size": max_size, "image_mean": list(meta["mean"]),
              "image_std": list(meta["std"])}
    if head == "fpn":
        # features "0".."3" at strides 4..32 (ImageNet stem), "pool" at 64: fpn_channels each
        body = BackboneWithFPN(backbone, {f"layer{i + 1}": str(i) for i in range(4)}, chans,
                               fpn_channels, norm_layer=bn)
        anchors = AnchorGenerator(tuple((s,) for s in anchor_sizes),
                                  (tuple(aspect_ratios),) * len(anchor_sizes))
        rpn = RPNHead(fpn_channels, anchors.num_anchors_per_location()[0],
                      conv_depth=1 if bn is None else 2)
        if bn is None:
            box_head = TwoMLPHead(fpn_channels * 7 * 7, representation_size)
        else:
            box_head = FastRCNNConvFCHead((fpn_channels, 7, 7), [fpn_channels] * box_convs,
                                          [representation_size], norm_layer=bn)
        model = FasterRCNN(body, rpn_anchor_generator=anchors, rpn_head=rpn, box_head=box_head,
                           box_predictor=FastRCNNPredictor(representation_size, num_classes + 1),
                           **common, **rcnn_kw)
    else:
        if meta["stem"] != "imagenet":
            raise ConfigError("task.head=c4 needs the ImageNet stem (a CIFAR-stem backbone has stride 8 at res4)")
        body = IntermediateLayerGetter(backbone, {"layer3": "0"})  # stem..res4: N x C4 x H/16 x W/16
        body.out_channels = chans[2]
        anchors = AnchorGenerator((tuple(anchor_sizes),), (tuple(aspect_ratios),))
        rpn = RPNHead(chans[2], anchors.num_anchors_per_location()[0])
        # RoIs R x C4 x 14 x 14 -> res5 R x C5 x 7 x 7 (-> extra BN) -> pooled R x C5
        res5 = [backbone.layer4] + ([] if bn is None else [bn(chans[3])])
        box_head = nn.Sequential(*res5, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        model = FasterRCNN(body, rpn_anchor_generator=anchors, rpn_head=rpn,
                           box_roi_pool=MultiScaleRoIAlign(["0"], 14, 2), box_head=box_head,
                           box_predictor=FastRCNNPredictor(chans[3], num_classes + 1),
                           **common, **rcnn_kw)
    return set_norm(model, "syncbn") if norm == "syncbn" else model


def dilate_stages(stages: list[nn.Module]) -> None:
    """Replaces each stage's stride 2 by dilation, as torchvision's `replace_stride_with_dilation`
    does for Bottleneck, and for BasicBlock too: a strided 3x3 conv keeps the dilation so far and
    doubles it for every conv after it; strided 1x1 (downsample) convs get stride 1."""
    d = 1
    for stage in stages:
        for m in stage.modules():  # registration order: conv1, conv2, (conv3), downsample
            if not isinstance(m, nn.Conv2d):
                continue
            if m.kernel_size == (3, 3):
                m.dilation, m.padding = (d, d), (d, d)
            if m.stride == (2, 2):
                m.stride = (1, 1)
                if m.kernel_size == (3, 3):
                    d *= 2


class Segmenter(nn.Module):
    """Images N x 3 x H x W in [0, 1] -> logits N x C x H x W (and the aux logits in training
    when the model has them). Normalises with the backbone's pretraining mean/std."""

    def __init__(self, net: nn.Module, mean, std):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor):
        out = self.net((x - self.mean) / self.std)  # {"out": N x C x H x W, "aux": ...}
        if self.training and "aux" in out:
            return out["out"], out["aux"]
        return out["out"]


def build_segmenter(backbone: WideResNet, meta: dict, num_classes: int, *, head: str = "fcn",
                    norm: str = "bn", dilate: bool = True, aux: bool = False) -> Segmenter:
    """torchvision's FCN or DeepLabV3 (FCNHead / DeepLabHead) on the backbone's layer4; with
    `dilate` the last stages are dilated until layer4 has output stride 8 (an ImageNet stem
    dilates layer3 and layer4; a CIFAR stem is at stride 8 already). `aux` adds torchvision's
    auxiliary FCNHead on layer3."""
    if head not in ("fcn", "deeplabv3"):
        raise ValueError(f"unknown segmentation head '{head}'; choose fcn or deeplabv3")
    set_norm(backbone, "frozen" if norm == "frozen" else "bn")
    if dilate and meta["stem"] != "cifar":
        dilate_stages([backbone.layer3, backbone.layer4])  # layer4: output stride 32 -> 8
    chans = _stage_channels(backbone)
    layers = OrderedDict(layer4="out", **({"layer3": "aux"} if aux else {}))
    body = IntermediateLayerGetter(backbone, layers)
    aux_head = FCNHead(chans[2], num_classes) if aux else None
    if head == "fcn":
        net = FCN(body, FCNHead(chans[3], num_classes), aux_head)
    else:
        net = DeepLabV3(body, DeepLabHead(chans[3], num_classes), aux_head)
    model = Segmenter(net, meta["mean"], meta["std"])
    return set_norm(model, "syncbn") if norm == "syncbn" else model


def detection_loss(model: FasterRCNN, images: list[torch.Tensor], targets: list[dict]):
    """Train-mode forward -> (sum of torchvision's losses, {part: detached value})."""
    if not model.training:
        raise ValueError("detection_loss needs the model in train mode (model.train())")
    parts = model(images, targets)  # loss_classifier, loss_box_reg, loss_objectness, loss_rpn_box_reg
    return sum(parts.values()), {k: v.detach() for k, v in parts.items()}


def segmentation_loss(logits, mask: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Cross entropy over pixels, `ignore_index` excluded; with aux logits (a pair) torchvision's
    reference recipe adds 0.5 x the aux loss. logits N x C x H x W, mask N x H x W."""
    if isinstance(logits, tuple):
        out, aux = logits
        return (F.cross_entropy(out, mask.long(), ignore_index=ignore_index)
                + 0.5 * F.cross_entropy(aux, mask.long(), ignore_index=ignore_index))
    return F.cross_entropy(logits, mask.long(), ignore_index=ignore_index)
