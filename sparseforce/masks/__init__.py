"""Pruning masks: a validated container, a safe on-disk format, and enforcement during training.

A mask is a ``torch.bool`` tensor with the shape of the weight it prunes: ``True`` means the
weight is kept, ``False`` means it is pruned (held at exactly ``0.0``).

Public names:

* :class:`Masks` -- ordered, read-only mapping ``parameter name -> bool tensor`` with summary
  statistics (:meth:`Masks.density`, :meth:`Masks.per_layer`, :meth:`Masks.row_stats`, ...), the
  N:M check (:meth:`Masks.is_nm`, :meth:`Masks.nm_violations`), :meth:`Masks.save` /
  :meth:`Masks.load` (torch.save's format, or safetensors for a ``.safetensors`` path) and
  :meth:`Masks.check` against a model.
* :class:`LayerDensity` / :class:`LayerTable` -- the rows / table returned by ``per_layer()``;
  :class:`RowStats` / :class:`RowTable` -- those returned by ``row_stats()``.
* :class:`LayerCollapseWarning` -- issued by the pruning functions when a layer is left with no
  weights (:meth:`Masks.collapsed` lists them).
* :func:`format_percent` -- the density as every report shows it (percent, never rounded to 0 or
  100 unless it is).
* :class:`MasksFileError` -- raised by :meth:`Masks.load` for a file that is corrupt, truncated
  or not a masks file (a ``ValueError``).
* :func:`apply_masks` -- zero pruned weights and keep them zero under any torch optimizer;
  returns a :class:`MaskHandle` whose ``remove()`` stops the enforcement; :func:`refresh_masks`
  makes it enforce masks changed in place (dynamic sparse training).

The modules: :mod:`~sparseforce.masks.container` (``Masks``), :mod:`~sparseforce.masks.report`
(the per-layer and per-row tables and the percentages), :mod:`~sparseforce.masks.nm` (masks as
rows and the N:M pattern), :mod:`~sparseforce.masks.formats` (the files, over
plain dicts of tensors) and :mod:`~sparseforce.masks.enforce` (``apply_masks`` and its hooks).
"""

from __future__ import annotations

from .container import Masks
from .enforce import MaskHandle, apply_masks, refresh_masks
from .formats import FORMAT, FORMAT_VERSION, MasksFileError
from .report import LayerCollapseWarning, LayerDensity, LayerTable, RowStats, RowTable, format_percent

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "LayerCollapseWarning",
    "LayerDensity",
    "LayerTable",
    "MaskHandle",
    "Masks",
    "MasksFileError",
    "RowStats",
    "RowTable",
    "apply_masks",
    "format_percent",
    "refresh_masks",
]

