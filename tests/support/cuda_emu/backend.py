"""The emulated CUDA backend: csrc/cuda's kernels and host orchestration, run on CPU tensors.

A shared library built from ``csrc/cuda/*.cu`` + ``csrc/cuda/host.cpp`` + ``tests/support/cuda_emu/abi.cpp``
+ the emulator runtime (compiled as host C++ with g++) is loaded through ctypes. The functions
here are kernels with the op library's signatures (``sparseforce/ops/library.py``), and do in
Python what the torch layer ``csrc/cuda/ops_cuda.cpp`` does in C++: contiguous copies, dtype
promotion, the NaN index returned rather than raised, and the mixed-dtype SGD left to the
reference as the ``cpp`` backend does. One deviation, for the checks: the masks, a fresh momentum
buffer and the value are written into outputs this backend allocates (filled with the emulator's
garbage, so unwritten bytes show up, and between guard bytes checked after every launch of the
op, as the workspace is), then copied into the caller's tensors, where ops_cuda.cpp writes the
caller's contiguous tensors directly.

Use ``Backend(path)`` or ``load(path=None)`` (path from ``$SFEMU_LIB``); ``Backend.kernels()``
maps op names to the bound functions, for ``sparseforce.ops.register_backend``.
"""
from __future__ import annotations

import ctypes
import os

import torch

from sparseforce.ops import reference as _reference
from sparseforce.ops._schema import promoted_dtype

# Guard bytes each side of an output this backend allocates (a multiple of 16 keeps the
# alignment the kernels' vector stores test for).
GUARD_BYTES = 64

# csrc/cuda/launch.h: DType
DTYPE_CODE = {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2, torch.float64: 3}
HISTOGRAM_BINS = 1 << 16

# csrc/cuda/host.h: Status
OK, BAD_K, NAN, FEW_COMPETING, LAUNCH_FAILED, UNRESOLVED, BAD_INPUT = range(7)


class Result(ctypes.Structure):
    """csrc/cuda/host.h's Result."""
    _fields_ = [("status", ctypes.c_int32), ("cuda_error", ctypes.c_int32), ("mode", ctypes.c_int32),
                ("index", ctypes.c_int32), ("n", ctypes.c_int64), ("competing", ctypes.c_int64),
                ("nan_index", ctypes.c_int64)]


class EmulatorError(RuntimeError):
    """The emulated launch or the host orchestration failed (not a user error)."""


_P = ctypes.c_void_p
_PP = ctypes.POINTER(ctypes.c_void_p)
_I64P = ctypes.POINTER(ctypes.c_int64)
_I32P = ctypes.POINTER(ctypes.c_int32)


def _ptrs(values):
    return (ctypes.c_void_p * max(1, len(values)))(*values)


def _i64(values):
    return (ctypes.c_int64 * max(1, len(values)))(*values)


def _i32(values):
    return (ctypes.c_int32 * max(1, len(values)))(*values)


def _ptr(t):
    return None if t is None or t.numel() == 0 else t.data_ptr()


class Backend:
    def __init__(self, path):
        self.path = str(path)
        lib = ctypes.CDLL(self.path)
        lib.sfemu_last_error.restype = ctypes.c_char_p
        lib.sfemu_last_error.argtypes = []
        lib.sfemu_set_garbage_seed.argtypes = [ctypes.c_uint64]
        lib.sfemu_set_garbage_seed.restype = None
        lib.sfemu_fill_garbage.argtypes = [_P, ctypes.c_uint64]
        lib.sfemu_fill_garbage.restype = None
        lib.sfemu_guard_add.argtypes = [_P, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_char_p]
        lib.sfemu_guard_add.restype = None
        lib.sfemu_guard_remove.argtypes = [_P]
        lib.sfemu_guard_remove.restype = ctypes.c_char_p
        lib.sfemu_result_size.restype = ctypes.c_int32
        lib.sfemu_select.argtypes = [ctypes.c_int32, _PP, _PP, _PP, _PP, _I64P, _I32P, ctypes.c_int64,
                                     ctypes.c_int32, ctypes.c_int32, ctypes.c_int32, _P, ctypes.POINTER(Result)]
        lib.sfemu_select.restype = ctypes.c_int32
        lib.sfemu_masked_sgd.argtypes = [ctypes.c_int32, _PP, _PP, _PP, _PP, _I64P, _I32P, _I32P, ctypes.c_double,
                                         ctypes.c_double, ctypes.c_double, ctypes.c_double, ctypes.c_int32,
                                         ctypes.POINTER(Result)]
        lib.sfemu_masked_sgd.restype = ctypes.c_int32
        lib.sfemu_radix_histogram.argtypes = [ctypes.c_int32, _PP, _PP, _PP, _I64P, _I32P, ctypes.c_int32,
                                              ctypes.c_int32, ctypes.c_int32, ctypes.c_uint64, _P,
                                              ctypes.POINTER(Result)]
        lib.sfemu_radix_histogram.restype = ctypes.c_int32
        lib.sfemu_segmented.argtypes = [ctypes.c_int32, _PP, _PP, _PP, _PP, _PP, _I64P, _I64P, _I64P, _I32P,
                                        ctypes.c_int32, _P, ctypes.POINTER(Result)]
        lib.sfemu_segmented.restype = ctypes.c_int32
        lib.sfemu_drop_grow.argtypes = [ctypes.c_int32, _PP, _PP, _PP, _PP, _I64P, _I32P, _I32P, _P, _P,
                                        ctypes.c_int32, _P, ctypes.POINTER(Result)]
        lib.sfemu_drop_grow.restype = ctypes.c_int32
        if lib.sfemu_result_size() != ctypes.sizeof(Result):
            raise EmulatorError(f"{self.path}: Result is {lib.sfemu_result_size()} bytes in C, "
                                f"{ctypes.sizeof(Result)} here")
        self.lib = lib
        self._guarded = []  # outputs allocated by the op that runs, between guard bytes

    # ---- plumbing

    def set_garbage_seed(self, seed: int) -> None:
        self.lib.sfemu_set_garbage_seed(seed & (2**64 - 1))

    def _garbage(self, t: torch.Tensor) -> torch.Tensor:
        """Fills a freshly allocated (contiguous) tensor with garbage bytes, as fresh device memory."""
        if t.numel():
            self.lib.sfemu_fill_garbage(t.data_ptr(), t.numel() * t.element_size())
        return t

    def _empty(self, shape, dtype) -> torch.Tensor:
        # What torch's caching allocator serves ops_cuda.cpp on a GPU: here inside a larger buffer
        # whose ends are guards, registered until the op returns (the tensor outlives them).
        size = torch.empty(shape, device="meta").shape  # an int or a sequence, as torch.empty takes
        nbytes = size.numel() * torch.empty((), dtype=dtype).element_size()
        buf = torch.empty(nbytes + 2 * GUARD_BYTES, dtype=torch.uint8)
        t = buf[GUARD_BYTES:GUARD_BYTES + nbytes].view(dtype).view(size)
        name = f"output #{len(self._guarded) + 1} of this call ({dtype}, shape {tuple(size)})"
        self.lib.sfemu_guard_add(buf.data_ptr() + GUARD_BYTES, nbytes, GUARD_BYTES, name.encode())
        self._guarded.append(buf)
        return self._garbage(t)

    def _guarded_op(self, fn):
        def run(*args, **kwargs):
            self._guarded = []
            try:
                return fn(*args, **kwargs)
            finally:
                reports = [self.lib.sfemu_guard_remove(b.data_ptr() + GUARD_BYTES).decode() for b in self._guarded]
                self._guarded = []
                bad = [r for r in reports if r]
                if bad:  # written by host code after the last launch's check
                    raise EmulatorError("sfemu: out-of-bounds write to an output: " + "; ".join(bad))
        return run

    def _call(self, fn, *args):
        res = Result()
        self.last = res  # the select's final mode, for the path tests
        code = fn(*args, ctypes.byref(res))
        if code < 0:
            raise EmulatorError(self.lib.sfemu_last_error().decode())
        if res.status == LAUNCH_FAILED:
            raise EmulatorError(f"sparseforce (cuda): launch failed with cudaError {res.cuda_error}")
        if res.status == UNRESOLVED:
            raise EmulatorError(f"sparseforce (cuda): the radix select ended unresolved (mode {res.mode})")
        if res.status == BAD_INPUT:
            raise EmulatorError(f"sparseforce (cuda): input {res.index} cannot be ranked as asked")
        return res

    @staticmethod
    def _check_written(masks):
        # A mask byte the kernels did not write still holds garbage (anything but 0 or 1).
        for i, m in enumerate(masks):
            if m.numel() and int(m.view(torch.uint8).max()) > 1:
                raise EmulatorError(f"out[{i}] has bytes the kernels never wrote")

    def _select(self, a, b, prev, out, k, rank, saliency, write_masks, value_out):
        n = len(a)
        return self._call(self.lib.sfemu_select, n, _ptrs([_ptr(t) for t in a]),
                          _ptrs([_ptr(t) for t in b]) if b is not None else None,
                          _ptrs([_ptr(t) for t in prev]) if prev is not None else None,
                          _ptrs([_ptr(t) for t in out]) if out is not None else None,
                          _i64([t.numel() for t in a]), _i32([DTYPE_CODE[t.dtype] for t in a]), k, DTYPE_CODE[rank],
                          int(saliency), int(write_masks), value_out)

    def _finish(self, res, k, out=None, masks=None) -> torch.Tensor:
        """The select's status in the op library's terms: the NaN index, or an error for what the
        op front rules out before calling (k outside [0, N], k above the survivors)."""
        if res.status == BAD_K:
            raise ValueError(f"k={k} is outside [0, {res.n}]: the inputs hold {res.n} elements in all")
        if res.status == FEW_COMPETING:
            raise ValueError(f"k={k} but prev_masks keep only {res.competing} weights; with resurrect=False only "
                             "weights kept in prev_masks compete, so k may not exceed that")
        if res.status == NAN:
            return torch.tensor(res.nan_index, dtype=torch.int64)
        if res.status != OK:
            raise EmulatorError(f"sparseforce (cuda): unexpected select status {res.status}")
        if out is not None:
            self._check_written(masks)
            for o, m in zip(out, masks):
                o.copy_(m)
        return torch.tensor(-1, dtype=torch.int64)

    # ---- ops_cuda.cpp's kernels, with the op library's signatures

    def topk_masks(self, scores, k, out):
        held = [s.contiguous() for s in scores]
        masks = [self._empty(t.shape, torch.bool) for t in scores]
        res = self._select(held, None, None, masks, k, promoted_dtype(scores), False, True, None)
        return self._finish(res, k, out, masks)

    def kth_largest(self, scores, k):
        held = [s.contiguous() for s in scores]
        value = self._empty((), promoted_dtype(scores))
        res = self._select(held, None, None, None, k, value.dtype, False, False, value.data_ptr())
        return value.clone(), self._finish(res, k)

    def saliency_topk_masks(self, weights, grads, k, competing, out):
        a, b, prev, any_double = [], [], [], False
        for i, (w, g) in enumerate(zip(weights, grads)):
            st = torch.promote_types(w.dtype, g.dtype)
            any_double |= st == torch.float64
            a.append(w.to(st).contiguous())
            b.append(g.to(st).contiguous())
            prev.append(competing[i].contiguous() if competing else None)
        masks = [self._empty(t.shape, torch.bool) for t in weights]
        res = self._select(a, b, prev, masks, k, torch.float64 if any_double else torch.float32, True, True, None)
        return self._finish(res, k, out, masks)

    def _segmented(self, a, b, prev, ks, n, m, out):
        """ops_cuda.cpp's segmented select over contiguous inputs (b, prev: None or one per input)."""
        count = len(a)
        rows = [t.numel() // m if m else ks[i].numel() for i, t in enumerate(a)]
        masks = [self._empty(t.shape, torch.bool) for t in a]
        nan = self._empty((), torch.int64)
        self._call(self.lib.sfemu_segmented, count, _ptrs([_ptr(t) for t in a]),
                   _ptrs([_ptr(t) for t in b]) if b is not None else None,
                   _ptrs([_ptr(t) for t in prev]) if prev is not None else None,
                   _ptrs([_ptr(t) for t in masks]), _ptrs([None] * count if m else [_ptr(k) for k in ks]),
                   _i64([n if m else 0] * count), _i64([t.numel() for t in a]), _i64(rows),
                   _i32([DTYPE_CODE[t.dtype] for t in a]), int(b is not None), nan.data_ptr())
        if int(nan) < 0:  # on NaN the masks are unspecified
            self._check_written(masks)
            for o, mask in zip(out, masks):
                o.copy_(mask)
        return nan.clone()

    def segmented_topk_masks(self, scores, ks, n, m, out):
        return self._segmented([s.contiguous() for s in scores], None, None, ks, n, m, out)

    def segmented_saliency_topk_masks(self, weights, grads, ks, n, m, competing, out):
        a, b = [], []
        for w, g in zip(weights, grads):
            st = torch.promote_types(w.dtype, g.dtype)  # |w*g| is formed in float32 unless one is float64
            a.append(w.to(st).contiguous())
            b.append(g.to(st).contiguous())
        prev = [c.contiguous() for c in competing] if competing else None
        return self._segmented(a, b, prev, ks, n, m, out)

    def drop_grow_masks(self, weights, scores, masks, keeps, grows, out):
        # ops_cuda.cpp's drop_grow_masks: contiguous inputs, keeps/grows read on the device.
        ws, ss, ms = [w.contiguous() for w in weights], [s.contiguous() for s in scores], [m.contiguous() for m in masks]
        new = [self._empty(t.shape, torch.bool) for t in weights]
        nan = self._empty((), torch.int64)
        keeps, grows = keeps.contiguous(), grows.contiguous()
        self._call(self.lib.sfemu_drop_grow, len(ws), _ptrs([_ptr(t) for t in ws]), _ptrs([_ptr(t) for t in ss]),
                   _ptrs([_ptr(t) for t in ms]), _ptrs([_ptr(t) for t in new]), _i64([t.numel() for t in ws]),
                   _i32([DTYPE_CODE[t.dtype] for t in ws]), _i32([DTYPE_CODE[t.dtype] for t in ss]),
                   keeps.data_ptr(), grows.data_ptr(), int(keeps.numel() == 1 and len(ws) > 1), nan.data_ptr())
        if int(nan) < 0:  # on NaN the masks are unspecified
            self._check_written(new)
            for o, mask in zip(out, new):
                o.copy_(mask)
        return nan.clone()

    def radix_histogram(self, a, grads, competing, rank_dtype, shift, prefix):
        saliency = bool(grads)
        xs, gs, prev = [], [], []
        for i, x in enumerate(a):
            if saliency:
                st = torch.promote_types(x.dtype, grads[i].dtype)
                st = torch.float64 if st == torch.float64 else torch.float32  # |w*g| is formed in float32
                xs.append(x.to(st).contiguous())
                gs.append(grads[i].to(st).contiguous())
            else:
                xs.append(x.contiguous())
            prev.append(competing[i].contiguous() if competing else None)
        out = self._empty(HISTOGRAM_BINS + 1, torch.int64)
        self._call(self.lib.sfemu_radix_histogram, len(xs), _ptrs([_ptr(t) for t in xs]),
                   _ptrs([_ptr(t) for t in gs]) if saliency else None,
                   _ptrs([_ptr(t) for t in prev]) if competing else None,
                   _i64([t.numel() for t in xs]), _i32([DTYPE_CODE[t.dtype] for t in xs]), DTYPE_CODE[rank_dtype],
                   int(saliency), shift, prefix, out.data_ptr())
        return out[:-1].clone(), out[-1].clone()

    @torch.no_grad()
    def masked_sgd_(self, params, grads, momentum_buffers, masks, lr, momentum, dampening, weight_decay, nesterov,
                    fresh):
        if any(g.dtype != p.dtype for p, g in zip(params, grads)):
            return _reference.masked_sgd_(params, grads, momentum_buffers, masks, lr, momentum, dampening,
                                          weight_decay, nesterov, fresh)
        # ops_cuda.cpp's masked_sgd_: non-contiguous params/buffers are updated through
        # contiguous copies, written back after; a fresh buffer (no state: any contents) here
        # through a guarded one.
        write_back, ps, gs, bs, ms = [], [], [], [], []
        for i, (p, g, m) in enumerate(zip(params, grads, masks)):
            pc = p.contiguous()
            if pc is not p:
                write_back.append((p, pc))
            ps.append(pc)
            gs.append(g.contiguous())
            if momentum != 0:
                b = momentum_buffers[i]
                bc = self._empty(b.shape, b.dtype) if fresh[i] else b.contiguous()
                if bc is not b:
                    write_back.append((b, bc))
                bs.append(bc)
            else:
                bs.append(None)
            ms.append(None if m is None else m.contiguous())
        flags = [int(f) for f in fresh] if momentum != 0 else [0] * len(params)
        self._call(self.lib.sfemu_masked_sgd, len(ps), _ptrs([_ptr(t) for t in ps]), _ptrs([_ptr(t) for t in gs]),
                   _ptrs([_ptr(t) for t in bs]), _ptrs([_ptr(t) for t in ms]), _i64([t.numel() for t in ps]),
                   _i32([DTYPE_CODE[t.dtype] for t in ps]), _i32(flags), lr, momentum, dampening,
                   weight_decay, int(bool(nesterov)))
        for orig, copy in write_back:
            orig.copy_(copy)

    def kernels(self) -> dict:
        """Op name -> kernel, as ``sparseforce.ops.register_backend`` takes them."""
        ops = {"topk_masks": self.topk_masks, "kth_largest": self.kth_largest,
               "saliency_topk_masks": self.saliency_topk_masks,
               "segmented_topk_masks": self.segmented_topk_masks,
               "segmented_saliency_topk_masks": self.segmented_saliency_topk_masks, "radix_histogram": self.radix_histogram,
               "masked_sgd_": self.masked_sgd_, "drop_grow_masks": self.drop_grow_masks}
        return {name: self._guarded_op(fn) for name, fn in ops.items()}


_LOADED: dict[str, Backend] = {}


def load(path=None) -> Backend:
    """The backend over the library at ``path`` (default ``$SFEMU_LIB``), loaded once per path."""
    path = str(path if path is not None else os.environ.get("SFEMU_LIB", ""))
    if not path:
        raise EmulatorError("no emulator library: pass its path or set SFEMU_LIB")
    if path not in _LOADED:
        _LOADED[path] = Backend(path)
    return _LOADED[path]
