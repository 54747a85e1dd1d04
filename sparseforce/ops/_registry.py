"""Which kernel runs an op: the backend registry.

Every backend supplies one kernel per op with the op library's signature (``library.SCHEMAS``)
and a function saying whether it can run on a device. ``backend="auto"`` takes the first
available backend in ``AUTO_ORDER`` for the tensors' device; the pure-PyTorch ``reference`` is
always last, so ``auto`` never fails for want of a compiled kernel.
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch

from .library import SCHEMAS

KNOWN_BACKENDS = ("reference", "cpp", "cuda", "triton")

# Fastest first. A backend absent from a device's list never runs on that device.
AUTO_ORDER = {
    "cpu": ("cpp", "reference"),
    "cuda": ("cuda", "triton", "reference"),
}

# Why a built-in backend that never registered cannot run.
_MISSING_REASON = {
    "cpp": "the C++ extension sparseforce._C is not part of this build (no compiled kernels are registered)",
    "cuda": "the CUDA extension sparseforce._C is not part of this build (no compiled kernels are registered)",
    "triton": "no Triton kernels are registered in this build",
}


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run these tensors; the message says why."""


# backend name -> op name -> kernel
_KERNELS: dict[str, dict[str, Callable]] = {}
# backend name -> function(device) -> None if usable there, else the reason it is not
_AVAILABILITY: dict[str, Callable[[torch.device], str | None]] = {}
# Out-of-tree backends that ``auto`` may pick, in registration order (before ``reference``).
_AUTO: list[str] = []


def register_backend(name: str, availability: Callable[[torch.device], str | None],
                     kernels: Mapping[str, Callable], *, auto: bool = False) -> None:
    """Plug a backend into the ops (see ``sparseforce.ops``: "Adding a backend").

    ``availability(device)``: None when the backend can run tensors on ``device``, else the
    reason it cannot (quoted by ``BackendUnavailableError``). ``kernels``: op name -> a callable
    with the op library's signature (``sparseforce.ops.library.SCHEMAS``); ops left out are
    reported as unavailable. Registering a name again replaces it. ``auto``: an out-of-tree
    backend that ``backend="auto"`` may pick, before ``reference``; otherwise only an explicit
    ``backend=name`` reaches it. The built-in backends' place in ``auto`` is ``AUTO_ORDER``.
    """
    if not isinstance(name, str) or name == "auto":
        raise ValueError(f"a backend needs a name other than 'auto', got {name!r}")
    unknown = sorted(set(kernels) - set(SCHEMAS))
    if unknown:
        raise ValueError(f"backend {name!r} registers kernels for unknown ops {unknown}; ops: {sorted(SCHEMAS)}")
    _AVAILABILITY[name] = availability
    _KERNELS[name] = dict(kernels)
    if auto and name not in KNOWN_BACKENDS and name not in _AUTO:
        _AUTO.append(name)


def unavailable_reason(backend: str, op: str, device: torch.device | str) -> str | None:
    """None if ``backend`` can run ``op`` on ``device``'s tensors, else why it cannot."""
    device = torch.device(device)
    if backend not in _AVAILABILITY:
        return _MISSING_REASON.get(backend, "it is not registered")
    reason = _AVAILABILITY[backend](device)
    if reason is not None:
        return reason
    if op not in _KERNELS[backend]:
        return f"it has no kernel for op {op!r}"
    return None


def available_backends(device: torch.device | str = "cpu", op: str = "topk_masks") -> list[str]:
    """The built-in backends (``KNOWN_BACKENDS``) that can run ``op`` on ``device``'s tensors."""
    device = torch.device(device)
    return [b for b in KNOWN_BACKENDS if unavailable_reason(b, op, device) is None]


def _auto_order(device: torch.device) -> tuple[str, ...]:
    order = AUTO_ORDER.get(device.type, ("reference",))
    return order[:-1] + tuple(_AUTO) + order[-1:]


def resolve_name(backend: str, op: str, device: torch.device) -> str:
    """The backend that ``backend`` (``"auto"`` or a name) runs ``op`` on for ``device``'s tensors;
    an unknown name is a ValueError, an unavailable one a BackendUnavailableError saying why."""
    if not isinstance(backend, str) or (backend != "auto" and backend not in KNOWN_BACKENDS
                                        and backend not in _AVAILABILITY):
        raise ValueError(f"backend must be 'auto' or one of {KNOWN_BACKENDS}, got {backend!r}")
    if backend == "auto":
        for name in _auto_order(device):
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
    """The kernel that runs ``op`` (see :func:`resolve_name`)."""
    return _KERNELS[resolve_name(backend, op, device)][op]
