"""VGG19 with BatchNorm, in CIFAR (FORCE paper) and ImageNet (torchvision) forms."""
from __future__ import annotations

import torch
import torch.nn as nn

from .init import kaiming_init_, kaiming_reset

__all__ = ["VGG", "vgg19_bn", "vgg19_bn_imagenet", "CFG_E"]

# torchvision's configuration "E" (VGG19).
CFG_E = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
         512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]


def _features(cfg, in_channels: int = 3) -> nn.Sequential:
    layers: list[nn.Module] = []
    c = in_channels
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            # Conv bias kept (as torchvision) even though BN makes it redundant,
            # so the module layout matches reference implementations.
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            c = v
    return nn.Sequential(*layers)


class VGG(nn.Module):
    def __init__(self, features: nn.Sequential, pool: nn.Module, classifier: nn.Module):
        super().__init__()
        self.features = features
        self.pool = pool
        self.classifier = classifier
        kaiming_init_(self)

    reset_parameters = kaiming_reset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def vgg19_bn(num_classes: int = 10) -> VGG:
    """CIFAR VGG19-BN: 20,024,000 prunable weights at 10 classes.

    The last max-pool of cfg E is dropped and replaced by AvgPool2d(2), so a
    32x32 input reaches the single Linear classifier as a 512-vector.
    """
    return VGG(_features(CFG_E[:-1]), nn.AvgPool2d(2), nn.Linear(512, num_classes))


def vgg19_bn_imagenet(num_classes: int = 1000) -> VGG:
    """torchvision-style VGG19-BN for 224x224 inputs."""
    classifier = nn.Sequential(
        nn.Linear(512 * 7 * 7, 4096), nn.ReLU(inplace=True), nn.Dropout(),
        nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(),
        nn.Linear(4096, num_classes),
    )
    return VGG(_features(CFG_E), nn.AdaptiveAvgPool2d(7), classifier)
