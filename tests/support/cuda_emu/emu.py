"""Loads the emulator's library (built by build.py) and configures its scheduler."""
from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Schedule:
    """How the emulator interleaves CUDA threads and blocks (see sfemu_configure)."""
    name: str
    order: int          # 0: threads in order at every switch, 1: random
    block_order: int    # 0: in order, 1: reversed, 2: shuffled
    resident: int       # blocks interleaved at once
    preempt: int        # per mille: chance that an atomic / fence / __ld* load switches threads
    occupancy: int = 2  # blocks per SM the occupancy query answers; <= 0: the query fails
    weak: bool = False  # a block's global writes reach other blocks only at __threadfence / kernel end


SCHEDULES = {
    # One block at a time, threads in order, no preemption: the schedule a naive emulator has.
    "inorder": Schedule("inorder", order=0, block_order=0, resident=1, preempt=0),
    # Random threads of three interleaved blocks, shuffled block order, frequent preemption.
    "random": Schedule("random", order=1, block_order=2, resident=3, preempt=150),
    # Reversed block order (the first block finishes last), random threads, heavy preemption.
    "reversed": Schedule("reversed", order=1, block_order=1, resident=2, preempt=400),
    # Random interleaving over weak global memory: a block reads another block's writes only once
    # that block has fenced (or the previous kernel ended). Lighter preemption: each change of
    # block swaps the blocks' views of the memory they wrote.
    "weak": Schedule("weak", order=1, block_order=2, resident=3, preempt=50, weak=True),
}


class Emulator:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.lib = ctypes.CDLL(str(path))
        self.lib.sfemu_diagnostic.restype = ctypes.c_char_p
        self.lib.sfemu_launches.restype = ctypes.c_ulonglong
        self.lib.sfemu_switches.restype = ctypes.c_ulonglong
        self.lib.sfemu_guard_add.argtypes = [ctypes.c_void_p, ctypes.c_ulonglong, ctypes.c_ulonglong, ctypes.c_char_p]
        self.lib.sfemu_guard_add.restype = None
        self.lib.sfemu_guard_remove.argtypes = [ctypes.c_void_p]
        self.lib.sfemu_guard_remove.restype = ctypes.c_char_p
        self.lib.sfemu_configure.argtypes = [ctypes.c_ulonglong] + [ctypes.c_int] * 6
        self.weak_supported = bool(self.lib.sfemu_weak_supported())

    def configure(self, schedule: Schedule, seed: int) -> None:
        s = schedule
        # SFEMU_OCCUPANCY=0 makes every occupancy query fail (the launcher's fallback is tested so).
        occupancy = int(os.environ.get("SFEMU_OCCUPANCY", s.occupancy))
        if s.weak and not self.weak_supported:
            raise RuntimeError(f"{self.path}: built without the store instrumentation weak memory needs")
        self.lib.sfemu_configure(seed, s.order, s.block_order, s.resident, s.preempt, occupancy, int(s.weak))

    def diagnostic(self) -> str:
        return self.lib.sfemu_diagnostic().decode()

    def clear(self) -> None:
        self.lib.sfemu_clear_diagnostic()


def ptr(array) -> ctypes.c_void_p:
    """Address of a numpy array or a CPU tensor's data."""
    if hasattr(array, "data_ptr"):
        return ctypes.c_void_p(array.data_ptr())
    return array.ctypes.data_as(ctypes.c_void_p)
