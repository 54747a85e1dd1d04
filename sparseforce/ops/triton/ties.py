"""Exact k with ties: how many keys equal to the k-th key come before each block.

Only needed when some of the tied keys must be dropped; the kernels read that from the state
on the device and do nothing otherwise (the common case for continuous scores), so the host
launches them unconditionally without waiting for the GPU.
"""
import triton
import triton.language as tl

from .blocks import program_block
from .keys import competing_keys
from .layout import COL_GBLOCK, ST_KREM, ST_TIES


@triton.jit
def tie_count_kernel(table, rows, state, tie_counts, X, G,
                     KEY_BITS: tl.constexpr, SALIENCY: tl.constexpr, SCORE_F64: tl.constexpr,
                     HAS_PREV: tl.constexpr, BLOCK: tl.constexpr):
    if tl.load(state + ST_KREM) != tl.load(state + ST_TIES):
        row, local, offs, numel, valid, full = program_block(table, rows, BLOCK)
        key, compete, nan, kth = competing_keys(table, row, offs, valid, full, state, X, G, KEY_BITS,
                                                SALIENCY, SCORE_F64, HAS_PREV)
        tied = compete & (key == kth)
        tl.store(tie_counts + tl.load(table + row + COL_GBLOCK) + local, tl.sum(tied.to(tl.int64)))


@triton.jit
def exclusive_scan_kernel(counts, n, state, CHUNK: tl.constexpr):
    """In place: counts[i] <- sum(counts[:i]). One program; there is one count per block."""
    if tl.load(state + ST_KREM) != tl.load(state + ST_TIES):
        carry = tl.full([], 0, tl.int64)
        for start in range(0, n, CHUNK):
            offs = start + tl.arange(0, CHUNK)
            inside = offs < n
            c = tl.load(counts + offs, mask=inside, other=0)
            tl.store(counts + offs, tl.cumsum(c, 0) - c + carry, mask=inside)
            carry += tl.sum(c)
