"""Model zoo and registry.

"Prunable" weights throughout sparseforce are the ``.weight`` tensors of
Conv1d/2d/3d and Linear layers; biases and normalisation parameters are kept
dense, as in the FORCE paper's parameter counts.
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import torch.nn as nn

from .init import kaiming_init_
from .resnet import Bottleneck, ResNet, resnet50, resnet50_imagenet
from .small import MNISTVGG, DigitsCNN, LeNet5, MLP, digits_cnn, lenet5, mlp, mnist_vgg
from .vgg import VGG, vgg19_bn, vgg19_bn_imagenet

PRUNABLE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)

MODELS: Dict[str, Callable[..., nn.Module]] = {
    "resnet50": resnet50,
    "vgg19_bn": vgg19_bn,
    "resnet50_imagenet": resnet50_imagenet,
    "vgg19_bn_imagenet": vgg19_bn_imagenet,
    "mlp": mlp,
    "lenet5": lenet5,
    "digits_cnn": digits_cnn,
    "mnist_vgg": mnist_vgg,
}

# Per-sample input shape (no batch dim) each model is meant for; used by the CLI
# to build dummy batches and pick a dataset.
INPUT_SHAPES: Dict[str, Tuple[int, ...]] = {
    "resnet50": (3, 32, 32),
    "vgg19_bn": (3, 32, 32),
    "resnet50_imagenet": (3, 224, 224),
    "vgg19_bn_imagenet": (3, 224, 224),
    "mlp": (64,),
    "lenet5": (1, 28, 28),
    "digits_cnn": (1, 8, 8),
    "mnist_vgg": (1, 28, 28),
}

# Default class counts follow each model's target dataset.
DEFAULT_NUM_CLASSES: Dict[str, int] = {
    "resnet50": 10,
    "vgg19_bn": 10,
    "resnet50_imagenet": 1000,
    "vgg19_bn_imagenet": 1000,
    "mlp": 10,
    "lenet5": 10,
    "digits_cnn": 10,
    "mnist_vgg": 10,
}


def get_model(name: str, num_classes: int | None = None, **kw) -> nn.Module:
    """Build a registered model; ``num_classes=None`` uses the model's default."""
    try:
        ctor = MODELS[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}"
        ) from None
    if num_classes is None:
        num_classes = DEFAULT_NUM_CLASSES[name]
    return ctor(num_classes=num_classes, **kw)


def prunable_modules(model: nn.Module):
    """Yield (name, module) for every layer whose weight counts as prunable."""
    for n, m in model.named_modules():
        if isinstance(m, PRUNABLE_TYPES):
            yield n, m


def count_prunable(model: nn.Module) -> int:
    """Number of prunable weights (Conv1d/2d/3d and Linear ``.weight`` elements)."""
    return sum(m.weight.numel() for _, m in prunable_modules(model))


__all__ = [
    "MODELS", "INPUT_SHAPES", "DEFAULT_NUM_CLASSES", "PRUNABLE_TYPES",
    "get_model", "count_prunable", "prunable_modules", "kaiming_init_",
    "Bottleneck", "ResNet", "VGG", "MLP", "LeNet5", "DigitsCNN", "MNISTVGG",
    "resnet50", "resnet50_imagenet", "vgg19_bn", "vgg19_bn_imagenet",
    "mlp", "lenet5", "digits_cnn", "mnist_vgg",
]
