"""Shared by the dst tests: a small CNN, its batches, and an independent RigL written with numpy."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 6, 3), nn.ReLU(), nn.Conv2d(6, 8, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 4 * 4, 10))


def batches(seed: int, n: int, size: int = 8):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 1, 8, 8, generator=g), torch.randint(0, 10, (size,), generator=g)) for _ in range(n)]


def prunable(model) -> list[str]:
    return [n for n, p in model.named_parameters() if p.dim() > 1]


def random_masks(model, density: float, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=g) < density for n, p in model.named_parameters() if p.dim() > 1}


def ranked(values: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """The k candidate positions of largest value, ties to the lowest position (value, then position)."""
    pos = np.flatnonzero(candidates)
    order = np.lexsort((pos, -values[pos]))
    out = np.zeros(values.size, dtype=bool)
    out[pos[order[:k]]] = True
    return out


def rigl_masks(weights, grads, masks, t, total_steps, end, drop_fraction, scope="layer"):
    """The masks after a RigL update at step t: plain numpy, independent of the package."""
    f = drop_fraction / 2 * (1 + math.cos(math.pi * t / (end * total_steps)))
    flat = lambda ts: [np.abs(x.detach().double().reshape(-1).numpy()) if x.dtype != torch.bool  # noqa: E731
                       else x.reshape(-1).numpy() for x in ts]
    w, g, m = flat(weights), flat(grads), flat(masks)
    groups = [[i] for i in range(len(w))] if scope == "layer" else [list(range(len(w)))]
    out = [None] * len(w)
    for group in groups:
        wi, gi, mi = (np.concatenate([x[i] for i in group]) for x in (w, g, m))
        active = int(mi.sum())
        d = math.floor(f * active)
        kept = ranked(wi, mi, active - d)
        new = kept | ranked(gi, ~kept, d)
        offset = 0
        for i in group:
            out[i] = torch.from_numpy(new[offset: offset + w[i].size].copy()).view(masks[i].shape)
            offset += w[i].size
    return out
