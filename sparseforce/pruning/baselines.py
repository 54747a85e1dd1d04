"""The baselines that need no data: magnitude and random pruning, and random's per-layer counts."""
from __future__ import annotations

import math

import torch

from .. import _checks, _prunable, ops
from ..masks import Masks
from . import _batches, _collapse, _ranking
from .schedules import check_k_rounding, check_sparsity


def magnitude(model, sparsity, prunable=None, backend="auto", k_rounding="round", invert=False) -> Masks:
    """Keep the k weights of largest |θ| (ties by global position); ``invert=True`` keeps the k
    smallest. ``k_rounding`` as :func:`sparseforce.force`. Warns with
    :class:`sparseforce.LayerCollapseWarning` when a layer is left with no weights."""
    sparsity = check_sparsity(sparsity)
    check_k_rounding(k_rounding)
    invert = _checks.flag("invert", invert)
    params = _prunable.prunable_parameters(model, prunable)
    ops.resolve(backend, "topk_masks", _batches.model_device(params))  # refused before any work
    names = list(params)
    k = _ranking.keep_k(sum(p.numel() for p in params.values()), sparsity, k_rounding)
    with torch.no_grad():
        scores = [p.detach().abs() for p in params.values()]
    masks = Masks(dict(zip(names, _ranking.topk("magnitude", names, scores, k, invert, backend))))
    return _collapse.warn_if_collapsed("magnitude", masks)


def random(model, sparsity, seed=0, prunable=None, distribution="global", k_rounding="round") -> Masks:
    """Keep k weights chosen at random; the same ``seed`` (an integer in [0, 2**32)) gives the
    same masks on any device. Uses its own generator: the global random state is not touched.

    ``distribution`` says how the k kept weights are spread over the layers:

    * ``"global"``: uniformly at random over all prunable weights together (each layer's count
      is itself random);
    * ``"uniform"``: every layer keeps its share of the overall density d = k/N,
      round(n_l·d) up to the apportionment of :func:`layer_counts`;
    * ``"erk"``: Erdős–Rényi-Kernel (Evci et al., 2020): layer densities proportional to
      (sum of the layer's dimensions) / (product of them), layers that would exceed density 1
      kept dense (see :func:`layer_counts`).

    For ``"uniform"`` and ``"erk"`` the per-layer counts sum to exactly k and each layer's kept
    positions are uniformly random within the layer. ``k_rounding`` (how k comes from the
    density) as :func:`sparseforce.force`. Warns with
    :class:`sparseforce.LayerCollapseWarning` when a layer is left with no weights."""
    sparsity = check_sparsity(sparsity)
    check_k_rounding(k_rounding)
    seed = _checks.seed(seed)
    distribution = _check_distribution(distribution)
    params = _prunable.prunable_parameters(model, prunable)
    sizes = [p.numel() for p in params.values()]
    k = _ranking.keep_k(sum(sizes), sparsity, k_rounding)
    pieces = _random_keep([tuple(p.shape) for p in params.values()], k, distribution,
                          torch.Generator().manual_seed(seed))
    masks = Masks({name: piece.view(p.shape).to(p.device)
                   for (name, p), piece in zip(params.items(), pieces)})
    return _collapse.warn_if_collapsed("random", masks)


DISTRIBUTIONS = ("global", "uniform", "erk")


def _check_distribution(distribution) -> str:
    if not isinstance(distribution, str) or distribution not in DISTRIBUTIONS:
        error = TypeError if not isinstance(distribution, str) else ValueError
        raise error(f"distribution must be one of {', '.join(map(repr, DISTRIBUTIONS))}, "
                    f"got {_checks.describe(distribution)}")
    return distribution


def _random_keep(shapes, k: int, distribution: str, gen: torch.Generator) -> list[torch.Tensor]:
    """One flat CPU bool tensor per shape, k True in all, drawn from ``gen``."""
    sizes = [math.prod(s) for s in shapes]
    if distribution == "global":
        n = sum(sizes)
        keep = torch.zeros(n, dtype=torch.bool)
        keep[torch.randperm(n, generator=gen)[:k]] = True
        return list(keep.split(sizes))
    pieces = []
    for n, c in zip(sizes, layer_counts(shapes, k, distribution)):
        keep = torch.zeros(n, dtype=torch.bool)
        keep[torch.randperm(n, generator=gen)[:c]] = True
        pieces.append(keep)
    return pieces


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
    _check_distribution(distribution)
    if distribution == "global":
        raise ValueError("distribution 'global' has no fixed per-layer counts: each layer's count is random")
    shapes = [tuple(int(d) for d in s) or (1,) for s in shapes]  # a scalar counts as one weight
    sizes = [math.prod(s) for s in shapes]
    k = _checks.integer("k", k, 0)
    if k > sum(sizes):
        raise ValueError(f"k must be at most the number of weights, {sum(sizes)}, got {k}")
    weights = sizes if distribution == "uniform" else [sum(s) for s in shapes]
    counts = [0] * len(shapes)
    competing = list(range(len(shapes)))
    budget = k
    while True:
        total = sum(weights[i] for i in competing)
        dense = [i for i in competing if budget * weights[i] > total * sizes[i]]
        if not dense:
            break
        for i in dense:
            counts[i] = sizes[i]
        budget -= sum(sizes[i] for i in dense)
        competing = [i for i in competing if i not in dense]
    if competing and total:
        shares = [divmod(budget * weights[i], total) for i in competing]
        for i, (whole, _) in zip(competing, shares):
            counts[i] = whole
        missing = budget - sum(whole for whole, _ in shares)
        by_remainder = sorted(range(len(competing)), key=lambda j: (-shares[j][1], j))
        for j in by_remainder[:missing]:
            counts[competing[j]] += 1
    return counts
