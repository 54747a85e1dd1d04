"""Host side of a launch: the per-call tables that let one launch cover many tensors.

Everything the kernels need (the selection state, NaN flags, per-tensor rows, per-program rows)
is packed into one int64 buffer and sent to the device in one copy. Inputs that are not
contiguous (or not 16-byte aligned) are copied first: tie order is the logical row-major order,
and aligned contiguous tensors let the kernels vectorise.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

from .layout import COL_NUMEL, COL_PID0, NCOLS

_NCOLS = NCOLS.value


def ready(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when the kernels can read it in place, else a contiguous aligned copy."""
    if not t.is_contiguous():
        t = t.contiguous()
    if t.data_ptr() % 16:
        t = t.clone()
    return t


def as_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.dtype == torch.bool else t


def on_device_of(tensors):
    """Launch on the tensors' GPU, which need not be the current one."""
    t = tensors[0]
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def to_device(a: np.ndarray, device: torch.device) -> torch.Tensor:
    t = torch.from_numpy(a)
    if device.type == "cuda":
        # Through pinned memory the copy is asynchronous; a pageable copy would wait for all the
        # work queued before it (the caller's backward pass, say).
        return t.pin_memory().to(device, non_blocking=True)
    return t


@dataclass
class Launch:
    """One launch over the tensors of one dtype combination: a program per block."""
    tensors: tuple           # the group's first tensors: give the kernel its element types
    table: torch.Tensor      # one row per tensor (layout.py)
    rows: torch.Tensor       # per program: its tensor's row in `table`
    nblocks: int


def pack(head: np.ndarray, groups: list, device: torch.device) -> tuple[torch.Tensor, list[Launch]]:
    """Sends ``head`` (int64 slots the kernels share) and every group's tables in one copy.

    ``groups``: per launch, (its element-type tensors, [(numel, programs, {column: value}), ...]),
    one entry per non-empty tensor, which ``programs`` consecutive programs handle; COL_NUMEL and
    COL_PID0 are filled in here. Returns the device copy of ``head`` and the launches, in the
    order given."""
    parts, spans, at = [head], [], head.size
    for tensors, entries in groups:
        nprog = np.array([p for _, p, _ in entries], dtype=np.int64)
        table = np.zeros((len(entries), _NCOLS), dtype=np.int64)
        table[:, COL_NUMEL.value] = [n for n, _, _ in entries]
        table[1:, COL_PID0.value] = np.cumsum(nprog)[:-1]
        for r, (_, _, cols) in enumerate(entries):
            for col, value in cols.items():
                table[r, col.value] = value
        rows = np.repeat(np.arange(len(entries), dtype=np.int64), nprog)
        parts += [table.reshape(-1), rows]
        spans.append((tensors, at, at + table.size, at + table.size + rows.size))
        at += table.size + rows.size
    dev = to_device(np.concatenate(parts), device)
    return dev[:head.size], [Launch(t, dev[a:b], dev[b:c], c - b) for t, a, b, c in spans]


def blocks(n: int, block: int) -> int:
    """Programs of ``block`` elements that cover ``n``."""
    return -(-n // block)


def tile_width(n: int) -> int:
    """The width of a register tile holding ``n`` elements: a power of two, at least 2."""
    return max(2, 1 << (n - 1).bit_length())


@contextlib.contextmanager
def writing_masks(tensors, out: list[torch.Tensor]):
    """Launches on ``tensors``' device that write the bool masks ``out``: yields their byte views.
    A mask that is not contiguous and 16-byte aligned is written through a copy, copied back on
    leaving."""
    views, pending = [], []
    for o in out:
        w = o
        if not o.is_contiguous() or o.data_ptr() % 16:
            # A copy of the current contents: after a NaN, copying it back is a no-op.
            w = o.clone(memory_format=torch.contiguous_format)
            pending.append((o, w))
        views.append(as_bytes(w))
    with on_device_of(tensors):
        yield views
    for o, w in pending:
        o.copy_(w)


def nan_index(flags: torch.Tensor) -> torch.Tensor:
    """The op library's NaN report from per-tensor flags: the first flagged tensor, or -1 (on the
    device)."""
    hit = flags != 0
    return torch.where(hit.any(), hit.to(torch.int64).argmax(), -1)
