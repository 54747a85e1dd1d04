"""Masks to and from ``torch.nn.utils.prune``'s format: a pruned parameter ``<name>`` lives as the
parameter ``<name>_orig``, the buffer ``<name>_mask`` (0/1 in the parameter's dtype) and a forward
pre-hook (a ``BasePruningMethod`` whose ``_tensor_name`` is ``<name>``) recomputing ``<name>``."""
from __future__ import annotations

import torch.nn as nn
from torch.nn.utils import prune


def pruned_names(module: nn.Module) -> list:
    """The names of ``module``'s tensors pruned by ``torch.nn.utils.prune``, in the order they were
    first pruned (the order of their ``_orig`` parameters; a hook moves to the end at every prune)."""
    hooked = {hook._tensor_name for hook in module._forward_pre_hooks.values()
              if isinstance(hook, prune.BasePruningMethod)}
    first_pruned = [name[:-len("_orig")] for name in module._parameters if name.endswith("_orig")]
    return [name for name in first_pruned if name in hooked and f"{name}_mask" in module._buffers]


def read(model: nn.Module) -> dict:
    """``parameter name -> bool mask`` for every parameter of ``model`` pruned by
    ``torch.nn.utils.prune`` (``fc.weight`` for the buffer ``fc.weight_mask``), modules in
    ``named_modules`` order. The masks are new tensors; the model is only read."""
    masks = {}
    for path, module in model.named_modules():
        for name in pruned_names(module):
            full = f"{path}.{name}" if path else name
            buffer = module._buffers[f"{name}_mask"].detach()
            if bool(((buffer != 0) & (buffer != 1)).any()):
                raise ValueError(f"the pruning mask {full}_mask holds values other than 0 and 1")
            masks[full] = buffer == 1
    return masks


def _target(model: nn.Module, full: str, mask) -> tuple:
    """``(module, name, parameter)`` the mask ``full`` prunes, or ValueError naming what is wrong."""
    path, _, name = full.rpartition(".")
    try:
        module = model.get_submodule(path)
    except AttributeError:
        raise ValueError(f"mask {full!r}: the model has no module {path!r}") from None
    param = module._parameters.get(name)
    if param is None:
        param = module._parameters.get(f"{name}_orig")
    if param is None:
        raise ValueError(f"mask {full!r}: {type(module).__name__} {path!r} has no parameter {name!r} "
                         f"(nor {name + '_orig'!r})")
    if mask.shape != param.shape:
        raise ValueError(f"mask {full!r} has shape {tuple(mask.shape)}, the parameter {tuple(param.shape)}")
    return module, name, param


def write(masks, model: nn.Module) -> None:
    """Prune ``model`` with ``masks`` (``parameter name -> bool mask``) through
    ``prune.custom_from_mask``; a parameter pruned before keeps the product of both masks, as
    torch's ``PruningContainer`` makes it. Every mask is checked before any is applied."""
    targets = [_target(model, full, mask) for full, mask in masks.items()]
    for (module, name, param), mask in zip(targets, masks.values()):
        prune.custom_from_mask(module, name, mask=mask.to(param.device))
