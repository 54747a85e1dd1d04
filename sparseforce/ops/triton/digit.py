"""After each radix pass, on the device: which digit holds the k-th largest key.

One program scans the pass's histogram, so the host never waits for the GPU between passes.
"""
import triton
import triton.language as tl

from .layout import ST_KREM, ST_PREFIX, ST_TIES


@triton.jit
def choose_digit_kernel(hist, state, SHIFT: tl.constexpr, BITS: tl.constexpr):
    bins = tl.arange(0, 1 << BITS)
    h = tl.load(hist + bins)
    above = tl.cumsum(h, 0, reverse=True) - h  # competing keys whose digit is greater than the bin's
    k_rem = tl.load(state + ST_KREM)
    # `above` falls as the digit grows; the k-th key lies in the first bin with fewer than
    # k_rem keys above it, i.e. after every bin that has at least k_rem above.
    digit = tl.sum((above >= k_rem).to(tl.int64))
    prefix = tl.load(state + ST_PREFIX).to(tl.uint64, bitcast=True) | (digit.to(tl.uint64) << SHIFT)
    tl.store(state + ST_PREFIX, prefix.to(tl.int64, bitcast=True))
    tl.store(state + ST_KREM, k_rem - tl.sum(tl.where(bins == digit, above, 0)))
    tl.store(state + ST_TIES, tl.load(hist + digit))
