"""One radix pass: add the next digit of every competing key into one global histogram.

One program per BLOCK elements of one tensor (its table row found through ``rows``); every
tensor of a dtype group in one launch, every group adding into the same histogram, so the
layers are never concatenated. Programs only add their counts (relaxed atomics): the order of
the additions does not matter.
"""
import triton
import triton.language as tl

from .blocks import program_block
from .device import device_function
from .keys import competing_keys
from .layout import COL_INDEX, ST_NAN


@triton.jit
def radix_histogram_kernel(table, rows, state, hist, nan_flags, X, G,
                           SHIFT: tl.constexpr, BITS: tl.constexpr, FIRST: tl.constexpr,
                           DENSE: tl.constexpr, KEY_BITS: tl.constexpr, SALIENCY: tl.constexpr,
                           SCORE_F64: tl.constexpr, HAS_PREV: tl.constexpr, BLOCK: tl.constexpr):
    row, local, offs, numel, valid, full = program_block(table, rows, BLOCK)
    key, compete, nan, prefix = competing_keys(table, row, offs, valid, full, state, X, G, KEY_BITS,
                                               SALIENCY, SCORE_F64, HAS_PREV)
    if FIRST:
        # NaN detection rides on the first pass, which reads everything anyway. Every NaN lane
        # writes the same 1 to the same two flags: no reduction, and the race is benign.
        zero = tl.zeros([BLOCK], tl.int64)
        tl.store(nan_flags + tl.load(table + row + COL_INDEX) + zero, zero + 1, mask=nan)
        tl.store(state + ST_NAN + zero, zero + 1, mask=nan)
    else:
        # Candidate filtering: only keys whose higher digits match the k-th key's go on.
        compete = compete & ((key >> (SHIFT + BITS)) == (prefix >> (SHIFT + BITS)))
    digit = ((key >> SHIFT) & ((1 << BITS) - 1)).to(tl.int32)
    if DENSE and FIRST and not HAS_PREV:
        n_compete = tl.minimum(numel - local * BLOCK, BLOCK)  # every element in range competes
    else:
        n_compete = tl.sum(compete.to(tl.int64))
    count_digits(hist, digit, compete, n_compete, BITS, DENSE, BLOCK)


@device_function
def count_digits(hist, digit, compete, n_compete, BITS: tl.constexpr, DENSE: tl.constexpr, BLOCK: tl.constexpr):
    """Adds the digits of the competing elements (``n_compete`` of them: used when DENSE) into
    ``hist``."""
    if DENSE:
        # tl.histogram of the block, then one atomic per non-empty bin. Non-competing elements
        # are counted in bin 0 and taken out again, rather than through tl.histogram's newer
        # mask argument, which not every supported Triton release may have.
        bins = tl.arange(0, 1 << BITS)
        counts = tl.histogram(tl.where(compete, digit, 0), 1 << BITS).to(tl.int64)
        counts = counts - tl.where(bins == 0, BLOCK - n_compete, 0)
        tl.atomic_add(hist + bins, counts, mask=counts > 0, sem="relaxed")
    else:
        # One atomic per competing element, except that the block's largest competing digit
        # is counted once for the whole block: a run of equal keys (many zero saliencies, say)
        # then costs one atomic per block instead of serialising every element on one address.
        rep = tl.max(tl.where(compete, digit, -1))
        if rep >= 0:
            same = compete & (digit == rep)
            tl.atomic_add(hist + rep, tl.sum(same.to(tl.int64)), sem="relaxed")
            tl.atomic_add(hist + digit, tl.full([BLOCK], 1, tl.int64), mask=compete & (digit != rep),
                          sem="relaxed")
