"""kth_largest: turn the selected key back into a value of the promoted dtype (inverse of the
key transform in keys.py)."""
import triton
import triton.language as tl

from .layout import ST_PREFIX


@triton.jit
def key_to_value_kernel(state, out, KEY_BITS: tl.constexpr):
    # Keys are built from canonicalised scores, so a zero threshold comes back as +0.0.
    key = tl.load(state + ST_PREFIX).to(tl.uint64, bitcast=True)
    if KEY_BITS == 64:
        bits = tl.where((key >> 63) != 0, key ^ 0x8000000000000000, ~key)
    elif KEY_BITS == 32:
        k = key.to(tl.uint32)
        bits = tl.where((k >> 31) != 0, k ^ 0x80000000, ~k)
    else:
        k = key.to(tl.uint32)
        bits = tl.where((k >> 15) != 0, k ^ 0x8000, ~k & 0xFFFF).to(tl.uint16)
    tl.store(out, bits.to(out.dtype.element_ty, bitcast=True))
