"""How helpers called from kernels are compiled."""
import triton
from triton.runtime.interpreter import InterpretedFunction


def device_function(fn):
    """``triton.jit`` for a helper called by kernels, except under the interpreter, where it
    stays a plain Python function. The interpreter runs kernel bodies as Python with the
    language already patched, so the direct call computes the same thing while skipping the
    ~3 ms re-patching the interpreter does on every device-function call (one per program and
    pass): the CI test time, not a behaviour difference. On the GPU it is an ordinary jit helper.
    """
    jitted = triton.jit(fn)
    return fn if isinstance(jitted, InterpretedFunction) else jitted
