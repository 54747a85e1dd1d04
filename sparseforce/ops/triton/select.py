"""Host orchestration of the exact global top-k: radix passes, then the mask pass.

Launch sequence for one call (nothing waits for the GPU in between):
  per radix pass: radix_histogram_kernel per dtype group -> choose_digit_kernel (1 program)
  topk:  tie_count_kernel per group -> exclusive_scan_kernel (1 program) -> write_mask_kernel per group
  kth:   key_to_value_kernel (1 program)
The caller reads the NaN flags afterwards (the one synchronisation) and raises if one is set.
key_histogram is one radix pass alone, the digit chosen by its caller (sparseforce.distributed).
"""
from __future__ import annotations

import torch

from .._schema import HISTOGRAM_BITS
from .config import config
from .digit import choose_digit_kernel
from .histogram import radix_histogram_kernel
from .mask import write_mask_kernel
from .plan import as_bytes, make_plan, radix_schedule
from .ties import exclusive_scan_kernel, tie_count_kernel
from .value import key_to_value_kernel


def promoted_dtype(tensors) -> torch.dtype:
    dtype = tensors[0].dtype if tensors else torch.float32
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


class _Selection:
    """One top-k problem: scores given directly (topk) or as |w*g| (saliency)."""

    def __init__(self, xs, gs, prevs, k, key_bits, outs=None, prefix=0):
        device = xs[0].device
        self.plan = make_plan(xs, gs, prevs, outs, k, key_bits, device, prefix)
        self.k = k
        self.flags = dict(KEY_BITS=key_bits, SALIENCY=gs is not None, HAS_PREV=prevs is not None,
                          BLOCK=self.plan.block)
        self.device = device

    def _launch(self, kernel, *args, **const):
        for grp in self.plan.groups:
            # Per group, not per call: an fp32 pair scores in fp32 even next to an fp64 one.
            f64 = self.flags["SALIENCY"] and torch.float64 in (grp.x.dtype, grp.g.dtype)
            kernel[(grp.nblocks,)](grp.table, grp.rows, self.plan.state, *args, grp.x, grp.g,
                                   **const, **self.flags, SCORE_F64=f64, num_warps=config.num_warps)

    def find_kth_key(self):
        passes = radix_schedule(self.flags["KEY_BITS"])
        if self.k == 0:
            passes = passes[:1]  # only for its NaN check: with k = 0 nothing is selected
        width = 1 << max(bits for _, bits, _ in passes)
        hist = torch.zeros(len(passes) * width, dtype=torch.int64, device=self.device)
        for p, (shift, bits, dense) in enumerate(passes):
            h = hist[p * width:]
            self._launch(radix_histogram_kernel, h, self.plan.nan_flags, SHIFT=shift, BITS=bits,
                         FIRST=p == 0, DENSE=dense)
            if self.k > 0:
                choose_digit_kernel[(1,)](h, self.plan.state, SHIFT=shift, BITS=bits)

    def write_masks(self):
        plan = self.plan
        ties = torch.empty(max(plan.nblocks, 1), dtype=torch.int64, device=self.device)
        if self.k > 0:
            self._launch(tie_count_kernel, ties)
            exclusive_scan_kernel[(1,)](ties, plan.nblocks, plan.state, CHUNK=config.scan_chunk)
        else:
            # With rank offsets of 0 no tie ranks below k_rem = 0, and no key exceeds the
            # all-ones k-th key (make_plan): nothing is kept.
            ties.zero_()
        self._launch(write_mask_kernel, ties)

    def kth_value(self, dtype):
        out = torch.empty((), dtype=dtype, device=self.device)
        key_to_value_kernel[(1,)](self.plan.state, out, KEY_BITS=self.flags["KEY_BITS"])
        return out


def _writable(outs):
    """Byte views the kernel can write in place, and the copies that must be written back."""
    views, pending = [], []
    for o in outs:
        w = o
        if not o.is_contiguous() or o.data_ptr() % 16:
            # A copy of the current contents: if the call raises, copying it back is a no-op.
            w = o.clone(memory_format=torch.contiguous_format)
            pending.append((o, w))
        views.append(as_bytes(w))
    return views, pending


def topk_masks(scores, k, out):
    """Writes the masks into ``out`` (bool tensors shaped like ``scores``); returns NaN flags."""
    views, pending = _writable(out)
    key_bits = promoted_dtype(scores).itemsize * 8
    sel = _Selection(scores, None, None, k, key_bits, views)
    sel.find_kth_key()
    sel.write_masks()
    for o, w in pending:
        o.copy_(w)
    return sel.plan.nan_flags


def saliency_topk_masks(weights, grads, k, prev_masks, out):
    """FORCE (prev_masks None) / Iter SNIP (only prev_masks' survivors compete)."""
    views, pending = _writable(out)
    f64 = any(torch.float64 in (w.dtype, g.dtype) for w, g in zip(weights, grads))
    sel = _Selection(weights, grads, prev_masks, k, 64 if f64 else 32, views)
    sel.find_kth_key()
    sel.write_masks()
    for o, w in pending:
        o.copy_(w)
    return sel.plan.nan_flags


def kth_largest(scores, k):
    dtype = promoted_dtype(scores)
    sel = _Selection(scores, None, None, k, dtype.itemsize * 8)
    sel.find_kth_key()
    return sel.kth_value(dtype), sel.plan.nan_flags


def key_histogram(xs, gs, prevs, key_bits, shift, prefix):
    """One pass of ops.key_histogram: counts (int64[65536]) of the 16-bit digit at ``shift`` of the
    competing keys whose bits above it equal ``prefix``, and the NaN flags, set on the top pass
    (``shift`` = key_bits - 16), which counts every competing key."""
    top = shift + HISTOGRAM_BITS == key_bits
    sel = _Selection(xs, gs, prevs, None, key_bits, prefix=prefix << (shift + HISTOGRAM_BITS))
    hist = torch.zeros(1 << HISTOGRAM_BITS, dtype=torch.int64, device=sel.device)
    # One atomic per competing element (DENSE=False): tl.histogram's cost grows with the number
    # of bins, 65,536 here.
    sel._launch(radix_histogram_kernel, hist, sel.plan.nan_flags, SHIFT=shift, BITS=HISTOGRAM_BITS,
                FIRST=top, DENSE=False)
    return hist, sel.plan.nan_flags
