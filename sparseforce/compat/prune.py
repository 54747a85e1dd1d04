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
* a NaN score raises ``ValueError`` naming the parameter (torch ranks NaN as the largest).

The masks are applied through torch's own reparametrisation (``prune.custom_from_mask``: the
``<name>_orig`` parameter, the ``<name>_mask`` buffer, the forward pre-hook), so ``prune.remove``,
``prune.is_pruned``, iterative pruning (the new mask is multiplied into the old one, and a fraction
counts the weights not pruned yet, as torch's ``PruningContainer`` does) and existing checkpoints
work as before. The one visible difference: the hook holds a ``CustomFromMask`` where torch's would
hold the method (``L1Unstructured(amount)``).

``RandomUnstructured`` draws the same numbers from the global RNG as torch does (the draw is the
op's job), so on the CPU its masks are torch's. A pruning method of your own (any other
``BasePruningMethod``) runs as torch runs it, through torch's ``global_unstructured``.
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


def _random_scores(competing: list, dtype: torch.dtype) -> list:
    """torch's draw (``rand_like`` over the competing entries in order: one stream, so one draw per
    tensor gives the same numbers on the CPU), as scores whose largest are the smallest draws:
    1 - u, exact in float32/float64 for every u torch draws (float64 for the half types)."""
    wide = dtype if dtype in (torch.float32, torch.float64) else torch.float64
    scores = []
    for c in competing:
        u = torch.rand(int(c.count_nonzero()), dtype=dtype, device=c.device)
        s = torch.zeros(c.shape, dtype=wide, device=c.device)
        s[c] = 1 - u.to(wide)
        scores.append(s)
    return scores


class L1Unstructured(torch_prune.L1Unstructured):
    """torch's ``L1Unstructured`` pruning exactly ``amount`` by the exact selection (ties: the lowest
    position is kept). Also what Lightning's ``ModelPruning(pruning_fn=...)`` and torch's own
    ``global_unstructured`` accept as a method; this module's ``global_unstructured`` does not
    concatenate."""

    def compute_mask(self, t, default_mask):
        nprune = pruned_count(self.amount, t.nelement())
        mask = default_mask.clone(memory_format=torch.contiguous_format)
        if nprune:
            keep = _exact_rank([t.detach()], [_keep_all(t)], nprune, "auto")[0]
            mask.masked_fill_(~keep, 0)
        return mask


class RandomUnstructured(torch_prune.RandomUnstructured):
    """torch's ``RandomUnstructured`` (the same draw from the global RNG) pruning exactly ``amount``
    of the largest draws by the exact selection."""

    def compute_mask(self, t, default_mask):
        nprune = pruned_count(self.amount, t.nelement())
        mask = default_mask.clone(memory_format=torch.contiguous_format)
        if nprune:
            competing = [_keep_all(t)]
            keep = _exact_rank(_random_scores(competing, t.dtype), competing, nprune, "auto")[0]
            mask.masked_fill_(~keep, 0)
        return mask


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
        if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], nn.Module)
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
    if is_pruned_name(module, name):
        return
    what = "a buffer" if name in module._buffers else ("missing" if not hasattr(module, name) else "not a parameter")
    raise ValueError(f"{where}: {type(module).__name__} has no parameter {name!r} to prune ({name!r} is {what})")


def is_pruned_name(module: nn.Module, name: str) -> bool:
    """True when ``module.<name>`` is pruned by ``torch.nn.utils.prune`` (a hook for it holds
    ``<name>_orig`` and ``<name>_mask``)."""
    return (f"{name}_orig" in module._parameters and f"{name}_mask" in module._buffers
            and any(isinstance(h, BasePruningMethod) and getattr(h, "_tensor_name", None) == name
                    for h in module._forward_pre_hooks.values())) or any(
        isinstance(h, PruningContainer) and h._tensor_name == name for h in module._forward_pre_hooks.values())


def _select(pairs: list, scores: list, method, rule: str, backend: str) -> list:
    """The new bool masks (all checks before any work, no module changed)."""
    for (module, name), s in zip(pairs, scores):
        if not isinstance(s, torch.Tensor) or not s.is_floating_point():
            raise TypeError(f"the importance scores of ({type(module).__name__}, {name!r}) must be a floating-point "
                            f"tensor, got {type(s).__name__ if not isinstance(s, torch.Tensor) else s.dtype}")
        if s.shape != getattr(module, name).shape:
            raise ValueError(f"the importance scores of ({type(module).__name__}, {name!r}) have shape "
                             f"{tuple(s.shape)}, the parameter {tuple(getattr(module, name).shape)}")
    devices = {s.device for s in scores}
    if len(devices) > 1:
        raise ValueError(f"the parameters and importance scores are on several devices ({sorted(map(str, devices))}); "
                         "the global selection needs them on one")
    old = [getattr(module, f"{name}_mask", None) for module, name in pairs]
    # torch's PruningContainer: the entries whose mask is 1 compete, the others stay pruned.
    competing = [_keep_all(s) if m is None else (m.detach() == 1).to(s.device) for m, s in zip(old, scores)]
    total = sum(int(c.count_nonzero()) for c in competing)
    nprune = pruned_count(method.amount, total)
    if rule == "random":
        if not nprune:  # torch draws nothing then
            return competing
        dtype = scores[0].dtype
        for s in scores[1:]:
            dtype = torch.promote_types(dtype, s.dtype)  # parameters_to_vector's cat
        scores = _random_scores(competing, dtype)
    with torch.no_grad():
        return _exact_rank([s.detach() for s in scores], competing, nprune, backend)


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
        raise TypeError(f"pruning_method must be a torch.nn.utils.prune.BasePruningMethod subclass, got {pruning_method!r}")
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
