"""Which weights of a model are prunable: the default set (Conv/Linear weights not tied to an
embedding), or the caller's choice by name or predicate.

Low level (torch only): both :mod:`sparseforce.masks` (to name the weights a mask most likely
means) and :mod:`sparseforce.pruning` (to choose what to prune) import it.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

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


def default_prunable_names(model: nn.Module) -> list[str]:
    """The names of the weights of :func:`default_prunable_ids`, in ``named_parameters()`` order
    (no checks: any model, any dtype or device)."""
    eligible = default_prunable_ids(model)
    return [n for n, p in model.named_parameters() if id(p) in eligible]


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
