"""The arguments of ``drop_grow_masks`` (one dynamic-sparse-training update), checked, and the
kernels' form of the counts.

A segment is one tensor (``segment="tensor"``: per-layer RigL / SET) or every tensor together
(``"global"``). The caller speaks in drops and grows; the kernels take ``keeps`` (how many active
elements survive the drop, A - drops) so they never count the active set themselves: the front
counts it once, as it must to check the drops against it.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from . import _schema
from ._segments import integer

SEGMENTS = ("tensor", "global")


@dataclasses.dataclass(frozen=True)
class Counts:
    """The kernels' ``keeps`` / ``grows`` (int64, on the inputs' device), or the error found when
    checking the counts against the masks (raised after the NaN check, per the error order); the
    counts are then all 0, so that call only looks for NaN."""

    keeps: torch.Tensor
    grows: torch.Tensor
    error: str | None = None


def tensors_args(weights, scores, masks):
    """weights, scores (float, one per weight, its shape) and masks (bool, its shape), and their device."""
    weights = _schema.float_list("weights", weights)
    scores = _schema.float_list("scores", scores)
    if len(scores) != len(weights):
        raise ValueError(f"weights has {len(weights)} tensors but scores has {len(scores)}")
    for i, (w, s) in enumerate(zip(weights, scores)):
        if s.shape != w.shape:
            raise ValueError(f"scores[{i}] has shape {tuple(s.shape)} but weights[{i}] has {tuple(w.shape)}")
    masks = _schema.bool_list("masks", masks, weights, f"weights has {len(weights)}", "weights[{i}]")
    device = _schema.common_device(("weights", weights), ("scores", scores), ("masks", masks))
    _schema.check_has_values(("weights", weights), ("scores", scores), ("masks", masks))
    return weights, scores, masks, device


def out_arg(out, weights, scores, masks):
    """``out``: bool, the weights' shapes and device; it may be exactly ``masks`` (the in-place
    update), and shares memory with nothing else of the call."""
    out = _schema.check_out(out, weights)
    if out is not None:
        others = [(f"masks[{i}]", m) for i, m in enumerate(masks) if not _schema.same_view(m, out[i])]
        _schema.check_no_overlap(_schema.named("out", out),
                                 _schema.named("weights", weights) + _schema.named("scores", scores) + others,
                                 " (only out[i] may be exactly masks[i], the in-place update)")
    return out


def _count(value, name: str) -> int:
    value = integer(value, name)
    if value < 0:
        raise ValueError(f"{name}={value} is negative")
    return value


def _count_list(values, name: str, count: int) -> list[int]:
    if isinstance(values, torch.Tensor):
        if values.dim() != 1:
            raise ValueError(f"{name} must be a sequence or a 1-D tensor with one count per tensor, "
                             f"got a tensor of shape {tuple(values.shape)}")
        values = list(values.unbind(0)) if values.numel() else []
    elif not isinstance(values, Sequence) or isinstance(values, str):
        raise TypeError(f"{name} must be a list or tuple with one count per tensor with segment='tensor', "
                        f"got {type(values).__name__}")
    values = list(values)
    if len(values) != count:
        raise ValueError(f"{name} has {len(values)} entries but weights has {count} tensors")
    return [_count(v, f"{name}[{i}]") for i, v in enumerate(values)]


def counts(masks: list[torch.Tensor], drops, grows, segment, device: torch.device) -> Counts:
    """Check ``segment``, ``drops`` and ``grows`` and turn them into the kernels' counts. The
    active counts are read here (one wait for the device); a count that does not fit the masks is
    returned as ``error``, raised by the caller after the kernels' NaN check."""
    if segment not in SEGMENTS:
        raise ValueError(f"segment must be 'tensor' or 'global', got {segment!r}")
    if segment == "tensor":
        drops = _count_list(drops, "drops", len(masks))
        grows = drops if grows is None else _count_list(grows, "grows", len(masks))
        where = [f"masks[{i}]" for i in range(len(masks))]
        active = [int(n) for n in torch.stack([m.count_nonzero() for m in masks]).tolist()] if masks else []
        sizes = [m.numel() for m in masks]
    else:
        drops = [_count(drops, "drops")]
        grows = drops if grows is None else [_count(grows, "grows")]
        where = ["masks"]
        active = [int(torch.stack([m.count_nonzero() for m in masks]).sum()) if masks else 0]
        sizes = [sum(m.numel() for m in masks)]
    error = None
    for name, d, g, a, n in zip(where, drops, grows, active, sizes):
        if d > a:
            error = f"drops={d} but {name} holds only {a} active weights; an update cannot drop more than are active"
        elif g > n - (a - d):
            error = (f"grows={g} but only {n - (a - d)} weights of {name} are inactive after dropping {d}; "
                     "an update cannot grow more than that")
        if error:
            break
    keeps = [0] * len(active) if error else [a - d for a, d in zip(active, drops)]
    both = torch.tensor(keeps + ([0] * len(grows) if error else grows), dtype=torch.int64).to(device)
    return Counts(both[:len(keeps)], both[len(keeps):], error)
