"""Kernel-level API: the drop-in for other people's pruning code.

Every op checks its arguments once (``_schema``), then runs on the backend asked for
(``"auto" | "reference" | "cpp" | "cuda" | "triton"``). Every backend returns masks and thresholds
bit-identical to ``reference``; ``masked_sgd_`` agrees with it to float32 rounding, pruned entries
exactly 0.

Ranking rules (all ops): exactly k elements are kept; elements above the k-th largest value are
kept, and among elements equal to it the lowest global position wins (tensor order as given, then
row-major); -0.0 equals +0.0; ±inf are ordinary values; a NaN score raises ``ValueError``
(:class:`NaNScoreError`) naming the tensor.

Aliasing: ``out=`` may be the very tensors passed as ``prev_masks`` (``out[i]`` exactly
``prev_masks[i]``: same memory, shape and strides), the in-place Iter SNIP update, on every
backend. Any other memory shared between a tensor an op writes (``out``; the params and momentum
buffers of ``masked_sgd_``) and another tensor of the call, or between the elements of one
written tensor (an expanded view), raises ``ValueError`` naming both, before anything is written.
Empty tensors share no memory; reads may share memory with each other.

Error order, when several errors apply, on every backend: argument errors (types, shapes,
devices, k outside [0, N], memory overlap), then NaN (naming the first tensor holding a
competing one), then k against the number of competing weights (Iter SNIP: the survivors).

How a call runs: the functions here check the arguments once (``_schema``), turn ``prev_masks`` /
``resurrect`` into the ``competing`` list, allocate the outputs and call the chosen backend's
kernel with the op library's signature (``sparseforce.ops.library``: one schema per op for every
backend). Kernels report NaN as a returned tensor index, never by raising; the functions here
raise :class:`NaNScoreError`, then check k against the survivors, for every backend alike.

Adding a backend (an out-of-tree one, as the test suite's CUDA emulator does): write one function
per op with the signature of ``library.SCHEMAS`` (outputs are allocated by the caller and only
written; return the NaN index as a 0-dim int64 tensor, -1 when there is none) and call
:func:`register_backend` with its name, a function ``availability(device) -> None | reason`` and
the kernels; ``backend="<name>"`` then runs them, behind every argument check of this module.
``auto=True`` lets ``backend="auto"`` pick it too (before ``reference``). Kernels of the compiled
ones are ``torch.ops.sparseforce.<op>`` (the dispatcher picks the CPU or CUDA one) and
``torch.ops.sparseforce_triton.<op>``.
"""
from __future__ import annotations

import torch

from . import _drop_grow, _schema, _segments
from ._registry import (AUTO_ORDER, KNOWN_BACKENDS, BackendUnavailableError, available_backends,
                        register_backend, resolve, resolve_name, unavailable_reason)
from ._schema import NaNScoreError
from ._segments import MAX_M as MAX_NM_M  # the largest m of segment=("nm", n, m)
from . import reference as _reference  # noqa: F401  (registers the reference kernels)
from . import triton as _triton  # noqa: F401  (registers the Triton kernels; imports triton on first use)
from . import cpp as _cpp  # noqa: F401  (registers the C++ kernels; loads them on first use)
from . import cuda as _cuda  # noqa: F401  (registers the CUDA kernels; loads them on first use)

__all__ = ["topk_masks", "saliency_topk_masks", "segmented_topk_masks", "segmented_saliency_topk_masks",
           "drop_grow_masks",
           "kth_largest", "masked_sgd_", "key_histogram",
           "saliency_key_histogram", "available_backends", "resolve_name", "unavailable_reason",
           "register_backend", "BackendUnavailableError", "NaNScoreError", "KNOWN_BACKENDS", "AUTO_ORDER", "MAX_NM_M"]


def _raise_on_nan(index: torch.Tensor, message=None) -> None:
    """The kernels' NaN report (the index of the first tensor holding a competing NaN, or -1) as
    the error; reading it is the call's one wait for the device."""
    i = int(index)
    if i >= 0:
        raise NaNScoreError(i, message(i) if message else None)


def _masks_like(tensors) -> list[torch.Tensor]:
    return [torch.empty(t.shape, dtype=torch.bool, device=t.device) for t in tensors]


def topk_masks(scores, k, *, out=None, backend="auto") -> list[torch.Tensor]:
    """Bool masks keeping the k largest values over all ``scores`` together.

    ``scores``: a list of float tensors (fp16/bf16/fp32/fp64, any shapes, mixed dtypes ranked
    exactly). ``out``: optional list of bool tensors to write into (returned).
    """
    scores, k, out, device = _schema.topk_masks_args(scores, k, out)
    kernel = resolve(backend, "topk_masks", device)
    masks = _masks_like(scores) if out is None else out
    if sum(s.numel() for s in scores):  # else nothing to rank (and maybe no tensor to dispatch on)
        _raise_on_nan(kernel(scores, k, masks))
    return masks


def kth_largest(scores, k, *, backend="auto") -> torch.Tensor:
    """The k-th largest value over all ``scores`` (1 <= k <= N), a 0-dim tensor in the promoted
    dtype; a zero threshold is returned as +0.0."""
    scores, k, device = _schema.kth_largest_args(scores, k)
    value, nan = resolve(backend, "kth_largest", device)(scores, k)
    _raise_on_nan(nan)
    return value


def saliency_topk_masks(weights, grads, k, *, prev_masks=None, resurrect=True, out=None,
                        backend="auto") -> list[torch.Tensor]:
    """One FORCE / Iter SNIP selection: keep the k largest saliencies |w·g|.

    Scores are computed in float32 (float64 if an input is float64), exact for fp16/bf16.
    ``resurrect=True`` (FORCE) ranks every weight; ``prev_masks`` is not consulted.
    ``resurrect=False`` (Iter SNIP) ranks only weights kept in ``prev_masks`` (all, if None), so
    the new masks are a subset of them; k may not exceed the number kept.
    """
    weights, grads, k, prev_masks, resurrect, out, device = _schema.saliency_args(
        weights, grads, k, prev_masks, resurrect, out)
    kernel = resolve(backend, "saliency_topk_masks", device)
    masks = _masks_like(weights) if out is None else out
    if not sum(w.numel() for w in weights):
        return masks
    competing = _schema.competing(prev_masks, resurrect)
    if competing and k:
        survivors = int(sum(m.sum() for m in competing))
        if k > survivors:
            # The error order puts a competing NaN first: only this error path pays for a NaN
            # search, a k = 0 selection into scratch masks, which leaves `out` as it was.
            _raise_on_nan(kernel(weights, grads, 0, competing, _masks_like(weights)), _schema.saliency_nan_message)
            _schema.check_survivors(k, survivors)
    _raise_on_nan(kernel(weights, grads, k, competing, masks), _schema.saliency_nan_message)
    return masks


def _segmented(kernel, inputs, plan, out, competing=None, nan_message=None) -> list[torch.Tensor]:
    """Run a segmented kernel into masks this function owns (the kernels may write as they go and
    leave them half-written on NaN), then hand them over, or copy them into ``out``."""
    masks = _masks_like(inputs[0])
    if not sum(t.numel() for t in inputs[0]):
        return masks if out is None else out
    extra = () if competing is None else (competing,)
    if competing:
        short = _segments.short_segment(competing, plan, "weights")
        if short:
            _raise_on_nan(kernel(*inputs, *_plan_args(plan.zero()), *extra, masks), nan_message)
            raise ValueError(short)
    _raise_on_nan(kernel(*inputs, *_plan_args(plan), *extra, masks), nan_message)
    return _hand_over(masks, out)


def _hand_over(masks, out) -> list[torch.Tensor]:
    """Masks the front owns, as the result: themselves, or copied into the caller's ``out``."""
    if out is None:
        return masks
    for o, m in zip(out, masks):
        o.copy_(m)
    return out


def _plan_args(plan):
    return plan.ks, plan.n, plan.m


def segmented_topk_masks(scores, ks, *, segment="tensor", out=None, backend="auto") -> list[torch.Tensor]:
    """Bool masks keeping the k largest values of each segment, each segment its own k.

    ``segment="tensor"``: every tensor of ``scores`` is a segment; ``ks`` gives one k per tensor.
    ``segment="row"``: every row of every tensor (the tensor viewed as (dim 0, rest); a 0-dim
    tensor is one row of one element) is a segment; ``ks`` gives, per tensor, an int (the same k
    for each row) or a 1-D integer tensor of one k per row. ``segment=("nm", n, m)``: ``ks`` is
    None; n of every m consecutive elements along each row are kept (N:M sparsity; 1 <= m <= 32,
    the row length a multiple of m). Ranking inside a segment follows the global ops' rules (ties:
    lowest position in the segment); each tensor ranks in its own dtype.
    """
    scores, device = _schema.scores_arg(scores)
    plan = _segments.plan(scores, ks, segment, "scores", device)
    out = _schema.scores_out(out, scores)
    kernel = resolve(backend, "segmented_topk_masks", device)
    return _segmented(kernel, (scores,), plan, out)


def segmented_saliency_topk_masks(weights, grads, ks, *, prev_masks=None, resurrect=True, segment="tensor",
                                  out=None, backend="auto") -> list[torch.Tensor]:
    """:func:`saliency_topk_masks` per segment (layer-wise, row-wise or N:M FORCE / Iter SNIP):
    the segments and ``ks`` as in :func:`segmented_topk_masks`, the saliencies |w·g| formed as
    :func:`saliency_topk_masks` forms them. ``resurrect=False``: only weights kept in
    ``prev_masks`` compete, and a segment's k may not exceed the number kept in it.
    """
    weights, grads, prev_masks, device = _schema.saliency_inputs(weights, grads, prev_masks, resurrect)
    plan = _segments.plan(weights, ks, segment, "weights", device)
    out = _schema.saliency_out(out, weights, grads, prev_masks)
    kernel = resolve(backend, "segmented_saliency_topk_masks", device)
    competing = _schema.competing(prev_masks, resurrect)
    return _segmented(kernel, (weights, grads), plan, out, competing, _schema.saliency_nan_message)


def _drop_grow_nan_message(code: int) -> str:
    i, what = divmod(code, 2)
    return f"{('weights', 'scores')[what]}[{i}] contains NaN; NaN cannot be ranked"


def drop_grow_masks(weights, scores, masks, drops, grows=None, *, segment="tensor", out=None,
                    backend="auto") -> list[torch.Tensor]:
    """One dynamic-sparse-training update of ``masks`` (RigL, SET, gradual magnitude pruning), for
    every tensor in one call.

    Per segment (``segment="tensor"``: each tensor, ``drops``/``grows`` one count per tensor;
    ``"global"``: all tensors together, one count each), with A the active elements (``masks``
    True): keep the A - drops largest |w| among the active elements, then grow the ``grows``
    (default: ``drops``, so the count never changes) largest |score| among the elements not kept,
    the ones just dropped included. Ties at either threshold go to the lowest position (tensor
    order, then row-major), |-0.0| == |+0.0|, ±inf are ordinary values, NaN anywhere in
    ``weights`` or ``scores`` raises :class:`NaNScoreError` naming the tensor. ``out`` may be
    exactly ``masks`` (the in-place update). Returns the new masks.
    """
    weights, scores, masks, device = _drop_grow.tensors_args(weights, scores, masks)
    out = _drop_grow.out_arg(out, weights, scores, masks)
    plan = _drop_grow.counts(masks, drops, grows, segment, device)
    kernel = resolve(backend, "drop_grow_masks", device)
    new = _masks_like(weights)
    if not sum(w.numel() for w in weights):
        return new if out is None else out
    _raise_on_nan(kernel(weights, scores, masks, plan.keeps, plan.grows, new), _drop_grow_nan_message)
    if plan.error:
        raise ValueError(plan.error)
    return _hand_over(new, out)


def masked_sgd_(params, grads, momentum_buffers, masks, *, lr, momentum=0.0, dampening=0.0,
                weight_decay=0.0, nesterov=False, backend="auto") -> list:
    """One SGD step (torch.optim.SGD semantics) on many tensors, in place, keeping pruned entries
    of the weights and their momentum exactly 0.

    ``momentum_buffers``: a list of tensors updated in place, or None entries (or None) where no
    buffer exists yet, which are then created as torch does (buf = d_p on the first step).
    ``masks``: list of bool tensors, None entries meaning unmasked. Returns the momentum buffers.
    """
    params, grads, momentum_buffers, masks, hyper, nesterov, device = _schema.masked_sgd_args(
        params, grads, momentum_buffers, masks, lr, momentum, dampening, weight_decay, nesterov)
    kernel = resolve(backend, "masked_sgd_", device)
    if hyper["momentum"] == 0:
        buffers, fresh = [], []
    else:
        fresh = [b is None for b in momentum_buffers]
        # torch.optim.SGD starts a buffer as a clone of d_p, whose dtype is g's, promoted with
        # p's when weight decay adds p in.
        buffers = [b if b is not None else
                   torch.empty_like(p, dtype=g.dtype if hyper["weight_decay"] == 0 else
                                    torch.promote_types(g.dtype, p.dtype), memory_format=torch.contiguous_format)
                   for p, g, b in zip(params, grads, momentum_buffers)]
    if params:
        with torch.no_grad():
            kernel(params, grads, buffers, masks, hyper["lr"], hyper["momentum"], hyper["dampening"],
                   hyper["weight_decay"], nesterov, fresh)
    return buffers if hyper["momentum"] != 0 else list(momentum_buffers)


def _histogram(a, grads, competing, rank_dtype, shift, prefix, backend, device):
    kernel = resolve(backend, "radix_histogram", device)
    if not sum(t.numel() for t in a):  # also: no tensor to dispatch on
        return torch.zeros(1 << _schema.HISTOGRAM_BITS, dtype=torch.int64, device=device), None
    counts, nan = kernel(a, grads, competing, rank_dtype, shift, prefix)
    if shift + _schema.HISTOGRAM_BITS < _schema.KEY_BITS[rank_dtype]:
        return counts, None  # NaN is looked for on the top pass only: nothing to wait for
    i = int(nan)
    return counts, (i if i >= 0 else None)


def key_histogram(scores, *, rank_dtype, shift, prefix=0, backend="auto"):
    """One pass of a radix select whose scan runs elsewhere (``sparseforce.distributed`` sums
    these over the ranks): counts of the 16-bit digit at bit ``shift`` of the order-preserving
    keys of ``scores`` ranked as ``rank_dtype``, over the keys whose bits above the digit equal
    ``prefix``. Keys: the float's bits with the sign bit set if positive, all bits flipped if
    negative, -0.0 as +0.0, so larger floats have larger keys.

    Returns ``(counts, nan_index)``: an int64 tensor of 65,536 counts, and on the top pass
    (``shift`` = key width - 16) the index of the first tensor holding a NaN, else None.
    """
    a, _, _, rank_dtype, shift, prefix, device = _schema.radix_histogram_args(
        scores, None, None, rank_dtype, shift, prefix)
    return _histogram(a, [], [], rank_dtype, shift, prefix, backend, device)


def saliency_key_histogram(weights, grads, *, prev_masks=None, rank_dtype, shift, prefix=0, backend="auto"):
    """:func:`key_histogram` of the saliencies |w·g| (formed as :func:`saliency_topk_masks`
    forms them), counting only weights kept in ``prev_masks`` when given (Iter SNIP)."""
    a, g, prev, rank_dtype, shift, prefix, device = _schema.radix_histogram_args(
        weights, grads, prev_masks, rank_dtype, shift, prefix)
    return _histogram(a, g, _schema.competing(prev, False), rank_dtype, shift, prefix, backend, device)
