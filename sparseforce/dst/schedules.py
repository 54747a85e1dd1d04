"""When dynamic sparse training updates the masks, and how much it changes.

Training steps count from 1. RigL and SET update at step t when ``t % update_every == 0`` and
``t < end * total_steps``; gradual magnitude pruning also needs ``t >= start * total_steps``.

* drop fraction (RigL's cosine decay): f_t = drop_fraction / 2 * (1 + cos(pi * t / (end * total_steps)));
  a segment with A active weights drops floor(f_t * A).
* cubic sparsity (Zhu & Gupta, 2017): the j-th of n updates keeps
  final + round_half_up((initial - final) * (1 - j / n)^3) weights, in exact rational arithmetic,
  so the last update keeps exactly ``final`` and the counts never grow.
"""
from __future__ import annotations

import math
from fractions import Fraction


def is_update(t: int, update_every: int, end_step: float, start_step: float = 0.0) -> bool:
    """Whether training step ``t`` (from 1) updates the masks."""
    return t % update_every == 0 and start_step <= t < end_step


def update_steps(total_steps: int, update_every: int, end_step: float, start_step: float = 0.0) -> list[int]:
    """Every step that updates the masks, in order."""
    return [t for t in range(update_every, total_steps + 1, update_every) if is_update(t, update_every, end_step,
                                                                                      start_step)]


def cosine_fraction(fraction: float, t: int, end_step: float) -> float:
    """RigL's decayed fraction at step ``t``: ``fraction`` at t = 0, 0 at ``end_step``."""
    return fraction / 2 * (1 + math.cos(math.pi * t / end_step))


def drop_count(fraction: float, active: int) -> int:
    """How many of ``active`` weights a segment drops: floor(fraction * active)."""
    return math.floor(fraction * active)


def cubic_count(initial: int, final: int, j: int, n: int) -> int:
    """What the j-th of n updates keeps (j = 1..n) going from ``initial`` to ``final`` kept."""
    return final + math.floor((initial - final) * Fraction(n - j, n) ** 3 + Fraction(1, 2))
