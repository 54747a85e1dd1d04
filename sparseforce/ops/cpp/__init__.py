"""The ``cpp`` backend: the C++/OpenMP kernels of ``csrc/cpu``, ``torch.ops.sparseforce.*``.

The ops are defined by the op library (``sparseforce.ops.library``); the extension only
implements them for the CPU (and, built with CUDA, the CUDA) dispatch key. It is loaded (or
JIT-built) on first use, by the availability check (``loader``).
"""
from __future__ import annotations

import torch

from .. import reference
from .._registry import register_backend
from ..library import SCHEMAS
from . import loader


def _availability(device: torch.device) -> str | None:
    if device.type != "cpu":
        return f"it runs CPU tensors only, not {device.type} (use 'cuda' or 'triton' there)"
    return loader.load()


@torch.no_grad()
def masked_sgd_(params, grads, momentum_buffers, masks, lr, momentum, dampening, weight_decay, nesterov, fresh):
    """The compiled step takes one dtype per param and its grad. Mixed pairs make torch's step
    promote (and a new buffer take the promoted dtype); rare enough to leave to the reference
    rather than multiply the kernels."""
    step = torch.ops.sparseforce.masked_sgd_
    if any(g.dtype != p.dtype for p, g in zip(params, grads)):
        step = reference.masked_sgd_
    step(params, grads, momentum_buffers, masks, lr, momentum, dampening, weight_decay, nesterov, fresh)


# Shared with the ``cuda`` backend: the dispatcher picks the CPU or the CUDA kernel.
KERNELS = {op: getattr(torch.ops.sparseforce, op) for op in SCHEMAS}
KERNELS["masked_sgd_"] = masked_sgd_

register_backend("cpp", _availability, KERNELS)
loader.preload()  # the prebuilt extension, if any (cheap); a JIT build waits for first use
