"""Which weights compete for the kept places, and how many each group keeps at each step: the
``scope``, ``distribution`` and ``nm`` of the methods that rank scores.

* ``scope="global"`` (default): every prunable weight competes with every other for one k.
* ``scope="layer"``: each layer keeps its own budget. ``distribution`` shares the k kept weights
  out among the layers exactly as :func:`sparseforce.pruning.layer_counts` does for ``random``
  (largest remainder: the counts sum to k, each within one of its target): ``"uniform"``
  (default: every layer at the overall density), ``"erk"``, or a dict naming every prunable layer
  with a density in [0, 1]. A dict's densities are the layers' *relative* densities (as ERK's
  formula is): the targets are proportional to density × size, scaled to the k of ``sparsity``.
  Densities whose size-weighted mean is 1 - sparsity are therefore kept as given; a layer at
  density 0 keeps nothing unless the others are all dense and weights are still to be kept.
* ``nm=(n, m)``: every prunable tensor, viewed as (dim 0, rest), keeps n of every m consecutive
  weights along rest (the input dimension: a Linear's in_features, a conv's in_channels × kernel),
  so the sparsity is 1 - n/m; a row length that is not a multiple of m is an error naming the layer.

Progressive methods (FORCE, Iter SNIP, SynFlow), step t of the schedule's density d_t:

* layer: the step's k_t = rounding(N, d_t) (``k_rounding``) is shared out as above, so every layer
  is at d_t under ``"uniform"``. Nested methods (Iter SNIP, SynFlow: only survivors compete) need
  a layer's count never to grow, which largest remainder alone does not promise (a smaller total
  can move a unit between layers): going back from the last step, a layer keeps at least its
  count of the next step, and the units this adds to k_t are taken back one at a time from the
  layer furthest above its next-step count (ties: the earlier layer). The last step keeps the
  final counts exactly.
* nm: step t keeps n_t = max(n, rounding(m, d_t)) of every m (the density rounded to the group
  by ``k_rounding``, ``round`` by default), and exactly n at the last step: every step is itself an
  N:M pattern, and n_t never grows, so Iter SNIP's masks stay nested.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from fractions import Fraction

from .. import _checks
from .. import ops
from ._budgets import apportion, layer_counts
from .schedules import check_sparsity, densities, keep_count, keep_counts

SCOPES = ("global", "layer")
LAYER_DISTRIBUTIONS = ("uniform", "erk")
# The op a segmented selection takes in place of each global one.
SEGMENTED_OPS = {"topk_masks": "segmented_topk_masks", "saliency_topk_masks": "segmented_saliency_topk_masks"}


@dataclasses.dataclass(frozen=True)
class Scope:
    """The checked ``scope`` / ``distribution`` / ``nm``: ``name`` is "global", "layer" or "nm"."""

    name: str
    distribution: str | Mapping | None = None  # "layer": "uniform", "erk" or {layer name: density}
    nm: tuple[int, int] | None = None

    def op(self, op: str) -> str:
        """The ``sparseforce.ops`` op that ranks in place of the global ``op``."""
        return op if self.name == "global" else SEGMENTED_OPS[op]


@dataclasses.dataclass(frozen=True)
class Keep:
    """What one selection keeps: ``total`` weights, as ``segment`` and ``ks`` of the segmented ops
    say (``segment`` None: the global top-``ks``)."""

    total: int
    segment: str | tuple | None
    ks: int | list | None


def check_scope(scope, distribution, nm, sparsity, method: str) -> tuple[Scope, float]:
    """The scope asked for and the sparsity it means (with ``nm``: 1 - n/m, which a given
    ``sparsity`` must agree with), checked before any work."""
    if not isinstance(scope, str) or scope not in SCOPES:
        error = TypeError if not isinstance(scope, str) else ValueError
        raise error(f"scope must be one of {', '.join(map(repr, SCOPES))}, got {_checks.describe(scope)}")
    if nm is not None:
        n, m = _check_nm(nm)
        if scope != "global" or distribution is not None:
            raise ValueError(f"nm=({n}, {m}) already fixes every layer's share (n of every m weights); leave scope "
                             "and distribution out")
        return Scope("nm", nm=(n, m)), _nm_sparsity(n, m, sparsity)
    if sparsity is None:
        raise TypeError(f"{method} needs sparsity (the fraction of prunable weights to remove, a number in [0, 1]) "
                        "or nm=(n, m), got neither")
    sparsity = check_sparsity(sparsity)
    if scope == "global":
        if distribution is not None:
            raise ValueError(f"distribution={_show(distribution)} shares the kept weights out among the layers, which "
                             "scope='global' does not; pass scope='layer' with it")
        return Scope("global"), sparsity
    return Scope("layer", _check_distribution(distribution)), sparsity


def _check_nm(nm) -> tuple[int, int]:
    if isinstance(nm, (str, bytes)) or not isinstance(nm, Sequence) or len(nm) != 2:
        raise TypeError(f"nm must be a pair (n, m), keeping n of every m consecutive weights, got "
                        f"{_checks.describe(nm) if not isinstance(nm, Sequence) else repr(nm)}")
    n, m = (_checks.integer(f"nm[{i}]", v) for i, v in enumerate(nm))
    if not (1 <= m <= ops.MAX_NM_M and 0 <= n <= m):
        raise ValueError(f"nm=(n, m) keeps n of every m consecutive weights and needs 0 <= n <= m and 1 <= m <= "
                         f"{ops.MAX_NM_M}, got ({n}, {m})")
    return n, m


def _nm_sparsity(n: int, m: int, sparsity) -> float:
    if sparsity is None:
        return 1.0 - n / m
    sparsity = check_sparsity(sparsity)
    if not math.isclose(1.0 - sparsity, n / m, rel_tol=1e-9, abs_tol=1e-12):
        raise ValueError(f"sparsity={sparsity!r} disagrees with nm=({n}, {m}), which keeps {n} of every {m} weights "
                         f"(sparsity {1.0 - n / m!r}); leave sparsity out")
    return sparsity


def _check_distribution(distribution):
    what = f"with scope='layer', distribution must be one of {', '.join(map(repr, LAYER_DISTRIBUTIONS))} or a " \
           "dict {layer name: density}"
    if distribution is None:
        return "uniform"
    if isinstance(distribution, str):
        if distribution not in LAYER_DISTRIBUTIONS:
            raise ValueError(f"{what}, got {distribution!r}")
        return distribution
    if not isinstance(distribution, Mapping):
        raise TypeError(f"{what}, got {_checks.describe(distribution)}")
    checked = {}
    for name, d in distribution.items():
        d = _checks.real(f"distribution[{name!r}]", d, "a density in [0, 1]")
        if not 0.0 <= d <= 1.0:
            raise ValueError(f"distribution[{name!r}] must be a density in [0, 1] (the fraction of the layer kept), "
                             f"got {d}")
        checked[name] = d
    return checked


def _show(distribution) -> str:
    return repr(distribution) if isinstance(distribution, str) else "{...}"


def check_layers(scope: Scope, names: Sequence[str], shapes: Sequence[tuple]) -> None:
    """What only the prunable layers can tell: a dict distribution names exactly them; N:M rows
    are a multiple of m."""
    if isinstance(scope.distribution, Mapping):
        missing = [n for n in names if n not in scope.distribution]
        extra = [n for n in scope.distribution if n not in names]
        if missing or extra:
            raise ValueError("distribution must give a density for every prunable layer and no other: "
                             + "; ".join(part for part in (f"missing {_few(missing)}" if missing else "",
                                                           f"not prunable {_few(extra)}" if extra else "") if part))
    if scope.nm is not None:
        n, m = scope.nm
        for name, shape in zip(names, shapes):
            row = math.prod(shape[1:]) if len(shape) else 1
            if row % m:
                raise ValueError(f"nm=({n}, {m}): prunable layer {name!r} has rows of {row} weights (its shape "
                                 f"{tuple(shape)} viewed as (dim 0, rest)), not a multiple of {m}; leave it out of "
                                 "prunable or choose another m")


def _few(names) -> str:
    return ", ".join(map(repr, names[:5])) + (", ..." if len(names) > 5 else "")


def keeps(scope: Scope, names, shapes, sparsity: float, iterations: int, schedule, k_rounding,
          nested: bool) -> list[Keep]:
    """What each step keeps (one entry per step; see the module's docstring). ``nested``: only
    survivors compete, so no count may grow."""
    check_layers(scope, names, shapes)
    sizes = [math.prod(s) for s in shapes]
    total = sum(sizes)
    if scope.nm is not None:
        n, m = scope.nm
        ds = densities(sparsity, iterations, schedule)
        per_group = [max(n, keep_count(m, d, k_rounding)) for d in ds[:-1]] + [n]
        if nested:
            _never_grows(per_group, f"of every {m} weights")
        return [Keep(total // m * k, ("nm", k, m), None) for k in per_group]
    ks = keep_counts(total, sparsity, iterations, schedule, k_rounding, nested=nested)
    if scope.name == "global":
        return [Keep(k, None, k) for k in ks]
    counts = [_layer_counts(scope.distribution, names, shapes, sizes, k) for k in ks]
    if nested:
        counts = _nested(counts)
    return [Keep(k, "tensor", c) for k, c in zip(ks, counts)]


def _layer_counts(distribution, names, shapes, sizes, k: int) -> list[int]:
    if isinstance(distribution, str):
        return layer_counts(shapes, k, distribution)
    return apportion(sizes, [Fraction(distribution[n]) * size for n, size in zip(names, sizes)], k)


def _never_grows(counts, what: str) -> None:
    for t in range(1, len(counts)):
        if counts[t] > counts[t - 1]:
            raise ValueError(f"the schedule keeps {counts[t - 1]} {what} at step {t} and {counts[t]} at step {t + 1}; "
                             "this method's masks are nested (a pruned weight stays pruned), so the densities may "
                             "not grow")


def _nested(steps: list[list[int]]) -> list[list[int]]:
    """The per-layer counts of each step made never to grow, each step's total kept."""
    out = [steps[-1]]
    for step in reversed(steps[:-1]):
        after = out[-1]
        now = [max(c, a) for c, a in zip(step, after)]
        for _ in range(sum(now) - sum(step)):
            i = max(range(len(now)), key=lambda j: (now[j] - after[j], -j))
            now[i] -= 1
        out.append(now)
    return out[::-1]


def one_step(scope: Scope, params: Mapping, sparsity: float, k_rounding) -> Keep:
    """What a one-shot method (GraSP, magnitude) keeps of the prunable ``params``."""
    return keeps(scope, list(params), [tuple(p.shape) for p in params.values()], sparsity, 1, "exp", k_rounding,
                 nested=False)[0]
