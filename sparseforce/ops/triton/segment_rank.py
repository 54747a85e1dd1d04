"""Small segments, selected without histograms: each program of small_segments_kernel holds a
[SEGS, WIDTH] tile of whole segments in registers and writes their masks in one pass over them.

ALL_PAIRS (segments of at most config.group_width elements: N:M groups, short rows): an
element's rank in its segment is the number of competing elements that beat it (a greater key,
or an equal key at a lower position), counted through one [SEGS, WIDTH, WIDTH] comparison; it is
kept when its rank < k. O(WIDTH^2) per segment, cheap for WIDTH <= 32, and no reduction across
the tile.

Otherwise (longer rows, up to config.row_tile elements, a tile of config.row_tile): the k-th
largest key of each row is built one bit at a time from the top (the largest t with at least k
competing keys >= t: KEY_BITS counting reductions over the tile, a radix select with 1-bit digits
that never leaves registers); the keys above it are kept, and of its ties the first
k - (keys above) in row order (a cumsum along the row).
"""
import triton
import triton.language as tl

from .blocks import report_nans
from .device import device_function
from .keys import element_keys
from .layout import COL_KS, COL_OUT, COL_PID0, COL_SEGLEN, COL_SEGS, NCOLS


@device_function
def segment_tile(table, rows, SEGS: tl.constexpr, WIDTH: tl.constexpr):
    """This program's table row, its segments' indices in that tensor ([SEGS]), their elements'
    offsets ([SEGS, WIDTH], int64) and which of those lie inside a segment."""
    pid = tl.program_id(0)
    row = tl.load(rows + pid) * NCOLS
    seg = (pid - tl.load(table + row + COL_PID0)) * SEGS + tl.arange(0, SEGS)
    length = tl.load(table + row + COL_SEGLEN)
    col = tl.arange(0, WIDTH)
    offs = seg[:, None] * length + col[None, :]
    valid = (seg < tl.load(table + row + COL_SEGS))[:, None] & (col < length)[None, :]
    return row, seg, offs, valid


@device_function
def segment_ks(table, row, seg, n_keep, PER_SEGMENT_K: tl.constexpr):
    """Each segment's k, as a [SEGS, 1] column: read from the tensor's ks, or ``n_keep`` (N:M)."""
    if PER_SEGMENT_K:
        ks = tl.load(table + row + COL_KS).to(tl.pointer_type(tl.int64))
        k = tl.load(ks + seg, mask=seg < tl.load(table + row + COL_SEGS), other=0)
    else:
        k = tl.zeros_like(seg) + n_keep
    return k[:, None]


@triton.jit
def small_segments_kernel(table, rows, nan_flags, n_keep, X, G,
                          KEY_BITS: tl.constexpr, SALIENCY: tl.constexpr, SCORE_F64: tl.constexpr,
                          HAS_PREV: tl.constexpr, PER_SEGMENT_K: tl.constexpr, ALL_PAIRS: tl.constexpr,
                          SEGS: tl.constexpr, WIDTH: tl.constexpr):
    row, seg, offs, valid = segment_tile(table, rows, SEGS, WIDTH)
    key, compete, nan = element_keys(table, row, offs, valid, False, X, G, KEY_BITS, SALIENCY, SCORE_F64,
                                     HAS_PREV)
    report_nans(nan_flags, table, row, nan)
    keep = select_in_tile(key, compete, segment_ks(table, row, seg, n_keep, PER_SEGMENT_K), KEY_BITS, ALL_PAIRS,
                          SEGS, WIDTH)
    out = tl.load(table + row + COL_OUT).to(tl.pointer_type(tl.uint8))
    tl.store(out + offs, keep.to(tl.uint8), mask=valid)


@device_function
def select_in_tile(key, compete, k, KEY_BITS: tl.constexpr, ALL_PAIRS: tl.constexpr, SEGS: tl.constexpr,
                   WIDTH: tl.constexpr):
    """Which of the [SEGS, WIDTH] keys are kept: in each row the k (a [SEGS, 1] column or a
    scalar) largest competing ones, ties by position."""
    if ALL_PAIRS:
        col = tl.arange(0, WIDTH)
        mine = key[:, :, None]
        theirs = key[:, None, :]
        earlier = (col[None, :] < col[:, None])[None, :, :]  # [., i, j]: j comes before i
        beats = compete[:, None, :] & ((theirs > mine) | ((theirs == mine) & earlier))
        keep = compete & (tl.sum(beats.to(tl.int32), axis=2) < k)
    else:
        # With k = 0 every candidate passes, so the k-th key ends all ones, which no key exceeds.
        kth = tl.zeros([SEGS, 1], key.dtype)
        for b in tl.static_range(KEY_BITS):
            candidate = kth | (tl.full([SEGS, 1], 1, key.dtype) << (KEY_BITS - 1 - b))
            count = tl.sum((compete & (key >= candidate)).to(tl.int32), axis=1)[:, None]
            kth = tl.where(count >= k, candidate, kth)
        above = compete & (key > kth)
        tied = (compete & (key == kth)).to(tl.int32)
        rank = tl.cumsum(tied, axis=1) - tied
        keep = above | ((tied != 0) & (rank < k - tl.sum(above.to(tl.int32), axis=1)[:, None]))
    return keep
