"""The backend's kernels as the op registry calls them (arguments already checked by _schema).

They allocate outputs, call the custom ops, and turn the NaN flags into the reference's
exceptions: reading the flags is each call's one synchronisation with the GPU.
"""
from __future__ import annotations

import torch

from .._schema import HISTOGRAM_BITS, KEY_BITS, NaNScoreError, check_survivors
from . import library  # noqa: F401  (registers torch.ops.sparseforce_triton)

_ops = torch.ops.sparseforce_triton


def _raise_on_nan(flags, message=None):
    hit = flags.nonzero()
    if hit.numel():
        i = int(hit[0, 0])
        raise NaNScoreError(i, message(i) if message else None)


def _saliency_nan_message(i):
    # Same words as the reference backend.
    return (f"the saliency |w*g| of weights[{i}] is NaN (NaN, or inf times 0, in weights[{i}] "
            f"or grads[{i}])")


def _masks_like(tensors, out):
    if out is not None:
        return out
    return [torch.empty(t.shape, dtype=torch.bool, device=t.device) for t in tensors]


def topk_masks(scores, k, out, device):
    masks = _masks_like(scores, out)
    if sum(s.numel() for s in scores) == 0:
        return masks
    _raise_on_nan(_ops.topk_masks(scores, k, masks))
    return masks


def kth_largest(scores, k, device):
    value, flags = _ops.kth_largest(scores, k)
    _raise_on_nan(flags)
    return value


def saliency_topk_masks(weights, grads, k, prev_masks, resurrect, out, device):
    masks = _masks_like(weights, out)
    if sum(w.numel() for w in weights) == 0:
        return masks
    # FORCE ranks every weight; Iter SNIP only those alive in prev_masks (all, when None).
    competing = [] if resurrect or prev_masks is None else prev_masks
    # The kernels do not count survivors themselves. The error order puts a competing NaN before
    # k > survivors, so only that error path pays for a NaN search: a k = 0 selection into
    # scratch masks, which leaves `out` as it was.
    if competing and k > sum(int(m.sum()) for m in competing):
        _raise_on_nan(_ops.saliency_topk_masks(weights, grads, 0, competing, _masks_like(weights, None)),
                      _saliency_nan_message)
        check_survivors(k, competing)  # raises
    _raise_on_nan(_ops.saliency_topk_masks(weights, grads, k, competing, masks), _saliency_nan_message)
    return masks


@torch.no_grad()
def masked_sgd_(params, grads, momentum_buffers, masks, hyper, nesterov, device):
    momentum = hyper["momentum"]
    if momentum == 0:
        bufs, fresh, result = [], [], list(momentum_buffers)
    else:
        fresh = [b is None for b in momentum_buffers]
        # torch.optim.SGD starts a buffer as a clone of d_p, whose dtype is g's promoted with p's
        # when weight decay adds p in.
        bufs = [b if b is not None else
                torch.empty_like(p, dtype=g.dtype if hyper["weight_decay"] == 0 else
                                 torch.promote_types(g.dtype, p.dtype),
                                 memory_format=torch.contiguous_format)
                for p, g, b in zip(params, grads, momentum_buffers)]
        result = bufs
    if params:
        _ops.masked_sgd_(params, grads, bufs, masks, fresh, hyper["lr"], momentum, hyper["dampening"],
                         hyper["weight_decay"], nesterov)
    return result


def radix_histogram(a, grads, prev_masks, rank_dtype, shift, prefix, device):
    key_bits = KEY_BITS[rank_dtype]
    if sum(t.numel() for t in a) == 0:  # also: no tensor to run on
        return torch.zeros(1 << HISTOGRAM_BITS, dtype=torch.int64, device=device), None
    counts, flags = _ops.radix_histogram(a, grads or [], prev_masks or [], key_bits, shift, prefix)
    if shift + HISTOGRAM_BITS < key_bits:
        return counts, None  # NaN is looked for on the top pass only; nothing to wait for
    hit = flags.nonzero()
    return counts, int(hit[0, 0]) if hit.numel() else None
