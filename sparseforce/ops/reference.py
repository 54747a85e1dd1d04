"""The reference backend: pure PyTorch, the oracle every other backend is checked against.

It is written for obviousness, not speed: it concatenates every tensor and sorts. A *stable*
descending sort puts equal values in their original order, which is exactly the tie rule
(lowest global position first), and compares -0.0 equal to +0.0.
"""
from __future__ import annotations

import torch

from ._registry import register_backend, register_kernel
from ._schema import HISTOGRAM_BITS, KEY_BITS, NaNScoreError, check_survivors, saliency_dtype

register_backend("reference", lambda device: None)


def _promoted_dtype(tensors) -> torch.dtype:
    # Every fp16/bf16/fp32 value is exactly representable in the promoted type, so ranking
    # mixed dtypes after promotion ranks the given values exactly.
    dtype = torch.float32 if not tensors else tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _flat(tensors, dtype, device) -> torch.Tensor:
    if not tensors:
        return torch.empty(0, dtype=dtype, device=device)
    return torch.cat([t.reshape(-1).to(dtype) for t in tensors])


def _split_like(flat: torch.Tensor, like, out):
    masks, offset = [], 0
    for i, t in enumerate(like):
        piece = flat[offset: offset + t.numel()].view(t.shape)
        offset += t.numel()
        if out is None:
            masks.append(piece.clone())
        else:
            out[i].copy_(piece)
            masks.append(out[i])
    return masks


def _keep_top_k(flat: torch.Tensor, k: int, candidates: torch.Tensor | None) -> torch.Tensor:
    """Bool vector keeping the k largest of ``flat`` (among ``candidates``), ties by position."""
    keep = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if k == 0:
        return keep
    index = torch.arange(flat.numel(), device=flat.device) if candidates is None else candidates.nonzero().squeeze(1)
    order = torch.sort(flat[index], descending=True, stable=True).indices
    keep[index[order[:k]]] = True
    return keep


def _check_nan(scores, competing=None, message=None):
    for i, s in enumerate(scores):
        nan = torch.isnan(s)
        if competing is not None:
            nan &= competing[i]
        if bool(nan.any()):
            raise NaNScoreError(i, message(i) if message else None)


@register_kernel("topk_masks", "reference")
def topk_masks(scores, k, out, device):
    _check_nan(scores)
    flat = _flat(scores, _promoted_dtype(scores), device)
    return _split_like(_keep_top_k(flat, k, None), scores, out)


@register_kernel("kth_largest", "reference")
def kth_largest(scores, k, device):
    _check_nan(scores)
    flat = _flat(scores, _promoted_dtype(scores), device)
    value = torch.sort(flat, descending=True).values[k - 1]
    # -0.0 and +0.0 rank equal; report +0.0 so every backend returns the same bits.
    return torch.where(value == 0, torch.zeros_like(value), value)


def saliency_scores(weights, grads):
    """|w·g| in float32 (float64 if either input is float64): exact for fp16/bf16 inputs."""
    scores = []
    for w, g in zip(weights, grads):
        dtype = saliency_dtype(w, g)
        scores.append((w.to(dtype) * g.to(dtype)).abs())
    return scores


@register_kernel("saliency_topk_masks", "reference")
def saliency_topk_masks(weights, grads, k, prev_masks, resurrect, out, device):
    scores = saliency_scores(weights, grads)
    # FORCE (resurrect=True) ranks every weight; Iter SNIP ranks only the weights still alive,
    # so its masks are nested. For those, |θ0⊙m⊙g| = |θ0⊙g|.
    competing = None if resurrect or prev_masks is None else prev_masks
    # The error order: a competing NaN is reported before k exceeding the survivors.
    _check_nan(scores, competing, lambda i: (
        f"the saliency |w*g| of weights[{i}] is NaN (NaN, or inf times 0, in weights[{i}] or grads[{i}])"))
    if competing is not None:
        check_survivors(k, competing)
    flat = _flat(scores, _promoted_dtype(scores), device)
    candidates = None if competing is None else _flat(competing, torch.bool, device)
    return _split_like(_keep_top_k(flat, k, candidates), weights, out)


@register_kernel("masked_sgd_", "reference")
@torch.no_grad()
def masked_sgd_(params, grads, momentum_buffers, masks, hyper, nesterov, device):
    """torch.optim.SGD's single-tensor step, with pruned entries of d_p, buf and p held at 0."""
    lr, momentum, dampening, wd = hyper["lr"], hyper["momentum"], hyper["dampening"], hyper["weight_decay"]
    new_buffers = []
    for p, g, buf, m in zip(params, grads, momentum_buffers, masks):
        d_p = g if wd == 0 else g.add(p, alpha=wd)
        if m is not None:
            # Masked after weight decay, so a nonzero pruned weight cannot leak into momentum.
            d_p = d_p.masked_fill(~m, 0)
        if momentum != 0:
            if buf is None:
                buf = torch.clone(d_p).detach()
            else:
                buf.mul_(momentum).add_(d_p, alpha=1 - dampening)
                if m is not None:
                    buf.masked_fill_(~m, 0)
            d_p = d_p.add(buf, alpha=momentum) if nesterov else buf
        p.add_(d_p, alpha=-lr)
        if m is not None:
            p.masked_fill_(~m, 0)
        new_buffers.append(buf)
    return new_buffers


_INT_VIEW = {16: torch.int16, 32: torch.int32, 64: torch.int64}
_BINS = 1 << HISTOGRAM_BITS


def _signed_keys(x: torch.Tensor, dtype: torch.dtype, nonneg: bool) -> torch.Tensor:
    """The order-preserving keys with the top bit flipped (so signed compares order them):
    int32 for 16/32-bit floats, int64 for 64-bit. ``nonneg``: every value is >= +0.0 (|w·g|),
    whose bits are already their keys."""
    w = KEY_BITS[dtype]
    b = x.reshape(-1).to(dtype).contiguous().view(_INT_VIEW[w])
    if w == 16:
        b = b.to(torch.int32)  # headroom for the digit masks
    if nonneg:
        return b
    s = torch.where(b < 0, b ^ ((1 << (w - 1)) - 1), b)  # negative floats: magnitude bits reversed
    return s.masked_fill_(s == -1, 0)  # -0.0 lands on -1; rank it as +0.0


def _digit_counts(s: torch.Tensor, shift: int, w: int, nonneg: bool) -> torch.Tensor:
    half = 1 << (HISTOGRAM_BITS - 1)
    if shift == w - HISTOGRAM_BITS:  # the top digit holds the (flipped) sign bit
        if nonneg:  # all in the upper half: one shift, no masking
            upper = torch.bincount(s >> shift, minlength=half)
            return torch.cat([torch.zeros_like(upper), upper])
        return torch.bincount(((s >> shift) & (_BINS - 1)) ^ half, minlength=_BINS)
    return torch.bincount((s >> shift) & (_BINS - 1), minlength=_BINS)


@register_kernel("radix_histogram", "reference")
def radix_histogram(a, grads, prev_masks, rank_dtype, shift, prefix, device):
    w = KEY_BITS[rank_dtype]
    top = shift == w - HISTOGRAM_BITS
    nonneg = grads is not None
    counts = torch.zeros(_BINS, dtype=torch.int64, device=device)
    nan_index = None
    for i, x in enumerate(a):
        # One tensor's scores at a time: the extra memory is the largest tensor's, not all of them.
        x = saliency_scores([x], [grads[i]])[0] if nonneg else x
        x = x.reshape(-1)
        if prev_masks is not None:
            x = x[prev_masks[i].reshape(-1)]
        if top and nan_index is None and bool(torch.isnan(x).any()):
            nan_index = i
        s = _signed_keys(x, rank_dtype, nonneg)
        if not top:  # keep the keys whose bits above the digit are `prefix` (signed: top bit flipped)
            s = s[(s >> (shift + HISTOGRAM_BITS)) == prefix - (1 << (w - shift - HISTOGRAM_BITS - 1))]
        counts += _digit_counts(s, shift, w, nonneg)
    return counts, nan_index
