"""The radix select of the drop/grow phases (drop_grow.py): tensors longer than config.row_tile
of segment="tensor", and every tensor of segment="global".

segment_radix's per-segment select on keys of |x|, except that a program's table row is a whole
tensor (a program handles BLOCK elements of it) and names its segment (COL_SEG0: the state and
histogram) and where that segment's tie ranks start (COL_TIE0), so one segment may span several
tensors. The competing set is the phase's: the drop ranks the active weights (COL_PREV: masks),
the grow every element the drop did not keep (COL_PREV: the output the drop wrote), and only
adds its picks to that output. NaN: the first pass flags every NaN of the phase's tensors,
competing or not.
"""
import triton
import triton.language as tl

from .blocks import load_block, program_block, report_nans, store_block
from .device import device_function
from .keys import kth_prefix, magnitude_keys
from .layout import COL_GBLOCK, COL_OUT, COL_PREV, COL_SEG0, COL_TIE0, COL_X, NSTATE, ST_KREM, ST_TIES
from .mask import keep_top
from .segment_radix import count_segment_digits


@device_function
def phase_keys(table, row, offs, valid, full, state, X, KEY_BITS: tl.constexpr, GROW: tl.constexpr):
    """The keys of |x|, which of them compete in the phase, which are NaN, and the k-th key's
    digits found so far."""
    key, nan = magnitude_keys(table, row, COL_X, offs, valid, full, X, KEY_BITS)
    p_ptr = tl.multiple_of(tl.load(table + row + COL_PREV).to(tl.pointer_type(tl.uint8)), 16)
    prev = load_block(p_ptr, offs, valid, full)
    if GROW:
        compete = valid & (prev == 0)
    else:
        compete = valid & (prev != 0)
    return key, compete, nan, kth_prefix(state, KEY_BITS)


@triton.jit
def drop_grow_histogram_kernel(table, rows, state, hist, nan_flags, X,
                               SHIFT: tl.constexpr, BITS: tl.constexpr, FIRST: tl.constexpr, GROW: tl.constexpr,
                               KEY_BITS: tl.constexpr, BLOCK: tl.constexpr):
    row, local, offs, numel, valid, full = program_block(table, rows, BLOCK)
    seg = tl.load(table + row + COL_SEG0)
    key, compete, nan, prefix = phase_keys(table, row, offs, valid, full, state + seg * NSTATE, X, KEY_BITS, GROW)
    if FIRST:
        report_nans(nan_flags, table, row, nan)
    count_segment_digits(hist + seg * (1 << BITS), key, compete, prefix, SHIFT, BITS, FIRST, BLOCK)


@triton.jit
def drop_grow_ties_kernel(table, rows, state, ties, X, GROW: tl.constexpr, COUNT: tl.constexpr,
                          KEY_BITS: tl.constexpr, BLOCK: tl.constexpr):
    """COUNT: each block's number of keys tied with its segment's k-th key, where some of those
    ties are left out (elsewhere nothing reads them). Otherwise the masks, with ``ties`` the
    counts' exclusive prefix sum over every block; ranks count from the segment's first block."""
    row, local, offs, numel, valid, full = program_block(table, rows, BLOCK)
    st = state + tl.load(table + row + COL_SEG0) * NSTATE
    at = ties + tl.load(table + row + COL_GBLOCK) + local
    if COUNT:
        if tl.load(st + ST_KREM) != tl.load(st + ST_TIES):
            key, compete, nan, kth = phase_keys(table, row, offs, valid, full, st, X, KEY_BITS, GROW)
            tl.store(at, tl.sum((compete & (key == kth)).to(tl.int64)))
    else:
        key, compete, nan, kth = phase_keys(table, row, offs, valid, full, st, X, KEY_BITS, GROW)
        keep = keep_top(key, compete, kth, st, at, ties + tl.load(table + row + COL_TIE0))
        out = tl.multiple_of(tl.load(table + row + COL_OUT).to(tl.pointer_type(tl.uint8)), 16)
        if GROW:
            # The drop's survivors are True already: the grow only adds its picks.
            tl.store(out + offs, keep.to(tl.uint8), mask=keep)
        else:
            store_block(out, offs, keep.to(tl.uint8), valid, full)
