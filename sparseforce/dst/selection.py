"""The selection of one update: which weights stay, which grow (see ``ops.drop_grow_masks``).

Unsharded weights: one ``ops.drop_grow_masks`` call per update over every masked tensor. FSDP2
shards: only ``segment="global"``, as two exact top-k selections over every rank's shards from
all-reduced key histograms (``sparseforce.distributed``): keep = the top-(A - d) of |w| among the
active weights, then grow = the top-g of |score| among the weights outside keep. Ties go to the
lowest position of the shards laid end to end in rank order (rank, tensor, element), the same on
every rank.
"""
from __future__ import annotations

import torch

from .. import distributed, ops


def drop_grow(weights, scores, masks, drops, grows, segment: str, backend: str) -> list:
    """The new masks (fresh tensors; ``masks`` are only read)."""
    op = getattr(ops, "drop_grow_masks", None)
    if op is not None:
        return op(weights, scores, masks, drops, grows, segment=segment, backend=backend)
    return _sorted_drop_grow(weights, scores, masks, drops, grows, segment)


def _sorted_drop_grow(weights, scores, masks, drops, grows, segment):
    # Temporary, until main's ops.drop_grow_masks lands: the op's semantics with stable sorts.
    groups = [[i] for i in range(len(weights))] if segment == "tensor" else [list(range(len(weights)))]
    grows = drops if grows is None else grows
    out = [torch.zeros_like(m) for m in masks]
    for s, members in enumerate(groups):
        if not members:
            continue
        w = torch.cat([weights[i].detach().reshape(-1).abs().double() for i in members])
        g = torch.cat([scores[i].detach().reshape(-1).abs().double() for i in members])
        m = torch.cat([masks[i].reshape(-1) for i in members])
        active = m.nonzero().reshape(-1)
        keep = active[torch.sort(-w[active], stable=True).indices[: active.numel() - drops[s]]]
        new = torch.zeros_like(m)
        new[keep] = True
        free = (~new).nonzero().reshape(-1)
        new[free[torch.sort(-g[free], stable=True).indices[: grows[s]]]] = True
        offset = 0
        for i in members:
            n = masks[i].numel()
            out[i].copy_(new[offset: offset + n].view(masks[i].shape))
            offset += n
    return out


def sharded_drop_grow(weights, scores, masks, keeps: int, grow: int, group, backend: str) -> list:
    """The new local masks of one global update over every rank's shards (a collective):
    ``keeps`` active weights survive the drop, ``grow`` grow (both global counts)."""
    inf = float("inf")
    keep_scores = [torch.where(m, w.detach().abs(), -inf) for w, m in zip(weights, masks)]
    keep = distributed.topk_masks(keep_scores, keeps, group=group, backend=backend)
    grow_scores = [torch.where(k, -inf, s.detach().abs()) for s, k in zip(scores, keep)]
    grown = distributed.topk_masks(grow_scores, grow, group=group, backend=backend)
    return [k | g for k, g in zip(keep, grown)]
