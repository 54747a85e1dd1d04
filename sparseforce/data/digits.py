"""scikit-learn's bundled 8x8 digits, available offline."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from .. import _checks

__all__ = ["Digits"]


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
