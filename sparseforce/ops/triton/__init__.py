"""The Triton backend: radix-select top-k, fused FORCE / Iter SNIP saliency, masked SGD, and the
single radix pass of ops.key_histogram (sparseforce.distributed).

Runs on CUDA tensors, and on CPU tensors only under the Triton interpreter (TRITON_INTERPRET=1
set before triton is first imported), which is how CI without a GPU tests it; ``auto`` never
picks it on CPU (see AUTO_ORDER). Importing this module does not import triton: that happens
on first use, so ``import sparseforce`` stays fast, and a missing or broken triton only makes
the backend unavailable, with the reason in the error.

Files, one concern each: keys.py (order-preserving keys, fused |w*g|), floats.py (exact bf16
conversions), histogram.py (a radix pass), digit.py (choosing the digit on the device), ties.py
(tie counts and their prefix sum), mask.py (the exact-k mask pass), value.py (kth_largest's
value), sgd.py (masked SGD), layout.py / plan.py (the per-call tables), select.py (launch
sequences), library.py (the torch.library ops), api.py (the registry's entry points), config.py
(tunables), device.py (how helpers are compiled).
"""
from __future__ import annotations

import os

import torch

from .._registry import register_backend, register_kernel

_loaded = {}


def _load():
    """Import the kernels once; returns the api module, or None (reason in _loaded['error'])."""
    if "api" not in _loaded and "error" not in _loaded:
        try:
            import triton  # noqa: F401
        except Exception as e:  # ImportError, or a triton that fails to initialise
            _loaded["error"] = f"triton could not be imported ({type(e).__name__}: {e})"
            return None
        try:
            from . import api
            from .histogram import radix_histogram_kernel
        except Exception as e:  # e.g. a triton release whose language lacks something we use
            _loaded["error"] = (f"the Triton kernels failed to load with triton {triton.__version__} "
                                f"({type(e).__name__}: {e})")
        else:
            from triton.runtime.interpreter import InterpretedFunction
            _loaded["api"] = api
            # Triton decides at decoration time whether a kernel is interpreted.
            _loaded["interpreted"] = isinstance(radix_histogram_kernel, InterpretedFunction)
    return _loaded.get("api")


def _interpreter_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() not in ("", "0", "false", "off", "no")


def _availability(device: torch.device):
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "no CUDA GPU is available"
    elif device.type == "cpu":
        if "api" not in _loaded and not _interpreter_requested():  # decided without importing triton
            return ("Triton kernels run on CUDA tensors; on CPU tensors only under the Triton "
                    "interpreter (set TRITON_INTERPRET=1 before triton is imported)")
    else:
        return f"Triton kernels run on CUDA tensors (CPU tensors under TRITON_INTERPRET=1), not {device.type}"
    if _load() is None:
        return _loaded["error"]
    if device.type == "cpu" and not _loaded["interpreted"]:
        return ("the Triton kernels were compiled for the GPU (TRITON_INTERPRET was not 1 when they "
                "were loaded), so they cannot run on CPU tensors")
    if device.type == "cuda" and _loaded["interpreted"]:
        # The kernels read tensor addresses from tables, which the interpreter (running on the
        # host) can only follow into host memory.
        return "the Triton kernels are interpreted (TRITON_INTERPRET=1), so they run on CPU tensors only"
    return None


register_backend("triton", _availability)


@register_kernel("topk_masks", "triton")
def topk_masks(scores, k, out, device):
    return _load().topk_masks(scores, k, out, device)


@register_kernel("kth_largest", "triton")
def kth_largest(scores, k, device):
    return _load().kth_largest(scores, k, device)


@register_kernel("saliency_topk_masks", "triton")
def saliency_topk_masks(weights, grads, k, prev_masks, resurrect, out, device):
    return _load().saliency_topk_masks(weights, grads, k, prev_masks, resurrect, out, device)


@register_kernel("radix_histogram", "triton")
def radix_histogram(a, grads, prev_masks, rank_dtype, shift, prefix, device):
    return _load().radix_histogram(a, grads, prev_masks, rank_dtype, shift, prefix, device)


@register_kernel("masked_sgd_", "triton")
def masked_sgd_(params, grads, momentum_buffers, masks, hyper, nesterov, device):
    return _load().masked_sgd_(params, grads, momentum_buffers, masks, hyper, nesterov, device)
