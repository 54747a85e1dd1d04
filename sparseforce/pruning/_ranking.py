"""Scores ranked into masks for the one-shot methods: the kept count, the top-k (inverted: of the
negated scores) and a NaN score named by its layer."""
from __future__ import annotations

import torch

from .. import ops
from . import _select
from ._scope import Keep
from .schedules import keep_count


def keep_k(n: int, sparsity: float, k_rounding) -> int:
    return keep_count(n, 1.0 - sparsity, k_rounding)


def topk(method, names, scores, keep: Keep, invert, backend) -> list[torch.Tensor]:
    # Inverted: the top-k of the negated scores (-0.0 equals +0.0, ties still by position).
    if invert:
        scores = [s.neg() for s in scores]
    return select(method, names, _select.topk, scores, keep, backend)


def select(method, names, fn, *args, **kw) -> list[torch.Tensor]:
    try:
        return fn(*args, **kw)
    except ops.NaNScoreError as e:
        raise ValueError(f"{method}: the score of {names[e.index]!r} is NaN") from e
