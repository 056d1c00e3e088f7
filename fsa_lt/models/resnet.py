"""ResNets of He et al. (2016) in two flavours.

* ImageNet style (7x7 stride-2 stem and 3x3 max-pool): ``resnet10/18/34/50/101/152``
  and ``resnext50_32x4d``.  Module and parameter names follow the common torchvision
  layout (conv1, bn1, layer1..layer4 with conv1/bn1/conv2/bn2[/conv3/bn3] and
  downsample.0/downsample.1, fc), so an ImageNet state dict in that layout loads as is.
  Bottleneck blocks put the stride on the 3x3 convolution ("ResNet v1.5").
* CIFAR stem (3x3 stride-1 conv, BN, ReLU, no max-pool): ``resnet18_cifar`` and
  ``resnet34_cifar``; the final map is 512 x 4 x 4 at 32 x 32 input.

Every model exposes the split Feature Space Augmentation needs: ``num_features``,
``forward_features`` (final map, no pooling), ``forward_head`` (global average
pooling then ``fc``; ``pre_logits=True`` stops before ``fc``), ``get_classifier``
and ``reset_classifier``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .heads import CosineClassifier
from .registry import register_model

__all__ = ["FeatureHeadMixin", "BasicBlock", "Bottleneck", "ResNet"]


class FeatureHeadMixin:
    """forward_head / classifier handling shared by all models (expects ``self.fc``).

    The classifier is ``nn.Linear`` (the default) or a `CosineClassifier`
    (``use_cosine_classifier``); `reset_classifier` rebuilds the kind in use.
    """

    num_features: int
    fc: nn.Module
    classifier_kind: str = "linear"  # class defaults; use_cosine_classifier sets them per model
    cosine_scale: float = 30.0

    def forward_head(self, fmap: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = fmap.mean(dim=(2, 3))  # global average pooling -> B x C
        return x if pre_logits else self.fc(x)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def new_classifier(self, num_classes: int) -> nn.Module:
        """A freshly initialised ``num_features -> num_classes`` head of the kind in use, beside ``fc``
        (same device and dtype; the model's own initialisation); the model is not changed."""
        where = dict(device=self.fc.weight.device, dtype=self.fc.weight.dtype)
        if self.classifier_kind == "cosine":
            return CosineClassifier(self.num_features, num_classes, self.cosine_scale).to(**where)
        fc = nn.Linear(self.num_features, num_classes).to(**where)
        self._init_classifier(fc)
        return fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replace ``fc`` by a freshly initialised ``num_features -> num_classes`` head of the same kind."""
        self.fc = self.new_classifier(num_classes)
        self.num_classes = num_classes

    def use_cosine_classifier(self, scale: float = 30.0) -> None:
        """Switch to a freshly initialised cosine classifier (LDAM's ``NormedLinear``), ``scale * cos``."""
        self.classifier_kind = "cosine"
        self.cosine_scale = float(scale)
        self.reset_classifier(self.fc.out_features)

    def _init_classifier(self, fc: nn.Linear) -> None:  # default nn.Linear init
        pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _conv3x3(cin: int, cout: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, groups=groups, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64):
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock supports only groups=1 and base_width=64")
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = _conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride, groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3


class ResNet(FeatureHeadMixin, nn.Module):
    """ResNet with four stages of 64/128/256/512 x expansion channels.

    stem="imagenet": 7x7 stride-2 conv, BN, ReLU, 3x3 stride-2 max-pool (224 -> 7x7 map).
    stem="cifar": 3x3 stride-1 conv, BN, ReLU, no max-pool (32 -> 4x4 map).
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: list[int],
        num_classes: int = 1000,
        stem: str = "imagenet",
        zero_init_residual: bool = False,
        groups: int = 1,
        width_per_group: int = 64,
    ):
        super().__init__()
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
        self.groups = groups
        self.base_width = width_per_group
        self.inplanes = 64
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if stem == "imagenet" else nn.Identity()
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.num_features = 512 * block.expansion
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_bn().weight)

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, groups=self.groups, base_width=self.base_width))
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)


# ---- ImageNet-style ---------------------------------------------------------------


@register_model
def resnet10(num_classes: int = 1000, zero_init_residual: bool = False) -> ResNet:
    """ResNet-10 (BasicBlock [1,1,1,1]), the OLTR backbone for ImageNet-LT."""
    return ResNet(BasicBlock, [1, 1, 1, 1], num_classes, zero_init_residual=zero_init_residual)


@register_model
def resnet18(num_classes: int = 1000, zero_init_residual: bool = False) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, zero_init_residual=zero_init_residual)


@register_model
def resnet34(num_classes: int = 1000, zero_init_residual: bool = False) -> ResNet:
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes, zero_init_residual=zero_init_residual)


@register_model
def resnet50(num_classes: int = 1000, zero_init_residual: bool = False) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, zero_init_residual=zero_init_residual)


@register_model
def resnet101(num_classes: int = 1000, zero_init_residual: bool = False) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 23, 3], num_classes, zero_init_residual=zero_init_residual)


@register_model
def resnet152(num_classes: int = 1000, zero_init_residual: bool = False) -> ResNet:
    return ResNet(Bottleneck, [3, 8, 36, 3], num_classes, zero_init_residual=zero_init_residual)


@register_model
def resnext50_32x4d(num_classes: int = 1000, zero_init_residual: bool = False) -> ResNet:
    return ResNet(
        Bottleneck, [3, 4, 6, 3], num_classes, zero_init_residual=zero_init_residual,
        groups=32, width_per_group=4,
    )


# ---- CIFAR stem -------------------------------------------------------------------


@register_model
def resnet18_cifar(num_classes: int = 10, zero_init_residual: bool = False) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, stem="cifar", zero_init_residual=zero_init_residual)


@register_model
def resnet34_cifar(num_classes: int = 10, zero_init_residual: bool = False) -> ResNet:
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes, stem="cifar", zero_init_residual=zero_init_residual)
