"""OpenMP's wait policy, chosen before torch loads."""
from __future__ import annotations

import os
import sys


def passive_openmp_waits() -> None:
    """On a busy machine, threads that wait at the end of a parallel region sleep instead of
    spinning (``OMP_WAIT_POLICY=passive``), unless the user chose (``OMP_WAIT_POLICY`` or
    ``GOMP_SPINCOUNT`` set) or torch is already loaded (its OpenMP runtime read the environment
    when it loaded: too late).

    Why: OpenMP's default spins for a while at every barrier. With another process busy on a core,
    the spinning thread takes the core its peer needs, and the many small parallel regions of a
    pruning or training step each wait for a descheduled peer: a digits training epoch took almost
    3x longer with one of 2 cores busy. On a quiet machine spinning is the faster choice (a
    ResNet50 training step 5-20 % faster), so the policy changes only where other processes kept,
    over the last minute, at least half a core busy (the load average, taken before this command
    adds any): benchmarks/results/cli-threads-*.json; README, "Threads"."""
    if "torch" in sys.modules or "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return
    try:
        busy = os.getloadavg()[0] >= 0.5
    except OSError:  # no load average on this platform: OpenMP's default
        return
    if busy:
        os.environ["OMP_WAIT_POLICY"] = "passive"
