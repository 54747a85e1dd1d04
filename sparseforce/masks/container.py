"""The :class:`Masks` container: an ordered, read-only mapping ``parameter name -> bool tensor``,
validated when built, with its statistics, its files and a check against a model.

``Masks`` equality compares names (ignoring order, like ``dict``), shapes and values.
"""
from __future__ import annotations

import collections.abc
import difflib
import os
from typing import Any, Iterable, Iterator, Mapping, Optional, Union

import torch
import torch.nn as nn

from .. import _prunable
from . import formats, nm
from .formats import MasksFileError
from .report import LayerDensity, LayerTable, RowStats, RowTable, format_percent, safe_density, shape_str

__all__ = ["Masks", "check_dense", "check_model", "is_sharded", "unknown_names"]

PathLike = Union[str, "os.PathLike[str]"]


def is_sharded(t) -> bool:
    """True for a DTensor (a mask or weight of an FSDP2 model: each rank holds a shard)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed
        return False
    return isinstance(t, DTensor)


class Masks(collections.abc.Mapping):
    """Ordered, read-only mapping ``parameter name -> torch.bool tensor``.

    The tensors are stored as given (no copy), so building a ``Masks`` from masks that live on
    a GPU costs nothing; use :meth:`to` to move them.
    """

    __slots__ = ("_masks",)

    def __init__(self, mapping: Union[Mapping[str, torch.Tensor], Iterable] = ()):
        takes = "Masks() takes a mapping name -> bool tensor or an iterable of (name, tensor) pairs, got "
        if isinstance(mapping, collections.abc.Mapping):
            items = mapping.items()
        elif isinstance(mapping, (str, bytes, torch.Tensor)) or not isinstance(mapping, collections.abc.Iterable):
            # A string or tensor iterates, but into characters or rows, not pairs.
            raise TypeError(takes + (f"{type(mapping).__name__} {mapping!r}" if isinstance(mapping, (str, bytes))
                                     else type(mapping).__name__))
        else:
            items = mapping
        masks: dict = {}
        for entry in items:
            if not isinstance(entry, (tuple, list)) or len(entry) != 2:
                raise TypeError(takes + f"an entry that is not a (name, tensor) pair: {type(entry).__name__}"
                                + (f" of length {len(entry)}" if isinstance(entry, (tuple, list)) else ""))
            name, mask = entry
            if not isinstance(name, str):
                raise TypeError(f"mask names must be str, got {type(name).__name__}: {name!r}")
            if not isinstance(mask, torch.Tensor):
                raise TypeError(
                    f"mask {name!r} must be a torch.Tensor of dtype torch.bool, "
                    f"got {type(mask).__name__}"
                )
            if mask.dtype != torch.bool:
                raise TypeError(
                    f"mask {name!r} must have dtype torch.bool, got {mask.dtype} "
                    f"(convert explicitly, e.g. `m != 0`, so that the intent is clear)"
                )
            check_dense(f"mask {name!r}", mask, meta_ok=True)  # a meta mask is fine until it is applied
            if name in masks:
                raise ValueError(f"duplicate mask name {name!r}")
            masks[name] = mask
        self._masks = masks

    # -- Mapping protocol ----------------------------------------------------------------------

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._masks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    def __contains__(self, name: object) -> bool:
        return name in self._masks

    def __eq__(self, other: object) -> bool:
        # Mapping.__eq__ would compare tensors with `==`, which is elementwise and cannot be
        # turned into a bool for multi-element tensors.
        if not isinstance(other, collections.abc.Mapping):
            return NotImplemented
        if set(self._masks) != set(other.keys()):
            return False
        for name, a in self._masks.items():
            b = other[name]
            if not isinstance(b, torch.Tensor) or a.dtype != b.dtype or a.shape != b.shape:
                return False
            if is_sharded(a) or is_sharded(b):  # shard by shard: no collective
                if not (is_sharded(a) and is_sharded(b)) or a.placements != b.placements:
                    return False
                a, b = a.to_local(), b.to_local()
            if a.device != b.device:
                a, b = a.cpu(), b.cpu()
            if not torch.equal(a, b):
                return False
        return True

    __hash__ = None  # type: ignore[assignment]

    # -- statistics ----------------------------------------------------------------------------

    def numel(self) -> int:
        """Total number of mask entries (kept + pruned)."""
        return sum(m.numel() for m in self._masks.values())

    # -- sharded masks (FSDP2: DTensors) ----------------------------------------------------------

    @property
    def is_sharded(self) -> bool:
        """True for masks that are DTensors (from pruning an FSDP2 model): each rank holds only
        its shard of every mask."""
        return any(is_sharded(m) for m in self._masks.values())

    def full(self) -> "Masks":
        """Plain (unsharded) masks on every rank: gathers sharded masks (a collective: call it on
        every rank); masks that are not sharded are returned as they are."""
        return Masks({n: m.full_tensor() if is_sharded(m) else m for n, m in self._masks.items()})

    def _require_full(self, what: str) -> None:
        # Counting a sharded mask needs every rank; silently counting this rank's shard would be
        # wrong, and gathering here would hang when only one rank asks.
        if self.is_sharded:
            raise ValueError(f"Masks.{what}() on sharded (DTensor) masks: call masks.full() on every rank "
                             "first, then use the full masks")

    def num_kept(self) -> int:
        """Number of ``True`` (kept) entries over all masks."""
        self._require_full("num_kept")
        return sum(int(m.count_nonzero()) for m in self._masks.values())

    def density(self) -> float:
        """Kept / total over all masks; 1.0 when there are no elements (nothing pruned)."""
        return safe_density(self.num_kept(), self.numel())

    def sparsity(self) -> float:
        """``1 - density()``."""
        return 1.0 - self.density()

    def collapsed(self) -> list:
        """Names of the masks that keep no weight at all (layer collapse), in order; a mask with
        no elements has nothing to lose and is never listed."""
        self._require_full("collapsed")
        return [n for n, m in self._masks.items() if m.numel() and not bool(m.any())]

    def per_layer(self) -> LayerTable:
        """One :class:`LayerDensity` row per mask, in order; ``str()`` of it is a table (densities
        and sparsities in percent, see :func:`format_percent`)."""
        self._require_full("per_layer")
        rows = LayerTable()
        for name, m in self._masks.items():
            kept = int(m.count_nonzero())
            rows.append(LayerDensity(name, tuple(m.shape), m.numel(), kept,
                                     safe_density(kept, m.numel())))
        return rows

    def row_stats(self) -> RowTable:
        """One :class:`RowStats` per mask, in order: its rows (the mask viewed as (dim 0, the rest
        flattened), as ``segment="row"`` and N:M selections view it), the least, mean and most
        entries kept per row and the number of rows keeping nothing; ``str()`` of it is a table."""
        self._require_full("row_stats")
        rows = RowTable()
        for name, m in self._masks.items():
            matrix = nm.as_rows(m)
            counts = matrix.sum(dim=1)
            least, most = (int(c) for c in counts.aminmax()) if counts.numel() else (0, 0)
            rows.append(RowStats(name, matrix.shape[0], matrix.shape[1], int(counts.sum()), least, most,
                                 int((counts == 0).count_nonzero())))
        return rows

    def is_nm(self, n: int, m: int) -> bool:
        """True when every mask keeps exactly ``n`` of every ``m`` consecutive entries along its
        rows (the mask viewed as (dim 0, the rest flattened): a Linear weight's input dimension);
        False when some mask's rows do not split into groups of ``m`` or a group keeps another
        count. :meth:`nm_violations` says where."""
        nm.check_nm(n, m)
        self._require_full("is_nm")
        return not self.nm_violations(n, m)

    def nm_violations(self, n: int, m: int) -> dict:
        """``name -> one line`` for each mask that breaks the n:m pattern of :meth:`is_nm`, in
        order: rows that do not split into groups of ``m``, or the number of groups keeping
        another count than ``n`` and the first of them (row, entries, kept)."""
        nm.check_nm(n, m)
        self._require_full("nm_violations")
        found = {name: nm.nm_violation(mask, n, m) for name, mask in self._masks.items()}
        return {name: why for name, why in found.items() if why is not None}

    def __repr__(self) -> str:
        numel = self.numel()
        if self.is_sharded:  # no collective in a repr: it may be printed by one rank only
            return f"Masks({len(self)} tensors, {numel:,} entries, sharded; .full() for counts)"
        kept = self.num_kept()
        return f"Masks({len(self)} tensors, {kept:,}/{numel:,} kept, density={format_percent(kept, numel)})"

    # -- conversion ----------------------------------------------------------------------------

    def to(self, device: Union[str, torch.device, int], non_blocking: bool = False) -> "Masks":
        """A new ``Masks`` with every tensor on ``device`` (tensors already there are shared)."""
        return Masks({n: m.to(device, non_blocking=non_blocking) for n, m in self._masks.items()})

    def state_dict(self) -> dict:
        """The on-disk payload: ``{"format", "version", "masks": {name: cpu bool tensor}}``."""
        self._require_full("state_dict")
        return formats.payload(self._masks)

    # -- torch's own formats --------------------------------------------------------------------

    @classmethod
    def from_torch_prune(cls, model: nn.Module) -> "Masks":
        """The masks of a model pruned with ``torch.nn.utils.prune`` (or :mod:`sparseforce.compat.prune`):
        one bool mask per ``<name>_mask`` buffer, named by its parameter (``fc.weight``, not
        ``fc.weight_orig``), in the model's order. The model is only read."""
        from . import torch_prune
        check_model(model)
        return cls(torch_prune.read(model))

    def to_torch_prune(self, model: nn.Module) -> nn.Module:
        """Prune ``model`` with these masks through ``torch.nn.utils.prune.custom_from_mask``
        (``weight_orig``, ``weight_mask``, the forward pre-hook), as ``torch.nn.utils.prune`` does:
        a parameter pruned before keeps the product of both masks. Every mask is checked against
        the model before any is applied. Returns ``model``."""
        from . import torch_prune
        check_model(model)
        torch_prune.write(self, model)
        return model

    @classmethod
    def from_torch_ao(cls, model: nn.Module) -> "Masks":
        """The masks of a model prepared by a ``torch.ao.pruning`` sparsifier (its ``FakeSparsity``
        parametrizations), named by the parametrized tensor (``fc.weight``). The model is only read."""
        from . import torch_ao
        check_model(model)
        return cls(torch_ao.read(model))

    def to_torch_ao(self, model: nn.Module) -> nn.Module:
        """Write these masks into the ``FakeSparsity`` masks of a model prepared by a
        ``torch.ao.pruning`` sparsifier, every mask checked before any is written. Returns ``model``."""
        from . import torch_ao
        check_model(model)
        torch_ao.write(self, model)
        return model

    # -- model compatibility -------------------------------------------------------------------

    def check(self, model: nn.Module) -> "Masks":
        """Raise ``ValueError`` unless every mask names a parameter of ``model`` of equal shape.

        All problems are counted at once, the first few of each kind named: masks whose names
        are no parameter (with the model's prunable weights of similar names), masks of another
        shape than their parameter, and among those the ones whose parameter is not a prunable
        weight (a norm layer's, a bias), named as such. Returns ``self`` so it can be chained.
        """
        check_model(model)
        params = dict(model.named_parameters(remove_duplicate=False))
        unknown = [n for n in self._masks if n not in params]
        mismatched = [(n, m) for n, m in self._masks.items()
                      if n in params and tuple(params[n].shape) != tuple(m.shape)]
        # A misshapen mask on a norm layer or a bias was most likely never meant for it: say
        # that, rather than only that its shape differs.
        eligible = _prunable.default_prunable_ids(model) if mismatched else set()
        wrong = [(n, m) for n, m in mismatched if id(params[n]) in eligible]
        foreign = [(n, m) for n, m in mismatched if id(params[n]) not in eligible]
        if unknown or wrong or foreign:
            lines = []
            if unknown:
                lines.append("  " + unknown_names(unknown, _prunable_names(model), "of the model"))
            if wrong:
                shown = ", ".join(f"{n!r} {shape_str(m.shape)} for {shape_str(params[n].shape)}"
                                  for n, m in wrong[:3])
                many = len(wrong) != 1
                lines.append(f"  {len(wrong)} mask{'s have' if many else ' has'} another shape than "
                             f"{'their parameters' if many else 'its parameter'} (mask for parameter): "
                             f"{shown}{', ...' if len(wrong) > 3 else ''}")
            if foreign:
                shown = ", ".join(f"{n!r} is not a prunable weight (the {_owner(model, n)}, not pruned by default: "
                                  f"shape {shape_str(params[n].shape)}, mask {shape_str(m.shape)})"
                                  for n, m in foreign[:3])
                lines.append(f"  {shown}{', ...' if len(foreign) > 3 else ''}")
            count = len(unknown) + len(wrong) + len(foreign)
            # ";" as well as the newline: the command line prints the message as one line.
            raise ValueError(f"masks do not fit {type(model).__name__} ({count} problem"
                             f"{'s' if count != 1 else ''}):\n" + ";\n".join(lines))
        return self

    validate_for = check

    # -- persistence ---------------------------------------------------------------------------

    def save(self, path: PathLike) -> None:
        """Write the masks to ``path`` atomically.

        A path ending in ``.safetensors`` gets the safetensors format (``name -> bool tensor``,
        readable with ``safetensors.torch.load_file`` alone; the format tag, version, mask order,
        per-mask CRC32 and the density in its header metadata; needs the ``safetensors``
        package); any other path gets ``torch.save``'s, loadable with
        ``torch.load(weights_only=True)``.

        The payload goes to a temporary file in the same directory which is fsynced and then
        renamed over ``path``, so readers (and a crash at any point) see either the previous
        file or the complete new one, never a truncated mix.
        """
        self._require_full("save")
        formats.save(self._masks, os.fspath(path))

    @classmethod
    def load(cls, path: PathLike, model: Optional[nn.Module] = None,
             map_location: Any = "cpu") -> "Masks":
        """Read masks written by :meth:`save`, optionally checking them against ``model``.

        A path ending in ``.safetensors`` is read as the safetensors format :meth:`save` writes
        (it needs the ``safetensors`` package), any other as ``torch.save``'s.

        Raises ``FileNotFoundError`` for a missing file, :class:`MasksFileError` (a ``ValueError``)
        naming the file for one that is not a valid masks file (corrupt bytes, found by the zip
        checksums of every stored tensor, or the CRC32s of a safetensors file's metadata; a
        truncated file; another kind of file; a wrong format tag or version; non-bool tensors),
        and ``ValueError`` for masks that do not fit ``model``.
        """
        path = os.fspath(path)
        raw = formats.load(path, map_location)
        try:
            masks = Masks(raw)
        except (TypeError, ValueError) as exc:
            raise MasksFileError(f"{path!r} contains invalid masks: {exc}") from None
        if model is not None:
            try:
                masks.check(model)
            except ValueError as exc:
                raise ValueError(f"{path!r}: {exc}") from None
        return masks


def check_model(model) -> None:
    """``TypeError`` unless ``model`` is an ``nn.Module``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def check_dense(what: str, t: torch.Tensor, meta_ok: bool = False) -> None:
    """``ValueError`` naming ``what`` for a sparse tensor, or one on the meta device unless ``meta_ok``."""
    if t.is_meta and not meta_ok:
        raise ValueError(f"{what} is on the meta device (it has no values); materialize it first "
                         "(for a model: model.to_empty(device=...) and initialize it)")
    if t.layout != torch.strided:
        raise ValueError(f"{what} is a sparse tensor ({t.layout}); masks and masked weights must be dense "
                         "(convert with .to_dense())")


def _owner(model: nn.Module, name: str) -> str:
    """'weight of a BatchNorm2d' for 'bn.weight'."""
    module, _, leaf = name.rpartition(".")
    try:
        owner = model.get_submodule(module) if module else model
    except AttributeError:
        return leaf
    return f"{leaf} of a {type(owner).__name__}"


def _prunable_names(model: nn.Module) -> list:
    """The weights the pruning methods prune by default (Conv/Linear), in model order: what a
    mask name is most likely meant to be; all parameters if the model has none of them."""
    return _prunable.default_prunable_names(model) or [n for n, _ in model.named_parameters()]


def _names(names: list, limit: int) -> str:
    return ", ".join(map(repr, names[:limit])) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def unknown_names(unknown: list, candidates: list, where: str) -> str:
    """One line for masks whose names are no parameter: their count, the first few, and the
    candidates closest to any of them, in the candidates' (the model's) order whatever the masks'."""
    close = set()
    for name in unknown:
        close.update(difflib.get_close_matches(name, candidates, n=1, cutoff=0.6))
    similar = [c for c in candidates if c in close]
    if similar:
        hint = f"; prunable weights with similar names: {_names(similar, 5)}"
    elif candidates:
        hint = f"; the prunable weights are {_names(candidates, 5)}"
    else:
        hint = f" (there are no parameters {where})"
    verb = "names" if len(unknown) == 1 else "name"
    return f"{len(unknown)} mask{'s' if len(unknown) != 1 else ''} {verb} no parameter {where}: " \
           f"{_names(unknown, 3)}{hint}"


