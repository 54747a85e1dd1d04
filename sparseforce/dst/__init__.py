"""Dynamic sparse training on the fused drop/grow op: :class:`RigL`, :class:`SET` and
:class:`GradualMagnitude`, each bound to a model, its masks and its optimizer and called once per
training step after ``optimizer.step()``.

Modules: ``schedules`` (when to update, the cosine drop fraction, the cubic sparsity),
``gradients`` (the dense gradient, captured at update steps only), ``selection`` (the
``ops.drop_grow_masks`` call; the sharded form), ``updater`` (masks, weights, optimizer state and
enforcement after a selection), ``base`` (the step counter and ``state_dict``), and one module per
method.
"""
from __future__ import annotations

from .gradual import GradualMagnitude
from .rigl import RigL
from .set import SET

__all__ = ["RigL", "SET", "GradualMagnitude"]
