"""Host side of a selection: the per-call tables that let one launch cover many tensors.

Everything the kernels need (state, NaN flags, per-tensor rows, per-program rows) is packed into
one int64 buffer and sent to the device in one copy. Inputs that are not contiguous (or not
16-byte aligned) are copied first: tie order is the logical row-major order, and aligned
contiguous tensors let the kernels vectorise.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .config import config
from .layout import (COL_G, COL_GBLOCK, COL_INDEX, COL_NUMEL, COL_OUT, COL_PID0, COL_PREV, COL_X,
                     NCOLS, NSTATE, ST_KREM, ST_PREFIX, ST_TIES)

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


def to_device(a: np.ndarray, device: torch.device) -> torch.Tensor:
    t = torch.from_numpy(a)
    if device.type == "cuda":
        # Through pinned memory the copy is asynchronous; a pageable copy would wait for all the
        # work queued before it (the caller's backward pass, say).
        return t.pin_memory().to(device, non_blocking=True)
    return t


@dataclass
class Group:
    """Tensors of one dtype combination: one launch per pass."""
    x: torch.Tensor          # first tensor of the group: gives the kernel its element types
    g: torch.Tensor
    table: torch.Tensor = None
    rows: torch.Tensor = None
    nblocks: int = 0


@dataclass
class Plan:
    groups: list[Group]
    state: torch.Tensor      # int64[NSTATE]
    nan_flags: torch.Tensor  # int64[len(caller's list)]
    nblocks: int             # blocks over all tensors: the tie-count length
    block: int
    keep_alive: list = field(default_factory=list)  # copies whose addresses are in the tables


def make_plan(xs, gs, prevs, outs, k, key_bits, device, prefix=0) -> Plan:
    """``xs``/``gs``/``prevs``/``outs``: per-tensor lists in the caller's order (gs/prevs entries
    may be None); ``outs`` already writable in place. Empty tensors get no rows. ``prefix``: the
    k-th key's high bits already known (key_histogram's filter, a key-width unsigned integer)."""
    block = config.block
    keep = []
    entries = []  # (group key, index, x, g, prev, out, numel)
    for i, x in enumerate(xs):
        n = x.numel()
        if n == 0:
            continue
        x = ready(x)
        g = ready(gs[i]) if gs is not None else None
        p = as_bytes(ready(prevs[i])) if prevs is not None else None
        o = outs[i] if outs is not None else None
        keep += [x, g, p]
        entries.append(((x.dtype, None if g is None else g.dtype), i, x, g, p, o, n))

    order = sorted(range(len(entries)), key=lambda e: str(entries[e][0]))  # stable within a group
    gblock = np.zeros(len(entries), dtype=np.int64)
    nblk = np.array([-(-e[6] // block) for e in entries], dtype=np.int64)
    if len(entries):
        gblock[1:] = np.cumsum(nblk)[:-1]  # global order = the caller's order
    total_blocks = int(nblk.sum())

    nstate = NSTATE.value
    head = nstate + len(xs)
    tables = np.zeros((len(entries), _NCOLS), dtype=np.int64)
    rows = np.zeros(total_blocks, dtype=np.int64)
    groups, spans = [], []
    r = b = 0
    while r < len(order):
        gkey = entries[order[r]][0]
        first_r, first_b, pid0 = r, b, 0
        while r < len(order) and entries[order[r]][0] == gkey:
            key_, i, x, g, p, o, n = entries[order[r]]
            e = order[r]
            tables[r, COL_X.value] = x.data_ptr()
            tables[r, COL_G.value] = 0 if g is None else g.data_ptr()
            tables[r, COL_PREV.value] = 0 if p is None else p.data_ptr()
            tables[r, COL_OUT.value] = 0 if o is None else o.data_ptr()
            tables[r, COL_NUMEL.value] = n
            tables[r, COL_PID0.value] = pid0
            tables[r, COL_GBLOCK.value] = gblock[e]
            tables[r, COL_INDEX.value] = i
            rows[b: b + nblk[e]] = r - first_r
            b += nblk[e]
            pid0 += nblk[e]
            r += 1
        x0, g0 = entries[order[first_r]][2], entries[order[first_r]][3]
        groups.append(Group(x0, x0 if g0 is None else g0))
        spans.append((first_r, r, first_b, b))

    buf = np.zeros(head + tables.size + rows.size, dtype=np.int64)
    buf[ST_PREFIX.value] = np.array(prefix, dtype=np.uint64).view(np.int64)
    buf[ST_KREM.value] = 0 if k is None else k  # None: no selection (key_histogram)
    if k == 0:
        # Nothing is kept: a k-th key no key exceeds, and none of its ties (k_rem = 0, and
        # ST_TIES != k_rem so that tie ranks are checked).
        buf[ST_PREFIX.value] = -1  # all ones
        buf[ST_TIES.value] = -1
    buf[head: head + tables.size] = tables.reshape(-1)
    buf[head + tables.size:] = rows
    dev = to_device(buf, device)
    t0, r0 = head, head + tables.size
    for grp, (ra, rb, ba, bb) in zip(groups, spans):
        grp.table = dev[t0 + ra * _NCOLS: t0 + rb * _NCOLS]
        grp.rows = dev[r0 + ba: r0 + bb]
        grp.nblocks = bb - ba
    return Plan(groups, dev[:nstate], dev[nstate:head], total_blocks, block, keep)


def radix_schedule(key_bits: int):
    """(shift, bits, dense) per pass, most significant digit first."""
    first = min(config.first_digit_bits, key_bits)
    passes = [(key_bits - first, first, True)]
    low = key_bits - first
    while low > 0:
        bits = min(config.digit_bits, low)
        low -= bits
        passes.append((low, bits, config.dense_later_digits))
    return passes
