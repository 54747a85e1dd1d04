"""Masks to and from ``torch.ao.pruning``'s format: the ``mask`` buffer of each ``FakeSparsity``
parametrization a sparsifier's ``prepare`` registers (``module.parametrizations.<tensor>[i].mask``),
named by the parametrized tensor (``fc.weight``).

ao's masks are float tensors of 0 and 1 (``torch.ones_like(weight)`` at ``prepare``); a mask
holding any other value is no mask and is refused. A tensor under several ``FakeSparsity`` holds
their product (what its forward applies): :func:`read` gives their AND, :func:`write` copies the
mask into each of them, in place (ao's note: the mask tensor keeps its identity).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.ao.pruning.sparsifier.utils import FakeSparsity
from torch.nn.utils import parametrize


def tensor_name(module_fqn: str, tensor: str) -> str:
    """The name of ``module_fqn``'s ``tensor`` in the model (``fc.weight``; a tensor of the root
    module is its bare name), as ``named_parameters()`` gives it before ``prepare``."""
    return f"{module_fqn}.{tensor}" if module_fqn else tensor


def fake_sparsities(module: nn.Module, tensor: str) -> list[FakeSparsity]:
    """The ``FakeSparsity`` parametrizations of ``module``'s ``tensor`` (none when it has none)."""
    if not parametrize.is_parametrized(module, tensor):
        return []
    return [p for p in module.parametrizations[tensor] if isinstance(p, FakeSparsity)]


def _prepared(model: nn.Module) -> dict[str, list[FakeSparsity]]:
    """name -> the tensor's FakeSparsity list, for every tensor holding one, in module order."""
    found = {}
    for module_fqn, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for tensor in module.parametrizations:
                fakes = fake_sparsities(module, tensor)
                if fakes:
                    found[tensor_name(module_fqn, tensor)] = fakes
    return found


def read(model: nn.Module) -> dict:
    """name -> bool mask for every tensor of ``model`` under a ``FakeSparsity``; ``model`` is only read."""
    masks = {}
    for name, fakes in _prepared(model).items():
        for fake in fakes:
            if not bool(((fake.mask == 0) | (fake.mask == 1)).all()):
                raise ValueError(f"the FakeSparsity mask of {name!r} holds values other than 0 and 1, so it is no "
                                 "pruning mask")
        masks[name] = torch.stack([fake.mask.bool() for fake in fakes]).all(0)
    return masks


def write(masks, model: nn.Module) -> None:
    """Copy each of ``masks`` into the ``FakeSparsity`` masks of the tensor it names. Every name is
    checked first (a tensor of ``model`` under a ``FakeSparsity``, of the mask's shape, a bool mask),
    then all are written; tensors ``masks`` does not name keep theirs."""
    prepared = _prepared(model)
    for name, mask in masks.items():
        if name not in prepared:
            raise ValueError(f"mask {name!r} names no tensor of the model under a torch.ao.pruning FakeSparsity "
                             f"(prepared: {sorted(prepared)[:5]}); call the sparsifier's prepare() first")
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise TypeError(f"mask {name!r} must be a bool tensor, got "
                            f"{mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__}")
        shape = prepared[name][0].mask.shape
        if mask.shape != shape:
            raise ValueError(f"mask {name!r} has shape {tuple(mask.shape)}, its FakeSparsity mask {tuple(shape)}")
    with torch.no_grad():
        for name, mask in masks.items():
            for fake in prepared[name]:
                fake.mask.copy_(mask)
