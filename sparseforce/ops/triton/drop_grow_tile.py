"""Short tensors of the drop/grow op's segment="tensor" (at most config.row_tile elements): both
phases in one program per tensor, in registers (segment_rank.select_in_tile: all pairs up to
config.group_width elements, the bitwise select above). The drop keeps the keeps[s] largest |w|
among the active elements, the grow picks the grows[s] largest |score| among the rest, and the
program writes their union: one pass over the data, no histogram.
"""
import triton
import triton.language as tl

from .blocks import report_nans
from .keys import magnitude_keys
from .layout import COL_G, COL_NUMEL, COL_OUT, COL_PREV, COL_SEG0, COL_X, NCOLS
from .segment_rank import select_in_tile


@triton.jit
def drop_grow_tile_kernel(table, nan_flags, keeps, grows, W, S, W_BITS: tl.constexpr, S_BITS: tl.constexpr,
                          ALL_PAIRS: tl.constexpr, WIDTH: tl.constexpr):
    """Program p: the tensor of table row p (COL_X its weights, COL_G its scores, COL_PREV its
    mask, COL_SEG0 its index in keeps and grows)."""
    row = tl.program_id(0) * NCOLS
    offs = tl.arange(0, WIDTH)[None, :]
    valid = offs < tl.load(table + row + COL_NUMEL)
    seg = tl.load(table + row + COL_SEG0)
    w_key, w_nan = magnitude_keys(table, row, COL_X, offs, valid, False, W, W_BITS)
    active = tl.load(tl.load(table + row + COL_PREV).to(tl.pointer_type(tl.uint8)) + offs, mask=valid, other=0)
    kept = select_in_tile(w_key, valid & (active != 0), tl.load(keeps + seg), W_BITS, ALL_PAIRS, 1, WIDTH)
    s_key, s_nan = magnitude_keys(table, row, COL_G, offs, valid, False, S, S_BITS)
    grown = select_in_tile(s_key, valid & ~kept, tl.load(grows + seg), S_BITS, ALL_PAIRS, 1, WIDTH)
    report_nans(nan_flags, table, row, w_nan)
    report_nans(nan_flags + 1, table, row, s_nan)
    out = tl.load(table + row + COL_OUT).to(tl.pointer_type(tl.uint8))
    tl.store(out + offs, (kept | grown).to(tl.uint8), mask=valid)
