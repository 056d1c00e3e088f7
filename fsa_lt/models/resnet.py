"""ResNets of He et al. (2016) on torchvision's ``ResNet``, ``BasicBlock`` and ``Bottleneck``.

* ImageNet stem (7x7 stride-2 conv, 3x3 max-pool): ``resnet10/18/34/50/101/152`` and
  ``resnext50_32x4d`` are ``torchvision.models.ResNet`` itself (ResNet-10 is
  ``ResNet(BasicBlock, [1, 1, 1, 1])``), so their modules, parameter names,
  initialisation and outputs are torchvision's and a torchvision state dict loads as is.
  Bottleneck blocks put the stride on the 3x3 convolution ("ResNet v1.5").
* CIFAR stem (3x3 stride-1 conv, BN, ReLU, no max-pool): ``resnet18_cifar`` and
  ``resnet34_cifar``, torchvision's ``BasicBlock`` under our own stem (torchvision has
  none for 32 x 32 images); the final map is 512 x 4 x 4 at 32 x 32 input.

Both add the split Feature Space Augmentation needs (`fsa_lt.models.heads.FeatureHeadMixin`):
``num_features``, ``forward_features`` (final map, no pooling), ``forward_head`` (global
average pooling then ``fc``; ``pre_logits=True`` stops before ``fc``), ``get_classifier``,
``reset_classifier``, ``new_classifier`` and the cosine classifier option.

This module imports torchvision; `fsa_lt.models` imports it only when one of these models
is built (`fsa_lt.models.registry.register_deferred`).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .._vision import load
from .heads import FeatureHeadMixin
from .registry import register_model

_tv = load("torchvision.models.resnet")
BasicBlock = _tv.BasicBlock
Bottleneck = _tv.Bottleneck

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "CifarStemResNet", "IMAGENET_MODELS", "CIFAR_STEM_MODELS"]


class ResNet(FeatureHeadMixin, _tv.ResNet):
    """``torchvision.models.ResNet`` with the model contract of `fsa_lt.models`.

    Built by torchvision's constructor (same modules, same initialisation, same random
    draws); ``forward`` is ``forward_head(forward_features(x))``, which pools with a mean
    over the map where torchvision's ``avgpool`` (kept, unused) does the same.
    """

    def __init__(self, block, layers: list[int], num_classes: int = 1000, zero_init_residual: bool = False,
                 groups: int = 1, width_per_group: int = 64):
        super().__init__(block, layers, num_classes=num_classes, zero_init_residual=zero_init_residual,
                         groups=groups, width_per_group=width_per_group)
        self.num_features = 512 * block.expansion
        self.num_classes = num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)


class CifarStemResNet(FeatureHeadMixin, nn.Module):
    """ResNet-18/34 layout for 32 x 32 images: 3x3 stride-1 stem, no max-pool, torchvision's
    ``BasicBlock`` in four stages of 64/128/256/512 channels, 1x1 projection shortcuts.

    Module names are torchvision's (conv1, bn1, layer1..layer4, downsample.0/1, fc); the
    initialisation is torchvision's ResNet's (kaiming-normal fan-out convolutions, unit BN).
    """

    def __init__(self, layers: list[int], num_classes: int = 10, zero_init_residual: bool = False):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity()
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        self.num_features = 512
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
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(_tv.conv1x1(self.inplanes, planes, stride), nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)


# ---- ImageNet stem: torchvision's architectures -------------------------------------------

# name -> (block, blocks per stage, groups, width per group), as torchvision builds them
_IMAGENET = {
    "resnet10": (BasicBlock, [1, 1, 1, 1], 1, 64),  # the OLTR backbone for ImageNet-LT
    "resnet18": (BasicBlock, [2, 2, 2, 2], 1, 64),
    "resnet34": (BasicBlock, [3, 4, 6, 3], 1, 64),
    "resnet50": (Bottleneck, [3, 4, 6, 3], 1, 64),
    "resnet101": (Bottleneck, [3, 4, 23, 3], 1, 64),
    "resnet152": (Bottleneck, [3, 8, 36, 3], 1, 64),
    "resnext50_32x4d": (Bottleneck, [3, 4, 6, 3], 32, 4),
}
_CIFAR_STEM = {"resnet18_cifar": [2, 2, 2, 2], "resnet34_cifar": [3, 4, 6, 3]}
IMAGENET_MODELS = tuple(_IMAGENET)
CIFAR_STEM_MODELS = tuple(_CIFAR_STEM)


def _imagenet_factory(name: str):
    block, layers, groups, width = _IMAGENET[name]

    def factory(num_classes: int = 1000, zero_init_residual: bool = False) -> ResNet:
        return ResNet(block, layers, num_classes, zero_init_residual=zero_init_residual,
                      groups=groups, width_per_group=width)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"{name}: torchvision's ResNet({block.__name__}, {layers}, groups={groups}, width_per_group={width})."
    return factory


def _cifar_stem_factory(name: str):
    layers = _CIFAR_STEM[name]

    def factory(num_classes: int = 10, zero_init_residual: bool = False) -> CifarStemResNet:
        return CifarStemResNet(layers, num_classes, zero_init_residual=zero_init_residual)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"{name}: BasicBlock {layers} under a CIFAR stem (32 x 32 -> 512 x 4 x 4)."
    return factory


for _name in IMAGENET_MODELS:
    globals()[_name] = register_model(_imagenet_factory(_name))
for _name in CIFAR_STEM_MODELS:
    globals()[_name] = register_model(_cifar_stem_factory(_name))
del _name
