"""The Triton backend: radix-select top-k (global and segmented), fused FORCE / Iter SNIP
saliency, masked SGD, and the single radix pass of ops.key_histogram (sparseforce.distributed),
as the kernels of ``torch.ops.sparseforce_triton.*`` (the op library's schemas).

Runs on CUDA tensors, and on CPU tensors only under the Triton interpreter (TRITON_INTERPRET=1
set before triton is first imported), which is how CI without a GPU tests it; ``auto`` never
picks it on CPU (see AUTO_ORDER). This module only answers availability: importing it does not
import triton. The first availability check imports the entry modules, which register the
kernels, so ``import sparseforce`` stays fast, and a missing or broken triton only makes the
backend unavailable, with the reason in the error.

Files: selection.py (topk / kth / saliency / histogram: launch sequences and registration),
segmented.py (the segmented ops, its design in its docstring), drop_grow.py (the fused drop/grow
step of dynamic sparse training, likewise) and sgd.py (masked SGD) are the entry modules,
register.py how they register; plan.py (the per-call tables they build), layout.py (their
columns), blocks.py (the kernels' shared start: a program's block, its loads and stores),
keys.py (order-preserving keys, fused |w*g|, magnitudes), floats.py (exact bf16 conversions),
histogram.py (a radix pass), digit.py (choosing the digit on the device), ties.py (tie counts
and their prefix sum), mask.py (the exact-k mask pass), value.py (kth_largest's value),
segment_rank.py (small segments in registers), segment_radix.py (the radix passes per segment),
radix_passes.py (their launch sequence), drop_grow_tile.py and drop_grow_radix.py (the drop/grow
paths), config.py (tunables), device.py (how helpers are compiled).
"""
from __future__ import annotations

import os

import torch

from .._registry import register_backend
from ..library import SCHEMAS

_loaded = {}


def _load() -> bool:
    """Import and register the kernels once; False if that failed (reason in _loaded['error'])."""
    if "interpreted" not in _loaded and "error" not in _loaded:
        try:
            import triton  # noqa: F401
        except Exception as e:  # ImportError, or a triton that fails to initialise
            _loaded["error"] = f"triton could not be imported ({type(e).__name__}: {e})"
            return False
        try:
            from . import drop_grow, segmented, selection, sgd  # noqa: F401  (register the kernels)
        except Exception as e:  # e.g. a triton release whose language lacks something we use
            _loaded["error"] = (f"the Triton kernels failed to load with triton {triton.__version__} "
                                f"({type(e).__name__}: {e})")
        else:
            from triton.runtime.interpreter import InterpretedFunction

            from .histogram import radix_histogram_kernel
            # Triton decides at decoration time whether a kernel is interpreted.
            _loaded["interpreted"] = isinstance(radix_histogram_kernel, InterpretedFunction)
    return "interpreted" in _loaded


def _interpreter_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() not in ("", "0", "false", "off", "no")


def _availability(device: torch.device):
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "no CUDA GPU is available"
    elif device.type == "cpu":
        if "interpreted" not in _loaded and not _interpreter_requested():  # decided without importing triton
            return ("Triton kernels run on CUDA tensors; on CPU tensors only under the Triton "
                    "interpreter (set TRITON_INTERPRET=1 before triton is imported)")
    else:
        return f"Triton kernels run on CUDA tensors (CPU tensors under TRITON_INTERPRET=1), not {device.type}"
    if not _load():
        return _loaded["error"]
    if device.type == "cpu" and not _loaded["interpreted"]:
        return ("the Triton kernels were compiled for the GPU (TRITON_INTERPRET was not 1 when they "
                "were loaded), so they cannot run on CPU tensors")
    if device.type == "cuda" and _loaded["interpreted"]:
        # The kernels read tensor addresses from tables, which the interpreter (running on the
        # host) can only follow into host memory.
        return "the Triton kernels are interpreted (TRITON_INTERPRET=1), so they run on CPU tensors only"
    return None


register_backend("triton", _availability, {op: getattr(torch.ops.sparseforce_triton, op) for op in SCHEMAS})
