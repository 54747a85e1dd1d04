"""sparseforce: pruning at initialization — FORCE, Iter SNIP and the methods they are compared
with — with a pure-PyTorch reference and fused kernels behind one API.

    import sparseforce as sf
    masks = sf.force(model, loader, sparsity=0.995, iterations=60)
    sf.apply_masks(model, masks)
"""
__version__ = "0.1.0"

from . import ops
from .masks import Masks, apply_masks
from .pruning import force, grasp, iter_snip, magnitude, prune, random, snip, synflow

__all__ = ["ops", "Masks", "apply_masks", "force", "iter_snip", "snip", "grasp", "synflow", "magnitude",
           "random", "prune", "__version__"]
