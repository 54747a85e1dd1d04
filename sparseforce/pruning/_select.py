"""Inverted selection (``invert=True``): keep the k *lowest* scores instead of the k highest.

Inverted = the top-k of the negated scores, through the same ``topk_masks`` op as everything
else, so it keeps exactly k, and among equal scores the lowest global position still wins
(-0.0 equals +0.0, so negating a zero creates no new order). The fused saliency op ranks |w·g|
without materializing it; inverted, the scores -|w·g| are materialized (one tensor per weight)
and ranked with ``topk_masks``: inversion is an ablation, not the hot path.
"""
from __future__ import annotations

import torch

from ..ops import _schema


def negated_saliency(weights, grads) -> list[torch.Tensor]:
    """-|w·g|, formed as ``ops.saliency_topk_masks`` forms |w·g|: in float32, float64 when either
    input is float64 (exact for fp16/bf16)."""
    scores = []
    for w, g in zip(weights, grads):
        dtype = torch.float64 if torch.float64 in (w.dtype, g.dtype) else torch.float32
        scores.append((w.to(dtype) * g.to(dtype)).abs().neg_())
    return scores


def inverted_saliency_topk(topk, weights, grads, k, prev_masks, resurrect, **kw) -> list[torch.Tensor]:
    """``saliency_topk_masks`` with the lowest saliencies kept; ``topk`` is ``ops.topk_masks`` or
    ``distributed.topk_masks`` (``kw`` its backend/group)."""
    scores = negated_saliency(weights, grads)
    competing = _schema.competing(prev_masks, resurrect)
    if not competing:
        return topk(scores, k, **kw)
    # Only survivors compete (nested masks): rank them alone. Boolean indexing keeps their
    # row-major order, so the tie rule (lowest global position) is unchanged.
    chosen = topk([s[m] for s, m in zip(scores, competing)], k, **kw)
    masks = []
    for m, c in zip(competing, chosen):
        full = torch.zeros_like(m)
        full[m] = c
        masks.append(full)
    return masks
