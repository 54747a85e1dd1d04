"""The method table: one plain-data entry per pruning method, read by :func:`sparseforce.prune`, the
CLI and the demo, so that what a method takes and runs is written in one place.

Each entry's options and their defaults are read from the method's own signature (everything it
takes besides ``model``, ``data`` and ``sparsity``): a method that ranks scores has ``scope``,
``distribution`` and ``nm`` among them, ``random`` only its own ``distribution``.
"""
from __future__ import annotations

import dataclasses
import inspect
import types
from collections.abc import Callable, Mapping
from typing import Any

from ._scope import SEGMENTED_OPS
from .baselines import magnitude, random
from .grasp import grasp
from .progressive import force, iter_snip, snip
from .synflow import synflow


@dataclasses.dataclass(frozen=True)
class Method:
    """One pruning method as the package runs it: what to call, the keywords it takes and the
    kernels it needs (``METHODS[name](...)`` calls ``function``)."""

    name: str  # "force"
    function: Callable  # sparseforce.force
    options: Mapping[str, Any]  # the keywords it takes besides model, data and sparsity -> their defaults
    needs_data: bool  # False: data-free (magnitude, random; synflow reads at most the input shape from data)
    ops: tuple[str, ...]  # the sparseforce.ops ops its backend check resolves (invert=True also ranks with topk_masks)
    takes_data: bool  # False: the function has no data argument (magnitude, random)
    # What it resolves instead with scope="layer" or nm (invert=True also ranks with segmented_topk_masks).
    segmented_ops: tuple[str, ...] = ()

    def ops_for(self, scope: str | None = None, nm=None) -> tuple[str, ...]:
        """The ops a run with this ``scope`` / ``nm`` resolves (and ranks with)."""
        return self.ops if (scope in (None, "global") and nm is None) else self.segmented_ops

    def __call__(self, *args, **kw):
        # METHODS mapped names to the functions themselves before it held these entries.
        return self.function(*args, **kw)


def _method(function: Callable, needs_data: bool, ops: tuple[str, ...]) -> Method:
    parameters = inspect.signature(function).parameters
    options = {name: p.default for name, p in parameters.items() if name not in ("model", "data", "sparsity")}
    return Method(function.__name__, function, types.MappingProxyType(options), needs_data, ops,
                  takes_data="data" in parameters, segmented_ops=tuple(SEGMENTED_OPS[op] for op in ops))


METHODS: Mapping[str, Method] = {m.name: m for m in (
    _method(force, True, ("saliency_topk_masks",)),
    _method(iter_snip, True, ("saliency_topk_masks",)),
    _method(snip, True, ("saliency_topk_masks",)),
    _method(grasp, True, ("topk_masks",)),
    _method(synflow, False, ("saliency_topk_masks",)),
    _method(magnitude, False, ("topk_masks",)),
    _method(random, False, ()),
)}
