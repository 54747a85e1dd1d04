"""The selection op a step runs for what it keeps (a :class:`~._scope.Keep`: the global top-k, a
count per layer or an N:M pattern), all through ``sparseforce.ops``; and inverted selection
(``invert=True``): keep the k *lowest* scores instead of the k highest.

Inverted = the top-k of the negated scores, through the same ops as everything else, so it keeps
exactly k, and among equal scores the lowest position still wins (-0.0 equals +0.0, so negating a
zero creates no new order). The fused saliency ops rank |w·g| without materializing it; inverted,
the scores -|w·g| are materialized (one tensor per weight) and ranked with the plain ops:
inversion is an ablation, not the hot path.
"""
from __future__ import annotations

import torch

from .. import ops
from ..ops import _schema
from ._scope import Keep


def topk(scores, keep: Keep, backend) -> list[torch.Tensor]:
    if keep.segment is None:
        return ops.topk_masks(scores, keep.ks, backend=backend)
    return ops.segmented_topk_masks(scores, keep.ks, segment=keep.segment, backend=backend)


def saliency_topk(weights, grads, keep: Keep, prev_masks, resurrect, backend) -> list[torch.Tensor]:
    if keep.segment is None:
        return ops.saliency_topk_masks(weights, grads, keep.ks, prev_masks=prev_masks, resurrect=resurrect,
                                       backend=backend)
    return ops.segmented_saliency_topk_masks(weights, grads, keep.ks, prev_masks=prev_masks, resurrect=resurrect,
                                             segment=keep.segment, backend=backend)


def negated_saliency(weights, grads) -> list[torch.Tensor]:
    """-|w·g|, formed as ``ops.saliency_topk_masks`` forms |w·g|: in float32, float64 when either
    input is float64 (exact for fp16/bf16)."""
    scores = []
    for w, g in zip(weights, grads):
        dtype = _schema.saliency_dtype(w, g)
        scores.append((w.to(dtype) * g.to(dtype)).abs().neg_())
    return scores


def inverted_saliency_topk(rank, weights, grads, keep: Keep, prev_masks, resurrect) -> list[torch.Tensor]:
    """``saliency_topk`` with the lowest saliencies kept; ``rank(scores, keep)`` is :func:`topk`
    or the distributed form of the global one."""
    scores = negated_saliency(weights, grads)
    competing = _schema.competing(prev_masks, resurrect)
    if not competing:
        return rank(scores, keep)
    # Only survivors compete (nested masks): rank them alone. Boolean indexing keeps their
    # row-major order, so the tie rule (lowest position) is unchanged, and the survivors of an N:M
    # step (n_prev of every m) come out as consecutive groups of n_prev.
    survivors = [s[c] for s, c in zip(scores, competing)]
    if isinstance(keep.segment, tuple):
        _, n, m = keep.segment
        total = sum(c.numel() for c in competing)
        n_prev = sum(s.numel() for s in survivors) * m // total if total else 0
        if not n_prev:
            return [torch.zeros_like(c) for c in competing]
        survivors = [s.view(-1, n_prev) for s in survivors]
        keep = Keep(keep.total, ("nm", n, n_prev), None)
    chosen = rank(survivors, keep)
    masks = []
    for c, kept in zip(competing, chosen):
        full = torch.zeros_like(c)
        full[c] = kept.view(-1)
        masks.append(full)
    return masks
