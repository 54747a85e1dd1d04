"""The ``cuda`` backend: the CUDA kernels of ``csrc/cuda``, ``torch.ops.sparseforce.*``.

The ops are the same as the ``cpp`` backend's; torch's dispatcher picks the CUDA kernel for CUDA
tensors, so this backend registers the same kernels and only answers, per device, whether it
can run. The extension is loaded (or JIT-built, with nvcc when this torch is a CUDA build) on
first use, by the availability check.
"""
from __future__ import annotations

import torch

from .._registry import register_backend
from ..cpp import KERNELS, loader
from ..library import SCHEMAS

_NO_CUDA_BUILD = "the extension was built without CUDA (CPU-only torch or no toolkit)"
_has_cuda_kernels: bool | None = None  # known once the extension has loaded


def _cuda_kernels_registered() -> bool:
    global _has_cuda_kernels
    if _has_cuda_kernels is None:
        _has_cuda_kernels = all(torch._C._dispatch_has_kernel_for_dispatch_key(f"sparseforce::{op}", "CUDA")
                                for op in SCHEMAS)
    return _has_cuda_kernels


def _availability(device: torch.device) -> str | None:
    if device.type != "cuda":
        return f"it runs CUDA tensors only, not {device.type} (use 'cpp' there)"
    if not torch.cuda.is_available():
        return "no CUDA device"
    reason = loader.load()
    if reason is not None:
        return reason
    if torch.version.cuda is None or not _cuda_kernels_registered():
        return _NO_CUDA_BUILD
    return None


register_backend("cuda", _availability, KERNELS)
