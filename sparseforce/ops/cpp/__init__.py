"""The ``cpp`` backend: the C++/OpenMP kernels of ``csrc/cpu`` behind ``torch.ops.sparseforce``.

Arguments arrive checked by ``_schema``; these wrappers only adapt them to the op schemas
(``csrc/register.cpp``) and turn the kernels' NaN report into :class:`NaNScoreError`. The
extension is loaded (or JIT-built) on first use, by the availability check.
"""
from __future__ import annotations

import contextlib
import re

import torch

from ... import _ext
from .. import reference as _reference
from .._registry import register_backend, register_kernel
from .._schema import NaNScoreError


def _availability(device: torch.device) -> str | None:
    if device.type != "cpu":
        return f"it runs CPU tensors only, not {device.type} (use 'cuda' or 'triton' there)"
    return _ext.load()


register_backend("cpp", _availability)
_ext.preload()  # the prebuilt extension, if any (cheap); a JIT build waits for first use

_NAN_INDEX = re.compile(r"(?:scores|weights)\[(\d+)\]")


@contextlib.contextmanager
def _nan_as_error():
    # The kernel finds NaN inside its first pass and raises ValueError naming the tensor, in the
    # reference's words; re-raised here as the typed error callers catch.
    try:
        yield
    except ValueError as exc:
        msg = str(exc).splitlines()[0] if str(exc) else ""
        found = _NAN_INDEX.search(msg)
        if found is None or "NaN" not in msg:
            raise
        raise NaNScoreError(int(found.group(1)), msg) from None


@register_kernel("topk_masks", "cpp")
def topk_masks(scores, k, out, device):
    if not scores:  # no tensor to dispatch on
        return [] if out is None else list(out)
    with _nan_as_error():
        if out is None:
            return list(torch.ops.sparseforce.topk_masks(scores, k))
        torch.ops.sparseforce.topk_masks_out(scores, k, out)
    return list(out)


@register_kernel("kth_largest", "cpp")
def kth_largest(scores, k, device):
    with _nan_as_error():
        return torch.ops.sparseforce.kth_largest(scores, k)


@register_kernel("saliency_topk_masks", "cpp")
def saliency_topk_masks(weights, grads, k, prev_masks, resurrect, out, device):
    if not weights:
        return [] if out is None else list(out)
    prev = [] if resurrect or prev_masks is None else list(prev_masks)
    with _nan_as_error():
        if out is None:
            return list(torch.ops.sparseforce.saliency_topk_masks(weights, grads, k, prev, resurrect))
        torch.ops.sparseforce.saliency_topk_masks_out(weights, grads, k, prev, resurrect, out)
    return list(out)


@register_kernel("radix_histogram", "cpp")
def radix_histogram(a, grads, prev_masks, rank_dtype, shift, prefix, device):
    if not a:
        return torch.zeros(1 << 16, dtype=torch.int64), None
    out = torch.ops.sparseforce.radix_histogram(a, [] if grads is None else grads,
                                                [] if prev_masks is None else prev_masks, rank_dtype, shift, prefix)
    nan_index = int(out[-1])
    return out[:-1], (None if nan_index < 0 else nan_index)


@register_kernel("masked_sgd_", "cpp")
@torch.no_grad()
def masked_sgd_(params, grads, momentum_buffers, masks, hyper, nesterov, device):
    if not params:
        return list(momentum_buffers)
    if any(g.dtype != p.dtype for p, g in zip(params, grads)):
        # Mixed param/grad dtypes make torch's step promote (and its new buffer take the promoted
        # dtype); rare enough to leave to the reference rather than multiply the kernels.
        return _reference.masked_sgd_(params, grads, momentum_buffers, masks, hyper, nesterov, device)
    momentum = hyper["momentum"]
    if momentum != 0:
        fresh = [int(b is None) for b in momentum_buffers]
        buffers = [torch.empty_like(p, memory_format=torch.contiguous_format) if b is None else b
                   for p, b in zip(params, momentum_buffers)]
    else:
        fresh, buffers = [], []
    torch.ops.sparseforce.masked_sgd_(params, grads, buffers, list(masks), hyper["lr"], momentum,
                                      hyper["dampening"], hyper["weight_decay"], nesterov, fresh)
    return buffers if momentum != 0 else list(momentum_buffers)
