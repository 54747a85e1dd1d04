"""The start every table-driven kernel shares: which elements of which tensor a program handles,
and their loads and stores.

Only the tail block of a tensor is masked: a mask from a table-loaded length has no known
alignment, and would stop the compiler from vectorising every block's loads and stores.
"""
import triton.language as tl

from .device import device_function
from .layout import COL_INDEX, COL_NUMEL, COL_PID0, NCOLS


@device_function
def program_block(table, rows, BLOCK: tl.constexpr):
    """This program's table row (an offset into ``table``), its block's index within the row's
    tensor, the elements' offsets (int64: a tensor may hold more than 2**31 elements), the
    tensor's length, which offsets are inside it and whether all of them are."""
    pid = tl.program_id(0)
    row = tl.load(rows + pid) * NCOLS
    local = pid - tl.load(table + row + COL_PID0)
    offs = local * BLOCK + tl.arange(0, BLOCK)
    numel = tl.load(table + row + COL_NUMEL)
    return row, local, offs, numel, offs < numel, (local + 1) * BLOCK <= numel


@device_function
def load_block(ptr, offs, valid, full):
    if full:
        v = tl.load(ptr + offs)
    else:
        v = tl.load(ptr + offs, mask=valid, other=0)
    return v


@device_function
def store_block(ptr, offs, value, valid, full):
    if full:
        tl.store(ptr + offs, value)
    else:
        tl.store(ptr + offs, value, mask=valid)


@device_function
def report_nans(nan_flags, table, row, nan):
    """Flags this row's tensor when ``nan`` (any shape) holds a True. Every NaN lane writes the
    same 1 to the same flag: no reduction, and the race is benign."""
    flag = nan.to(tl.int64)
    tl.store(nan_flags + tl.load(table + row + COL_INDEX) + 0 * flag, flag, mask=nan)
