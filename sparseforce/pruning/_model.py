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
EMBEDDING_TYPES = (nn.Embedding, nn.EmbeddingBag)


def is_hf_conv1d(module: nn.Module) -> bool:
    """True for Hugging Face ``transformers.pytorch_utils.Conv1D`` (GPT-2's attention and MLP
    layers: a Linear whose weight is stored transposed) or a subclass of it. Recognised by the
    class's name and module, so that transformers is never imported here (it is optional and
    slow to import)."""
    return any(c.__name__ == "Conv1D" and c.__module__.partition(".")[0] == "transformers"
               for c in type(module).__mro__)


def default_prunable_ids(model: nn.Module) -> set[int]:
    """ids of the weights pruned by default: the ``.weight`` of every Conv1d/2d/3d, Linear and
    Hugging Face Conv1D, except one that is also the weight of an embedding.

    The exception is for tied LM heads (GPT-2's ``lm_head.weight`` is ``transformer.wte.weight``):
    pruning that tensor would prune the token embedding too, and embeddings are not pruned by
    default. (A deviation from the design's "every Linear", made for tied weights only: an
    untied head, as Llama's, is an ordinary Linear and is pruned.)
    """
    embedded = {id(m.weight) for m in model.modules()
                if isinstance(m, EMBEDDING_TYPES) and isinstance(m.weight, nn.Parameter)}
    return {id(m.weight) for m in model.modules()
            if (isinstance(m, PRUNABLE_TYPES) or is_hf_conv1d(m))
            and isinstance(getattr(m, "weight", None), nn.Parameter) and id(m.weight) not in embedded}


def prunable_parameters(model: nn.Module, prunable=None, check_nan: bool = True) -> dict[str, nn.Parameter]:
    """Name -> parameter of the weights to prune, in ``model.named_parameters()`` order.

    Default: see :func:`default_prunable_ids`. ``prunable`` may be a list of parameter names or
    a predicate ``f(name, param) -> bool``; a tensor tied under several names is offered once,
    under the name ``named_parameters()`` gives it (the first).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    params = dict(model.named_parameters())
    if prunable is None:
        eligible = default_prunable_ids(model)
        chosen = {n: p for n, p in params.items() if id(p) in eligible}
    elif callable(prunable):
        chosen = {n: p for n, p in params.items() if prunable(n, p)}
    elif isinstance(prunable, Iterable) and not isinstance(prunable, (str, bytes)):
        names = list(prunable)
        missing = [n for n in names if n not in params]
        if missing:
            raise ValueError(f"prunable names {missing} are not parameters of the model"
                             + _tied_hint(model, params, missing)
                             + f" (some valid names: {list(params)[:5]})")
        wanted = set(names)
        chosen = {n: p for n, p in params.items() if n in wanted}
    else:
        raise TypeError("prunable must be None, a list of parameter names or a predicate f(name, param)")
    if not chosen:
        raise ValueError("the model has no prunable weights (default: the weights of Conv1d/2d/3d, Linear and "
                         "Hugging Face Conv1D that are not tied to an embedding)")
    for n, p in chosen.items():
        if not p.is_floating_point():
            raise TypeError(f"prunable parameter {n!r} has dtype {p.dtype}; only float weights can be pruned")
    if check_nan:
        check_no_nan(chosen)
    return chosen


def _tied_hint(model: nn.Module, params: Mapping[str, nn.Parameter], missing: Sequence[str]) -> str:
    # "lm_head.weight" of a tied model exists, but named_parameters() lists it under its first name.
    first = {id(p): n for n, p in params.items()}
    tied = {n: first[id(p)] for n, p in model.named_parameters(remove_duplicate=False)
            if n in missing and id(p) in first}
    if not tied:
        return ""
    return "; " + ", ".join(f"{alias!r} is the same tensor as {name!r}" for alias, name in tied.items()) + \
        " (a tied weight goes by its first name in named_parameters(): use that)"


def prunable_names(model: nn.Module, prunable=None) -> list[str]:
    """The names of the weights the pruning methods prune for ``prunable`` (default: see
    :func:`default_prunable_ids`), in ``named_parameters()`` order: a start for a list that leaves
    some out, e.g. ``[n for n in prunable_names(model) if not n.startswith("lm_head")]``."""
    return list(prunable_parameters(model, prunable, check_nan=False))


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


_BATCHES = "an iterable of (inputs, targets) batches or of dict batches (keyword arguments of the model)"


def check_data(data) -> None:
    if data is None:
        raise ValueError(f"this method needs data: {_BATCHES}")
    if isinstance(data, (torch.Tensor, str, bytes)) or not isinstance(data, Iterable):
        raise TypeError(f"data must be {_BATCHES}, got {type(data).__name__}")


class BatchStream:
    """Hands out batches in order, starting the iterable again when it runs out.

    A batch is an ``(inputs, targets)`` pair, or a dict (what a Hugging Face ``DataCollator``
    yields, ``labels`` included), which is handed out as ``(batch, batch)``: the model is called
    with it as keyword arguments and the loss function gets it whole as its target.

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
        if isinstance(batch, Mapping):
            keys = [k for k in batch if not isinstance(k, str)]
            if keys:
                raise ValueError(f"a dict batch is passed to the model as keyword arguments, so its keys must be "
                                 f"str; got {keys[:3]!r}")
            batch = to_device(batch, self.device)
            return batch, batch
        if not isinstance(batch, Sequence) or isinstance(batch, (str, bytes)) or len(batch) != 2:
            raise ValueError(f"each batch must be a pair (inputs, targets) or a dict, got {type(batch).__name__}"
                             + (f" of length {len(batch)}" if isinstance(batch, Sequence) else ""))
        return to_device(batch[0], self.device), to_device(batch[1], self.device)

    def take(self, n: int) -> list:
        return [self.next() for _ in range(n)]


def check_loss_fn(loss_fn):
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError("loss_fn must be None or a callable loss_fn(output, target) (target: the dict itself for "
                        f"dict batches), got {_checks.describe(loss_fn)}")
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


def output_loss(output):
    """The loss a model computed itself (``output.loss`` of a Hugging Face ``ModelOutput``, or
    ``output["loss"]``), or None."""
    loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
    return loss if isinstance(loss, torch.Tensor) else None


def default_loss(output, target):
    """Cross-entropy of the output (logits) against the targets of a pair batch; for a dict batch
    (``target`` is the batch), the loss the model computed itself, as Hugging Face models do
    when the batch holds ``labels``."""
    if isinstance(target, Mapping):
        loss = output_loss(output)
        if loss is None:
            raise ValueError(f"the model's output ({type(output).__name__}) has no .loss: with dict batches the "
                             "default loss is the one the model computes itself (Hugging Face models do when the "
                             "batch holds 'labels'); add 'labels' to the batches or pass loss_fn(output, batch)")
        if loss.dim() != 0:
            raise ValueError(f"the model's .loss has shape {tuple(loss.shape)}, not a scalar; pass "
                             "loss_fn(output, batch)")
        return loss
    if not isinstance(output, torch.Tensor):
        raise TypeError(f"the default loss is cross-entropy on the model's output, a tensor of logits, but the "
                        f"model returned {type(output).__name__}; pass loss_fn(output, target), or dict batches "
                        "with 'labels' to a model that returns its own .loss (Hugging Face)")
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
