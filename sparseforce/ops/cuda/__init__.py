"""The ``cuda`` backend: the CUDA kernels of ``csrc/cuda`` behind ``torch.ops.sparseforce``.

The ops are the same ``torch.ops.sparseforce.*`` as the ``cpp`` backend's; torch's dispatcher
picks the CUDA kernel for CUDA tensors, so this backend reuses the ``cpp`` backend's wrappers
(schema adaptation, the NaN error) unchanged and only answers, per device, whether it can run.
The extension is loaded (or JIT-built, with nvcc when this torch is a CUDA build) on first use,
by the availability check.
"""
from __future__ import annotations

import torch

from ... import _ext
from .. import cpp as _cpp
from .._registry import register_backend, register_kernel

_NO_CUDA_BUILD = "the extension was built without CUDA (CPU-only torch or no toolkit)"
_has_cuda_kernels: bool | None = None  # known once the extension has loaded


def _cuda_kernels_registered() -> bool:
    global _has_cuda_kernels
    if _has_cuda_kernels is None:
        _has_cuda_kernels = all(
            torch._C._dispatch_has_kernel_for_dispatch_key(f"sparseforce::{op}", "CUDA")
            for op in ("topk_masks", "kth_largest", "saliency_topk_masks", "radix_histogram", "masked_sgd_"))
    return _has_cuda_kernels


def _availability(device: torch.device) -> str | None:
    if device.type != "cuda":
        return f"it runs CUDA tensors only, not {device.type} (use 'cpp' there)"
    if not torch.cuda.is_available():
        return "no CUDA device"
    reason = _ext.load()
    if reason is not None:
        return reason
    if torch.version.cuda is None or not _cuda_kernels_registered():
        return _NO_CUDA_BUILD
    return None


def available() -> str | None:
    """None if the CUDA kernels can run on the current CUDA device, else why not."""
    return _availability(torch.device("cuda"))


register_backend("cuda", _availability)

for _op, _fn in (("topk_masks", _cpp.topk_masks), ("kth_largest", _cpp.kth_largest),
                 ("saliency_topk_masks", _cpp.saliency_topk_masks), ("radix_histogram", _cpp.radix_histogram),
                 ("masked_sgd_", _cpp.masked_sgd_)):
    register_kernel(_op, "cuda")(_fn)
del _op, _fn
