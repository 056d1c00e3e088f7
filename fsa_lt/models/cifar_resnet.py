"""CIFAR ResNets of He et al. (2016), section 4.2: ResNet-20/32/44/56/110.

A 3x3 conv with 16 filters, then three stages of n = (depth - 2) / 6 basic blocks
with 16, 32 and 64 channels on 32x32, 16x16 and 8x8 maps, global average pooling and
a linear classifier.  Shortcuts are "option A": identity, or where the shape
changes, stride-2 subsampling plus zero padding of the new channels (no
parameters).  Weights are kaiming-normal initialised.  The final feature map is
64 x 8 x 8 at 32 x 32 input; ResNet-32 has 464,154 parameters with 10 classes.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .heads import FeatureHeadMixin
from .registry import register_model

__all__ = ["CifarResNet", "CifarBasicBlock", "ShortcutA"]


class ShortcutA(nn.Module):
    """Option-A shortcut: subsample spatially by `stride`, zero-pad channels to `cout`."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride = stride
        extra = cout - cin
        self.pad = (extra // 2, extra - extra // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad[0], self.pad[1]))


class CifarBasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = ShortcutA(cin, cout, stride) if (stride != 1 or cin != cout) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(FeatureHeadMixin, nn.Module):
    def __init__(self, depth: int, num_classes: int = 10, zero_init_residual: bool = False):
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (n >= 1), got {depth}")
        n = (depth - 2) // 6
        self.depth = depth
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_stage(16, 16, n, stride=1)
        self.layer2 = self._make_stage(16, 32, n, stride=2)
        self.layer3 = self._make_stage(32, 64, n, stride=2)
        self.num_features = 64
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # He et al. (2015) init, fan-in, as in LDAM-DRW's code
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self._init_classifier(self.fc)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, CifarBasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _init_classifier(self, fc: nn.Linear) -> None:
        nn.init.kaiming_normal_(fc.weight)
        nn.init.zeros_(fc.bias)

    @staticmethod
    def _make_stage(cin: int, cout: int, n: int, stride: int) -> nn.Sequential:
        blocks = [CifarBasicBlock(cin, cout, stride)]
        blocks += [CifarBasicBlock(cout, cout, 1) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        x = self.layer2(x)
        return self.layer3(x)


@register_model
def resnet8(num_classes: int = 10, zero_init_residual: bool = False) -> CifarResNet:
    """The smallest of the family (n = 1: one block a stage, 75k parameters): not a model of the
    papers, a smoke-test size, about a third of ResNet-20's compute (the test suite trains it)."""
    return CifarResNet(8, num_classes, zero_init_residual)


@register_model
def resnet20(num_classes: int = 10, zero_init_residual: bool = False) -> CifarResNet:
    return CifarResNet(20, num_classes, zero_init_residual)


@register_model
def resnet32(num_classes: int = 10, zero_init_residual: bool = False) -> CifarResNet:
    return CifarResNet(32, num_classes, zero_init_residual)


@register_model
def resnet44(num_classes: int = 10, zero_init_residual: bool = False) -> CifarResNet:
    return CifarResNet(44, num_classes, zero_init_residual)


@register_model
def resnet56(num_classes: int = 10, zero_init_residual: bool = False) -> CifarResNet:
    return CifarResNet(56, num_classes, zero_init_residual)


@register_model
def resnet110(num_classes: int = 10, zero_init_residual: bool = False) -> CifarResNet:
    return CifarResNet(110, num_classes, zero_init_residual)
