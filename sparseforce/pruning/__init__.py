"""Pruning methods: FORCE and Iter SNIP (progressive) and the baselines they are compared with."""
from __future__ import annotations

from .. import _checks
from .._prunable import prunable_names
from ._budgets import DISTRIBUTIONS, layer_counts
from ._scope import LAYER_DISTRIBUTIONS, SCOPES, check_layers, check_scope
from .baselines import magnitude, random
from .grasp import grasp
from .methods import METHODS, Method
from .progressive import force, iter_snip, snip
from .schedules import (K_ROUNDINGS, SCHEDULES, densities, keep_count, keep_counts, official_force_densities,
                        synaptic_flow_densities)
from .synflow import synflow

DATA_FREE = tuple(sorted(name for name, m in METHODS.items() if not m.needs_data))


def check_method(method) -> Method:
    """The :data:`METHODS` entry ``method`` names, or the error saying what the names are."""
    if not isinstance(method, str):
        raise TypeError(f"method must be the name of a pruning method, one of {sorted(METHODS)}, "
                        f"got {_checks.describe(method)}")
    if method not in METHODS:
        raise ValueError(f"unknown pruning method {method!r}; choose one of {sorted(METHODS)}")
    return METHODS[method]


def prune(model, data=None, method="force", sparsity=None, **kw):
    """One entry point for every method: ``prune(model, data, method="force", sparsity=0.99, ...)``.

    ``data`` is ignored by the data-free ``magnitude`` and ``random`` (and read for its input
    shape only by ``synflow``); the rest of the keywords go to the method, see its docstring (a
    one-shot iterator as ``data``, the random state, the collapse warning, ``k_rounding``,
    ``train_mode``, ``invert``, and ``scope`` / ``distribution`` / ``nm`` for the methods that
    rank scores). With ``nm=(n, m)``, ``sparsity`` may be left out: it is 1 - n/m."""
    entry = check_method(method)
    if sparsity is None and kw.get("nm") is None:
        raise ValueError("prune() needs sparsity= (the fraction of prunable weights to remove), or nm=(n, m) for a "
                         "method that ranks scores")
    if not entry.takes_data:
        return entry.function(model, sparsity=sparsity, **kw)
    return entry.function(model, data, sparsity=sparsity, **kw)


__all__ = ["force", "iter_snip", "snip", "grasp", "synflow", "magnitude", "random", "prune", "prunable_names",
           "METHODS", "Method", "DATA_FREE", "SCHEDULES", "K_ROUNDINGS", "densities", "keep_count", "keep_counts",
           "layer_counts", "DISTRIBUTIONS", "SCOPES", "LAYER_DISTRIBUTIONS", "check_scope", "check_layers", "check_method", "official_force_densities",
           "synaptic_flow_densities"]
