"""Argument checks every backend relies on, and the ``competing`` argument derived from them.

A backend kernel receives arguments that passed these checks, so it only has to compute. What a
kernel must still detect itself is NaN in a score (it returns the index, see ``library``):
finding it costs a pass over the data, which a fast kernel gets for free inside its first
histogram pass.
"""
from __future__ import annotations

import operator
from typing import Sequence

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class NaNScoreError(ValueError):
    """A score is NaN. ``index`` is the position of the offending tensor in the list passed
    (``None`` on the other ranks of a ``sparseforce.distributed`` call, where the NaN is not theirs)."""

    def __init__(self, index: int | None, message: str | None = None):
        self.index = index
        super().__init__(message or f"scores[{index}] contains NaN; NaN scores cannot be ranked")


def _tensor_list(name: str, tensors) -> list[torch.Tensor]:
    if isinstance(tensors, torch.Tensor) or not isinstance(tensors, Sequence):
        raise TypeError(f"{name} must be a list or tuple of tensors, got {type(tensors).__name__}")
    out = list(tensors)
    for i, t in enumerate(out):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}[{i}] must be a tensor, got {type(t).__name__}")
        check_dense(f"{name}[{i}]", t)
    return out


def check_dense(name: str, t: torch.Tensor) -> None:
    """Here rather than in each backend: reference would fail deep inside torch ("reshape is not
    implemented for sparse tensors") and the compiled ops at dispatch ("Could not run ... with
    arguments from the 'SparseCPU' backend")."""
    if t.layout != torch.strided:
        raise ValueError(f"{name} is a sparse tensor ({t.layout}); the ops take dense (strided) tensors: "
                         "convert it with .to_dense()")


def check_has_values(*named_lists) -> None:
    """A selection ranks values, which a meta tensor has not: refused on every backend alike
    (after common_device, so a meta tensor is either all of them or a device mismatch)."""
    for name, tensors in named_lists:
        for i, t in enumerate(tensors):
            if t is not None and t.is_meta:
                raise ValueError(f"{name}[{i}] is on the meta device, so it has no values to rank; materialize it "
                                 "first (e.g. module.to_empty(device=...) and initialize it)")


def float_list(name: str, tensors) -> list[torch.Tensor]:
    out = _tensor_list(name, tensors)
    for i, t in enumerate(out):
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name}[{i}] has dtype {t.dtype}; expected one of fp16, bf16, fp32, fp64")
    return out


def common_device(*named_lists) -> torch.device:
    """The one device all tensors live on (CPU when there are none)."""
    device = None
    first = None
    for name, tensors in named_lists:
        for i, t in enumerate(tensors):
            if t is None:
                continue
            if device is None:
                device, first = t.device, f"{name}[{i}]"
            elif t.device != device:
                raise ValueError(f"{name}[{i}] is on {t.device} but {first} is on {device}; "
                                 "all tensors of one call must share a device")
    return device if device is not None else torch.device("cpu")


def check_k(k, n: int, what: str = "scores", lowest: int = 0) -> int:
    if isinstance(k, bool):
        raise TypeError(f"k must be an integer, got bool {k}")
    if isinstance(k, torch.Tensor):
        if k.numel() != 1 or k.is_floating_point() or k.is_complex():
            raise TypeError(f"k must be an integer, got a tensor of shape {tuple(k.shape)} and dtype {k.dtype}")
        k = int(k.item())
    try:
        k = operator.index(k)
    except TypeError:
        raise TypeError(f"k must be an integer, got {type(k).__name__} {k!r}") from None
    if not lowest <= k <= n:
        raise ValueError(f"k={k} is outside [{lowest}, {n}]: {what} hold {n} elements in all")
    return k


def bool_list(name: str, tensors, like, count_message: str, like_name: str) -> list[torch.Tensor]:
    """One bool tensor per tensor of ``like``, each of its shape (``out``, ``prev_masks``)."""
    tensors = _tensor_list(name, tensors)
    if len(tensors) != len(like):
        raise ValueError(f"{name} has {len(tensors)} tensors but {count_message}")
    for i, (m, t) in enumerate(zip(tensors, like)):
        if m.dtype != torch.bool:
            raise TypeError(f"{name}[{i}] must be torch.bool, got {m.dtype}")
        if m.shape != t.shape:
            raise ValueError(f"{name}[{i}] has shape {tuple(m.shape)} but {like_name.format(i=i)} has {tuple(t.shape)}")
    return tensors


def check_out(out, like: list[torch.Tensor]) -> list[torch.Tensor] | None:
    if out is None:
        return None
    out = bool_list("out", out, like, f"there are {len(like)} inputs", "its input")
    for i, (o, t) in enumerate(zip(out, like)):
        if o.device != t.device:
            raise ValueError(f"out[{i}] is on {o.device} but its input is on {t.device}")
    return out


def _span(t: torch.Tensor) -> tuple[int, int] | None:
    """[lo, hi): the addresses of the bytes holding t's elements on its device; the whole strided
    box, so views that interleave count as overlapping (conservative). None when t has no
    elements, or no real memory (meta tensors)."""
    if t.numel() == 0:
        return None
    lo = t.data_ptr()
    if lo == 0:
        return None
    if t.is_contiguous():  # the common case, without a Python loop over the dims
        return lo, lo + t.numel() * t.element_size()
    last = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
    return lo, lo + (last + 1) * t.element_size()


def _self_overlaps(t: torch.Tensor) -> bool:
    """Whether two elements of t may share memory (an expanded view, say). Sufficient for
    distinct elements: each stride, smallest first, exceeds the offsets the smaller ones reach;
    so the rare as_strided layouts that interleave without overlapping are refused too."""
    if t.is_contiguous():
        return False
    reach = 0
    for stride, size in sorted((st, sz) for sz, st in zip(t.shape, t.stride()) if sz > 1):
        if stride <= reach:
            return True
        reach += stride * (size - 1)
    return False


def same_view(a: torch.Tensor, b: torch.Tensor) -> bool:
    """a and b are the very same elements: same memory, dtype, shape and strides."""
    return (a.data_ptr() == b.data_ptr() and a.dtype == b.dtype and a.shape == b.shape
            and a.stride() == b.stride())


def check_no_overlap(written, read, hint: str = "") -> None:
    """Refuse, naming both tensors, memory shared by a tensor the op writes and any other tensor
    of the call (written or read), and written tensors whose own elements overlap: the kernels
    read their inputs in several passes and write from many threads, so an overlap would give
    wrong results, or a half-written output. Runs before anything is written.
    ``written``/``read``: (name, tensor) pairs; ``read`` leaves out what a caller allows
    (``prev_masks[i]`` when ``out[i]`` is exactly it).

    One sort and sweep over the byte spans rather than every pair: masked_sgd_ runs this every
    training step over hundreds of tensors.
    """
    spans = []
    tensors = [(name, t, True) for name, t in written] + [(name, t, False) for name, t in read]
    for order, (name, t, writes) in enumerate(tensors):
        if writes and t.numel() > 0 and _self_overlaps(t):
            raise ValueError(f"{name} has elements that share memory (an expanded view?), so it cannot be "
                             "written; pass a tensor whose elements are distinct (e.g. a .clone())")
        span = _span(t)
        if span is not None:
            spans.append((*span, order, name, writes))
    spans.sort()
    reach_any = reach_written = None  # of the spans so far, the one reaching furthest (any / written)
    for span in spans:
        lo, hi, _, _, writes = span
        other = reach_any if writes else reach_written
        if other is not None and other[1] > lo:
            # The written tensor first; of two written ones, the later in the arguments
            # ("out[1] overlaps out[0]").
            first, second = sorted((span, other), key=lambda sp: (not sp[4], -sp[2]))
            raise ValueError(f"{first[3]} overlaps {second[3]} in memory; a tensor the op writes may share "
                             f"memory with no other tensor of the call{hint}")
        if reach_any is None or hi > reach_any[1]:
            reach_any = span
        if writes and (reach_written is None or hi > reach_written[1]):
            reach_written = span


def named(name: str, tensors) -> list[tuple[str, torch.Tensor]]:
    return [(f"{name}[{i}]", t) for i, t in enumerate(tensors) if t is not None]


def topk_masks_args(scores, k, out):
    scores, device = scores_arg(scores)
    k = check_k(k, sum(s.numel() for s in scores))
    return scores, k, scores_out(out, scores), device


def scores_arg(scores):
    """The scores of a selection, checked, and their device."""
    scores = float_list("scores", scores)
    device = common_device(("scores", scores))
    check_has_values(("scores", scores))
    return scores, device


def scores_out(out, scores):
    """A score selection's ``out``, checked: bool, the scores' shapes, sharing no memory with them."""
    out = check_out(out, scores)
    if out is not None:
        check_no_overlap(named("out", out), named("scores", scores))
    return out


def kth_largest_args(scores, k):
    scores = float_list("scores", scores)
    device = common_device(("scores", scores))
    check_has_values(("scores", scores))
    n = sum(s.numel() for s in scores)
    k = check_k(k, n, lowest=1)  # k=0 has no k-th largest value
    return scores, k, device


def _weights_and_grads(weights, grads):
    weights = float_list("weights", weights)
    grads = float_list("grads", grads)
    if len(weights) != len(grads):
        raise ValueError(f"weights has {len(weights)} tensors but grads has {len(grads)}")
    for i, (w, g) in enumerate(zip(weights, grads)):
        if w.shape != g.shape:
            raise ValueError(f"weights[{i}] has shape {tuple(w.shape)} but grads[{i}] has {tuple(g.shape)}")
    return weights, grads


def _prev_masks(prev_masks, like, name: str):
    if prev_masks is None:
        return None
    return bool_list("prev_masks", prev_masks, like, f"{name} has {len(like)}", name + "[{i}]")


def competing(prev_masks, resurrect: bool) -> list[torch.Tensor]:
    """The ops' ``competing`` argument: FORCE (``resurrect``) ranks every weight (``[]``); Iter
    SNIP only the weights kept in ``prev_masks`` (all of them, when None)."""
    return [] if resurrect or prev_masks is None else list(prev_masks)


def saliency_args(weights, grads, k, prev_masks, resurrect, out):
    weights, grads, prev_masks, device = saliency_inputs(weights, grads, prev_masks, resurrect)
    k = check_k(k, sum(w.numel() for w in weights), "weights")
    out = saliency_out(out, weights, grads, prev_masks)
    return weights, grads, k, prev_masks, resurrect, out, device


def saliency_inputs(weights, grads, prev_masks, resurrect):
    """The tensors of a saliency selection, checked: weights, grads, prev_masks and their device."""
    weights, grads = _weights_and_grads(weights, grads)
    if not isinstance(resurrect, bool):
        raise TypeError(f"resurrect must be a bool, got {type(resurrect).__name__}")
    prev_masks = _prev_masks(prev_masks, weights, "weights")
    device = common_device(("weights", weights), ("grads", grads), ("prev_masks", prev_masks or []))
    check_has_values(("weights", weights), ("grads", grads), ("prev_masks", prev_masks or []))
    return weights, grads, prev_masks, device


def saliency_out(out, weights, grads, prev_masks):
    out = check_out(out, weights)
    if out is not None:
        # out[i] may be exactly prev_masks[i] (the in-place Iter SNIP update: every backend reads
        # an element's prev before writing its mask); that prev is then checked as out[i].
        prev = [(f"prev_masks[{i}]", m) for i, m in enumerate(prev_masks or []) if not same_view(m, out[i])]
        check_no_overlap(named("out", out), named("weights", weights) + named("grads", grads) + prev,
                         " (only out[i] may be exactly prev_masks[i], the in-place update)")
    return out


def check_survivors(k: int, survivors: int) -> None:
    """Iter SNIP: only weights kept in ``prev_masks`` compete, so k may not exceed their number."""
    if k > survivors:
        raise ValueError(f"k={k} but prev_masks keep only {survivors} weights; with resurrect=False "
                         "only weights kept in prev_masks compete, so k may not exceed that")


def saliency_nan_message(i: int) -> str:
    return (f"the saliency |w*g| of weights[{i}] is NaN (NaN, or inf times 0, in weights[{i}] "
            f"or grads[{i}])")


def promoted_dtype(tensors) -> torch.dtype:
    """The dtype ``topk_masks`` / ``kth_largest`` rank a list of scores in. Every fp16/bf16/fp32
    value is exactly representable in it, so ranking mixed dtypes after promotion ranks the given
    values exactly."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def saliency_dtype(w: torch.Tensor, g: torch.Tensor) -> torch.dtype:
    """The dtype |w·g| is formed and ranked in: float32, float64 when an input is (exact for fp16/bf16)."""
    return torch.float64 if torch.float64 in (w.dtype, g.dtype) else torch.float32


HISTOGRAM_BITS = 16
KEY_BITS = {torch.float16: 16, torch.bfloat16: 16, torch.float32: 32, torch.float64: 64}


def radix_histogram_args(a, grads, prev_masks, rank_dtype, shift, prefix):
    """``grads`` None: scores mode (keys of ``a``); else saliency mode (keys of |a*grads|)."""
    saliency = grads is not None
    name = "weights" if saliency else "scores"
    if saliency:
        a, grads = _weights_and_grads(a, grads)
    else:
        a = float_list(name, a)
    prev_masks = _prev_masks(prev_masks, a, name)
    if rank_dtype not in KEY_BITS:
        raise TypeError(f"rank_dtype must be one of fp16, bf16, fp32, fp64, got {rank_dtype}")
    for i, t in enumerate(a):
        dtype = t.dtype
        if saliency:
            dtype = saliency_dtype(t, grads[i])
        if torch.promote_types(dtype, rank_dtype) != rank_dtype:
            raise ValueError(f"{name}[{i}] ranks as {dtype}, which rank_dtype={rank_dtype} does not hold exactly")
    width = KEY_BITS[rank_dtype]
    shift, prefix = operator.index(shift), operator.index(prefix)
    if shift < 0 or shift % HISTOGRAM_BITS or shift + HISTOGRAM_BITS > width:
        raise ValueError(f"shift={shift} is not the position of a {HISTOGRAM_BITS}-bit digit of a {width}-bit key")
    if not 0 <= prefix < 1 << (width - shift - HISTOGRAM_BITS):
        raise ValueError(f"prefix={prefix} does not fit the {width - shift - HISTOGRAM_BITS} key bits above shift={shift}")
    device = common_device((name, a), ("grads", grads or []), ("prev_masks", prev_masks or []))
    check_has_values((name, a), ("grads", grads or []), ("prev_masks", prev_masks or []))
    return a, grads, prev_masks, rank_dtype, shift, prefix, device


def masked_sgd_args(params, grads, momentum_buffers, masks, lr, momentum, dampening, weight_decay, nesterov):
    params = float_list("params", params)
    grads = float_list("grads", grads)
    n = len(params)
    if len(grads) != n:
        raise ValueError(f"params has {n} tensors but grads has {len(grads)}")
    momentum_buffers = [None] * n if momentum_buffers is None else list(momentum_buffers)
    masks = [None] * n if masks is None else list(masks)
    for name, lst in (("momentum_buffers", momentum_buffers), ("masks", masks)):
        if len(lst) != n:
            raise ValueError(f"{name} has {len(lst)} entries but params has {n}")
    for i, p in enumerate(params):
        if grads[i].shape != p.shape:
            raise ValueError(f"grads[{i}] has shape {tuple(grads[i].shape)} but params[{i}] has {tuple(p.shape)}")
        b, m = momentum_buffers[i], masks[i]
        for what, t in ((f"momentum_buffers[{i}]", b), (f"masks[{i}]", m)):
            if isinstance(t, torch.Tensor):
                check_dense(what, t)
        if b is not None:
            if not isinstance(b, torch.Tensor) or b.shape != p.shape or b.dtype != p.dtype:
                raise ValueError(f"momentum_buffers[{i}] must be None or a tensor of shape {tuple(p.shape)} "
                                 f"and dtype {p.dtype}")
        if m is not None:
            if not isinstance(m, torch.Tensor) or m.dtype != torch.bool or m.shape != p.shape:
                raise ValueError(f"masks[{i}] must be None or a torch.bool tensor of shape {tuple(p.shape)}")
    device = common_device(("params", params), ("grads", grads), ("momentum_buffers", momentum_buffers),
                           ("masks", masks))
    check_no_overlap(named("params", params) + named("momentum_buffers", momentum_buffers),
                     named("grads", grads) + named("masks", masks))
    hyper = {}
    for name, v in (("lr", lr), ("momentum", momentum), ("dampening", dampening), ("weight_decay", weight_decay)):
        if isinstance(v, torch.Tensor):
            v = v.item()
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"{name} must be a number, got {type(v).__name__}")
        if not (v == v) or v < 0:
            raise ValueError(f"{name} must be a non-negative number, got {v}")
        hyper[name] = float(v)
    if nesterov and (hyper["momentum"] <= 0 or hyper["dampening"] != 0):
        raise ValueError("nesterov momentum requires momentum > 0 and dampening = 0")
    return params, grads, momentum_buffers, masks, hyper, bool(nesterov), device
