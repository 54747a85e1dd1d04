"""What the package knows about each data set by name: class counts, input shapes, channel
statistics, and the one spelling of a name those tables are keyed by."""
from __future__ import annotations

import os

__all__ = ["PathLike", "MEAN_STD", "NUM_CLASSES", "INPUT_SHAPE", "canonical_name"]

# What every reader's root and get_dataset's data_dir accept.
PathLike = str | os.PathLike

# Per-channel statistics of each training set; the usual values from the literature.
MEAN_STD: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "tinyimagenet": ((0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "mnist": ((0.1307,), (0.3081,)),
}

NUM_CLASSES: dict[str, int] = {
    "cifar10": 10,
    "cifar100": 100,
    "tinyimagenet": 200,
    "imagenet": 1000,
    "digits": 10,
    "mnist": 10,
}

# Shape of one sample after the test-time transform, which is what models are built for.
INPUT_SHAPE: dict[str, tuple[int, int, int]] = {
    "cifar10": (3, 32, 32),
    "cifar100": (3, 32, 32),
    "tinyimagenet": (3, 64, 64),
    "imagenet": (3, 224, 224),
    "digits": (1, 8, 8),
    "mnist": (1, 28, 28),
}


def canonical_name(name: str) -> str:
    """The key a data set's name has in :data:`NUM_CLASSES` and the other tables: lower case,
    without ``-`` and ``_`` (``"CIFAR-10"`` and ``"tiny_imagenet"`` name ``cifar10`` and
    ``tinyimagenet``)."""
    return str(name).lower().replace("-", "").replace("_", "")
