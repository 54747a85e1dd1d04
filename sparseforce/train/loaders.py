"""The data side of training: the paper's splits, batching, and the generators a checkpoint saves."""
from __future__ import annotations

import torch

from .. import _checks
from .. import data as _data


def get_splits(dataset: str, data_dir=None, *, seed: int = 0, val_fraction: float = 0.1, augment: bool = True):
    """(train, val, test) data sets as in the paper: ``val_fraction`` of the official training set
    held out (seeded), standard augmentation on train only. The augmentation draws from its own
    generator seeded by ``seed`` + 1 (mod 2**32), which :func:`sparseforce.train.fit` checkpoints with everything
    else. ``seed``: an integer in [0, 2**32)."""
    seed = _checks.seed(seed)
    gen = torch.Generator().manual_seed((seed + 1) % 2**32)
    train = _data.get_dataset(dataset, data_dir, split="train", augment=augment, val_fraction=val_fraction,
                              seed=seed, generator=gen)
    val = (_data.get_dataset(dataset, data_dir, split="val", val_fraction=val_fraction, seed=seed)
           if val_fraction > 0 else None)
    test = _data.get_dataset(dataset, data_dir, split="test", seed=seed)
    return train, val, test


def _is_dataset(obj) -> bool:
    return hasattr(obj, "__getitem__") and hasattr(obj, "__len__") and not isinstance(obj, (list, tuple))


def as_loader(data, batch_size: int, shuffle: bool, seed: int, num_workers: int):
    """A data set batched here (seeded); a loader, any other iterable or ``None`` as it is."""
    if data is None or isinstance(data, torch.utils.data.DataLoader) or not _is_dataset(data):
        return data
    return _data.make_loader(data, batch_size=batch_size, shuffle=shuffle, seed=seed, num_workers=num_workers)


def loader_generators(loader) -> list[torch.Generator]:
    """Every generator that decides the order or augmentation of ``loader``'s batches."""
    found: list[torch.Generator] = []
    seen: set[int] = set()

    def add(g):
        if isinstance(g, torch.Generator) and id(g) not in seen:
            seen.add(id(g))
            found.append(g)

    add(getattr(loader, "generator", None))
    sampler = getattr(loader, "sampler", None)
    add(getattr(sampler, "generator", None))
    batch_sampler = getattr(loader, "batch_sampler", None)
    add(getattr(getattr(batch_sampler, "sampler", None), "generator", None))
    for g in _data.iter_generators(getattr(loader, "dataset", None), set()):
        add(g)
    return found

