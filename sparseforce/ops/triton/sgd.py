"""Masked SGD with momentum: one fused multi-tensor step (kernel and its launcher).

Per element, exactly torch.optim.SGD on a masked gradient (reference.masked_sgd_):
    d_p = g + wd * p;  d_p = 0 where pruned
    buf = d_p (first step) | momentum * buf + (1 - dampening) * d_p;  buf = 0 where pruned
    d_p = d_p + momentum * buf (nesterov) | buf
    p = p - lr * d_p;  p = 0 where pruned
in one read of p, g, buf, mask and one write of p, buf. Arithmetic is done in float32 (float64
for float64 parameters) and rounded once on store, like torch's fused SGD; for fp16/bf16
parameters that can differ from the reference's op-by-op half-precision rounding.
"""
from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from .config import config
from .device import device_function
from .floats import narrow, widen
from .layout import (SGD_BUF, SGD_FRESH, SGD_G, SGD_HAS_MASK, SGD_MASK, SGD_NCOLS, SGD_NUMEL, SGD_P,
                     SGD_PID0)
from .plan import as_bytes, ready, to_device


@device_function
def sgd_block(p, d, buf, alive, hyper, fresh, HAS_MOMENTUM: tl.constexpr, NESTEROV: tl.constexpr,
              HAS_WD: tl.constexpr):
    """The update of one block in the compute dtype; returns (p, buf)."""
    if HAS_WD:
        d = d + tl.load(hyper + 3).to(p.dtype) * p
    # Masked after weight decay, so a nonzero pruned weight cannot leak into momentum.
    d = tl.where(alive, d, 0)
    if HAS_MOMENTUM:
        momentum = tl.load(hyper + 1).to(p.dtype)
        if fresh != 0:
            buf = d
        else:
            buf = tl.where(alive, momentum * buf + tl.load(hyper + 2).to(p.dtype) * d, 0)
        if NESTEROV:
            d = d + momentum * buf
        else:
            d = buf
    return tl.where(alive, p - tl.load(hyper + 0).to(p.dtype) * d, 0), buf


@triton.jit
def masked_sgd_kernel(table, rows, hyper, P, G, B,
                      HAS_MOMENTUM: tl.constexpr, NESTEROV: tl.constexpr, HAS_WD: tl.constexpr,
                      F64: tl.constexpr, BLOCK: tl.constexpr):
    # hyper: float64 [lr, momentum, 1 - dampening, weight_decay], read from memory because
    # Triton passes Python float arguments as float32, which would round them for fp64 params.
    pid = tl.program_id(0)
    row = tl.load(rows + pid) * SGD_NCOLS
    local = pid - tl.load(table + row + SGD_PID0)
    offs = local * BLOCK + tl.arange(0, BLOCK)
    numel = tl.load(table + row + SGD_NUMEL)
    valid = offs < numel
    if F64:
        ct = tl.float64
    else:
        ct = tl.float32
    p_ptr = tl.multiple_of(tl.load(table + row + SGD_P).to(tl.pointer_type(P.dtype.element_ty)), 16)
    g_ptr = tl.multiple_of(tl.load(table + row + SGD_G).to(tl.pointer_type(G.dtype.element_ty)), 16)
    b_ptr = tl.multiple_of(tl.load(table + row + SGD_BUF).to(tl.pointer_type(B.dtype.element_ty)), 16)
    m_ptr = tl.multiple_of(tl.load(table + row + SGD_MASK).to(tl.pointer_type(tl.uint8)), 16)
    has_mask = tl.load(table + row + SGD_HAS_MASK) != 0
    fresh = tl.load(table + row + SGD_FRESH)  # 1: start the buffer at d_p
    # Only the tail block is masked (see keys.load_block); unmasked tensors have no mask address.
    if (local + 1) * BLOCK <= numel:
        p = widen(tl.load(p_ptr + offs), ct)
        g = widen(tl.load(g_ptr + offs), ct)
        alive = valid
        if has_mask:
            alive = tl.load(m_ptr + offs) != 0
        buf = p
        if HAS_MOMENTUM:
            if fresh == 0:
                buf = widen(tl.load(b_ptr + offs), ct)
        p, buf = sgd_block(p, g, buf, alive, hyper, fresh, HAS_MOMENTUM, NESTEROV, HAS_WD)
        if HAS_MOMENTUM:
            tl.store(b_ptr + offs, narrow(buf, B.dtype.element_ty))
        tl.store(p_ptr + offs, narrow(p, P.dtype.element_ty))
    else:
        p = widen(tl.load(p_ptr + offs, mask=valid, other=0), ct)
        g = widen(tl.load(g_ptr + offs, mask=valid, other=0), ct)
        alive = valid
        if has_mask:
            alive = tl.load(m_ptr + offs, mask=valid, other=0) != 0
        buf = p
        if HAS_MOMENTUM:
            if fresh == 0:
                buf = widen(tl.load(b_ptr + offs, mask=valid, other=0), ct)
        p, buf = sgd_block(p, g, buf, alive, hyper, fresh, HAS_MOMENTUM, NESTEROV, HAS_WD)
        if HAS_MOMENTUM:
            tl.store(b_ptr + offs, narrow(buf, B.dtype.element_ty), mask=valid)
        tl.store(p_ptr + offs, narrow(p, P.dtype.element_ty), mask=valid)


def masked_sgd_(params, grads, bufs, masks, fresh, lr, momentum, dampening, weight_decay, nesterov):
    """In place on ``params`` and ``bufs`` (``bufs`` empty when momentum == 0; ``fresh[i]``: bufs[i]
    holds no state yet). Tensors the kernel cannot update in place are staged through copies."""
    has_momentum = momentum != 0
    block = config.block
    entries, write_back = [], []
    for i, p in enumerate(params):
        n = p.numel()
        if n == 0:
            continue
        pw = ready(p)
        if pw is not p:
            write_back.append((p, pw))
        b = bw = None
        if has_momentum:
            b = bufs[i]
            bw = ready(b) if not fresh[i] else (b if b.is_contiguous() and b.data_ptr() % 16 == 0
                                                else torch.empty_like(b, memory_format=torch.contiguous_format))
            if bw is not b:
                write_back.append((b, bw))
        m = masks[i]
        mw = None if m is None else as_bytes(ready(m))
        entries.append(((pw.dtype, grads[i].dtype, None if bw is None else bw.dtype),
                        pw, ready(grads[i]), bw, mw, n, bool(has_momentum and fresh[i])))
    if not entries:
        return
    device = entries[0][1].device
    hyper = to_device(np.array([lr, momentum, 1.0 - dampening, weight_decay], dtype=np.float64), device)
    groups = {}
    for e in entries:
        groups.setdefault(e[0], []).append(e)
    keep = []
    for key, group in groups.items():
        nblk = [-(-e[5] // block) for e in group]
        table = np.zeros((len(group), SGD_NCOLS.value), dtype=np.int64)
        pid0 = np.concatenate([[0], np.cumsum(nblk)[:-1]])
        for r, (_, pw, gw, bw, mw, n, is_fresh) in enumerate(group):
            table[r, SGD_P.value] = pw.data_ptr()
            table[r, SGD_G.value] = gw.data_ptr()
            table[r, SGD_BUF.value] = 0 if bw is None else bw.data_ptr()
            table[r, SGD_MASK.value] = 0 if mw is None else mw.data_ptr()
            table[r, SGD_NUMEL.value] = n
            table[r, SGD_PID0.value] = pid0[r]
            table[r, SGD_FRESH.value] = int(is_fresh)
            table[r, SGD_HAS_MASK.value] = int(mw is not None)
            keep.append(gw)
        rows = np.repeat(np.arange(len(group), dtype=np.int64), nblk)
        dev = to_device(np.concatenate([table.reshape(-1), rows]), device)
        keep.append(dev)
        _, p0, g0, b0 = group[0][:4]
        masked_sgd_kernel[(int(sum(nblk)),)](
            dev[:table.size], dev[table.size:], hyper, p0, g0, p0 if b0 is None else b0,
            HAS_MOMENTUM=has_momentum, NESTEROV=bool(nesterov), HAS_WD=weight_decay != 0,
            F64=p0.dtype == torch.float64, BLOCK=block, num_warps=config.num_warps)
    for dst, src in write_back:
        dst.copy_(src)
