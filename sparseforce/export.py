"""From masks to a real speed-up: 2:4-masked ``nn.Linear`` weights in PyTorch's semi-structured
sparse layout (``torch.sparse.to_sparse_semi_structured``), which the sparse tensor cores of
NVIDIA GPUs of compute capability 8.0 or newer (Ampere, Hopper, ...) multiply at up to twice the
dense rate.

The layout is torch's: its backend is cuSPARSELt, or CUTLASS when
``torch.sparse.SparseSemiStructuredTensor._FORCE_CUTLASS`` is set, and the dtypes and the shape
multiples each takes are read from torch's table for that backend (for fp16/bf16: rows and
columns multiples of 16 with cuSPARSELt, of 32 x 64 with CUTLASS, which also takes fp32), so the
checks here say what the conversion itself would refuse, before anything is converted.
"""
from __future__ import annotations

import collections.abc
from typing import Mapping, NamedTuple, Optional, Union

import torch
import torch.nn as nn

from .masks import Masks
from .masks.container import check_dense, check_model

__all__ = ["Conversion", "to_semi_structured", "why_unsupported"]

REQUIREMENT = "to_semi_structured needs a CUDA device of compute capability >= 8.0 (NVIDIA Ampere or newer)"


class Conversion(NamedTuple):
    """What :func:`to_semi_structured` did: the weights now semi-structured, and the masked
    weights it left dense (not the weight of an ``nn.Linear``), each in the masks' order."""
    converted: tuple
    dense: tuple


def _layout() -> type:
    """The subclass ``to_sparse_semi_structured`` builds, whose table says what it takes."""
    sparse = torch.sparse
    return (sparse.SparseSemiStructuredTensorCUTLASS if sparse.SparseSemiStructuredTensor._FORCE_CUTLASS
            else sparse.SparseSemiStructuredTensorCUSPARSELT)


def why_unsupported(device: Union[str, torch.device]) -> Optional[str]:
    """``None`` when tensors on ``device`` can take the semi-structured layout, else the one-line
    reason: not a CUDA device, a compute capability below 8.0, or a torch built without cuSPARSELt
    (its default backend)."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"{REQUIREMENT}; the model is on {device}"
    if not torch.cuda.is_available():
        return f"{REQUIREMENT}; this machine has none"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 0):
        return (f"{REQUIREMENT}; {device} ({torch.cuda.get_device_name(device)}) has compute capability "
                f"{major}.{minor}")
    if _layout().BACKEND == "cusparselt" and not torch.backends.cusparselt.is_available():
        return ("to_semi_structured: this torch build has no cuSPARSELt; use torch's CUTLASS kernels instead "
                "(torch.sparse.SparseSemiStructuredTensor._FORCE_CUTLASS = True)")
    return None


def to_semi_structured(model: nn.Module, masks: Union[Masks, Mapping[str, torch.Tensor]]) -> Conversion:
    """Convert, in place, the weight of every ``nn.Linear`` of ``model`` that ``masks`` masks into
    PyTorch's semi-structured sparse layout, holding the masked weight (pruned entries 0), so the
    layer's forward runs on the sparse tensor cores. Returns a :class:`Conversion` naming the
    weights converted and the masked weights left dense: those of layers that are not
    ``nn.Linear`` (convolutions, embeddings) are left as they are, unmasked by this function
    (:func:`~sparseforce.apply_masks` masks them).

    For inference: a converted weight is a new ``nn.Parameter`` that does not require a gradient
    (torch's semi-structured tensors support few operations besides the matrix product), and
    inputs must have the weight's dtype.

    Everything is checked before the model changes, and the model is left as it was when any check
    or the conversion of any layer fails. The checks, in order: ``masks`` fit ``model`` and name
    at least one ``nn.Linear`` weight; each such mask keeps exactly 2 of every 4 consecutive
    weights along its rows (the input dimension: the masks ``nm=(2, 4)`` gives;
    :meth:`Masks.is_nm`), else a ``ValueError`` naming the layer and its first broken group; its
    weight's dtype and shape are ones the layout takes (``ValueError`` naming the layer and the
    constraint); the weights are on a CUDA device of compute capability >= 8.0 with the layout's
    kernels (``RuntimeError`` naming the requirement, :func:`why_unsupported`).
    """
    check_model(model)
    if not isinstance(masks, collections.abc.Mapping):
        raise TypeError(f"masks must be a sparseforce.Masks or a mapping name -> bool tensor, "
                        f"got {type(masks).__name__}")
    masks = masks if isinstance(masks, Masks) else Masks(masks)
    if masks.is_sharded:
        raise NotImplementedError("to_semi_structured does not take sharded (DTensor) masks; gather them with "
                                  "masks.full() and convert an unsharded model")
    masks.check(model)
    params = dict(model.named_parameters(remove_duplicate=False))
    linears, dense = _linear_weights(model, masks)
    if not linears:
        raise ValueError(f"to_semi_structured: no mask is of an nn.Linear weight, nothing to convert "
                         f"(the masks are of {', '.join(map(repr, masks)) or 'nothing'})")

    broken = Masks({name: masks[name] for name in linears}).nm_violations(2, 4)
    if broken:
        name, why = next(iter(broken.items()))
        raise ValueError(f"to_semi_structured needs 2:4 masks (2 kept of every 4 consecutive weights along "
                         f"each row; prune with nm=(2, 4)): mask {name!r}: {why}"
                         + (f" ({len(broken)} layers are not 2:4)" if len(broken) > 1 else ""))
    layout = _layout()
    for name in linears:
        check_dense(f"parameter {name!r}", params[name])
        _check_dtype_and_shape(name, params[name], layout)
    devices = sorted({params[name].device for name in linears}, key=str)
    for device in devices:
        why = why_unsupported(device)
        if why is not None:
            raise RuntimeError(why if len(devices) == 1 else f"{why} (the model is on {', '.join(map(str, devices))})")

    converted = {}
    with torch.no_grad():
        for name, module in linears.items():
            weight = params[name]
            pruned = weight.detach().masked_fill(~masks[name].to(weight.device), 0).contiguous()
            try:
                sparse = torch.sparse.to_sparse_semi_structured(pruned)
                # The product is where a device or build without the kernels refuses: try it now,
                # while the model is unchanged.
                nn.functional.linear(torch.zeros(1, weight.shape[1], dtype=weight.dtype, device=weight.device),
                                     sparse)
            except (RuntimeError, NotImplementedError) as exc:
                raise RuntimeError(f"to_semi_structured: converting {name!r} failed "
                                   f"({torch.cuda.get_device_name(weight.device)}): {exc}") from exc
            converted[name] = (module, nn.Parameter(sparse, requires_grad=False))
    for module, weight in converted.values():
        module.weight = weight
    return Conversion(tuple(converted), tuple(dense))


def _linear_weights(model: nn.Module, masks: Masks) -> tuple:
    """(name -> module for the masked ``nn.Linear`` weights, the other masked names). A module
    reached under several names (shared) is converted once, under its first name."""
    linears, dense, seen = {}, [], {}
    for name in masks:
        path, _, leaf = name.rpartition(".")
        module = model.get_submodule(path) if path else model
        if not (isinstance(module, nn.Linear) and leaf == "weight"):
            dense.append(name)
        elif id(module) in seen:
            if not torch.equal(masks[seen[id(module)]], masks[name]):
                raise ValueError(f"{seen[id(module)]!r} and {name!r} are the same nn.Linear (shared) but were "
                                 "given different masks")
        else:
            seen[id(module)] = name
            linears[name] = module
    return linears, dense


def _check_dtype_and_shape(name: str, weight: torch.Tensor, layout: type) -> None:
    table = layout._DTYPE_SHAPE_CONSTRAINTS
    if weight.dtype not in table:
        raise ValueError(f"to_semi_structured: {name!r} is {weight.dtype}; torch's semi-structured layout "
                         f"({layout.BACKEND}) takes {', '.join(map(str, table))}: convert the model first "
                         f"(e.g. model.half())")
    rows, cols = weight.shape
    need = table[weight.dtype]
    if rows == 0 or cols == 0 or rows % need.sparse_min_rows or cols % need.sparse_min_cols:
        raise ValueError(f"to_semi_structured: {name!r} has shape {tuple(weight.shape)}; torch's semi-structured "
                         f"layout ({layout.BACKEND}, {weight.dtype}) needs rows a positive multiple of "
                         f"{need.sparse_min_rows} and columns of {need.sparse_min_cols}")
