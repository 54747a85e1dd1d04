"""The Triton kernels as torch.library custom ops (namespace ``sparseforce_triton``).

Registered with ``torch.library.custom_op`` rather than ``triton_op``/``wrap_triton``: the host
side builds per-call tables of tensor addresses (``data_ptr``), which FakeTensor tracing cannot
do, so the ops are opaque to torch.compile (no graph break, declared mutations, fake
implementations for shapes) instead of being traced into. NaN is reported through a returned
flag tensor rather than raised inside the op, so the op itself never synchronises.

Importing this module imports triton; ``sparseforce.ops`` only does so when the backend is used.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch.library import custom_op

from . import select, sgd


def _on(tensors):
    """Launch on the tensors' GPU, which need not be the current one."""
    t = next((t for t in tensors if t is not None), None)
    return torch.cuda.device(t.device) if t is not None and t.device.type == "cuda" else contextlib.nullcontext()


@custom_op("sparseforce_triton::topk_masks", mutates_args=("out",))
def topk_masks(scores: list[torch.Tensor], k: int, out: list[torch.Tensor]) -> torch.Tensor:
    """Writes into ``out``; returns int64 NaN flags, one per tensor (masks untouched if any)."""
    with _on(scores):
        return select.topk_masks(scores, k, out)


@topk_masks.register_fake
def _(scores, k, out):
    return torch.empty(len(scores), dtype=torch.int64, device=scores[0].device)


@custom_op("sparseforce_triton::saliency_topk_masks", mutates_args=("out",))
def saliency_topk_masks(weights: list[torch.Tensor], grads: list[torch.Tensor], k: int,
                        prev_masks: list[torch.Tensor], out: list[torch.Tensor]) -> torch.Tensor:
    """``prev_masks`` non-empty: only its survivors compete (Iter SNIP); empty: all do (FORCE)."""
    with _on(weights):
        return select.saliency_topk_masks(weights, grads, k, prev_masks or None, out)


@saliency_topk_masks.register_fake
def _(weights, grads, k, prev_masks, out):
    return torch.empty(len(weights), dtype=torch.int64, device=weights[0].device)


@custom_op("sparseforce_triton::kth_largest", mutates_args=())
def kth_largest(scores: list[torch.Tensor], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(the k-th largest value, a 0-dim tensor of the promoted dtype; the NaN flags)."""
    with _on(scores):
        return select.kth_largest(scores, k)


@kth_largest.register_fake
def _(scores, k):
    device = scores[0].device
    return (torch.empty((), dtype=select.promoted_dtype(scores), device=device),
            torch.empty(len(scores), dtype=torch.int64, device=device))


@custom_op("sparseforce_triton::radix_histogram", mutates_args=())
def radix_histogram(a: list[torch.Tensor], grads: list[torch.Tensor], prev_masks: list[torch.Tensor],
                    key_bits: int, shift: int, prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(int64[65536] digit counts, the NaN flags); ``grads`` empty: scores mode, ``prev_masks``
    empty: every element competes."""
    with _on(a):
        return select.key_histogram(a, grads or None, prev_masks or None, key_bits, shift, prefix)


@radix_histogram.register_fake
def _(a, grads, prev_masks, key_bits, shift, prefix):
    device = a[0].device
    return (torch.empty(1 << 16, dtype=torch.int64, device=device),
            torch.empty(len(a), dtype=torch.int64, device=device))


@custom_op("sparseforce_triton::masked_sgd_", mutates_args=("params", "momentum_buffers"))
def masked_sgd_(params: list[torch.Tensor], grads: list[torch.Tensor],
                momentum_buffers: list[torch.Tensor], masks: list[Optional[torch.Tensor]],
                fresh: list[bool], lr: float, momentum: float, dampening: float,
                weight_decay: float, nesterov: bool) -> None:
    """``momentum_buffers`` empty when momentum == 0, else one per param; ``fresh[i]``: the
    buffer holds no state yet and starts at d_p (torch.optim.SGD's first step)."""
    with _on(params):
        sgd.masked_sgd_(params, grads, momentum_buffers, masks, fresh, lr, momentum, dampening,
                        weight_decay, nesterov)


@masked_sgd_.register_fake
def _(params, grads, momentum_buffers, masks, fresh, lr, momentum, dampening, weight_decay, nesterov):
    return None
