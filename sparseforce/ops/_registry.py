"""Which implementation runs an op: the backend registry.

Every op has one schema (``_schema.py``: argument checking shared by all backends) and one kernel
per backend, registered here by the backend's own module. ``backend="auto"`` takes the first
available backend in ``AUTO_ORDER`` for the tensors' device; the pure-PyTorch ``reference`` is
always last, so ``auto`` never fails for want of a compiled kernel.
"""
from __future__ import annotations

from typing import Callable

import torch

KNOWN_BACKENDS = ("reference", "cpp", "cuda", "triton")

# Fastest first. A backend absent from a device's list never runs on that device.
AUTO_ORDER = {
    "cpu": ("cpp", "reference"),
    "cuda": ("cuda", "triton", "reference"),
}

# Why a backend that has no registered kernels cannot run; replaced when its kernels register.
_MISSING_REASON = {
    "cpp": "the C++ extension sparseforce._C is not part of this build (no compiled kernels are registered)",
    "cuda": "the CUDA extension sparseforce._C is not part of this build (no compiled kernels are registered)",
    "triton": "no Triton kernels are registered in this build",
}


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run these tensors; the message says why."""


# op name -> backend name -> kernel
_KERNELS: dict[str, dict[str, Callable]] = {}
# backend name -> function(device) -> None if usable there, else the reason it is not
_AVAILABILITY: dict[str, Callable[[torch.device], str | None]] = {}


# Backends outside the public set that only an explicit request reaches: `auto` never picks them
# and available_backends() does not list them (the test suite's CUDA emulator registers one).
_EXTRA_BACKENDS: set[str] = set()


def register_backend(name: str, availability: Callable[[torch.device], str | None], *, extra: bool = False) -> None:
    if extra:
        if name in KNOWN_BACKENDS or name == "auto":
            raise ValueError(f"backend {name!r} is a public backend, not an extra one")
        _EXTRA_BACKENDS.add(name)
    elif name not in KNOWN_BACKENDS:
        raise ValueError(f"unknown backend {name!r}; known: {KNOWN_BACKENDS}")
    _AVAILABILITY[name] = availability


def register_kernel(op: str, backend: str):
    """Decorator: ``@register_kernel("topk_masks", "reference")``."""
    if backend not in _AVAILABILITY:
        raise ValueError(f"register backend {backend!r} (register_backend) before its kernels")

    def deco(fn: Callable) -> Callable:
        _KERNELS.setdefault(op, {})[backend] = fn
        return fn

    return deco


def unavailable_reason(backend: str, op: str, device: torch.device) -> str | None:
    if backend not in _AVAILABILITY:
        return _MISSING_REASON.get(backend, "it is not registered")
    reason = _AVAILABILITY[backend](device)
    if reason is not None:
        return reason
    if backend not in _KERNELS.get(op, {}):
        return f"it has no kernel for op {op!r}"
    return None


def available_backends(device: torch.device | str = "cpu", op: str = "topk_masks") -> list[str]:
    device = torch.device(device)
    return [b for b in KNOWN_BACKENDS if unavailable_reason(b, op, device) is None]


def resolve_name(backend: str, op: str, device: torch.device) -> str:
    """The backend that ``backend`` (``"auto"`` or a name) runs ``op`` on for ``device``'s tensors;
    an unknown name is a ValueError, an unavailable one a BackendUnavailableError saying why."""
    if not isinstance(backend, str) or (backend != "auto" and backend not in KNOWN_BACKENDS
                                        and backend not in _EXTRA_BACKENDS):
        raise ValueError(f"backend must be 'auto' or one of {KNOWN_BACKENDS}, got {backend!r}")
    if backend == "auto":
        for name in AUTO_ORDER.get(device.type, ("reference",)):
            if unavailable_reason(name, op, device) is None:
                return name
        raise BackendUnavailableError(f"no backend can run {op} on device {device}")
    reason = unavailable_reason(backend, op, device)
    if reason is not None:
        raise BackendUnavailableError(
            f"backend {backend!r} is not available for {op} on {device.type} tensors: {reason}"
        )
    return backend


def resolve(backend: str, op: str, device: torch.device) -> Callable:
    return _KERNELS[op][resolve_name(backend, op, device)]
