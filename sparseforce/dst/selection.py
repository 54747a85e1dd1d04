"""The selection of one update on FSDP2 shards (unsharded weights take one ``ops.drop_grow_masks``
call per update over every masked tensor, made by the updater): only ``segment="global"``, as two exact top-k selections over every rank's shards from
all-reduced key histograms (``sparseforce.distributed``): keep = the top-(A - d) of |w| among the
active weights, then grow = the top-g of |score| among the weights outside keep. Ties go to the
lowest position of the shards laid end to end in rank order (rank, tensor, element), the same on
every rank.
"""
from __future__ import annotations

import torch

from .. import distributed


def sharded_drop_grow(weights, scores, masks, keeps: int, grow: int, group, backend: str) -> list:
    """The new local masks of one global update over every rank's shards (a collective):
    ``keeps`` active weights survive the drop, ``grow`` grow (both global counts)."""
    inf = float("inf")
    keep_scores = [torch.where(m, w.detach().abs(), -inf) for w, m in zip(weights, masks)]
    keep = distributed.topk_masks(keep_scores, keeps, group=group, backend=backend)
    grow_scores = [torch.where(k, -inf, s.detach().abs()) for s, k in zip(scores, keep)]
    grown = distributed.topk_masks(grow_scores, grow, group=group, backend=backend)
    return [k | g for k, g in zip(keep, grown)]
