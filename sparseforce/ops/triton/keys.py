"""Order-preserving integer keys of float scores, shared by every selection kernel.

Unsigned key order equals float order: a non-negative float gets its sign bit set, a negative
one has all bits flipped. -0.0 is canonicalised to +0.0 first so that the two tie, as the
reference's comparisons do. NaN gets a key like any other bit pattern; the first pass reports
it and the caller raises, so its rank never matters.
Keys are computed in the promoted dtype of all tensors (16, 32 or 64 bits wide), which ranks
mixed dtypes exactly like the reference's promote-then-sort. 16-bit keys live in uint32.
magnitude_keys (drop_grow) ranks |x|: the sign bit is cleared before the transform.

Written as few device functions on purpose: under the Triton interpreter (CI) every call of a
jit helper costs milliseconds, so a chain of tiny helpers would dominate the test time.
"""
import triton.language as tl

from .blocks import load_block
from .device import device_function
from .floats import widen
from .layout import COL_G, COL_PREV, COL_X, ST_PREFIX


@device_function
def element_keys(table, row, offs, valid, full, X, G,
                 KEY_BITS: tl.constexpr, SALIENCY: tl.constexpr, SCORE_F64: tl.constexpr,
                 HAS_PREV: tl.constexpr):
    """For the elements ``offs`` (any shape) of one table row (``full``: all of them inside the
    tensor): their keys, which of them compete and which of those are NaN.

    SALIENCY: the score is |w*g| computed here in float32 (float64 if SCORE_F64), exact for
    fp16/bf16 inputs, never written to memory. HAS_PREV (Iter SNIP): only weights alive in
    prev_masks compete; a dead weight's NaN is never ranked, so it is not reported either.
    The host guarantees 16-byte aligned contiguous tensors, hence the multiple_of hints that let
    the loads vectorise although the addresses come from a table.
    """
    x_ptr = tl.multiple_of(tl.load(table + row + COL_X).to(tl.pointer_type(X.dtype.element_ty)), 16)
    x = load_block(x_ptr, offs, valid, full)
    if SALIENCY:
        g_ptr = tl.multiple_of(tl.load(table + row + COL_G).to(tl.pointer_type(G.dtype.element_ty)), 16)
        g = load_block(g_ptr, offs, valid, full)
        if SCORE_F64:
            s = tl.abs(widen(x, tl.float64) * widen(g, tl.float64))
        else:
            s = tl.abs(widen(x, tl.float32) * widen(g, tl.float32))
    else:
        s = x
    compete = valid
    if HAS_PREV:
        p_ptr = tl.multiple_of(tl.load(table + row + COL_PREV).to(tl.pointer_type(tl.uint8)), 16)
        compete = compete & (load_block(p_ptr, offs, valid, full) != 0)
    key, nan = float_keys(s, KEY_BITS, False)
    return key, compete, compete & nan


@device_function
def magnitude_keys(table, row, COL: tl.constexpr, offs, valid, full, X, KEY_BITS: tl.constexpr):
    """The keys of |x| for the elements ``offs`` of the tensor at column COL of a table row (of
    X's dtype), and which of them are NaN (every element in range is checked)."""
    x_ptr = tl.multiple_of(tl.load(table + row + COL).to(tl.pointer_type(X.dtype.element_ty)), 16)
    key, nan = float_keys(load_block(x_ptr, offs, valid, full), KEY_BITS, True)
    return key, valid & nan


@device_function
def float_keys(s, KEY_BITS: tl.constexpr, MAGNITUDE: tl.constexpr):
    """The keys of the values ``s`` (of |s| if MAGNITUDE: the sign bit cleared first) and which
    of them are NaN."""
    # Widening to the promoted dtype is exact (floats.widen), so ranking after it ranks the given
    # values. -0.0 is canonicalised on the bit pattern, and NaN tested in at least float32: the
    # interpreter compares bfloat16 by its bits, which would miss both.
    if KEY_BITS == 64:
        wide = widen(s, tl.float64)
        b = wide.to(tl.uint64, bitcast=True)
    else:
        wide = widen(s, tl.float32)
        if KEY_BITS == 32:
            b = wide.to(tl.uint32, bitcast=True)
        else:  # 16-bit keys in uint32
            b = s.to(tl.uint16, bitcast=True).to(tl.uint32)
    sign = 1 << (KEY_BITS - 1)
    if MAGNITUDE:
        b = b & (sign - 1)
    b = tl.where(b == sign, 0, b)
    key = b ^ tl.where((b >> (KEY_BITS - 1)) != 0, (sign << 1) - 1, sign).to(b.dtype)
    return key, wide != wide


@device_function
def competing_keys(table, row, offs, valid, full, state, X, G,
                   KEY_BITS: tl.constexpr, SALIENCY: tl.constexpr, SCORE_F64: tl.constexpr,
                   HAS_PREV: tl.constexpr):
    """element_keys, and the k-th key's digits found so far (from ``state``), in the key type."""
    key, compete, nan = element_keys(table, row, offs, valid, full, X, G, KEY_BITS, SALIENCY, SCORE_F64,
                                     HAS_PREV)
    return key, compete, nan, kth_prefix(state, KEY_BITS)


@device_function
def kth_prefix(state, KEY_BITS: tl.constexpr):
    """The k-th key's digits found so far (from ``state``), in the key type."""
    prefix = tl.load(state + ST_PREFIX).to(tl.uint64, bitcast=True)
    if KEY_BITS != 64:
        prefix = prefix.to(tl.uint32)
    return prefix
