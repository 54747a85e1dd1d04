"""A kernel around sparseforce.ops.triton.floats, for test_triton_kernels (a kernel must live at
module level: Triton resolves the names it calls in the module's globals)."""
import torch
import triton
import triton.language as tl

from sparseforce.ops.triton.floats import narrow, widen


@triton.jit
def convert_kernel(x, y, n, NARROW: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    v = tl.load(x + offs, mask=offs < n)
    if NARROW:
        v = narrow(v, tl.bfloat16)
    else:
        v = widen(v, tl.float32)
    tl.store(y + offs, v, mask=offs < n)


def convert(x, dtype):
    """``x`` (bf16 to widen, or fp32 to narrow) converted to ``dtype`` by the kernel."""
    y = torch.empty(x.shape, dtype=dtype, device=x.device)
    convert_kernel[(triton.cdiv(x.numel(), 1024),)](x, y, x.numel(), NARROW=dtype == torch.bfloat16, BLOCK=1024)
    return y
