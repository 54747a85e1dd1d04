"""Density schedules of the progressive methods (t = 1..T, d = final density).

``exp``: d_t = d^(t/T), the paper's choice: each step removes the same *fraction* of what is left.
``linear``: d_t = 1 - t(1-d)/T. Both end exactly at d. k_t = round(N·d_t) (Python's round:
halves go to even).
"""
from __future__ import annotations

from .. import _checks

SCHEDULES = ("exp", "linear")


def check_sparsity(sparsity) -> float:
    sparsity = _checks.real("sparsity", sparsity, "a number in [0, 1]")
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1] (the fraction of weights removed), got {sparsity}")
    return sparsity


def densities(sparsity: float, iterations: int, schedule: str = "exp") -> list[float]:
    """[d_1, ..., d_T] for the final ``sparsity``."""
    d = 1.0 - check_sparsity(sparsity)
    iterations = _checks.integer("iterations", iterations, 1)
    if not isinstance(schedule, str) or schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    T = iterations
    if schedule == "exp":
        out = [d ** (t / T) for t in range(1, T + 1)]
    else:
        out = [1.0 - t * (1.0 - d) / T for t in range(1, T + 1)]
    out[-1] = d  # exactly the density asked for, whatever the float rounding above
    return out


def keep_counts(n: int, sparsity: float, iterations: int, schedule: str = "exp") -> list[int]:
    """[k_1, ..., k_T]: how many of the ``n`` prunable weights each step keeps."""
    return [round(n * d) for d in densities(sparsity, iterations, schedule)]
