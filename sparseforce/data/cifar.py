"""CIFAR-10 / CIFAR-100 from the python-pickle batches of cs.toronto.edu, and their transforms."""
from __future__ import annotations

import importlib
import pickle
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from .catalog import MEAN_STD, PathLike, canonical_name
from .transforms import Compose, Normalize, RandomCrop, RandomHorizontalFlip

__all__ = ["CIFAR10", "CIFAR100", "cifar_train_transform", "cifar_test_transform"]


def cifar_train_transform(dataset: str = "cifar10",
                          generator: torch.Generator | None = None) -> Compose:
    """Random 32x32 crop with 4 px zero padding, horizontal flip, normalize."""
    mean, std = _cifar_mean_std(dataset)
    return Compose([
        RandomCrop(32, padding=4, generator=generator),
        RandomHorizontalFlip(generator=generator),
        Normalize(mean, std),
    ])


def cifar_test_transform(dataset: str = "cifar10") -> Compose:
    mean, std = _cifar_mean_std(dataset)
    return Compose([Normalize(mean, std)])


def _cifar_mean_std(dataset: str):
    key = canonical_name(dataset)
    if key not in ("cifar10", "cifar100"):
        raise ValueError(f"dataset must be 'cifar10' or 'cifar100', got {dataset!r}")
    return MEAN_STD[key]


# A CIFAR batch only ever references numpy's array reconstruction helpers, so anything else in a
# pickle means it is not a CIFAR batch; refusing it also keeps a stray file from running code.
_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"unexpected global {module}.{name}")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            # The official files were written by numpy 1.x; numpy 2 renamed numpy.core to
            # numpy._core and warns on every access through the old name.
            module = "numpy._core." + module[len("numpy.core."):]
        return getattr(importlib.import_module(module), name)


def _load_pickle(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            # encoding="bytes": the official batches are Python 2 pickles whose str values
            # (the uint8 pixel buffer among them) must stay bytes.
            obj = _CifarUnpickler(f, encoding="bytes").load()
    except OSError:
        raise
    except Exception as exc:  # garbage bytes can fail unpickling in many different ways
        raise ValueError(f"{path} is not a CIFAR python-pickle batch ({exc})") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{path} is not a CIFAR batch: expected a pickled dict, "
                         f"got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _as_str(x: Any) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


class _CIFAR(Dataset):
    folder: str = ""
    train_files: tuple[str, ...] = ()
    test_files: tuple[str, ...] = ()
    meta_file: str = ""
    label_key: str = ""
    names_key: str = ""
    num_classes: int = 0

    def __init__(self, root: PathLike, train: bool = True, transform: Callable | None = None):
        self.root = self._resolve_root(Path(root).expanduser())
        self.train = bool(train)
        self.transform = transform
        files = self.train_files if self.train else self.test_files
        images, labels = [], []
        for name in files:
            path = self.root / name
            if not path.is_file():
                raise FileNotFoundError(f"missing CIFAR file {path}; {self._layout()}")
            x, y = self._read_batch(path)
            images.append(x)
            labels.extend(y)
        # Kept as uint8 (N, 3, 32, 32): 4x smaller than float and converted per item.
        self.data: np.ndarray = np.concatenate(images).reshape(-1, 3, 32, 32)
        self.targets: list[int] = labels
        self.classes = self._read_classes()

    @classmethod
    def _layout(cls) -> str:
        files = ", ".join(cls.train_files + cls.test_files + (cls.meta_file,))
        return (f"expected the extracted python version of the data set: "
                f"<root>/{cls.folder}/{{{files}}} (root may also be the {cls.folder} folder itself)")

    @classmethod
    def _resolve_root(cls, root: Path) -> Path:
        if (root / cls.folder).is_dir():
            return root / cls.folder
        if root.name == cls.folder or any((root / f).is_file()
                                          for f in cls.train_files + cls.test_files):
            return root
        raise FileNotFoundError(f"CIFAR folder {root / cls.folder} not found; {cls._layout()}")

    def _read_batch(self, path: Path) -> tuple[np.ndarray, list[int]]:
        batch = _load_pickle(path)
        if "data" not in batch or self.label_key not in batch:
            raise ValueError(f"{path} is not a {type(self).__name__} batch: expected keys "
                             f"b'data' and b'{self.label_key}', found {sorted(batch)}")
        data = batch["data"]
        if isinstance(data, (bytes, bytearray)):
            data = np.frombuffer(data, dtype=np.uint8)
        data = np.asarray(data)
        if data.dtype != np.uint8 or data.size % 3072 != 0:
            raise ValueError(f"{path}: b'data' must be uint8 N x 3072, "
                             f"got {data.dtype} with shape {data.shape}")
        data = data.reshape(-1, 3072)
        labels = [int(v) for v in np.asarray(batch[self.label_key]).reshape(-1)]
        if len(labels) != data.shape[0]:
            raise ValueError(f"{path}: {data.shape[0]} images but {len(labels)} labels")
        if labels and (min(labels) < 0 or max(labels) >= self.num_classes):
            raise ValueError(f"{path}: labels must lie in [0, {self.num_classes}), "
                             f"got [{min(labels)}, {max(labels)}]")
        return data, labels

    def _read_classes(self) -> list[str]:
        path = self.root / self.meta_file
        # The meta file only carries names; training does not need them, so a missing one is
        # tolerated rather than making the data unusable.
        if not path.is_file():
            return [str(i) for i in range(self.num_classes)]
        meta = _load_pickle(path)
        if self.names_key not in meta:
            raise ValueError(f"{path} is not a CIFAR meta file: expected key b'{self.names_key}'")
        return [_as_str(n) for n in meta[self.names_key]]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = torch.from_numpy(self.data[index]).float().div_(255.0)
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[index]

    def __repr__(self) -> str:
        split = "train" if self.train else "test"
        return f"{type(self).__name__}(root={str(self.root)!r}, split={split}, n={len(self)})"


class CIFAR10(_CIFAR):
    """CIFAR-10 from ``cifar-10-batches-py``; items are (float CHW in [0, 1], int label)."""

    folder = "cifar-10-batches-py"
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files = ("test_batch",)
    meta_file = "batches.meta"
    label_key = "labels"
    names_key = "label_names"
    num_classes = 10


class CIFAR100(_CIFAR):
    """CIFAR-100 (fine labels) from ``cifar-100-python``; items like :class:`CIFAR10`."""

    folder = "cifar-100-python"
    train_files = ("train",)
    test_files = ("test",)
    meta_file = "meta"
    label_key = "fine_labels"
    names_key = "fine_label_names"
    num_classes = 100
