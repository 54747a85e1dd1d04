"""The sanity checks of Frankle et al., ICLR 2021 ("Pruning Neural Networks at Initialization: Why
are We Missing the Mark?"): does a method's result depend on *which* weights it keeps within a
layer, and on the weights' values at initialization?

    import sparseforce as sf
    masks = sf.force(model, loader, sparsity=0.99)
    shuffled = sf.ablations.shuffle(masks, seed=1)      # same per-layer counts, random positions
    sf.fit(model, masks, train, val, test, reinit=1)     # same masks, fresh initialization
    inverted = sf.force(model, loader, sparsity=0.99, invert=True)   # keep the lowest scores

* :func:`shuffle`: permute each layer's mask within the layer.
* :func:`reinit` (and ``sparseforce.fit(..., reinit=seed)``): draw the model's parameters again
  from their initialization before training the same masks.
* inversion is an option of the score-based methods (``invert=True``), not an operation on masks.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn as nn

from . import _checks
from .masks import Masks

__all__ = ["shuffle", "reinit"]


def shuffle(masks, seed=0) -> Masks:
    """A new :class:`sparseforce.Masks` in which each layer's mask is a random permutation of
    itself: every layer keeps as many weights as before, at positions uniformly random within
    the layer. Shapes, devices and dtype are those of ``masks``, which is not modified.

    The permutations are drawn on the CPU from a generator seeded with ``seed`` (an integer in
    [0, 2**32)), one layer after the other in the masks' order, so the same seed gives the same
    result on any device; the global random state is not touched.
    """
    if not isinstance(masks, Masks):
        if not hasattr(masks, "items"):
            raise TypeError(f"masks must be a sparseforce.Masks or a mapping name -> bool tensor, "
                            f"got {_checks.describe(masks)}")
        masks = Masks(masks)  # checks names and dtypes
    seed = _checks.seed(seed)
    if masks.is_sharded:
        raise ValueError("shuffle() on sharded (DTensor) masks: call masks.full() on every rank first")
    meta = [name for name, m in masks.items() if m.is_meta]
    if meta:
        raise ValueError(f"shuffle() needs the masks' values; {meta[0]!r} is on the meta device")
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, m in masks.items():
        flat = m.detach().reshape(-1).cpu()
        out[name] = flat[torch.randperm(flat.numel(), generator=gen)].view(m.shape).to(m.device)
    return Masks(out)


def reinit(model: nn.Module, seed=0) -> nn.Module:
    """Re-initialize ``model`` in place with fresh random values and return it.

    Calls ``reset_parameters()`` of every module that has one, children before their parent (a
    shared module once), so a container that defines its own initialization has the last word:
    every model of :mod:`sparseforce.models` does (``kaiming_init_``, the one it was built
    with), so its fresh values come from the same distribution as at construction. For torch's
    layers this re-draws ``Conv``/``Linear`` weights and biases with torch's default
    initialization, resets norm layers to weight 1, bias 0 and their running statistics
    (BatchNorm), and re-draws embeddings. Parameters of modules without ``reset_parameters()``
    (and no ancestor with one) keep their values, with a ``UserWarning`` naming them; other
    buffers, ``requires_grad``, ``.grad`` and the train/eval mode are left as they are.

    The draws come from torch's global generators (the CPU one and those of the CUDA devices the
    model is on), forked and seeded with ``seed`` (an integer in [0, 2**32)): the caller's random
    state is as it was afterwards, and the same seed on the same device gives the same values.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {_checks.describe(model)}")
    seed = _checks.seed(seed)
    from .pruning._state import own_rng

    done: set[int] = set()
    untouched: list[str] = []

    def visit(module: nn.Module, prefix: str, covered: bool) -> None:
        if id(module) in done:
            return
        done.add(id(module))
        resets = callable(getattr(module, "reset_parameters", None))
        for name, child in module.named_children():
            visit(child, f"{prefix}{name}.", covered or resets)
        if not (covered or resets):
            untouched.extend(prefix + name for name, _ in module.named_parameters(recurse=False))
        if resets:
            module.reset_parameters()

    with own_rng(model, seed), torch.no_grad():
        visit(model, "", False)
    if untouched:
        shown = ", ".join(untouched[:5]) + (", ..." if len(untouched) > 5 else "")
        warnings.warn(f"reinit: {len(untouched)} parameter(s) belong to modules without reset_parameters() and "
                      f"keep their values: {shown}", UserWarning, stacklevel=2)
    return model
