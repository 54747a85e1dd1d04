"""Density schedules of the progressive methods and how a density becomes a kept count.

Schedules (t = 1..T, d = final density):

``exp``: d_t = d^(t/T), the paper's choice: each step removes the same *fraction* of what is left.
``linear``: d_t = 1 - t(1-d)/T. Both end exactly at d.
A sequence ``[d_1, ..., d_T]``: those densities, as given (see :func:`official_force_densities`
and :func:`synaptic_flow_densities` for the ones other implementations step through).

Kept counts, ``k_rounding`` (N prunable weights, density d):

``round`` (default): round(N·d), Python's round (halves go to even).
``floor``: floor(N·d), the official FORCE code's ``int(N * d)``.
``ceil``: ceil(N·d).
``synflow``: N - floor((1 - d)·N), what Synaptic-Flow keeps: it prunes ``int((1 - d) * N)``. In
exact arithmetic that is ceil(N·d), but the two float expressions round differently (N=3,
d=0.6666666666666667: ceil gives 2, Synaptic-Flow keeps 3), so it has its own name.
A callable ``k_rounding(n, density) -> int``, for any other convention.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

from .. import _checks

SCHEDULES = ("exp", "linear")
K_ROUNDINGS = ("round", "floor", "ceil", "synflow")

_ROUNDINGS: dict[str, Callable[[int, float], int]] = {
    "round": lambda n, d: round(n * d),
    "floor": lambda n, d: math.floor(n * d),
    "ceil": lambda n, d: math.ceil(n * d),
    "synflow": lambda n, d: n - math.floor((1.0 - d) * n),
}


def check_sparsity(sparsity) -> float:
    sparsity = _checks.real("sparsity", sparsity, "a number in [0, 1]")
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1] (the fraction of weights removed), got {sparsity}")
    return sparsity


def check_k_rounding(k_rounding) -> Callable[[int, float], int]:
    """The function ``(n, density) -> kept count`` that ``k_rounding`` names."""
    if isinstance(k_rounding, str):
        if k_rounding not in _ROUNDINGS:
            raise ValueError(f"k_rounding must be one of {K_ROUNDINGS} or a callable k_rounding(n, density) -> int, "
                             f"got {k_rounding!r}")
        return _ROUNDINGS[k_rounding]
    if callable(k_rounding):
        return k_rounding
    raise TypeError(f"k_rounding must be one of {K_ROUNDINGS} or a callable k_rounding(n, density) -> int, "
                    f"got {_checks.describe(k_rounding)}")


def keep_count(n: int, density: float, k_rounding="round") -> int:
    """How many of ``n`` weights a step of density ``density`` keeps under ``k_rounding``."""
    rounding = check_k_rounding(k_rounding)
    k = rounding(n, density)
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k_rounding({n}, {density!r}) must return an integer, got {_checks.describe(k)}")
    if not 0 <= k <= n:
        raise ValueError(f"k_rounding({n}, {density!r}) returned {k}, outside [0, {n}]")
    return int(k)


def _explicit(schedule) -> list[float] | None:
    """The densities of a schedule given as a sequence, checked; None for a schedule name."""
    if isinstance(schedule, str):
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES} or a sequence of densities, got {schedule!r}")
        return None
    if hasattr(schedule, "tolist") and not isinstance(schedule, Sequence):  # a numpy array or tensor
        schedule = schedule.tolist()
    if not isinstance(schedule, Sequence) or isinstance(schedule, bytes):
        raise TypeError(f"schedule must be one of {SCHEDULES} or a sequence of densities, "
                        f"got {_checks.describe(schedule)}")
    if not schedule:
        raise ValueError("schedule is an empty sequence; give at least one density")
    out = []
    for t, d in enumerate(schedule):
        d = _checks.real(f"schedule[{t}]", d, "a density in [0, 1]")
        if not 0.0 <= d <= 1.0:
            raise ValueError(f"schedule[{t}] must be a density in [0, 1] (the fraction of weights kept), got {d}")
        out.append(d)
    return out


def one_step_schedule(schedule, method: str = "snip"):
    """``schedule`` checked as the schedule of a one-step method (SNIP): a schedule name, whose
    single density is the final one, or a sequence of exactly one density (such as
    ``official_force_densities(d, 1)``, whose float need not be exactly ``1 - sparsity``).

    A longer sequence is a ``ValueError`` pointing to the progressive methods. Returns the
    schedule to pass on with ``iterations=1`` (a sequence as a list of floats)."""
    explicit = _explicit(schedule)
    if explicit is None:
        return schedule
    if len(explicit) != 1:
        raise ValueError(f"{method} is one step, but schedule gives {len(explicit)} densities; pass one density "
                         f"(e.g. official_force_densities(d, 1)), or use force / iter_snip with iterations="
                         f"{len(explicit)} for a schedule of several steps")
    return explicit


def densities(sparsity: float, iterations: int, schedule="exp") -> list[float]:
    """[d_1, ..., d_T] for the final ``sparsity``.

    With a sequence as ``schedule``, ``iterations`` must be its length and ``sparsity`` must agree
    with its last density (to 1e-9): they describe the same run, so a disagreement is a mistake.
    """
    sparsity = check_sparsity(sparsity)
    d = 1.0 - sparsity
    iterations = _checks.integer("iterations", iterations, 1)
    explicit = _explicit(schedule)
    if explicit is not None:
        if len(explicit) != iterations:
            raise ValueError(f"schedule gives {len(explicit)} densities but iterations={iterations}; "
                             f"pass iterations={len(explicit)}")
        if not math.isclose(explicit[-1], d, rel_tol=1e-9, abs_tol=1e-12):
            raise ValueError(f"the schedule ends at density {explicit[-1]!r} but sparsity={sparsity!r} asks for "
                             f"density {d!r}")
        return explicit
    T = iterations
    if schedule == "exp":
        out = [d ** (t / T) for t in range(1, T + 1)]
    else:
        out = [1.0 - t * (1.0 - d) / T for t in range(1, T + 1)]
    out[-1] = d  # exactly the density asked for, whatever the float rounding above
    return out


def keep_counts(n: int, sparsity: float, iterations: int, schedule="exp", k_rounding="round",
                nested: bool = False) -> list[int]:
    """[k_1, ..., k_T]: how many of the ``n`` prunable weights each step keeps.

    ``nested`` (Iter SNIP, SynFlow: only survivors compete) refuses counts that grow."""
    ds = densities(sparsity, iterations, schedule)
    check_k_rounding(k_rounding)
    ks = [keep_count(n, d, k_rounding) for d in ds]
    if nested:
        for t in range(1, len(ks)):
            if ks[t] > ks[t - 1]:
                raise ValueError(f"the schedule keeps {ks[t - 1]} weights at step {t} and {ks[t]} at step {t + 1}; "
                                 "this method's masks are nested (a pruned weight stays pruned), so the densities "
                                 "may not grow")
    return ks


def official_force_densities(density: float, iterations: int, mode: str = "exp") -> list[float]:
    """The densities the official FORCE code (github.com/naver/force, ``iterative_pruning``) steps
    through for ``pruning_factor=density``, ``num_steps=iterations`` and ``mode``, with the same
    float expressions, so pass it as ``schedule=`` to reproduce its masks:

    ``exp``: d_t = exp(-(t·(-log d))/T) in numpy (the last one need not be exactly d);
    ``linear``: d_t = 1 - t(1-d)/T (not forced to end exactly at d).
    """
    import numpy as np

    density = _check_density(density)
    T = _checks.integer("iterations", iterations, 1)
    if mode == "exp":
        with np.errstate(divide="ignore"):  # density 0: log 0 = -inf, every step keeps exp(-inf) = 0
            rate = -np.log(np.float64(density))
        return [float(np.exp(-(t * rate / T))) for t in range(1, T + 1)]
    if mode == "linear":
        return [1 - t * (1 - density) / T for t in range(1, T + 1)]
    raise ValueError(f"mode must be 'exp' or 'linear' (the official code's --mode), got {mode!r}")


def synaptic_flow_densities(density: float, iterations: int, schedule: str = "exponential") -> list[float]:
    """The densities Synaptic-Flow's ``prune_loop`` (github.com/ganguli-lab/Synaptic-Flow) steps
    through for its ``sparsity`` (a density, 10**-compression) ``density``, ``epochs=iterations``
    and ``compression_schedule=schedule``, with the same float expressions:

    ``exponential``: d_t = d**(t/T) (our ``exp``, but computed from the density given here, not
    from 1 - sparsity, which may differ from it in the last bit);
    ``linear``: d_t = 1 - (1-d)·(t/T).
    """
    density = _check_density(density)
    T = _checks.integer("iterations", iterations, 1)
    if schedule == "exponential":
        return [density ** (t / T) for t in range(1, T + 1)]
    if schedule == "linear":
        return [1.0 - (1.0 - density) * (t / T) for t in range(1, T + 1)]
    raise ValueError(f"schedule must be 'exponential' or 'linear' (Synaptic-Flow's --compression-schedule), "
                     f"got {schedule!r}")


def _check_density(density) -> float:
    density = _checks.real("density", density, "a number in [0, 1]")
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must be in [0, 1] (the fraction of weights kept), got {density}")
    return density
