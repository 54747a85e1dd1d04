"""Tiny-ImageNet-200 from its ``tiny-imagenet-200`` folder, and its transforms."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import Dataset

from ._image_files import is_image, load_rgb
from .catalog import MEAN_STD, PathLike
from .transforms import Compose, Normalize, RandomCrop, RandomHorizontalFlip, ToTensor

__all__ = ["TinyImageNet", "tinyimagenet_train_transform", "tinyimagenet_test_transform"]


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
            files = sorted(p for p in img_dir.iterdir() if is_image(p))
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
        img = ToTensor()(load_rgb(path))
        if self.transform is not None:
            img = self.transform(img)
        return img, label

    def __repr__(self) -> str:
        return f"TinyImageNet(root={str(self.root)!r}, split={self.split}, n={len(self)})"
