"""The segments of a segmented selection: the ``segment`` argument, the per-segment k, and the
kernels' form of both.

A kernel sees one form only (``library``: ``segmented_topk_masks``): with ``m == 0`` each input
cut into ``ks[i].numel()`` consecutive equal segments (row-major), segment r keeping ``ks[i][r]``;
with ``m > 0`` every m consecutive elements keeping n. ``segment="tensor"`` is one segment per
tensor and ``"row"`` one per row of the tensor viewed as (dim 0, rest), so both are the first form;
N:M is the second, which carries no per-group k (it would cost more memory traffic than the masks).
"""
from __future__ import annotations

import dataclasses
import math
import operator
from typing import Sequence

import torch

MAX_M = 32  # N:M groups are selected inside a thread: m^2 compares, registers for m keys (ops.MAX_NM_M)

SEGMENT_HELP = "segment must be 'tensor', 'row' or ('nm', n, m)"


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the kernels receive: ``ks`` (one int64 tensor of per-segment k per input, on the inputs'
    device; empty for N:M), ``n`` and ``m`` (``m == 0``: not N:M)."""

    ks: list
    n: int
    m: int
    kind: str = "tensor"  # "tensor" | "row" | "nm": only for messages

    def lengths(self, tensors) -> list[int]:
        """Each input's segment length (0 for an input without segments)."""
        if self.m:
            return [self.m] * len(tensors)
        return [t.numel() // k.numel() if k.numel() else 0 for t, k in zip(tensors, self.ks)]

    def zero(self) -> "Plan":
        """The same segments keeping nothing: the call that only looks for NaN."""
        if self.m:
            return Plan([], 0, self.m, self.kind)
        return Plan([torch.zeros_like(k) for k in self.ks], 0, 0, self.kind)


def parse_segment(segment) -> tuple[str, int, int]:
    """``("tensor" | "row", 0, 0)`` or ``("nm", n, m)``."""
    if isinstance(segment, str):
        if segment in ("tensor", "row"):
            return segment, 0, 0
        raise ValueError(f"{SEGMENT_HELP}, got {segment!r}")
    if not isinstance(segment, (tuple, list)) or len(segment) != 3 or segment[0] != "nm":
        raise ValueError(f"{SEGMENT_HELP}, got {segment!r}")
    n, m = (integer(v, name) for v, name in ((segment[1], "n"), (segment[2], "m")))
    if not 1 <= m <= MAX_M:
        raise ValueError(f"segment ('nm', n, m) needs 1 <= m <= {MAX_M}, got m={m}")
    if not 0 <= n <= m:
        raise ValueError(f"segment ('nm', n, m) needs 0 <= n <= m, got n={n}, m={m}")
    return "nm", n, m


def integer(value, what: str) -> int:
    if isinstance(value, bool) or isinstance(value, float):
        raise TypeError(f"{what} must be an integer, got {type(value).__name__} {value!r}")
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"{what} must be an integer, got a tensor of shape {tuple(value.shape)} and dtype {value.dtype}")
        return int(value.item())
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an integer, got {type(value).__name__} {value!r}") from None


def rows(t: torch.Tensor) -> tuple[int, int]:
    """(rows, row length) of ``t`` viewed as (dim 0, rest); a 0-dim tensor is one row of one."""
    if t.dim() == 0:
        return 1, 1
    return t.shape[0], math.prod(t.shape[1:])


def _per_row(k, i: int, name: str, n_rows: int, length: int) -> torch.Tensor:
    """One row's k for every row of ``name[i]``, as an int64 CPU tensor, checked."""
    if isinstance(k, torch.Tensor) and k.dim() == 1:
        if k.is_floating_point() or k.is_complex() or k.dtype == torch.bool:
            raise TypeError(f"ks[{i}] must hold integers, got dtype {k.dtype}")
        if k.numel() != n_rows:
            raise ValueError(f"ks[{i}] has {k.numel()} entries but {name}[{i}] has {n_rows} rows "
                             "(dim 0 of the tensor)")
        k = k.detach().to("cpu", torch.int64)
        if k.numel():
            bad = ((k < 0) | (k > length)).nonzero()
            if bad.numel():
                r = int(bad[0, 0])
                raise ValueError(f"ks[{i}][{r}]={int(k[r])} is outside [0, {length}]: the rows of {name}[{i}] "
                                 f"hold {length} elements")
        return k
    value = integer(k, f"ks[{i}]")
    if not 0 <= value <= length:
        raise ValueError(f"ks[{i}]={value} is outside [0, {length}]: the rows of {name}[{i}] hold {length} elements")
    return torch.full((n_rows,), value, dtype=torch.int64)


def _per_tensor(k, i: int, name: str, numel: int) -> torch.Tensor:
    value = integer(k, f"ks[{i}]")
    if not 0 <= value <= numel:
        raise ValueError(f"ks[{i}]={value} is outside [0, {numel}]: {name}[{i}] holds {numel} elements")
    return torch.tensor([value], dtype=torch.int64)


def _ks_list(ks, count: int, name: str) -> list:
    if isinstance(ks, torch.Tensor):
        if ks.dim() != 1:
            raise ValueError(f"ks must be a sequence or a 1-D tensor with one entry per tensor of {name}, "
                             f"got a tensor of shape {tuple(ks.shape)}")
        ks = list(ks.unbind(0)) if ks.numel() else []
    elif not isinstance(ks, Sequence) or isinstance(ks, str):
        raise TypeError(f"ks must be a list or tuple with one entry per tensor of {name}, got {type(ks).__name__}")
    ks = list(ks)
    if len(ks) != count:
        raise ValueError(f"ks has {len(ks)} entries but {name} has {count} tensors")
    return ks


def plan(tensors: list[torch.Tensor], ks, segment, name: str, device: torch.device) -> Plan:
    """Check ``segment`` and ``ks`` against ``tensors`` (named ``name`` in errors) and return the
    kernels' form, the per-segment k moved to ``device`` in one copy."""
    kind, n, m = parse_segment(segment)
    if kind == "nm":
        if ks is not None:
            raise ValueError("ks must be None with segment=('nm', n, m): every group of m keeps n")
        for i, t in enumerate(tensors):
            _, length = rows(t)
            if length % m:
                raise ValueError(f"{name}[{i}] has rows of {length} elements (shape {tuple(t.shape)} viewed as "
                                 f"(dim 0, rest)), not a multiple of m={m}; N:M groups run along the rows")
        return Plan([], n, m, kind)
    if ks is None:
        raise ValueError(f"ks is required with segment={kind!r}: one k per tensor of {name}")
    ks = _ks_list(ks, len(tensors), name)
    if kind == "tensor":
        per = [_per_tensor(k, i, name, t.numel()) for i, (k, t) in enumerate(zip(ks, tensors))]
    else:
        per = [_per_row(k, i, name, *rows(t)) for i, (k, t) in enumerate(zip(ks, tensors))]
    sizes = [p.numel() for p in per]
    flat = torch.cat(per) if per else torch.zeros(0, dtype=torch.int64)
    return Plan(list(flat.to(device).split(sizes)), 0, 0, kind)


def _competing_counts(c: torch.Tensor, length: int) -> torch.Tensor:
    return c.reshape(-1, length).sum(1) if length else c.new_zeros(0, dtype=torch.int64)


def short_segment(competing: list[torch.Tensor], p: Plan, name: str) -> str | None:
    """The error for the first segment whose k exceeds its competing (surviving) elements, or
    None. Iter SNIP: only weights kept in prev_masks compete."""
    rule = ("with resurrect=False only weights kept in prev_masks compete, so a segment's k may not "
            "exceed the number kept in it")
    for i, (c, length) in enumerate(zip(competing, p.lengths(competing))):
        if c.numel() == 0:
            continue
        counts = _competing_counts(c, length)
        need = torch.full_like(counts, p.n) if p.m else p.ks[i].to(counts.device)
        short = (counts < need).nonzero()
        if short.numel():
            r = int(short[0, 0])
            where = {"nm": f"group {r} (flat elements {r * length}..{r * length + length - 1})",
                     "row": f"row {r}", "tensor": ""}[p.kind]
            place = f"{name}[{i}]" + (f", {where}," if where else "")
            return (f"{place} must keep {int(need[r])} but prev_masks[{i}] keeps only {int(counts[r])} "
                    f"weights there; {rule}")
    return None
