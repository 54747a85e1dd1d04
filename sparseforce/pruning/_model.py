"""What the pruning methods need from a model, without ever changing it.

Gradients are taken with ``torch.func.functional_call`` on substitute weight tensors and copies
of the buffers, so the caller's parameters, buffers (BN running stats), ``.grad``,
``requires_grad`` and train/eval flags are never written; only the modules' mode is switched for
the call and put back.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .. import _checks, ops
from ..masks import LayerCollapseWarning, Masks

PRUNABLE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def prunable_parameters(model: nn.Module, prunable=None, check_nan: bool = True) -> dict[str, nn.Parameter]:
    """Name -> parameter of the weights to prune, in ``model.named_parameters()`` order.

    Default: the ``.weight`` of every Conv1d/2d/3d and Linear. ``prunable`` may be a list of
    parameter names or a predicate ``f(name, param) -> bool``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    params = dict(model.named_parameters())
    if prunable is None:
        eligible = {id(m.weight) for m in model.modules()
                    if isinstance(m, PRUNABLE_TYPES) and isinstance(m.weight, nn.Parameter)}
        chosen = {n: p for n, p in params.items() if id(p) in eligible}
    elif callable(prunable):
        chosen = {n: p for n, p in params.items() if prunable(n, p)}
    elif isinstance(prunable, Iterable) and not isinstance(prunable, (str, bytes)):
        names = list(prunable)
        missing = [n for n in names if n not in params]
        if missing:
            raise ValueError(f"prunable names {missing} are not parameters of the model "
                             f"(some valid names: {list(params)[:5]})")
        wanted = set(names)
        chosen = {n: p for n, p in params.items() if n in wanted}
    else:
        raise TypeError("prunable must be None, a list of parameter names or a predicate f(name, param)")
    if not chosen:
        raise ValueError("the model has no prunable weights (default: the weights of Conv1d/2d/3d and Linear)")
    for n, p in chosen.items():
        if not p.is_floating_point():
            raise TypeError(f"prunable parameter {n!r} has dtype {p.dtype}; only float weights can be pruned")
    if check_nan:
        check_no_nan(chosen)
    return chosen


def check_no_nan(params: Mapping[str, torch.Tensor]) -> None:
    """The weights have values that can be ranked: dense, not on the meta device (shapes alone are
    fine for ``prunable_parameters(check_nan=False)``), no NaN."""
    for n, p in params.items():
        if p.is_meta:
            raise ValueError(f"prunable parameter {n!r} is on the meta device (it has no values yet); "
                             "materialize the model first, e.g. model.to_empty(device=...) and initialize it")
        if p.layout != torch.strided:
            raise ValueError(f"prunable parameter {n!r} is a sparse tensor ({p.layout}); only dense weights can "
                             "be pruned (convert it with .to_dense())")
        if bool(torch.isnan(p.detach()).any()):
            raise ValueError(f"prunable parameter {n!r} contains NaN; its saliency cannot be ranked")


@contextlib.contextmanager
def module_mode(model: nn.Module, train: bool):
    """Switch every module to train/eval mode for the block, then restore each one's own flag."""
    flags = [(m, m.training) for m in model.modules()]
    model.train(train)
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def buffer_copies(model: nn.Module, transform: Callable[[torch.Tensor], torch.Tensor] | None = None):
    """Private copies of the buffers: a forward in train mode updates BN statistics in place, and
    those writes must land on the copies, not on the caller's model."""
    out = {}
    for n, b in model.named_buffers():
        b = b.detach().clone()
        out[n] = transform(b) if transform is not None and b.is_floating_point() else b
    return out


def model_device(params: Mapping[str, torch.Tensor]) -> torch.device:
    return next(iter(params.values())).device


def to_device(x, device):
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, Mapping):
        return {k: to_device(v, device) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(to_device(v, device) for v in x)
    return x


def forward(model, tensors: dict, inputs):
    if isinstance(inputs, Mapping):
        return functional_call(model, tensors, (), dict(inputs))
    return functional_call(model, tensors, (inputs,))


def check_data(data) -> None:
    if data is None:
        raise ValueError("this method needs data: an iterable of (inputs, targets) batches")
    if isinstance(data, (torch.Tensor, str, bytes)) or not isinstance(data, Iterable):
        raise TypeError(f"data must be an iterable of (inputs, targets) batches, got {type(data).__name__}")


class BatchStream:
    """Hands out batches in order, starting the iterable again when it runs out.

    A one-shot iterator (a generator) cannot be started again; rather than keep every batch it
    gave in memory to cycle them, running out of it is an error that says so.
    """

    def __init__(self, data, device):
        check_data(data)
        self.data, self.device, self._it = data, device, iter(data)
        self._pass = 0  # batches the current pass over data has given

    def next(self):
        try:
            batch = next(self._it)
        except StopIteration:
            if self._pass and isinstance(self.data, Iterator):
                raise ValueError(f"data is an iterator that ran out after {self._pass} batches and cannot be "
                                 "restarted; pass a list or a DataLoader") from None
            self._it = iter(self.data)
            try:
                batch = next(self._it)
            except StopIteration:
                if self._pass:
                    raise ValueError(f"data yielded {self._pass} batches, then none when iterated again; pass a "
                                     "list or a DataLoader") from None
                raise ValueError("data yielded no batches") from None
            self._pass = 0
        self._pass += 1
        if not isinstance(batch, Sequence) or isinstance(batch, (str, bytes)) or len(batch) != 2:
            raise ValueError(f"each batch must be a pair (inputs, targets), got {type(batch).__name__}"
                             + (f" of length {len(batch)}" if isinstance(batch, Sequence) else ""))
        return to_device(batch[0], self.device), to_device(batch[1], self.device)

    def take(self, n: int) -> list:
        return [self.next() for _ in range(n)]


def check_loss_fn(loss_fn):
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn must be None or a callable loss_fn(output, target), got {_checks.describe(loss_fn)}")
    return loss_fn or default_loss


def check_backend(backend, op: str, params: Mapping[str, torch.Tensor]) -> None:
    """Refuse an unknown or unavailable backend before any gradient is taken."""
    ops.resolve(backend, op, model_device(params))


@contextlib.contextmanager
def own_rng(model: nn.Module, seed=None):
    """Run the block on a fork of torch's global random state (the CPU generator and those of
    the CUDA devices the model is on), seeded with ``seed`` if given, else continuing from the
    caller's state; the caller's state is as it was afterwards. Dropout in the pruning passes
    and the shuffling of a DataLoader would otherwise change the randomness of what the caller
    does next (its training)."""
    cuda = sorted({t.device.index for t in itertools.chain(model.parameters(), model.buffers())
                   if t.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda):
        if seed is not None:
            # Not torch.manual_seed: it also seeds CUDA devices outside the fork, for good.
            torch.default_generator.manual_seed(seed)
            for index in cuda:
                with torch.cuda.device(index):
                    torch.cuda.manual_seed(seed)
        yield


_PRUNING_DIR = os.path.dirname(os.path.abspath(__file__))


def _caller_stacklevel() -> int:
    # The warning should point at the line that called the pruning function, however many
    # pruning frames (prune -> snip -> force -> ...) lie in between.
    level, frame = 1, sys._getframe(1)
    while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == _PRUNING_DIR:
        level, frame = level + 1, frame.f_back
    return level


def warn_collapsed(method: str, names: Sequence[str], numels: Sequence[int], kept: Sequence[int]) -> None:
    """LayerCollapseWarning naming the layers left with no weights while others keep some (nothing
    kept anywhere is what sparsity=1 asks for)."""
    live = [n for n, size in zip(names, numels) if size]
    empty = [n for n, size, k in zip(names, numels, kept) if size and not k]
    if not empty or len(empty) == len(live):
        return
    shown = ", ".join(map(repr, empty[:5])) + (", ..." if len(empty) > 5 else "")
    warnings.warn(f"{method} left {len(empty)} of {len(live)} layers with no weights (layer collapse: no signal "
                  f"passes through them): {shown}; prune less or use another method",
                  LayerCollapseWarning, stacklevel=_caller_stacklevel())


def warn_if_collapsed(method: str, masks: Masks) -> Masks:
    warn_collapsed(method, list(masks), [m.numel() for m in masks.values()],
                   [int(m.count_nonzero()) for m in masks.values()])
    return masks


def default_loss(output, target):
    return F.cross_entropy(output, target)


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
