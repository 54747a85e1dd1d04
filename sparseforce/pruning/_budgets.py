"""How a kept count is shared out among layers: random's ``distribution`` and the per-layer
budgets of ``scope="layer"``, in exact integer (or rational) arithmetic."""
from __future__ import annotations

import math

from .. import _checks

DISTRIBUTIONS = ("global", "uniform", "erk")


def check_distribution(distribution) -> str:
    """``random``'s ``distribution``, one of :data:`DISTRIBUTIONS`."""
    if not isinstance(distribution, str) or distribution not in DISTRIBUTIONS:
        error = TypeError if not isinstance(distribution, str) else ValueError
        raise error(f"distribution must be one of {', '.join(map(repr, DISTRIBUTIONS))}, "
                    f"got {_checks.describe(distribution)}")
    return distribution


def layer_counts(shapes, k: int, distribution: str) -> list[int]:
    """How many weights each layer of the given shapes keeps, for k kept overall (a pure
    function: no tensors, exact integer arithmetic).

    * ``"uniform"``: layer l's target is t_l = k·n_l/N (n_l its number of weights, N the sum),
      i.e. every layer at the overall density k/N.
    * ``"erk"``: t_l = b·s_l/S with s_l the sum of the layer's dimensions (a conv
      c_out×c_in×kh×kw: c_out + c_in + kh + kw; a linear: n_out + n_in) and S their sum over the
      layers still competing, b the budget left to them: density t_l/n_l ∝ s_l/n_l, the ERK
      formula, scaled so the targets sum to k. A layer whose target exceeds n_l is kept dense,
      and the others are rescaled to the rest of the budget, until none exceeds its size.

    Targets become integers by largest-remainder apportionment: each layer gets floor(t_l), and
    the units still missing to reach k go one each to the layers of largest fractional part
    (ties: the earlier layer). So the counts sum to exactly k, each is within one of its target,
    and none exceeds its layer's size.
    """
    check_distribution(distribution)
    if distribution == "global":
        raise ValueError("distribution 'global' has no fixed per-layer counts: each layer's count is random")
    shapes = [tuple(int(d) for d in s) or (1,) for s in shapes]  # a scalar counts as one weight
    sizes = [math.prod(s) for s in shapes]
    k = _checks.integer("k", k, 0)
    if k > sum(sizes):
        raise ValueError(f"k must be at most the number of weights, {sum(sizes)}, got {k}")
    return apportion(sizes, sizes if distribution == "uniform" else [sum(s) for s in shapes], k)


def apportion(sizes, weights, k: int) -> list[int]:
    """Counts summing to k (at most ``sum(sizes)``), none above its size, shared in proportion to
    ``weights`` (ints or Fractions: exact) as :func:`layer_counts` describes. Layers of weight 0
    get nothing until every other layer is dense; a budget left then is shared among them by size."""
    counts = [0] * len(sizes)
    weighted = [i for i, w in enumerate(weights) if w > 0]
    rest = _fill(sizes, weights, weighted, k, counts)
    _fill(sizes, sizes, [i for i, w in enumerate(weights) if not w > 0], rest, counts)
    return counts


def _fill(sizes, weights, competing, budget: int, counts: list[int]) -> int:
    """Share ``budget`` among the ``competing`` layers into ``counts``; returns what is left (only
    when they are all dense)."""
    while True:
        total = sum(weights[i] for i in competing)
        dense = [i for i in competing if budget * weights[i] > total * sizes[i]]
        if not dense:
            break
        for i in dense:
            counts[i] = sizes[i]
        budget -= sum(sizes[i] for i in dense)
        competing = [i for i in competing if i not in dense]
    if not competing or not total:
        return budget
    shares = [divmod(budget * weights[i], total) for i in competing]
    for i, (whole, _) in zip(competing, shares):
        counts[i] = int(whole)
    missing = budget - sum(int(whole) for whole, _ in shares)
    by_remainder = sorted(range(len(competing)), key=lambda j: (-shares[j][1], j))
    for j in by_remainder[:missing]:
        counts[competing[j]] += 1
    return 0
