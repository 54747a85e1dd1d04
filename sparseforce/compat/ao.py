"""A ``torch.ao.pruning`` sparsifier whose masks come from any sparseforce method: ao's
``prepare`` / ``step`` / ``squash_mask`` flow and schedulers (``LambdaSL``, ``CubicSL``), with
FORCE, Iter SNIP, SNIP, GraSP, SynFlow, magnitude or random doing the selection.

    from sparseforce.compat.ao import Sparsifier    # was: WeightNormSparsifier(sparsity_level=0.9)
    sparsifier = Sparsifier("force", train_loader, defaults={"sparsity_level": 0.9}, iterations=20)
    sparsifier.prepare(model, config=None)           # ao's FakeSparsity on every Linear weight
    sparsifier.step()                                # one FORCE run over all groups
    sparsifier.squash_mask()

``step()`` runs the method ONCE for all the groups (``sparseforce.prune(..., prunable=<the groups'
tensors>)``), then ao's own loop calls :meth:`Sparsifier.update_mask` per group, which copies that
group's mask into its ``FakeSparsity`` mask. The method sees the model as its forward computes it
now (each tensor = original ⊙ current mask) under its plain names, on a copy: the caller's model,
its other state and the global RNG are untouched (the copy costs one model's memory during the step).

The groups' ``sparsity_level`` (set by ``defaults``, the config or a scheduler) say what is kept:

* ``scope="global"`` (default): one ranking across all groups, so all groups must have one level
  (a ``ValueError`` naming them when they differ).
* ``scope="layer"``: each group keeps its own budget. With ``distribution`` left out (uniform), each
  group is at its own level: equal levels are sparseforce's ``scope="layer"``; differing ones its
  ``distribution={tensor: 1 - level}`` at their size-weighted mean (each group within one weight
  of its level's count, the counts summing to the mean's). ``"erk"`` or a dict shares one level out
  among the groups as sparseforce does, so the groups' levels must agree there too.
* ``nm=(n, m)``: the pattern alone fixes what is kept; a group's level must be 1 - n/m (pruned to
  the pattern) or 0 (not pruned yet: an all-ones mask, as schedulers start), nothing else. The
  default level is 1 - n/m.

ao's own sparsifiers, schedulers and ``FakeSparsity`` are re-exported, so ``from sparseforce.compat
import ao as pruning`` can replace ``import torch.ao.pruning as pruning``.

``random`` ranks nothing: its scope is its own ``distribution`` ("global", or "uniform" / "erk" with
``scope="layer"``), with one level for all groups and no ``nm``.
"""
from __future__ import annotations

import copy
import math
from fractions import Fraction

import torch
from torch import nn
from torch.ao.pruning import BaseScheduler, BaseSparsifier, CubicSL, FakeSparsity, LambdaSL, WeightNormSparsifier
from torch.nn.utils import parametrize

from .. import ops, pruning
from ..masks import torch_ao
from ..pruning import schedules

__all__ = [
    "Sparsifier",
    # torch.ao.pruning's own, re-exported so that `import torch.ao.pruning as pruning` can change alone
    "BaseSparsifier", "WeightNormSparsifier", "FakeSparsity", "BaseScheduler", "LambdaSL", "CubicSL",
]

# The keywords Sparsifier sets itself from the groups and its own arguments.
_RESERVED = ("model", "data", "sparsity", "prunable", "scope", "distribution", "nm", "backend")


class Sparsifier(BaseSparsifier):
    """``torch.ao.pruning.BaseSparsifier`` on a sparseforce method (see the module's docstring).

    ``method``: a name of :data:`sparseforce.pruning.METHODS`; ``data``: the batches of the methods
    that need them (as :func:`sparseforce.prune` takes them); ``scope`` / ``distribution`` / ``nm``
    and ``backend`` as sparseforce's; ``defaults``: ao's (``{"sparsity_level": 0.5}``, or 1 - n/m
    with ``nm``); ``**options``: the method's other keywords (``iterations=``, ``loss_fn=``, ...).
    Every argument is checked here, the config at :meth:`prepare`, before the model is changed.
    """

    def __init__(self, method: str = "magnitude", data=None, *, scope: str = "global", distribution=None, nm=None,
                 backend: str = "auto", defaults: dict | None = None, **options):
        if not isinstance(method, str) or method not in pruning.METHODS:
            raise ValueError(f"method must be one of {sorted(pruning.METHODS)}, got {method!r}")
        entry = pruning.METHODS[method]
        if entry.needs_data and data is None:
            raise ValueError(f"method {method!r} computes its masks from batches: pass them as data")
        unknown = sorted(set(options) - set(entry.options) | set(options) & set(_RESERVED))
        if unknown:
            raise TypeError(f"Sparsifier(method={method!r}) got unexpected options {unknown}; it takes "
                            f"{sorted(set(entry.options) - set(_RESERVED))} (the groups' sparsity_level and "
                            "tensors say what is pruned)")
        if defaults is not None and not isinstance(defaults, dict):
            raise TypeError(f"defaults must be a dict (ao's group defaults), got {type(defaults).__name__}")
        self._scope, default_level = pruning.check_scope(scope, distribution, nm, 0.5 if nm is None else None, method)
        if method == "random" and (nm is not None or not isinstance(distribution, (str, type(None)))):
            raise ValueError("method 'random' takes scope='global', or scope='layer' with distribution 'uniform' "
                             "or 'erk', and no nm")
        if backend != "auto" and backend not in ops.KNOWN_BACKENDS or method == "random" and backend != "auto":
            raise ValueError(f"backend must be 'auto' or one of {ops.KNOWN_BACKENDS} (method 'random' uses no "
                             f"kernel: 'auto' only), got {backend!r}")
        self._ops = entry.ops_for(scope, nm)
        self.method, self.data, self.backend, self.options = method, data, backend, options
        self._pending: dict | None = None
        defaults = {"sparsity_level": default_level, **(defaults or {})}
        defaults["sparsity_level"] = self._level("defaults", defaults["sparsity_level"])
        self._check_levels({"defaults": defaults["sparsity_level"]})
        super().__init__(defaults)

    def prepare(self, model: nn.Module, config) -> None:
        """ao's ``prepare``, after checking the whole config against ``model`` (tensors that exist,
        levels, the scope's needs), so that a bad config leaves ``model`` as it was."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if config is None:
            self.make_config_from_model(model)
            config = self.config
        params = dict(model.named_parameters())
        levels = {}
        for i, entry in enumerate(config):
            if not isinstance(entry, dict) or not isinstance(entry.get("tensor_fqn"), str):
                raise TypeError(f"config[{i}] must be a dict with a 'tensor_fqn' (the name of a tensor to sparsify), "
                                f"got {entry!r}")
            name = entry["tensor_fqn"]
            if name not in params or not params[name].is_floating_point():
                raise ValueError(f"config[{i}]: tensor_fqn {name!r} is no floating-point parameter of the model")
            if name in levels:
                raise ValueError(f"config[{i}]: tensor_fqn {name!r} is configured twice")
            levels[name] = self._level(f"config[{i}]", entry.get("sparsity_level", self.defaults["sparsity_level"]))
        self._selection(levels, {n: tuple(params[n].shape) for n in levels})
        for op in self._ops:  # the backend on the model's device: an unavailable one says why
            ops.resolve(self.backend, op, next(iter(params[n] for n in levels)).device)
        super().prepare(model, config)

    def step(self, use_path: bool = True) -> None:
        """Compute every group's mask in one call of the method, then let ao's loop write them."""
        if not self.enable_mask_update:
            return
        self._pending = self._masks()
        try:
            super().step(use_path)
        finally:
            self._pending = None

    def update_mask(self, module: nn.Module, tensor_name: str, **kwargs) -> None:
        """Copy the mask :meth:`step` computed for this group into its ``FakeSparsity`` mask."""
        if self._pending is None:
            raise RuntimeError("Sparsifier.update_mask writes the masks step() computes for all groups at once; "
                               "call step()")
        mask = self._pending[torch_ao.tensor_name(kwargs["module_fqn"], tensor_name)]
        for fake in torch_ao.fake_sparsities(module, tensor_name):
            fake.mask.copy_(mask)

    # -- the selection ------------------------------------------------------------------------

    def _masks(self) -> dict:
        """name -> bool mask of every group, from one call of the method on the effective model."""
        groups = {torch_ao.tensor_name(g["module_fqn"], g["tensor_name"]): g for g in self.groups}
        levels = {n: self._level(f"group {n!r}", g["sparsity_level"]) for n, g in groups.items()}
        model = _effective_copy(self.model)
        params = dict(model.named_parameters())
        kw = self._selection(levels, {n: tuple(params[n].shape) for n in levels})
        masks = {n: torch.ones_like(params[n], dtype=torch.bool) for n in levels}
        if kw is None:
            return masks
        if self._ops:
            kw["backend"] = self.backend
        masks.update(pruning.prune(model, self.data, method=self.method, **kw, **self.options))
        return masks

    def _check_levels(self, levels: dict) -> None:
        """Raise unless the groups' ``levels`` (name -> level) fit the scope (see the module's docstring)."""
        scope = self._scope
        if scope.nm is not None:
            n, m = scope.nm
            off = {k: v for k, v in levels.items() if v != 0 and not math.isclose(v, 1.0 - n / m, rel_tol=1e-9,
                                                                                   abs_tol=1e-12)}
            if off:
                raise ValueError(f"nm=({n}, {m}) prunes a group to sparsity_level {1.0 - n / m!r} (or 0: not yet), "
                                 f"but {_show(off)}")
        elif len(set(levels.values())) > 1 and not (scope.name == "layer" and scope.distribution == "uniform"
                                                    and self.method != "random"):
            how = "method 'random' draws every group at one level" if self.method == "random" else \
                "scope='global' ranks all groups together" if scope.name == "global" else \
                f"distribution={_show_distribution(scope.distribution)} shares one level out among the groups"
            raise ValueError(f"{how}, so they need one sparsity_level, but {_show(levels)}; give them one level or "
                             "use scope='layer' without a distribution (each group at its own level)")

    def _selection(self, levels: dict, shapes: dict) -> dict | None:
        """``sparsity`` / ``prunable`` / scope keywords of the one call for these group levels and
        tensor shapes (None: nothing is pruned), or the error saying why they do not fit."""
        self._check_levels(levels)
        scope = self._scope
        if scope.nm is not None:
            pruned = [k for k, v in levels.items() if v != 0]
            pruning.check_layers(scope, pruned, [shapes[k] for k in pruned])
            return {"prunable": pruned, "nm": scope.nm} if pruned else None
        names = list(levels)
        pruning.check_layers(scope, names, [shapes[n] for n in names])
        kw = {"prunable": names}
        if self.method == "random":
            kw["distribution"] = "global" if scope.name == "global" else scope.distribution
        elif scope.name == "layer":
            kw["scope"] = "layer"
            kw["distribution"] = scope.distribution if scope.distribution != "uniform" else None
        distinct = set(levels.values())
        if len(distinct) == 1:
            return {**kw, "sparsity": distinct.pop()}
        sizes = {n: math.prod(shapes[n]) for n in names}
        kept = sum(Fraction(1 - levels[n]) * sizes[n] for n in names)
        kw["distribution"] = {n: 1 - levels[n] for n in names}
        return {**kw, "sparsity": float(1 - kept / sum(sizes.values()))}

    @staticmethod
    def _level(where: str, level) -> float:
        try:
            return schedules.check_sparsity(level)
        except (TypeError, ValueError) as e:
            raise type(e)(f"{where}: sparsity_level {level!r} is not a fraction of weights to prune in [0, 1]") \
                from None


def _show(levels: dict) -> str:
    shown = ", ".join(f"{n!r}: {v!r}" for n, v in list(levels.items())[:6])
    return f"the groups' levels are {shown}{', ...' if len(levels) > 6 else ''}"


def _show_distribution(distribution) -> str:
    return repr(distribution) if isinstance(distribution, str) else "{...}"


def _effective_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every parametrized tensor replaced by its value (what the forward
    computes: original ⊙ mask for ao's FakeSparsity), as a plain parameter (or buffer) under its own
    name. Not ``remove_parametrizations`` on a deepcopy: the copy shares its modules' parametrized
    classes with the original, and removing deletes the property from that class."""
    plain = copy.deepcopy(model)
    for module in plain.modules():
        if not parametrize.is_parametrized(module):
            continue
        with torch.no_grad():
            values = {t: (getattr(module, t), getattr(module.parametrizations[t], "original", None))
                      for t in module.parametrizations}
        module.__class__ = parametrize.type_before_parametrizations(module)
        delattr(module, "parametrizations")
        for t, (value, original) in values.items():
            if isinstance(original, nn.Parameter):
                module.register_parameter(t, nn.Parameter(value, requires_grad=original.requires_grad))
            else:
                module.register_buffer(t, value)
    return plain
