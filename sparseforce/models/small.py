"""Small networks for tests and quick demos (CPU-trainable in seconds)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .init import kaiming_init_, kaiming_reset

__all__ = ["MLP", "LeNet5", "DigitsCNN", "MNISTVGG", "mlp", "lenet5", "digits_cnn", "mnist_vgg"]


class MLP(nn.Module):
    def __init__(self, in_features: int = 64, hidden: Sequence[int] = (128,), num_classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        d = in_features
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU(inplace=True)]
            d = h
        layers.append(nn.Linear(d, num_classes))
        self.net = nn.Sequential(*layers)
        kaiming_init_(self)

    reset_parameters = kaiming_reset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LeNet5(nn.Module):
    """LeNet-5-style net. Adaptive pooling before the classifier lets it take
    28x28 (MNIST) or 32x32 inputs without changing the layer sizes."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(5),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120), nn.ReLU(inplace=True),
            nn.Linear(120, 84), nn.ReLU(inplace=True),
            nn.Linear(84, num_classes),
        )
        kaiming_init_(self)

    reset_parameters = kaiming_reset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class DigitsCNN(nn.Module):
    """CNN for the 8x8 scikit-learn digits. Sized (~100k prunable weights) so that
    even at 99%+ sparsity roughly a thousand weights survive and the net still trains."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
        )
        self.fc = nn.Linear(128, num_classes)
        kaiming_init_(self)

    reset_parameters = kaiming_reset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(x), 1))


class MNISTVGG(nn.Module):
    """VGG-style CNN for 28x28 MNIST: four 3x3 conv + BatchNorm + ReLU blocks of 16, 32, 64 and 128
    channels, 2x2 max-pooling after each of the first three (28 -> 14 -> 7 -> 3, so that most of
    the arithmetic runs on small maps: an epoch of 3,600 images takes about 1.5 s on one core),
    global average pooling and a linear classifier. 98,192 prunable weights: 144, 4,608, 18,432,
    73,728 and 1,280, the small-big-small imbalance of VGG/ResNet that makes SNIP and random
    pruning empty whole layers at extreme sparsity."""

    def __init__(self, num_classes: int = 10, widths: Sequence[int] = (16, 32, 64, 128), in_channels: int = 1):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for i, w in enumerate(widths):
            # No conv bias: BatchNorm's shift makes it redundant (as in digits_cnn).
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            c = w
        layers.append(nn.AdaptiveAvgPool2d(1))
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c, num_classes)
        kaiming_init_(self)

    reset_parameters = kaiming_reset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(x), 1))


def mlp(in_features: int = 64, hidden: Sequence[int] = (128,), num_classes: int = 10) -> MLP:
    return MLP(in_features, hidden, num_classes)


def lenet5(in_channels: int = 1, num_classes: int = 10) -> LeNet5:
    return LeNet5(in_channels, num_classes)


def digits_cnn(num_classes: int = 10) -> DigitsCNN:
    return DigitsCNN(num_classes)


def mnist_vgg(num_classes: int = 10) -> MNISTVGG:
    return MNISTVGG(num_classes)
