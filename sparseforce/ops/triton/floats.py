"""Exact float conversions for loads and stores, where ``x.to(dtype)`` is not exact everywhere.

The Triton interpreter (CI) flushes bf16 subnormals to zero when it widens bf16 to float32, and
truncates instead of rounding to nearest even when it narrows float32 to bf16. bf16 is the top
half of a float32, so both are done on the bits here: exact on the GPU as well, where they
compute what its conversion instructions compute. fp16 and every other cast are exact as they are.
"""
import triton.language as tl

from .device import device_function


@device_function
def widen(x, dtype: tl.constexpr):
    """``x`` converted to ``dtype`` (float32 or float64), exactly."""
    if x.dtype == tl.bfloat16:
        x = (x.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    return x.to(dtype)


@device_function
def narrow(x, dtype: tl.constexpr):
    """``x`` rounded to ``dtype`` to nearest even, as torch rounds (NaN stays NaN)."""
    if dtype == tl.bfloat16:
        b = x.to(tl.float32).to(tl.uint32, bitcast=True)
        # Adding just under half a bf16 ulp, plus one when the kept bits are odd, carries into
        # them exactly when round-to-nearest-even rounds up (into the exponent, up to inf).
        r = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
        r = tl.where(x != x, 0x7FC0, r)
        return r.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    return x.to(dtype)
