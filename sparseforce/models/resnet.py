"""ResNet50 for CIFAR (FORCE paper layout) and ImageNet (torchvision v1.5 layout).

Both share the Bottleneck block; they differ only in the stem (CIFAR images are
32x32, so a stride-2 7x7 conv plus max-pool would throw away most of the
spatial resolution before the first stage).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .init import kaiming_init_, kaiming_reset

__all__ = ["Bottleneck", "ResNet", "resnet50", "resnet50_imagenet"]


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        # Stride on the 3x3 (v1.5) rather than the 1x1: a strided 1x1 would skip
        # 3/4 of the input positions entirely.
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_planes),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, layers=(3, 4, 6, 3), num_classes: int = 10, imagenet: bool = False, width: int = 64):
        super().__init__()
        # width: channels of the stem and the first stage (64 in the paper); narrower copies time the
        # same network shape in less time (`sparseforce bench --scale`).
        self.in_planes = width
        if imagenet:
            self.stem = nn.Sequential(
                nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            )
        self.layer1 = self._make_layer(width, layers[0], 1)
        self.layer2 = self._make_layer(2 * width, layers[1], 2)
        self.layer3 = self._make_layer(4 * width, layers[2], 2)
        self.layer4 = self._make_layer(8 * width, layers[3], 2)
        # Adaptive pooling keeps the model usable at any input resolution
        # (e.g. small images in tests) without changing the parameter count.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8 * width * Bottleneck.expansion, num_classes)
        kaiming_init_(self)

    reset_parameters = kaiming_reset

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        mods = []
        for s in [stride] + [1] * (blocks - 1):
            mods.append(Bottleneck(self.in_planes, planes, s))
            self.in_planes = planes * Bottleneck.expansion
        return nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def resnet50(num_classes: int = 10) -> ResNet:
    """CIFAR ResNet50 (3x3 stem, no max-pool): 23,467,712 prunable weights at 10 classes."""
    return ResNet((3, 4, 6, 3), num_classes=num_classes, imagenet=False)


def resnet50_imagenet(num_classes: int = 1000) -> ResNet:
    """ImageNet ResNet50 (7x7/2 stem + max-pool): 25,502,912 prunable weights at 1000 classes."""
    return ResNet((3, 4, 6, 3), num_classes=num_classes, imagenet=True)
