"""ImageNet as a class-folder tree, and its transforms."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import Dataset

from ._image_files import is_image, load_rgb
from .catalog import MEAN_STD, PathLike
from .transforms import (CenterCrop, Compose, Normalize, RandomHorizontalFlip, RandomResizedCrop,
                         Resize, ToTensor)

__all__ = ["ImageNet", "imagenet_train_transform", "imagenet_test_transform"]


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
            files = sorted(p for p in (split_dir / c).iterdir() if is_image(p))
            self.samples.extend((p, self.class_to_idx[c]) for p in files)
        if not self.samples:
            raise FileNotFoundError(f"no images under {split_dir}; {self._LAYOUT}")
        self.targets = [y for _, y in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        img = load_rgb(path)
        img = self.transform(img) if self.transform is not None else ToTensor()(img)
        return img, label

    def __repr__(self) -> str:
        return f"ImageNet(root={str(self.root)!r}, split={self.split}, n={len(self)})"
