"""sparseforce: pruning at initialization — FORCE, Iter SNIP and the methods they are compared
with — with a pure-PyTorch reference and fused kernels behind one API.

    import sparseforce as sf
    masks = sf.force(model, loader, sparsity=0.995, iterations=60)
    sf.apply_masks(model, masks)        # keeps pruned weights at 0 under any torch optimizer
    # or a masked optimizer on the fused update, or the paper's whole training recipe:
    opt = sf.MaskedSGD(model.named_parameters(), masks, lr=0.1, momentum=0.9, weight_decay=5e-4)
    sf.fit(model, masks, train_set, val_set, test_set, recipe="cifar", out_dir="runs/x")  # resume=True
    sf.to_semi_structured(model.half().cuda(), masks)  # 2:4 masks (nm=(2, 4)): sparse tensor cores
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

__all__ = ["ops", "Masks", "MasksFileError", "LayerCollapseWarning", "apply_masks", "force", "iter_snip", "snip", "grasp", "synflow", "magnitude",
           "random", "prune", "prunable_names", "MaskedSGD", "MaskedAdamW", "fit", "Recipe", "to_semi_structured", "__version__"]

# Every name loads on first use, so that `import sparseforce` (which `sparseforce --help` and
# `python -m sparseforce` do first) does not import torch; name -> the submodule defining it.
_LAZY = {"Masks": "masks", "MasksFileError": "masks", "LayerCollapseWarning": "masks", "apply_masks": "masks", "MaskedSGD": "optim", "MaskedAdamW": "optim",
         "fit": "train", "Recipe": "train", "to_semi_structured": "export",
         **{name: "pruning" for name in ("force", "iter_snip", "snip", "grasp", "synflow", "magnitude", "random",
                                         "prune", "prunable_names")}}
# Every public submodule is an attribute too (`sf.models.resnet50()`, as `torch.optim` is), loaded
# on first access like the names above.
_SUBMODULES = ("ablations", "bench", "cli", "compat", "data", "ddp", "demo", "distributed", "dst", "durations", "export", "hf",
               "masks", "models", "ops", "optim", "pruning", "train")

if TYPE_CHECKING:
    from . import (ablations, bench, cli, compat, data, ddp, demo, distributed, dst, durations, export, hf, masks, models,
                   ops, optim, pruning, train)
    from .export import to_semi_structured
    from .masks import LayerCollapseWarning, Masks, MasksFileError, apply_masks
    from .optim import MaskedAdamW, MaskedSGD
    from .pruning import force, grasp, iter_snip, magnitude, prunable_names, prune, random, snip, synflow
    from .train import Recipe, fit


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__) | set(_SUBMODULES))
