"""``torch.nn.utils.prune`` on sparseforce's exact selection: change the import, keep the code.

    from sparseforce.compat import prune            # was: import torch.nn.utils.prune as prune
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=0.8)
    prune.l1_unstructured(model.fc, "weight", amount=100)
    prune.remove(model.fc, "weight")                 # torch's own, re-exported

``global_unstructured``, ``l1_unstructured`` and ``random_unstructured`` take torch's arguments and
compute their masks with :func:`sparseforce.ops.drop_grow_masks` (a drop-only update: keep the
largest |score| among the weights not pruned yet), so:

* nothing is concatenated: the extra memory is a bool mask per weight, and more than 2^31 weights
  work, where torch's ``parameters_to_vector`` / ``nonzero`` / ``topk`` fail;
* exactly the amount asked is pruned, and among equal scores at the threshold the lowest position
  (parameters in the order given, then row-major) is kept, on every backend and run. Where no score
  ties at the threshold the masks are torch's; where some do, torch keeps whichever ``topk`` returns;
* a NaN score raises ``ValueError`` naming the parameter (torch ranks NaN as the largest), even
  with ``amount=0``. Only the entries not pruned yet compete, as in torch, so a NaN in an entry
  pruned before is no error: ``weight`` (= ``weight_orig * weight_mask``, the default scores, as
  torch's) is NaN there whenever the pruned ``weight_orig`` is ±inf or NaN.

The masks are applied through torch's own reparametrisation (``prune.custom_from_mask``: the
``<name>_orig`` parameter, the ``<name>_mask`` buffer, the forward pre-hook), so ``prune.remove``,
``prune.is_pruned``, iterative pruning (the new mask is multiplied into the old one, and a fraction
counts the weights not pruned yet, as torch's ``PruningContainer`` does) and existing checkpoints
work as before. The one visible difference: the hook holds a ``CustomFromMask`` where torch's would
hold the method (``L1Unstructured(amount)``).

``RandomUnstructured`` draws the same numbers from the global RNG as torch does (one ``rand`` over
the weights not pruned yet, in the dtype torch draws in; the draw is the op's job, so the RNG state
after it is torch's too), so its masks are torch's where no two draws tie (tested on the CPU):
fp32/fp64 draws rarely do, bf16/fp16 draws often, and then the lowest positions are kept as for
L1. That draw, like torch's, holds one number per competing weight. A pruning method of
your own (any other ``BasePruningMethod``) runs as torch runs it, through torch's
``global_unstructured``.
Every argument is checked before any module is changed. ``backend=`` (keyword-only, an addition
to torch's signatures) picks the ops backend.
"""
from __future__ import annotations

import numbers
from collections.abc import Iterable

import torch
import torch.nn as nn
from torch.nn.utils import prune as torch_prune
from torch.nn.utils.prune import (BasePruningMethod, CustomFromMask, Identity, LnStructured, PruningContainer,
                                  RandomStructured, custom_from_mask, identity, is_pruned, ln_structured,
                                  random_structured, remove)

from .. import ops
from ..masks import torch_prune as torch_prune_format

__all__ = [
    # sparseforce's exact selection, torch's signatures
    "global_unstructured", "l1_unstructured", "random_unstructured", "L1Unstructured", "RandomUnstructured",
    # torch's own, re-exported so that the import can change alone
    "BasePruningMethod", "PruningContainer", "Identity", "CustomFromMask", "LnStructured", "RandomStructured",
    "identity", "ln_structured", "random_structured", "custom_from_mask", "remove", "is_pruned",
]


def pruned_count(amount, competing: int) -> int:
    """The number of weights to prune out of ``competing``, as torch counts it: an int as given, a
    float ``round(amount * competing)`` (Python's round, half to even)."""
    if isinstance(amount, numbers.Integral):
        if amount > competing:
            raise ValueError(f"amount={amount} should be smaller than the number of parameters to prune={competing}")
        return int(amount)
    return round(amount * competing)


def _check_amount(amount) -> None:
    # torch's own check (its messages), run before any work.
    torch_prune._validate_pruning_amount_init(amount)


def _keep_all(t: torch.Tensor) -> torch.Tensor:
    return torch.ones(t.shape, dtype=torch.bool, device=t.device)


def _exact_rank(scores: list, competing: list, nprune: int, backend: str) -> list:
    """Keep all but the ``nprune`` smallest |score| among the ``competing`` entries of all tensors
    together (ties: the lowest position is kept)."""
    return ops.drop_grow_masks(scores, scores, competing, nprune, 0, segment="global", backend=backend)


def _random_scores(competing: list, counts: list, dtype: torch.dtype) -> list:
    """torch's draw (one ``rand_like`` over all competing entries, in order, so the same numbers
    and the same RNG state after it on every device), as scores whose largest are the smallest
    draws: 1 - u, exact in float32/float64 for every u torch draws (float64 for the half types).
    ``counts``: the number competing in each tensor."""
    wide = dtype if dtype in (torch.float32, torch.float64) else torch.float64
    draws = torch.rand(sum(counts), dtype=dtype, device=competing[0].device)
    scores = []
    for c, u in zip(competing, draws.split(counts)):
        s = torch.zeros(c.shape, dtype=wide, device=c.device)
        s[c] = 1 - u.to(wide)
        scores.append(s)
    return scores


def _pruned_mask(t, default_mask, amount, scores) -> torch.Tensor:
    """``default_mask`` with the ``amount`` of ``t``'s entries of smallest ``scores(competing)`` set
    to 0 (all of ``t`` competes, as in torch's ``compute_mask``)."""
    nprune = pruned_count(amount, t.nelement())
    mask = default_mask.clone(memory_format=torch.contiguous_format)
    if nprune:
        competing = [_keep_all(t)]
        keep = _exact_rank(scores(competing), competing, nprune, "auto")[0]
        mask.masked_fill_(~keep, 0)
    return mask


class L1Unstructured(torch_prune.L1Unstructured):
    """torch's ``L1Unstructured`` pruning exactly ``amount`` by the exact selection (ties: the lowest
    position is kept). Also what Lightning's ``ModelPruning(pruning_fn=...)`` and torch's own
    ``global_unstructured`` accept as a method; this module's ``global_unstructured`` does not
    concatenate."""

    def compute_mask(self, t, default_mask):
        return _pruned_mask(t, default_mask, self.amount, lambda competing: [t.detach()])


class RandomUnstructured(torch_prune.RandomUnstructured):
    """torch's ``RandomUnstructured`` (the same draw from the global RNG) pruning exactly ``amount``
    of the largest draws by the exact selection."""

    def compute_mask(self, t, default_mask):
        return _pruned_mask(t, default_mask, self.amount,
                            lambda competing: _random_scores(competing, [t.nelement()], t.dtype))


def _rule(method) -> str | None:
    """'l1' / 'random' for a method whose masks this module computes, None for another."""
    compute = type(method).compute_mask
    if isinstance(method, torch_prune.L1Unstructured) and compute in (torch_prune.L1Unstructured.compute_mask,
                                                                      L1Unstructured.compute_mask):
        return "l1"
    if isinstance(method, torch_prune.RandomUnstructured) and compute in (
            torch_prune.RandomUnstructured.compute_mask, RandomUnstructured.compute_mask):
        return "random"
    return None


def _targets(parameters) -> list:
    if not isinstance(parameters, Iterable):
        raise TypeError("global_unstructured(): parameters is not an Iterable")
    pairs = list(parameters)
    seen = set()
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and isinstance(pair[0], nn.Module)
                and isinstance(pair[1], str)):
            raise TypeError(f"parameters[{i}] must be a (module, name) pair, got {pair!r:.80}")
        module, name = pair
        if (id(module), name) in seen:
            raise ValueError(f"parameters[{i}] ({type(module).__name__}, {name!r}) is listed twice")
        seen.add((id(module), name))
        _check_prunable(module, name, f"parameters[{i}]")
    return pairs


def _check_prunable(module: nn.Module, name: str, where: str) -> None:
    """What torch's reparametrisation needs: ``name`` a parameter of ``module``, or pruned already
    (``<name>_orig`` a parameter); checked up front so that no module is changed on an error."""
    if name in module._parameters and module._parameters[name] is not None:
        return
    if name in torch_prune_format.pruned_names(module):
        return
    what = "a buffer" if name in module._buffers else ("missing" if not hasattr(module, name) else "not a parameter")
    raise ValueError(f"{where}: {type(module).__name__} has no parameter {name!r} to prune ({name!r} is {what})")


def _select(pairs: list, scores: list, method, rule: str, backend: str) -> list:
    """The new bool masks (all checks before any work, no module changed)."""
    for (module, name), s in zip(pairs, scores):
        if not isinstance(s, torch.Tensor) or not s.is_floating_point():
            raise TypeError(f"the importance scores of ({type(module).__name__}, {name!r}) must be a floating-point "
                            f"tensor, got {type(s).__name__ if not isinstance(s, torch.Tensor) else s.dtype}")
        if s.shape != getattr(module, name).shape:
            raise ValueError(f"the importance scores of ({type(module).__name__}, {name!r}) have shape "
                             f"{tuple(s.shape)}, the parameter {tuple(getattr(module, name).shape)}")
    devices = {s.device for s in scores} | {getattr(module, name).device for module, name in pairs}
    if len(devices) > 1:
        raise ValueError(f"the parameters and importance scores are on several devices ({sorted(map(str, devices))}); "
                         "the global selection needs them on one")
    old = [getattr(module, f"{name}_mask", None) for module, name in pairs]
    # torch's PruningContainer: the entries whose mask is 1 compete, the others stay pruned.
    competing = [_keep_all(s) if m is None else (m.detach() == 1).to(s.device) for m, s in zip(old, scores)]
    counts = [int(c.count_nonzero()) for c in competing]
    nprune = pruned_count(method.amount, sum(counts))
    if rule == "random":
        if not nprune:  # torch draws nothing then
            return competing
        dtype = scores[0].dtype
        for s in scores[1:]:
            dtype = torch.promote_types(dtype, s.dtype)  # parameters_to_vector's cat
        scores = _random_scores(competing, counts, dtype)
    scores = [s.detach() for s in scores]
    try:
        with torch.no_grad():
            try:
                return _exact_rank(scores, competing, nprune, backend)
            except ops.NaNScoreError:  # the kernel's scan found one: is it among the competing entries?
                scores = [_blank_pruned(s, c, m) for s, c, m in zip(scores, competing, old)]
                return _exact_rank(scores, competing, nprune, backend)
    except ops.NaNScoreError as e:
        module, name = pairs[e.index // 2]  # drop_grow_masks numbers (tensor, weights|scores) pairs
        raise ops.NaNScoreError(e.index // 2, f"the importance scores of ({type(module).__name__}, {name!r}) "
                                f"(parameters[{e.index // 2}]) contain NaN; NaN cannot be ranked") from None


def _blank_pruned(scores: torch.Tensor, competing: torch.Tensor, old_mask) -> torch.Tensor:
    """The scores with a NaN in an entry pruned before zeroed: it does not compete, so torch never
    sees it (``weight`` = ``weight_orig * mask`` is NaN there when ``weight_orig`` is ±inf or NaN).
    Copied only for a tensor holding one; looked for only once the kernel has found a NaN."""
    if old_mask is None or not bool(scores.isnan().any()):
        return scores
    return scores.masked_fill(~competing, 0)


def _apply(pairs: list, keep: list) -> None:
    for (module, name), mask in zip(pairs, keep):
        custom_from_mask(module, name, mask=mask)


def global_unstructured(parameters, pruning_method, importance_scores=None, *, backend="auto", **kwargs):
    """``torch.nn.utils.prune.global_unstructured`` with the exact selection: prune ``amount`` (a
    fraction of the weights not pruned yet, or a count) of all ``parameters`` (``(module, name)``
    pairs) together, ranked by ``importance_scores[(module, name)]`` (default: the parameter as the
    forward sees it). ``pruning_method``: ``L1Unstructured`` or ``RandomUnstructured`` (torch's or
    this module's); another method runs as torch runs it."""
    pairs = _targets(parameters)
    importance_scores = importance_scores if importance_scores is not None else {}
    if not isinstance(importance_scores, dict):
        raise TypeError("global_unstructured(): importance_scores must be of type dict")
    if not (isinstance(pruning_method, type) and issubclass(pruning_method, BasePruningMethod)):
        raise TypeError("pruning_method must be a torch.nn.utils.prune.BasePruningMethod subclass, "
                        f"got {pruning_method!r}")
    method = pruning_method(**kwargs)
    if method.PRUNING_TYPE != "unstructured":
        raise TypeError('Only "unstructured" PRUNING_TYPE supported for the `pruning_method`. '
                        f"Found method {pruning_method} of type {method.PRUNING_TYPE}")
    rule = _rule(method)
    if rule is None:
        return torch_prune.global_unstructured(pairs, pruning_method, importance_scores=importance_scores, **kwargs)
    scores = [importance_scores.get((module, name), getattr(module, name)) for module, name in pairs]
    _apply(pairs, _select(pairs, scores, method, rule, backend))


def _one(module, name, method, rule, importance_scores, backend, caller):
    if not isinstance(module, nn.Module):
        raise TypeError(f"{caller}(): module must be a torch.nn.Module, got {type(module).__name__}")
    if not isinstance(name, str):
        raise TypeError(f"{caller}(): name must be a str, got {type(name).__name__}")
    _check_prunable(module, name, caller + "()")
    if importance_scores is None:  # torch ranks module.<name> as it is (the masked tensor once pruned)
        importance_scores = getattr(module, name)
    pairs = [(module, name)]
    _apply(pairs, _select(pairs, [importance_scores], method, rule, backend))
    return module


def l1_unstructured(module, name, amount, importance_scores=None, *, backend="auto"):
    """``torch.nn.utils.prune.l1_unstructured`` with the exact selection: prune ``amount`` (a
    fraction of the entries not pruned yet, or a count) of ``module.<name>``'s entries of smallest
    |importance_scores| (default: the parameter). Returns ``module``."""
    _check_amount(amount)
    return _one(module, name, L1Unstructured(amount), "l1", importance_scores, backend, "l1_unstructured")


def random_unstructured(module, name, amount, *, backend="auto"):
    """``torch.nn.utils.prune.random_unstructured`` with the exact selection (torch's draw from the
    global RNG). Returns ``module``."""
    _check_amount(amount)
    return _one(module, name, RandomUnstructured(amount), "random", None, backend, "random_unstructured")
