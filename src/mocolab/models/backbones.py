"""ResNet backbones built from torchvision's ResNet, with a width option and a CIFAR stem.

The module names are torchvision's (conv1, bn1, layer1..4), and `fc` is an Identity, so the
backbone's state_dict loads with strict=True into `torchvision_model(...)`: for width 64 and
the ImageNet stem that is exactly `torchvision.models.resnetXX()` with `fc = Identity()`.
"""

from __future__ import annotations

from functools import partial

from torch import nn
from torchvision.models import resnet as tvr

from .splitbn import SplitBatchNorm

ARCHS = {
    "resnet10": (tvr.BasicBlock, [1, 1, 1, 1]),  # torchvision's ResNet class with one block per stage
    "resnet18": (tvr.BasicBlock, [2, 2, 2, 2]),
    "resnet34": (tvr.BasicBlock, [3, 4, 6, 3]),
    "resnet50": (tvr.Bottleneck, [3, 4, 6, 3]),
}


class WideResNet(tvr.ResNet):
    """torchvision's ResNet with `width` channels in the first stage and an optional CIFAR stem
    (3x3 stride-1 conv, no max-pool). It reuses torchvision's `_make_layer` and `forward`."""

    def __init__(self, block, layers, width: int = 64, cifar_stem: bool = False, norm_layer=None,
                 zero_init_residual: bool = False):
        nn.Module.__init__(self)
        self._norm_layer = norm_layer or nn.BatchNorm2d
        # torchvision's ResNet attributes, read by its _make_layer
        self.inplanes = width
        self.dilation = 1
        self.groups = 1
        self.base_width = 64
        if cifar_stem:
            self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.bn1 = self._norm_layer(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Identity()  # the backbone returns pooled features: N x feature_dim
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:  # each block starts as the identity (torchvision's option)
            for m in self.modules():
                if isinstance(m, tvr.Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, tvr.BasicBlock):
                    nn.init.zeros_(m.bn2.weight)


def resolve_stem(stem: str, image_size: int) -> str:
    if stem == "auto":
        return "cifar" if image_size < 96 else "imagenet"
    return stem


def build_backbone(arch: str, width: int = 64, stem: str = "imagenet", bn_splits: int = 1,
                   zero_init_residual: bool = False):
    """Returns (backbone, feature_dim). `stem` is cifar or imagenet (see resolve_stem)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture '{arch}'; choose one of {', '.join(ARCHS)}")
    block, layers = ARCHS[arch]
    norm = partial(SplitBatchNorm, splits=bn_splits) if bn_splits > 1 else nn.BatchNorm2d
    model = WideResNet(block, layers, width=width, cifar_stem=(stem == "cifar"), norm_layer=norm,
                       zero_init_residual=zero_init_residual)
    return model, width * 8 * block.expansion


def torchvision_model(arch: str, width: int = 64, stem: str = "imagenet") -> nn.Module:
    """The torchvision model that an exported backbone loads into with strict=True."""
    if width == 64 and hasattr(tvr, arch):
        model = getattr(tvr, arch)()
        if stem == "cifar":
            model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            model.maxpool = nn.Identity()
    else:
        block, layers = ARCHS[arch]
        model = WideResNet(block, layers, width=width, cifar_stem=(stem == "cifar"))
    model.fc = nn.Identity()
    return model


def infer_arch(sd: dict) -> dict:
    """Guesses arch, width and stem from a ResNet state_dict (torchvision key names)."""
    if "conv1.weight" not in sd:
        raise ValueError("not a ResNet state_dict: no conv1.weight")
    w = sd["conv1.weight"]
    blocks = {i: len({k.split(".")[1] for k in sd if k.startswith(f"layer{i}.")}) for i in range(1, 5)}
    bottleneck = "layer1.0.conv3.weight" in sd
    layers = [blocks[i] for i in range(1, 5)]
    for name, (block, ref) in ARCHS.items():
        if layers == ref and (block is tvr.Bottleneck) == bottleneck:
            return {"arch": name, "width": int(w.shape[0]), "stem": "cifar" if w.shape[-1] == 3 else "imagenet"}
    raise ValueError(f"unsupported ResNet layout (blocks per stage {layers}); supported: {', '.join(ARCHS)}")
