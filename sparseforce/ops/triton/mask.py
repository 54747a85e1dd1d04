"""The last pass: write the bool masks, keeping exactly k.

Keys above the k-th key are kept; of the keys equal to it, the first ST_KREM in global order
(tensor order, then row-major), ranked by the block's exclusive tie prefix plus the tie's rank
inside the block.
"""
import triton
import triton.language as tl

from .blocks import program_block, store_block
from .device import device_function
from .keys import competing_keys
from .layout import COL_GBLOCK, COL_OUT, ST_KREM, ST_NAN, ST_TIES


@device_function
def keep_top(key, compete, kth, state, at, first):
    """Which keys of a block are kept: those above the k-th key ``kth``, and the first ST_KREM of
    its ties, ranked from the ties before this block: the exclusive tie prefix at ``at`` minus
    the one at ``first``, the selection's first block (whose prefix is 0 in the global ops)."""
    k_rem = tl.load(state + ST_KREM)
    tied = compete & (key == kth)
    if k_rem == tl.load(state + ST_TIES):
        keep = compete & (key >= kth)
    else:
        # Only here are the tie offsets filled in (the tie-count kernels and their scan).
        tied64 = tied.to(tl.int64)
        rank = tl.load(at) - tl.load(first) + tl.cumsum(tied64, 0) - tied64
        keep = (compete & (key > kth)) | (tied & (rank < k_rem))
    return keep


@triton.jit
def write_mask_kernel(table, rows, state, tie_offsets, X, G,
                      KEY_BITS: tl.constexpr, SALIENCY: tl.constexpr, SCORE_F64: tl.constexpr,
                      HAS_PREV: tl.constexpr, BLOCK: tl.constexpr):
    row, local, offs, numel, valid, full = program_block(table, rows, BLOCK)
    key, compete, nan, kth = competing_keys(table, row, offs, valid, full, state, X, G, KEY_BITS,
                                            SALIENCY, SCORE_F64, HAS_PREV)
    at = tie_offsets + tl.load(table + row + COL_GBLOCK) + local
    keep = keep_top(key, compete, kth, state, at, tie_offsets)
    # A NaN score makes the call raise: leave the caller's `out` as it was.
    if tl.load(state + ST_NAN) == 0:
        out = tl.multiple_of(tl.load(table + row + COL_OUT).to(tl.pointer_type(tl.uint8)), 16)
        store_block(out, offs, keep.to(tl.uint8), valid, full)
