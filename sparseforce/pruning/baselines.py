"""The baselines that need no data: magnitude and random pruning."""
from __future__ import annotations

import math

import torch

from .. import _checks, _prunable, ops
from ..masks import Masks
from . import _batches, _collapse, _ranking, _scope
from ._budgets import check_distribution, layer_counts
from .schedules import check_k_rounding, check_sparsity


def magnitude(model, sparsity=None, prunable=None, backend="auto", k_rounding="round", invert=False, scope="global",
              distribution=None, nm=None) -> Masks:
    """Keep the k weights of largest |θ| (ties by position); ``invert=True`` keeps the k
    smallest. ``k_rounding`` and ``scope`` / ``distribution`` / ``nm`` (which weights compete: all
    together, each layer for its own budget, or n of every m) as :func:`sparseforce.force`.
    Warns with :class:`sparseforce.LayerCollapseWarning` when a layer is left with no weights."""
    scope, sparsity = _scope.check_scope(scope, distribution, nm, sparsity, "magnitude")
    check_k_rounding(k_rounding)
    invert = _checks.flag("invert", invert)
    params = _prunable.prunable_parameters(model, prunable)
    ops.resolve(backend, scope.op("topk_masks"), _batches.model_device(params))  # refused before any work
    keep = _scope.one_step(scope, params, sparsity, k_rounding)
    names = list(params)
    with torch.no_grad():
        scores = [p.detach().abs() for p in params.values()]
    masks = Masks(dict(zip(names, _ranking.topk("magnitude", names, scores, keep, invert, backend))))
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
    distribution = check_distribution(distribution)
    params = _prunable.prunable_parameters(model, prunable)
    sizes = [p.numel() for p in params.values()]
    k = _ranking.keep_k(sum(sizes), sparsity, k_rounding)
    pieces = _random_keep([tuple(p.shape) for p in params.values()], k, distribution,
                          torch.Generator().manual_seed(seed))
    masks = Masks({name: piece.view(p.shape).to(p.device)
                   for (name, p), piece in zip(params.items(), pieces)})
    return _collapse.warn_if_collapsed("random", masks)


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
