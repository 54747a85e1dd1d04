"""Masks seen as rows, and the N:M pattern along them.

A mask is viewed as the ops' segments view it (``sparseforce.ops.segmented_topk_masks``): a 2-D
(dim 0, the rest flattened) matrix, so a Linear weight's rows are its output units and a conv
weight's rows its output channels (in-channels x kernel flattened); a 0-dim mask is one row of one
entry and a 1-D mask of C entries is C rows of one. The N:M pattern keeps exactly n of every m
consecutive entries of each row, which needs rows whose length is a multiple of m.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional

import torch

__all__ = ["as_rows", "check_nm", "nm_violation"]


def as_rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a (rows, row length) matrix: (dim 0, the rest flattened); a view where it can be."""
    if t.dim() == 0:
        return t.reshape(1, 1)
    return t.reshape(t.shape[0], math.prod(t.shape[1:]))


def check_nm(n, m) -> None:
    """``TypeError`` / ``ValueError`` naming ``n`` or ``m`` unless ``1 <= m`` and ``0 <= n <= m``."""
    for name, value in (("n", n), ("m", m)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} of an n:m pattern must be an int, got {type(value).__name__} {value!r}")
    if m < 1:
        raise ValueError(f"m of an n:m pattern must be >= 1, got n={n}, m={m}")
    if not 0 <= n <= m:
        raise ValueError(f"n of an n:m pattern must be in [0, m], got n={n}, m={m}")


def nm_violation(mask: torch.Tensor, n: int, m: int) -> Optional[str]:
    """``None`` when ``mask`` keeps exactly ``n`` of every ``m`` consecutive entries along its rows
    (see the module's docstring), else one line saying how it breaks the pattern: a row length that
    is not a multiple of ``m``, or how many groups keep another count and where the first one is."""
    rows = as_rows(mask)
    length = rows.shape[1]
    if length % m:
        return f"its row length {length} (shape {tuple(mask.shape)}) is not a multiple of {m}"
    kept = rows.reshape(rows.shape[0], length // m, m).sum(dim=2)
    broken = kept != n
    if not bool(broken.any()):
        return None
    row, group = divmod(int(broken.flatten().nonzero()[0]), length // m)
    return (f"{int(broken.count_nonzero()):,} of {kept.numel():,} groups of {m} do not keep {n}; the first: "
            f"row {row}, entries {group * m}..{group * m + m - 1} keep {int(kept[row, group])}")
