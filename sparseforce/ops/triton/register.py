"""How the entry modules (selection.py, sgd.py) give the ``sparseforce_triton`` ops their kernels.

``Library.impl`` with the dispatch keys themselves rather than ``torch.library.register_kernel``
with device names: the latter parses the names through a C++ exception, which aborts a process
that runs under AddressSanitizer (the CUDA emulator's sanitizer run imports this backend too).
"""
import torch

_LIBRARY = torch.library.Library("sparseforce_triton", "IMPL")


def kernel(op: str):
    """Decorator: the function runs ``sparseforce_triton::<op>`` on CUDA tensors and, under the
    Triton interpreter, on CPU ones."""
    def register(fn):
        for key in ("CUDA", "CPU"):
            _LIBRARY.impl(op, fn, key)
        return fn
    return register
