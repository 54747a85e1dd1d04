"""sparseforce: pruning at initialization — FORCE, Iter SNIP and the methods they are compared
with — with a pure-PyTorch reference and fused kernels behind one API.

    import sparseforce as sf
    masks = sf.force(model, loader, sparsity=0.995, iterations=60)
    sf.apply_masks(model, masks)        # keeps pruned weights at 0 under any torch optimizer
    # or a masked optimizer on the fused update, or the paper's whole training recipe:
    opt = sf.MaskedSGD(model.named_parameters(), masks, lr=0.1, momentum=0.9, weight_decay=5e-4)
    sf.fit(model, masks, train_set, val_set, test_set, recipe="cifar", out_dir="runs/x")  # resume=True
"""
__version__ = "0.1.0"

from . import ops
from .masks import LayerCollapseWarning, Masks, MasksFileError, apply_masks
from .optim import MaskedAdamW, MaskedSGD
from .pruning import force, grasp, iter_snip, magnitude, prune, random, snip, synflow

__all__ = ["ops", "Masks", "MasksFileError", "apply_masks", "LayerCollapseWarning", "force", "iter_snip", "snip", "grasp", "synflow",
           "magnitude", "random", "prune", "MaskedSGD", "MaskedAdamW", "fit", "Recipe", "__version__"]

# The training loop pulls in the data readers (numpy, PIL); load it only when asked for.
_LAZY = {"fit": "train", "Recipe": "train"}


def __getattr__(name):
    if name == "distributed":  # sf.distributed: torch.distributed helpers, loaded on first use
        import importlib
        return importlib.import_module(".distributed", __name__)
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
