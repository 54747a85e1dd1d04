"""The reference backend: pure PyTorch, the oracle every other backend is checked against.

Its kernels have the op library's signatures (``library.SCHEMAS``): they write the masks into the
caller's ``out`` and return the NaN index (first tensor with a competing NaN, or -1), leaving
``out`` as it was when there is one.

It is written for obviousness, not speed: it concatenates every tensor and sorts. A *stable*
descending sort puts equal values in their original order, which is exactly the tie rule
(lowest global position first), and compares -0.0 equal to +0.0.
"""
from __future__ import annotations

import torch

from ._registry import register_backend
from ._schema import HISTOGRAM_BITS, KEY_BITS, promoted_dtype, saliency_dtype


def _flat(tensors, dtype) -> torch.Tensor:
    return torch.cat([t.reshape(-1).to(dtype) for t in tensors])


def _write(flat: torch.Tensor, out) -> None:
    offset = 0
    for o in out:
        o.copy_(flat[offset: offset + o.numel()].view(o.shape))
        offset += o.numel()


def _keep_top_k(flat: torch.Tensor, k: int, candidates: torch.Tensor | None) -> torch.Tensor:
    """Bool vector keeping the k largest of ``flat`` (among ``candidates``), ties by position."""
    keep = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if k == 0:
        return keep
    index = torch.arange(flat.numel(), device=flat.device) if candidates is None else candidates.nonzero().squeeze(1)
    order = torch.sort(flat[index], descending=True, stable=True).indices
    keep[index[order[:k]]] = True
    return keep


def _first_nan(scores, competing) -> int:
    for i, s in enumerate(scores):
        nan = torch.isnan(s)
        if competing:
            nan &= competing[i]
        if bool(nan.any()):
            return i
    return -1


def _index(i: int, device) -> torch.Tensor:
    return torch.tensor(i, dtype=torch.int64, device=device)


def topk_masks(scores, k, out):
    nan = _first_nan(scores, [])
    if nan < 0:
        flat = _flat(scores, promoted_dtype(scores))
        _write(_keep_top_k(flat, k, None), out)
    return _index(nan, scores[0].device)


def kth_largest(scores, k):
    flat = _flat(scores, promoted_dtype(scores))
    value = torch.sort(flat, descending=True).values[k - 1]
    # -0.0 and +0.0 rank equal; report +0.0 so every backend returns the same bits.
    return torch.where(value == 0, torch.zeros_like(value), value), _index(_first_nan(scores, []), flat.device)


def saliency_scores(weights, grads):
    """|w·g| in float32 (float64 if either input is float64): exact for fp16/bf16 inputs."""
    scores = []
    for w, g in zip(weights, grads):
        dtype = saliency_dtype(w, g)
        scores.append((w.to(dtype) * g.to(dtype)).abs())
    return scores


def saliency_topk_masks(weights, grads, k, competing, out):
    # FORCE (competing empty) ranks every weight; Iter SNIP only the weights still alive, so its
    # masks are nested. For those, |θ0⊙m⊙g| = |θ0⊙g|.
    scores = saliency_scores(weights, grads)
    nan = _first_nan(scores, competing)
    if nan < 0:
        flat = _flat(scores, promoted_dtype(scores))
        candidates = _flat(competing, torch.bool) if competing else None
        _write(_keep_top_k(flat, k, candidates), out)
    return _index(nan, weights[0].device)


def _keep_top_rows(x: torch.Tensor, k, competing: torch.Tensor | None) -> torch.Tensor:
    """(R, L) bool keeping the k largest of each row of ``x`` (``k``: an int or an (R,) tensor),
    ties by position; with ``competing``, only its True entries (two stable sorts: by value, then
    competing first)."""
    order = torch.sort(x, dim=1, descending=True, stable=True).indices
    if competing is not None:
        first = torch.sort(competing.gather(1, order).to(torch.uint8), dim=1, descending=True, stable=True).indices
        order = order.gather(1, first)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(x.shape[1], device=x.device).expand_as(order))
    return rank < (k.unsqueeze(1) if isinstance(k, torch.Tensor) else k)


def _segmented_write(scores, ks, n, m, competing, out):
    for i, (s, o) in enumerate(zip(scores, out)):
        if s.numel() == 0:
            continue
        segments = s.numel() // m if m else ks[i].numel()
        c = competing[i].reshape(segments, -1) if competing else None
        keep = _keep_top_rows(s.reshape(segments, -1), n if m else ks[i], c)
        o.copy_(keep.view(o.shape))


def segmented_topk_masks(scores, ks, n, m, out):
    nan = _first_nan(scores, [])
    if nan < 0:
        _segmented_write(scores, ks, n, m, [], out)
    return _index(nan, scores[0].device)


def segmented_saliency_topk_masks(weights, grads, ks, n, m, competing, out):
    scores = saliency_scores(weights, grads)
    nan = _first_nan(scores, competing)
    if nan < 0:
        _segmented_write(scores, ks, n, m, competing, out)
    return _index(nan, weights[0].device)


def _magnitudes(tensors) -> torch.Tensor:
    """|x| of every tensor, flat, in float32 (float64 if one is): exact, so ranked exactly."""
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    return _flat(tensors, dtype).abs()


def _drop_grow_nan(weights, scores) -> int:
    for i, (w, s) in enumerate(zip(weights, scores)):
        for code, t in ((2 * i, w), (2 * i + 1, s)):
            if bool(torch.isnan(t).any()):
                return code
    return -1


def drop_grow_masks(weights, scores, masks, keeps, grows, out):
    # One segment per tensor, or (one count, several tensors) one over all of them.
    nan = _drop_grow_nan(weights, scores)
    if nan < 0:
        per_tensor = keeps.numel() == len(weights)
        groups = [[i] for i in range(len(weights))] if per_tensor else [list(range(len(weights)))]
        for s, group in enumerate(groups):
            active = _flat([masks[i] for i in group], torch.bool)
            kept = _keep_top_k(_magnitudes([weights[i] for i in group]), int(keeps[s]), active)
            grown = _keep_top_k(_magnitudes([scores[i] for i in group]), int(grows[s]), ~kept)
            _write(kept | grown, [out[i] for i in group])
    return _index(nan, weights[0].device)


@torch.no_grad()
def masked_sgd_(params, grads, momentum_buffers, masks, lr, momentum, dampening, weight_decay, nesterov, fresh):
    """torch.optim.SGD's single-tensor step, with pruned entries of d_p, buf and p held at 0."""
    for i, (p, g, m) in enumerate(zip(params, grads, masks)):
        d_p = g if weight_decay == 0 else g.add(p, alpha=weight_decay)
        if m is not None:
            # Masked after weight decay, so a nonzero pruned weight cannot leak into momentum.
            d_p = d_p.masked_fill(~m, 0)
        if momentum != 0:
            buf = momentum_buffers[i]
            if fresh[i]:
                buf.copy_(d_p)
            else:
                buf.mul_(momentum).add_(d_p, alpha=1 - dampening)
                if m is not None:
                    buf.masked_fill_(~m, 0)
            d_p = d_p.add(buf, alpha=momentum) if nesterov else buf
        p.add_(d_p, alpha=-lr)
        if m is not None:
            p.masked_fill_(~m, 0)


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


def radix_histogram(a, grads, competing, rank_dtype, shift, prefix):
    w = KEY_BITS[rank_dtype]
    top = shift == w - HISTOGRAM_BITS
    nonneg = bool(grads)
    device = a[0].device
    counts = torch.zeros(_BINS, dtype=torch.int64, device=device)
    nan_index = -1
    for i, x in enumerate(a):
        # One tensor's scores at a time: the extra memory is the largest tensor's, not all of them.
        x = saliency_scores([x], [grads[i]])[0] if nonneg else x
        x = x.reshape(-1)
        if competing:
            x = x[competing[i].reshape(-1)]
        if top and nan_index < 0 and bool(torch.isnan(x).any()):
            nan_index = i
        s = _signed_keys(x, rank_dtype, nonneg)
        if not top:  # keep the keys whose bits above the digit are `prefix` (signed: top bit flipped)
            s = s[(s >> (shift + HISTOGRAM_BITS)) == prefix - (1 << (w - shift - HISTOGRAM_BITS - 1))]
        counts += _digit_counts(s, shift, w, nonneg)
    return counts, _index(nan_index, device)


register_backend("reference", lambda device: None, {
    "topk_masks": topk_masks, "kth_largest": kth_largest, "saliency_topk_masks": saliency_topk_masks,
    "segmented_topk_masks": segmented_topk_masks, "segmented_saliency_topk_masks": segmented_saliency_topk_masks,
    "drop_grow_masks": drop_grow_masks, "radix_histogram": radix_histogram, "masked_sgd_": masked_sgd_})
