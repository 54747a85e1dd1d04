"""Registers the emulated CUDA backend with sparseforce.ops through its extension point
(``ops.register_backend``: reached only by name, never by ``auto``), one backend per scheduler
setting, so the shared kernel tests (conftest.BACKEND_DEVICE) run the CUDA kernels and
host orchestration on CPU tensors: ``cuda_emu`` (random threads, interleaved shuffled blocks,
preemption) and ``cuda_emu_inorder`` (one block at a time, threads in order). ``cuda_emu_weak``
(random interleaving over weak global memory across blocks) is registered too where the build
supports it, for test_cuda_emulated.py's path tests, but is not one of the shared tests' backends
(that would double their emulated time for little: the inter-block protocols are what it checks).

Every call reconfigures the scheduler with a fresh seed (``$SFEMU_SEED`` fixes the base); a
failure names the schedule and seed so it can be replayed.
"""
from __future__ import annotations

import functools
import os

import numpy as np
import torch

from sparseforce.ops import register_backend

from . import backend as _backend
from . import build, emu

BACKENDS = {"cuda_emu": "random", "cuda_emu_inorder": "inorder"}
WEAK_BACKENDS = {"cuda_emu_weak": "weak"}

_state = {"seed": None, "calls": 0}


def seed_base() -> int:
    if _state["seed"] is None:
        env = os.environ.get("SFEMU_SEED")
        _state["seed"] = int(env) if env else int(np.random.SeedSequence().entropy % (2**31))
    return _state["seed"]


def _available(device: torch.device) -> str | None:
    return None if device.type == "cpu" else "the emulated CUDA backend runs CPU tensors only"


def _scheduled(emulator: emu.Emulator, schedule: emu.Schedule, fn):
    @functools.wraps(fn)
    def run(*args, **kwargs):
        _state["calls"] += 1
        seed = seed_base() + _state["calls"]
        emulator.configure(schedule, seed)
        emulator.clear()
        try:
            return fn(*args, **kwargs)
        except _backend.EmulatorError as exc:
            raise _backend.EmulatorError(
                f"{exc} | {emulator.diagnostic()} (schedule {schedule.name}, seed {seed})") from None
    return run


def install(variant: str = "default") -> list[str]:
    """Builds (or reuses) the library, registers the backends and returns their names."""
    csrc = os.environ.get("SFEMU_CSRC")  # a mutated copy of csrc/ (tests/support/cuda_emu/mutants.py)
    path = build.build(variant, csrc=csrc)
    emulator = emu.Emulator(path)
    be = _backend.load(path)
    extra = WEAK_BACKENDS if emulator.weak_supported else {}
    install.kernels = {}  # backend name -> op -> kernel, for tests that call a kernel directly
    for name, schedule in {**BACKENDS, **extra}.items():
        install.kernels[name] = {op: _scheduled(emulator, emu.SCHEDULES[schedule], fn) for op, fn in be.kernels().items()}
        register_backend(name, _available, install.kernels[name])
    install.backend = be
    install.emulator = emulator
    install.weak = list(extra)
    return list(BACKENDS)


def last_mode() -> int:
    """host.h's Result.mode of the last call (a segmented select: the SegPathBits of the paths taken)."""
    return install.backend.last.mode


def launches() -> int:
    """Kernel launches so far, in this process."""
    return install.emulator.lib.sfemu_launches()
