"""After each radix pass, on the device: which digit holds the k-th largest key.

One program per selection scans its pass's histogram, so the host never waits for the GPU
between passes.
"""
import triton
import triton.language as tl

from .layout import NSTATE, ST_KREM, ST_PREFIX, ST_TIES


@triton.jit
def choose_digit_kernel(hist, state, SHIFT: tl.constexpr, BITS: tl.constexpr):
    """One program per selection (per segment in the segmented ops): program p reads the p-th
    histogram of ``hist`` and updates the p-th state of ``state``."""
    p = tl.program_id(0)
    hist += p * (1 << BITS)
    state += p * NSTATE
    bins = tl.arange(0, 1 << BITS)
    h = tl.load(hist + bins)
    above = tl.cumsum(h, 0, reverse=True) - h  # competing keys whose digit is greater than the bin's
    k_rem = tl.load(state + ST_KREM)
    if k_rem > 0:
        # `above` falls as the digit grows; the k-th key lies in the first bin with fewer than
        # k_rem keys above it, i.e. after every bin that has at least k_rem above.
        digit = tl.sum((above >= k_rem).to(tl.int64))
        prefix = tl.load(state + ST_PREFIX).to(tl.uint64, bitcast=True) | (digit.to(tl.uint64) << SHIFT)
        tl.store(state + ST_PREFIX, prefix.to(tl.int64, bitcast=True))
        tl.store(state + ST_KREM, k_rem - tl.sum(tl.where(bins == digit, above, 0)))
        tl.store(state + ST_TIES, tl.load(hist + digit))
    else:
        # k = 0 keeps nothing: a k-th key no key exceeds, and none of its ties (k_rem = 0, and
        # ST_TIES != k_rem so that tie ranks are checked).
        tl.store(state + ST_PREFIX, -1)
        tl.store(state + ST_TIES, -1)
