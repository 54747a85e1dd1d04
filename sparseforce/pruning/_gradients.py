"""Gradients of the loss at substitute weights, the model never written.

``torch.func.functional_call`` runs the model on substitute weight tensors and copies of the
buffers, so the caller's parameters, buffers, ``.grad`` and ``requires_grad`` stay as they are.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch.func import functional_call


def forward(model, tensors: dict, inputs):
    if isinstance(inputs, Mapping):
        return functional_call(model, tensors, (), dict(inputs))
    return functional_call(model, tensors, (inputs,))


def mean_gradients(model, weights: dict[str, torch.Tensor], buffers: dict, batches, loss_fn):
    """Mean over ``batches`` of dLoss/dw at the substitute ``weights`` (a fresh leaf each).

    Returns (list of gradients in ``weights`` order, mean loss as a float).
    """
    names = list(weights)
    leaves = [weights[n].detach().requires_grad_(True) for n in names]
    total = None
    loss_sum = 0.0
    for inputs, targets in batches:
        out = forward(model, {**buffers, **dict(zip(names, leaves))}, inputs)
        loss = loss_fn(out, targets)
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        if total is None:
            # The first batch's gradients become the sums: a separate zeroed accumulator would cost
            # one more copy of every weight, the largest allocation of a step on a big model.
            total = [torch.zeros_like(w) if g is None else _writable(g) for w, g in zip(leaves, grads)]
        else:
            for acc, g in zip(total, grads):
                if g is not None:
                    acc.add_(g)
        loss_sum += float(loss.detach())
    n = len(batches)
    return [g.div_(n) if n > 1 else g for g in total], loss_sum / n


def _writable(g: torch.Tensor) -> torch.Tensor:
    """``g``, or a copy where it cannot be written in place: autograd may hand back an expanded
    (stride-0) tensor, e.g. the gradient of ``w.sum()``. (A contiguous view, such as the
    transposed matmul a Linear's weight gradient is, is its own memory and is kept.)"""
    return g if g.is_contiguous() else g.clone(memory_format=torch.contiguous_format)
