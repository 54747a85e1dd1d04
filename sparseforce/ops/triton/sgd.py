"""The masked SGD op on Triton, ``sparseforce_triton::masked_sgd_`` (importing this module
registers its kernel): one fused multi-tensor step.

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

from .blocks import load_block, program_block, store_block
from .config import config
from .device import device_function
from .floats import narrow, widen
from .layout import SGD_BUF, SGD_FRESH, SGD_G, SGD_HAS_MASK, SGD_MASK, SGD_P
from .plan import as_bytes, blocks, on_device_of, pack, ready, to_device
from .register import kernel


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
    row, local, offs, numel, valid, full = program_block(table, rows, BLOCK)
    if F64:
        ct = tl.float64
    else:
        ct = tl.float32
    p_ptr = tl.multiple_of(tl.load(table + row + SGD_P).to(tl.pointer_type(P.dtype.element_ty)), 16)
    g_ptr = tl.multiple_of(tl.load(table + row + SGD_G).to(tl.pointer_type(G.dtype.element_ty)), 16)
    b_ptr = tl.multiple_of(tl.load(table + row + SGD_BUF).to(tl.pointer_type(B.dtype.element_ty)), 16)
    fresh = tl.load(table + row + SGD_FRESH)  # 1: start the buffer at d_p
    p = widen(load_block(p_ptr, offs, valid, full), ct)
    g = widen(load_block(g_ptr, offs, valid, full), ct)
    alive = valid
    if tl.load(table + row + SGD_HAS_MASK) != 0:  # unmasked tensors have no mask address
        m_ptr = tl.multiple_of(tl.load(table + row + SGD_MASK).to(tl.pointer_type(tl.uint8)), 16)
        alive = load_block(m_ptr, offs, valid, full) != 0
    buf = p
    if HAS_MOMENTUM:
        if fresh == 0:
            buf = widen(load_block(b_ptr, offs, valid, full), ct)
    p, buf = sgd_block(p, g, buf, alive, hyper, fresh, HAS_MOMENTUM, NESTEROV, HAS_WD)
    if HAS_MOMENTUM:
        store_block(b_ptr, offs, narrow(buf, B.dtype.element_ty), valid, full)
    store_block(p_ptr, offs, narrow(p, P.dtype.element_ty), valid, full)


@kernel("masked_sgd_")
def masked_sgd_(params, grads, momentum_buffers, masks, lr, momentum, dampening, weight_decay, nesterov, fresh):
    """In place on ``params`` and ``momentum_buffers`` (empty when momentum == 0; ``fresh[i]``:
    the buffer holds no state yet). Tensors the kernel cannot update in place are staged through
    copies."""
    has_momentum = momentum != 0
    groups, write_back, keep = {}, [], []
    for i, p in enumerate(params):
        n = p.numel()
        if n == 0:
            continue
        pw = ready(p)
        if pw is not p:
            write_back.append((p, pw))
        b = bw = None
        if has_momentum:
            b = momentum_buffers[i]
            bw = ready(b) if not fresh[i] else (b if b.is_contiguous() and b.data_ptr() % 16 == 0
                                                else torch.empty_like(b, memory_format=torch.contiguous_format))
            if bw is not b:
                write_back.append((b, bw))
        gw = ready(grads[i])
        mw = None if masks[i] is None else as_bytes(ready(masks[i]))
        keep += [gw, mw]
        cols = {SGD_P: pw.data_ptr(), SGD_G: gw.data_ptr(), SGD_BUF: 0 if bw is None else bw.data_ptr(),
                SGD_MASK: 0 if mw is None else mw.data_ptr(), SGD_FRESH: int(has_momentum and fresh[i]),
                SGD_HAS_MASK: int(mw is not None)}
        key = (pw.dtype, gw.dtype, None if bw is None else bw.dtype)
        entry = (n, blocks(n, config.block), cols)
        groups.setdefault(key, ((pw, gw, pw if bw is None else bw), []))[1].append(entry)
    if not groups:
        return
    device = params[0].device
    with on_device_of(params):
        hyper = to_device(np.array([lr, momentum, 1.0 - dampening, weight_decay], dtype=np.float64), device)
        _, launches = pack(np.zeros(0, dtype=np.int64), list(groups.values()), device)
        for grp in launches:
            p0, g0, b0 = grp.tensors
            masked_sgd_kernel[(grp.nblocks,)](
                grp.table, grp.rows, hyper, p0, g0, b0, HAS_MOMENTUM=has_momentum, NESTEROV=bool(nesterov),
                HAS_WD=weight_decay != 0, F64=p0.dtype == torch.float64, BLOCK=config.block,
                num_warps=config.num_warps)
    for dst, src in write_back:
        dst.copy_(src)
