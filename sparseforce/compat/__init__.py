"""Drop-ins for the pruning APIs people already call, running on sparseforce's exact kernels.

* :mod:`sparseforce.compat.prune` -- ``torch.nn.utils.prune``'s functions and classes with the same
  signatures (``from sparseforce.compat import prune``): ``global_unstructured``, ``l1_unstructured``
  and ``random_unstructured`` select with the exact kernels (no concatenation, exactly the amount
  asked, ties by position) and apply through torch's own reparametrisation; the rest is torch's.
* :mod:`sparseforce.compat.ao` -- a ``torch.ao.pruning.BaseSparsifier`` whose masks come from any
  sparseforce method, for ao's ``prepare`` / ``step`` / ``squash_mask`` flow and its schedulers.
* :mod:`sparseforce.compat.lightning` -- a Lightning callback that prunes at the start of ``fit``
  and keeps the pruned weights at zero (needs ``sparseforce[lightning]``).

Each submodule loads on first use, so importing this package imports none of them.
"""
from __future__ import annotations

import importlib

__all__ = ["prune", "ao", "lightning"]


def __getattr__(name):
    if name in __all__:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
