"""Long segments (segment="tensor", rows longer than config.row_tile): the global ops' radix
select, run for every segment at once.

Each segment has its own selection state (layout.ST_*) and, per pass, its own histogram; a
program handles BLOCK elements of one segment (blocks never straddle two), so one launch per
dtype group covers every segment of every tensor, and one choose_digit_kernel program per
segment follows each pass. Ties at a segment's k-th key are ranked by the per-block tie counts'
exclusive prefix sum, taken relative to the segment's first block.
"""
import triton
import triton.language as tl

from .blocks import report_nans, store_block
from .device import device_function
from .histogram import count_digits
from .keys import competing_keys
from .mask import keep_top
from .layout import COL_GBLOCK, COL_OUT, COL_PID0, COL_SEG0, COL_SEGLEN, NCOLS, NSTATE, ST_KREM, ST_TIES


@device_function
def segment_block(table, rows, BLOCK: tl.constexpr):
    """This program's table row, its block's index among the tensor's blocks, its segment's
    index among all segments, the block's index within that segment, the elements' offsets
    (int64), which of them lie inside the segment and whether all of them do."""
    pid = tl.program_id(0)
    row = tl.load(rows + pid) * NCOLS
    local = pid - tl.load(table + row + COL_PID0)
    length = tl.load(table + row + COL_SEGLEN)
    per_segment = (length + BLOCK - 1) // BLOCK
    seg = local // per_segment
    blk = local - seg * per_segment
    pos = blk * BLOCK + tl.arange(0, BLOCK)
    return (row, local, tl.load(table + row + COL_SEG0) + seg, blk, seg * length + pos, pos < length,
            (blk + 1) * BLOCK <= length)


@triton.jit
def segment_histogram_kernel(table, rows, state, hist, nan_flags, X, G,
                             SHIFT: tl.constexpr, BITS: tl.constexpr, FIRST: tl.constexpr,
                             KEY_BITS: tl.constexpr, SALIENCY: tl.constexpr, SCORE_F64: tl.constexpr,
                             HAS_PREV: tl.constexpr, BLOCK: tl.constexpr):
    row, local, seg, blk, offs, valid, full = segment_block(table, rows, BLOCK)
    key, compete, nan, prefix = competing_keys(table, row, offs, valid, full, state + seg * NSTATE, X, G,
                                               KEY_BITS, SALIENCY, SCORE_F64, HAS_PREV)
    if FIRST:
        report_nans(nan_flags, table, row, nan)
    count_segment_digits(hist + seg * (1 << BITS), key, compete, prefix, SHIFT, BITS, FIRST, BLOCK)


@device_function
def count_segment_digits(hist, key, compete, prefix, SHIFT: tl.constexpr, BITS: tl.constexpr,
                         FIRST: tl.constexpr, BLOCK: tl.constexpr):
    """Adds the digit at SHIFT of a block's competing keys into its segment's histogram ``hist``:
    on the first pass every one (tl.histogram), later only those whose higher digits are the
    k-th key's (``prefix``)."""
    if not FIRST:
        compete = compete & ((key >> (SHIFT + BITS)) == (prefix >> (SHIFT + BITS)))
    digit = ((key >> SHIFT) & ((1 << BITS) - 1)).to(tl.int32)
    count_digits(hist, digit, compete, tl.sum(compete.to(tl.int64)), BITS, FIRST, BLOCK)


@triton.jit
def segment_ties_kernel(table, rows, state, ties, X, G,
                        KEY_BITS: tl.constexpr, SALIENCY: tl.constexpr, SCORE_F64: tl.constexpr,
                        HAS_PREV: tl.constexpr, COUNT: tl.constexpr, BLOCK: tl.constexpr):
    """COUNT: each block's number of keys tied with its segment's k-th key, where some of those
    ties are dropped (elsewhere nothing reads them). Otherwise the masks, with ``ties`` the counts'
    exclusive prefix sum over every block of every segment; only the segment's own blocks count."""
    row, local, seg, blk, offs, valid, full = segment_block(table, rows, BLOCK)
    st = state + seg * NSTATE
    at = ties + tl.load(table + row + COL_GBLOCK) + local
    if COUNT:
        if tl.load(st + ST_KREM) != tl.load(st + ST_TIES):
            key, compete, nan, kth = competing_keys(table, row, offs, valid, full, st, X, G, KEY_BITS,
                                                    SALIENCY, SCORE_F64, HAS_PREV)
            tl.store(at, tl.sum((compete & (key == kth)).to(tl.int64)))
    else:
        key, compete, nan, kth = competing_keys(table, row, offs, valid, full, st, X, G, KEY_BITS,
                                                SALIENCY, SCORE_F64, HAS_PREV)
        keep = keep_top(key, compete, kth, st, at, at - blk)
        out = tl.multiple_of(tl.load(table + row + COL_OUT).to(tl.pointer_type(tl.uint8)), 16)
        store_block(out, offs, keep.to(tl.uint8), valid, full)
