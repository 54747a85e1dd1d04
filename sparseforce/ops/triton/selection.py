"""The selection ops on Triton: ``sparseforce_triton::topk_masks``, ``kth_largest``,
``saliency_topk_masks`` and ``radix_histogram`` (importing this module registers their kernels,
for CUDA tensors and, under the interpreter, CPU ones).

Launch sequence for one call (nothing waits for the GPU in between):
  per radix pass: radix_histogram_kernel per dtype group -> choose_digit_kernel (1 program)
  topk:  tie_count_kernel per group -> exclusive_scan_kernel (1 program) -> write_mask_kernel per group
  kth:   key_to_value_kernel (1 program)
The NaN flags are turned into the op library's NaN index on the device; the op front reads it.
radix_histogram is one radix pass alone, the digit chosen by its caller (sparseforce.distributed).

The host builds per-call tables of tensor addresses (``data_ptr``), which FakeTensor tracing
cannot do, so the ops stay opaque to torch.compile (their fakes are the op library's) instead of
being traced into with ``triton_op``.
"""
from __future__ import annotations

import numpy as np
import torch

from .._schema import HISTOGRAM_BITS, KEY_BITS, promoted_dtype, saliency_dtype
from .config import config
from .digit import choose_digit_kernel
from .histogram import radix_histogram_kernel
from .layout import COL_G, COL_GBLOCK, COL_INDEX, COL_OUT, COL_PREV, COL_X, NSTATE, ST_KREM, ST_PREFIX, ST_TIES
from .mask import write_mask_kernel
from .plan import as_bytes, blocks, nan_index, on_device_of, pack, ready, writing_masks
from .register import kernel
from .ties import exclusive_scan_kernel, tie_count_kernel
from .value import key_to_value_kernel


def radix_schedule(key_bits: int):
    """(shift, bits, dense) per pass, most significant digit first."""
    first = min(config.first_digit_bits, key_bits)
    passes = [(key_bits - first, first, True)]
    low = key_bits - first
    while low > 0:
        bits = min(config.digit_bits, low)
        low -= bits
        passes.append((low, bits, config.dense_later_digits))
    return passes


class _Selection:
    """One top-k problem: scores given directly (``gs`` None) or as |w*g|; only ``prevs``'
    survivors compete when given. ``outs``: byte views written in place. ``prefix``: the k-th
    key's high bits already known (radix_histogram's filter, a key-width unsigned integer)."""

    def __init__(self, xs, gs, prevs, k, key_bits, outs=None, prefix=0):
        self.device, self.k, self.block = xs[0].device, k, config.block
        self.flags = dict(KEY_BITS=key_bits, SALIENCY=gs is not None, HAS_PREV=prevs is not None,
                          BLOCK=self.block)
        self.keep_alive = []  # copies whose addresses are in the tables
        groups, gblock = {}, 0
        for i, x in enumerate(xs):
            n = x.numel()
            if n == 0:
                continue
            x = ready(x)
            g = ready(gs[i]) if gs is not None else None
            p = as_bytes(ready(prevs[i])) if prevs is not None else None
            self.keep_alive += [x, g, p]
            cols = {COL_X: x.data_ptr(), COL_G: 0 if g is None else g.data_ptr(),
                    COL_PREV: 0 if p is None else p.data_ptr(),
                    COL_OUT: 0 if outs is None else outs[i].data_ptr(), COL_GBLOCK: gblock, COL_INDEX: i}
            programs = blocks(n, self.block)
            gblock += programs  # tie ranks follow the caller's order
            key = (x.dtype, None if g is None else g.dtype)
            groups.setdefault(key, ((x, x if g is None else g), []))[1].append((n, programs, cols))
        self.nblocks = gblock
        head = np.zeros(NSTATE.value + len(xs), dtype=np.int64)
        head[ST_PREFIX.value] = np.array(prefix, dtype=np.uint64).view(np.int64)
        head[ST_KREM.value] = 0 if k is None else k  # None: no selection (radix_histogram)
        if k == 0:
            # Nothing is kept: a k-th key no key exceeds, and none of its ties (k_rem = 0, and
            # ST_TIES != k_rem so that tie ranks are checked).
            head[ST_PREFIX.value] = -1  # all ones
            head[ST_TIES.value] = -1
        order = sorted(groups, key=str)
        shared, self.launches = pack(head, [groups[key] for key in order], self.device)
        self.state, self.nan_flags = shared[:NSTATE.value], shared[NSTATE.value:]

    def launch(self, kernel, *args, **const):
        for grp in self.launches:
            x, g = grp.tensors
            # Per group, not per call: an fp32 pair scores in fp32 even next to an fp64 one.
            f64 = self.flags["SALIENCY"] and torch.float64 in (x.dtype, g.dtype)
            kernel[(grp.nblocks,)](grp.table, grp.rows, self.state, *args, x, g,
                                   **const, **self.flags, SCORE_F64=f64, num_warps=config.num_warps)

    def find_kth_key(self):
        passes = radix_schedule(self.flags["KEY_BITS"])
        if self.k == 0:
            passes = passes[:1]  # only for its NaN check: with k = 0 nothing is selected
        width = 1 << max(bits for _, bits, _ in passes)
        hist = torch.zeros(len(passes) * width, dtype=torch.int64, device=self.device)
        for p, (shift, bits, dense) in enumerate(passes):
            h = hist[p * width:]
            self.launch(radix_histogram_kernel, h, self.nan_flags, SHIFT=shift, BITS=bits, FIRST=p == 0, DENSE=dense)
            if self.k > 0:
                choose_digit_kernel[(1,)](h, self.state, SHIFT=shift, BITS=bits)

    def write_masks(self):
        ties = torch.empty(max(self.nblocks, 1), dtype=torch.int64, device=self.device)
        if self.k > 0:
            self.launch(tie_count_kernel, ties)
            exclusive_scan_kernel[(1,)](ties, self.nblocks, self.state, CHUNK=config.scan_chunk)
        else:
            # With rank offsets of 0 no tie ranks below k_rem = 0, and no key exceeds the
            # all-ones k-th key (above): nothing is kept.
            ties.zero_()
        self.launch(write_mask_kernel, ties)


def _select_into(xs, gs, prevs, k, key_bits, out) -> torch.Tensor:
    with writing_masks(xs, out) as views:
        sel = _Selection(xs, gs, prevs, k, key_bits, views)
        sel.find_kth_key()
        sel.write_masks()
    return nan_index(sel.nan_flags)


@kernel("topk_masks")
def topk_masks(scores, k, out):
    return _select_into(scores, None, None, k, promoted_dtype(scores).itemsize * 8, out)


@kernel("saliency_topk_masks")
def saliency_topk_masks(weights, grads, k, competing, out):
    f64 = any(saliency_dtype(w, g) == torch.float64 for w, g in zip(weights, grads))
    return _select_into(weights, grads, competing or None, k, 64 if f64 else 32, out)


@kernel("kth_largest")
def kth_largest(scores, k):
    dtype = promoted_dtype(scores)
    with on_device_of(scores):
        sel = _Selection(scores, None, None, k, dtype.itemsize * 8)
        sel.find_kth_key()
        value = torch.empty((), dtype=dtype, device=sel.device)
        key_to_value_kernel[(1,)](sel.state, value, KEY_BITS=sel.flags["KEY_BITS"])
    return value, nan_index(sel.nan_flags)


@kernel("radix_histogram")
def radix_histogram(a, grads, competing, rank_dtype, shift, prefix):
    """Counts (int64[65536]) of the 16-bit digit at ``shift`` of the competing keys whose bits
    above it equal ``prefix``; the NaN index on the top pass, which counts every competing key."""
    key_bits = KEY_BITS[rank_dtype]
    top = shift + HISTOGRAM_BITS == key_bits
    with on_device_of(a):
        sel = _Selection(a, grads or None, competing or None, None, key_bits,
                         prefix=prefix << (shift + HISTOGRAM_BITS))
        hist = torch.zeros(1 << HISTOGRAM_BITS, dtype=torch.int64, device=sel.device)
        # One atomic per competing element (DENSE=False): tl.histogram's cost grows with the
        # number of bins, 65,536 here.
        sel.launch(radix_histogram_kernel, hist, sel.nan_flags, SHIFT=shift, BITS=HISTOGRAM_BITS,
                   FIRST=top, DENSE=False)
    return hist, nan_index(sel.nan_flags)
