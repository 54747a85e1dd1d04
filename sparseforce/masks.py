"""Pruning masks: a validated container, a safe on-disk format, and enforcement during training.

A mask is a ``torch.bool`` tensor with the shape of the weight it prunes: ``True`` means the
weight is kept, ``False`` means it is pruned (held at exactly ``0.0``).

Public names:

* :class:`Masks` -- ordered, read-only mapping ``parameter name -> bool tensor`` with summary
  statistics (:meth:`Masks.density`, :meth:`Masks.per_layer`, ...), :meth:`Masks.save` /
  :meth:`Masks.load` (torch.save's format, or safetensors for a ``.safetensors`` path) and
  :meth:`Masks.check` against a model.
* :class:`LayerDensity` / :class:`LayerTable` -- the rows / table returned by ``per_layer()``.
* :class:`LayerCollapseWarning` -- issued by the pruning functions when a layer is left with no
  weights (:meth:`Masks.collapsed` lists them).
* :func:`format_percent` -- the density as every report shows it (percent, never rounded to 0 or
  100 unless it is).
* :class:`MasksFileError` -- raised by :meth:`Masks.load` for a file that is corrupt, truncated
  or not a masks file (a ``ValueError``).
* :func:`apply_masks` -- zero pruned weights and keep them zero under any torch optimizer;
  returns a :class:`MaskHandle` whose ``remove()`` stops the enforcement.

Conventions chosen here:

* A set of masks with no elements at all (no masks, or only 0-element masks) has density 1.0
  and sparsity 0.0: nothing has been pruned. The same holds per layer for a 0-element mask.
  This keeps ``per_layer()`` and logging total functions instead of raising on edge cases.
* ``Masks`` equality compares names (ignoring order, like ``dict``), shapes and values.
* Densities are shown in percent everywhere (``per_layer()``'s table, ``repr``, the CLI), with
  two significant digits of the smaller of the density and the sparsity: 24 kept of 2.4 M is
  "0.0010%", one pruned of 3 M "99.999967%".
"""

from __future__ import annotations

import collections.abc
import difflib
import errno
import json
import math
import os
import pickle
import re
import secrets
import struct
import threading
import weakref
import zipfile
import zlib
from typing import Any, Iterable, Iterator, Mapping, NamedTuple, Optional, Union

import torch
import torch.nn as nn
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils.weak import WeakIdKeyDictionary

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "LayerCollapseWarning",
    "LayerDensity",
    "LayerTable",
    "MaskHandle",
    "Masks",
    "MasksFileError",
    "apply_masks",
    "format_percent",
]

FORMAT = "sparseforce.masks"
FORMAT_VERSION = 1

PathLike = Union[str, "os.PathLike[str]"]


def _is_sharded(t) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed
        return False
    return isinstance(t, DTensor)


def _shape_str(shape: Iterable[int]) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


def _safe_density(kept: int, numel: int) -> float:
    # 0/0 is defined as "nothing pruned" (see module docstring).
    return 1.0 if numel == 0 else kept / numel


def format_percent(part: int, whole: int) -> str:
    """``part / whole`` in percent, with two significant digits of the smaller of it and its
    complement (at least one decimal), so a share that is not 0 or 1 never reads "0%" or
    "100%": ``format_percent(24, 2_400_000) == "0.0010%"``. ``0 / 0`` is "100%" (nothing pruned)."""
    if part == whole:
        return "100%"
    if part == 0:
        return "0%"
    p = 100.0 * part / whole
    # Rounded to two significant digits first, so 0.00099999 counts as 0.0010, not 0.00100.
    smaller = float(f"{min(p, 100.0 - p):.2g}")
    decimals = max(1, 1 - math.floor(math.log10(smaller)))
    return f"{p:.{decimals}f}%"


class LayerCollapseWarning(UserWarning):
    """Pruning left a layer with no weights at all while others keep some (*layer collapse*): no
    signal passes through that layer, so the pruned network cannot learn. :meth:`Masks.collapsed`
    lists such layers."""


# --------------------------------------------------------------------------------------------
# per-layer report
# --------------------------------------------------------------------------------------------


class LayerDensity(NamedTuple):
    name: str
    shape: tuple
    numel: int
    kept: int
    density: float

    @property
    def sparsity(self) -> float:
        return 1.0 - self.density


class LayerTable(list):
    """A list of :class:`LayerDensity` rows whose ``str()`` is an aligned text table."""

    @property
    def total(self) -> LayerDensity:
        numel = sum(r.numel for r in self)
        kept = sum(r.kept for r in self)
        return LayerDensity("total", (), numel, kept, _safe_density(kept, numel))

    def __str__(self) -> str:
        header = ("name", "shape", "numel", "kept", "density", "sparsity")
        total = self.total
        def shares(r):
            if r.numel == 0:  # nothing to prune: density 100%, sparsity 0%
                return "100%", "0%"
            return format_percent(r.kept, r.numel), format_percent(r.numel - r.kept, r.numel)

        body = [(r.name, _shape_str(r.shape), f"{r.numel:,}", f"{r.kept:,}", *shares(r)) for r in self]
        foot = ("total", "", f"{total.numel:,}", f"{total.kept:,}", *shares(total))
        widths = [max(len(row[i]) for row in [header, *body, foot]) for i in range(len(header))]

        def fmt(row) -> str:
            # Names and shapes read best left-aligned, numbers right-aligned.
            cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
            cells += [c.rjust(w) for c, w in zip(row[2:], widths[2:])]
            return "  ".join(cells).rstrip()

        rule = "-" * len(fmt(tuple("-" * w for w in widths)))
        return "\n".join([fmt(header), rule, *(fmt(r) for r in body), rule, fmt(foot)])

    def __repr__(self) -> str:
        return f"LayerTable({list.__repr__(self)})"


# --------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------


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
            _check_dense(f"mask {name!r}", mask, meta_ok=True)  # a meta mask is fine until it is applied
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
            if _is_sharded(a) or _is_sharded(b):  # shard by shard: no collective
                if not (_is_sharded(a) and _is_sharded(b)) or a.placements != b.placements:
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
        return any(_is_sharded(m) for m in self._masks.values())

    def full(self) -> "Masks":
        """Plain (unsharded) masks on every rank: gathers sharded masks (a collective: call it on
        every rank); masks that are not sharded are returned as they are."""
        return Masks({n: m.full_tensor() if _is_sharded(m) else m for n, m in self._masks.items()})

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
        return _safe_density(self.num_kept(), self.numel())

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
                                     _safe_density(kept, m.numel())))
        return rows

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
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "masks": {n: _compact_cpu(m) for n, m in self._masks.items()},
        }

    # -- model compatibility -------------------------------------------------------------------

    def check(self, model: nn.Module) -> "Masks":
        """Raise ``ValueError`` unless every mask names a parameter of ``model`` of equal shape.

        All problems are counted at once, the first few of each kind named: masks whose names
        are no parameter (with the model's prunable weights of similar names), masks of another
        shape than their parameter, and among those the ones whose parameter is not a prunable
        weight (a norm layer's, a bias), named as such. Returns ``self`` so it can be chained.
        """
        _check_model(model)
        params = dict(model.named_parameters(remove_duplicate=False))
        unknown = [n for n in self._masks if n not in params]
        mismatched = [(n, m) for n, m in self._masks.items()
                      if n in params and tuple(params[n].shape) != tuple(m.shape)]
        # A misshapen mask on a norm layer or a bias was most likely never meant for it: say
        # that, rather than only that its shape differs.
        eligible = _default_prunable_ids(model) if mismatched else set()
        wrong = [(n, m) for n, m in mismatched if id(params[n]) in eligible]
        foreign = [(n, m) for n, m in mismatched if id(params[n]) not in eligible]
        if unknown or wrong or foreign:
            lines = []
            if unknown:
                lines.append("  " + _unknown_names(unknown, _prunable_names(model), "of the model"))
            if wrong:
                shown = ", ".join(f"{n!r} {_shape_str(m.shape)} for {_shape_str(params[n].shape)}"
                                  for n, m in wrong[:3])
                many = len(wrong) != 1
                lines.append(f"  {len(wrong)} mask{'s have' if many else ' has'} another shape than "
                             f"{'their parameters' if many else 'its parameter'} (mask for parameter): "
                             f"{shown}{', ...' if len(wrong) > 3 else ''}")
            if foreign:
                shown = ", ".join(f"{n!r} is not a prunable weight (the {_owner(model, n)}, not pruned by default: "
                                  f"shape {_shape_str(params[n].shape)}, mask {_shape_str(m.shape)})"
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
        path = os.fspath(path)
        if _is_safetensors_path(path):
            data = _safetensors_bytes(self)
            _atomic_write(path, lambda f: f.write(data))
            return
        payload = self.state_dict()
        _atomic_torch_save(payload, path)

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
        if not os.path.exists(path):
            raise FileNotFoundError(f"masks file {path!r} does not exist")
        if os.path.isdir(path):
            raise MasksFileError(f"masks file {path!r} is a directory")
        if _is_safetensors_path(path):
            masks = _load_safetensors(path, map_location)
        elif _looks_like_safetensors(path):
            raise MasksFileError(f"{path!r} is a safetensors file, which is read from a path ending in "
                                 f"{SAFETENSORS_SUFFIX}: rename it")
        else:
            obj = _load_verified(path, map_location, MasksFileError, "sparseforce masks file")
            masks = _parse_payload(obj, path)
        if model is not None:
            try:
                masks.check(model)
            except ValueError as exc:
                raise ValueError(f"{path!r}: {exc}") from None
        return masks


class MasksFileError(ValueError):
    """A masks file is corrupt, truncated, or not a sparseforce masks file; the message names it."""


def _load_verified(path: str, map_location: Any, error: type, what: str) -> Any:
    """``torch.load(path, weights_only=True)`` of a file whose zip container and stored CRCs are
    intact; anything else raises ``error`` naming ``path``. ``what`` names the kind of file.
    torch.load itself never checks the CRCs: a flipped bit in a tensor would load silently."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise error(f"{path!r} cannot be read: {exc.strerror or exc}") from None
    if head != b"PK\x03\x04":  # torch.save's zip format; not even a truncated one
        reason = "it is empty" if not head else "it is not a zip archive, which torch.save writes"
        raise error(f"{path!r} is not a {what}: {reason}")
    unreadable = (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError, NotImplementedError,
                  zlib.error)
    try:
        z = zipfile.ZipFile(path)
    except unreadable:
        raise error(f"{path!r} is truncated or corrupt: the zip directory at its end is missing or "
                    "damaged") from None
    with z:
        try:
            bad = z.testzip()
        except unreadable as exc:
            raise error(f"{path!r} is truncated or corrupt: {_first_line(exc)}") from None
        # torch's zip reader takes a member with the DOS folder bit for a folder and reads other
        # bytes than the CRC-checked ones; torch.save never sets it.
        folder = next((i.filename for i in z.infolist() if i.external_attr & 0x10), None)
    if folder is not None:
        raise error(f"{path!r} is corrupt: its member {folder!r} is marked as a folder")
    if bad is not None:
        raise error(f"{path!r} is corrupt: the stored bytes of {bad!r} do not match their checksum")
    try:
        # weights_only: loading must never run code from the file.
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message advises weights_only=False, i.e. running the file's code: not for a
        # file that should hold only tensors. Name what it holds instead.
        found = re.search(r"GLOBAL (\S+)", str(exc))
        held = f" ({found.group(1)})" if found else ""
        raise error(f"{path!r} is not a {what}: it holds Python objects{held} that a {what} never "
                    "contains (not loaded: loading them could run code from the file)") from None
    except Exception as exc:
        raise error(f"{path!r} is not a {what}: torch.load failed with {type(exc).__name__}: "
                    f"{_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "(no message)"


def _check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def _check_dense(what: str, t: torch.Tensor, meta_ok: bool = False) -> None:
    if t.is_meta and not meta_ok:
        raise ValueError(f"{what} is on the meta device (it has no values); materialize it first "
                         "(for a model: model.to_empty(device=...) and initialize it)")
    if t.layout != torch.strided:
        raise ValueError(f"{what} is a sparse tensor ({t.layout}); masks and masked weights must be dense "
                         "(convert with .to_dense())")


def _default_prunable_ids(model: nn.Module) -> set:
    from .pruning._model import default_prunable_ids  # the pruning package imports this module

    return default_prunable_ids(model)


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
    eligible = _default_prunable_ids(model)
    params = list(model.named_parameters())
    return [n for n, p in params if id(p) in eligible] or [n for n, _ in params]


def _names(names: list, limit: int) -> str:
    return ", ".join(map(repr, names[:limit])) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _unknown_names(unknown: list, candidates: list, where: str) -> str:
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


def _compact_cpu(mask: torch.Tensor) -> torch.Tensor:
    t = mask.detach().cpu()
    # torch.save writes a view's whole storage; a mask sliced out of a bigger tensor would
    # otherwise drag the rest of that tensor into the file.
    if (not t.is_contiguous() or t.storage_offset() != 0
            or t.untyped_storage().nbytes() != t.numel() * t.element_size()):
        t = t.clone(memory_format=torch.contiguous_format)
    return t


def _parse_payload(obj: Any, path: str) -> Masks:
    where = f"{path!r} is not a sparseforce masks file"
    if not isinstance(obj, dict):
        raise MasksFileError(f"{where}: expected a dict, found {type(obj).__name__}")
    if "format" not in obj:
        looks_like_state_dict = bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())
        hint = (" (it looks like a model state_dict or checkpoint; masks must be written with "
                "Masks.save)" if looks_like_state_dict else "")
        raise MasksFileError(f"{where}: missing the 'format' tag{hint}")
    if obj["format"] != FORMAT:
        hint = (" (it is a training checkpoint; the run folder's masks.pt holds its masks)"
                if obj["format"] == "sparseforce.checkpoint" else "")
        raise MasksFileError(f"{where}: format tag is {obj['format']!r}, expected {FORMAT!r}{hint}")
    version = obj.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise MasksFileError(f"{where}: missing or invalid 'version' ({version!r})")
    if version > FORMAT_VERSION:
        raise MasksFileError(f"{path!r} uses masks format version {version}, newer than this "
                             f"sparseforce understands ({FORMAT_VERSION}); upgrade sparseforce")
    if version < 1:
        raise MasksFileError(f"{where}: invalid version {version}")
    raw = obj.get("masks")
    if not isinstance(raw, dict):
        raise MasksFileError(f"{where}: 'masks' should be a dict, found {type(raw).__name__}")
    try:
        return Masks(raw)
    except (TypeError, ValueError) as exc:
        raise MasksFileError(f"{path!r} contains invalid masks: {exc}") from None


# --------------------------------------------------------------------------------------------
# the safetensors format
# --------------------------------------------------------------------------------------------
#
# safetensors has no checksums and keeps tensors in its own order (by dtype, then name), so the
# header metadata (str -> str) carries what the .pt format gets from the zip container and the
# dict: the format tag and version, the masks' order ("names", JSON) and a CRC32 of each mask's
# bytes ("crc32", JSON name -> int); "kept", "numel" and "density" are for people reading it.

SAFETENSORS_SUFFIX = ".safetensors"
_ST_MAX_HEADER = 100_000_000  # the safetensors library's own limit


def _is_safetensors_path(path: str) -> bool:
    return path.lower().endswith(SAFETENSORS_SUFFIX)


def _safetensors_module(action: str):
    # Imported here: safetensors is an optional dependency (the [hf] extra).
    try:
        import safetensors.torch
    except ImportError:
        raise ModuleNotFoundError(f"{action} masks as {SAFETENSORS_SUFFIX} needs the safetensors package: "
                                  "pip install safetensors (or sparseforce[hf]); other file names use "
                                  "torch.save's format") from None
    return safetensors.torch


def _mask_crc(t: torch.Tensor) -> int:
    return zlib.crc32(t.contiguous().view(torch.uint8).numpy()) if t.numel() else 0


def _safetensors_bytes(masks: "Masks") -> bytes:
    st = _safetensors_module("saving")
    tensors, storages = {}, set()
    for n, m in masks.items():
        t = _compact_cpu(m)
        # safetensors refuses tensors that share memory (one mask given under two names).
        if t.numel() and t.untyped_storage().data_ptr() in storages:
            t = t.clone()
        storages.add(t.untyped_storage().data_ptr())
        tensors[n] = t
    kept, numel = masks.num_kept(), masks.numel()
    metadata = {
        "format": FORMAT,
        "version": str(FORMAT_VERSION),
        "names": json.dumps(list(tensors)),
        "crc32": json.dumps({n: _mask_crc(t) for n, t in tensors.items()}),
        "kept": str(kept),
        "numel": str(numel),
        "density": repr(_safe_density(kept, numel)),
    }
    return st.save(tensors, metadata=metadata)


def _read_safetensors_header(path: str) -> tuple:
    """(tensor entries, metadata) of the header, checked against the file's size."""
    what = "sparseforce masks file in safetensors format"
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else None
            raw = f.read(n) if n is not None and 0 < n <= min(size - 8, _ST_MAX_HEADER) else None
    except OSError as exc:
        raise MasksFileError(f"{path!r} cannot be read: {exc.strerror or exc}") from None
    if n is None:
        raise MasksFileError(f"{path!r} is not a {what}: " + ("it is empty" if not head else
                             f"it has {size} bytes, fewer than the 8 of a safetensors header length"))
    if raw is None:
        # A header length beyond the file: a truncated safetensors file, or another kind of file.
        if n <= _ST_MAX_HEADER and head[:1] != b"PK":
            raise MasksFileError(f"{path!r} is truncated: its safetensors header is {n} bytes long, but the file "
                                 f"holds {size - 8} bytes after the length")
        raise MasksFileError(f"{path!r} is not a {what}: its first 8 bytes are no safetensors header length")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        reason = "truncated or not" if len(raw) < n else "not"
        raise MasksFileError(f"{path!r} is {reason} a {what}: its header is not JSON") from None
    if not isinstance(header, dict):
        raise MasksFileError(f"{path!r} is not a {what}: its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise MasksFileError(f"{path!r} is not a {what}: its __metadata__ is not a JSON object")
    data_size = size - 8 - n
    end = 0
    for name, entry in header.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("shape"), list) \
                or not isinstance(entry.get("data_offsets"), list) or len(entry["data_offsets"]) != 2 \
                or not all(isinstance(x, int) and x >= 0 for x in entry["shape"] + entry["data_offsets"]):
            raise MasksFileError(f"{path!r} is corrupt: the header entry of {name!r} is malformed")
        end = max(end, entry["data_offsets"][1])
    if end > data_size:
        raise MasksFileError(f"{path!r} is truncated: its tensors need {end} bytes of data, the file holds "
                             f"{data_size}")
    return header, metadata


def _looks_like_safetensors(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:] == b"{" and 0 < struct.unpack("<Q", head[:8])[0] <= _ST_MAX_HEADER


def _load_safetensors(path: str, map_location: Any) -> "Masks":
    if map_location is not None and not isinstance(map_location, (str, torch.device)):
        raise TypeError(f"map_location for a {SAFETENSORS_SUFFIX} file must be a device (str or torch.device), got "
                        f"{type(map_location).__name__}")
    st = _safetensors_module("loading")
    where = f"{path!r} is not a sparseforce masks file"
    header, metadata = _read_safetensors_header(path)
    not_bool = [(n, e.get("dtype")) for n, e in header.items() if e.get("dtype") != "BOOL"]
    if metadata.get("format") != FORMAT:
        if "format" in metadata:
            hint = f"format tag is {metadata['format']!r}, expected {FORMAT!r}"
        elif not_bool:
            hint = ("it has no sparseforce 'format' tag in its metadata and non-bool tensors (model weights? masks "
                    "must be written with Masks.save)")
        else:
            hint = ("it has no sparseforce 'format' tag in its metadata (bool tensors from another tool can be "
                    "wrapped as sf.Masks(safetensors.torch.load_file(path)))")
        raise MasksFileError(f"{where}: {hint}")
    try:
        version = int(metadata.get("version", ""))
    except (TypeError, ValueError):
        raise MasksFileError(f"{where}: missing or invalid 'version' ({metadata.get('version')!r})") from None
    if version > FORMAT_VERSION:
        raise MasksFileError(f"{path!r} uses masks format version {version}, newer than this "
                             f"sparseforce understands ({FORMAT_VERSION}); upgrade sparseforce")
    if version < 1:
        raise MasksFileError(f"{where}: invalid version {version}")
    if not_bool:
        shown = ", ".join(f"{n!r} ({d})" for n, d in not_bool[:3])
        raise MasksFileError(f"{path!r} contains invalid masks: {len(not_bool)} tensor"
                             f"{'s are' if len(not_bool) != 1 else ' is'} not BOOL: {shown}")
    try:
        names = json.loads(metadata["names"])
        crcs = json.loads(metadata["crc32"])
    except (KeyError, TypeError, json.JSONDecodeError):
        raise MasksFileError(f"{path!r} is corrupt: its metadata lacks a valid 'names' or 'crc32' entry") from None
    if not isinstance(names, list) or sorted(map(str, names)) != sorted(header) or len(names) != len(header) \
            or not isinstance(crcs, dict) or set(crcs) != set(header):
        raise MasksFileError(f"{path!r} is corrupt: the masks its metadata lists are not the tensors it holds")
    try:
        tensors = st.load_file(path, device="cpu")
    except Exception as exc:  # SafetensorError, OSError: a file that changed, invalid offsets
        raise MasksFileError(f"{path!r} is truncated or corrupt: safetensors failed with {type(exc).__name__}: "
                             f"{_first_line(exc)}") from None
    for name in names:
        t = tensors.get(name)
        if t is None or t.dtype != torch.bool:
            raise MasksFileError(f"{path!r} changed while it was read (mask {name!r})")
        if _mask_crc(t) != crcs[name]:
            raise MasksFileError(f"{path!r} is corrupt: the stored bytes of {name!r} do not match their checksum")
        if t.numel() and int(t.view(torch.uint8).max()) > 1:  # a bool byte must be 0 or 1
            raise MasksFileError(f"{path!r} is corrupt: mask {name!r} holds bytes other than 0 and 1")
    masks = Masks({name: tensors[name] for name in names})
    return masks if map_location in (None, "cpu") else masks.to(map_location)


def _atomic_torch_save(obj: Any, path: str) -> None:
    _atomic_write(path, lambda f: torch.save(obj, f))


def _atomic_write(path: str, write) -> None:
    """Call ``write(binary_file)`` on a temporary file next to ``path``, fsync it and rename it over
    ``path``. Temporaries that killed writers left next to ``path`` are removed first."""
    directory = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    # Checked here: os.open's error would name the temporary file, which the caller never chose.
    if not os.path.isdir(directory):
        what = "is not a folder" if os.path.exists(directory) else "does not exist"
        raise FileNotFoundError(errno.ENOENT, f"cannot write {path!r}: the folder {directory!r} {what}")
    _remove_stale_temporaries(directory, base)
    # os.open with O_EXCL and mode 0o666 (rather than tempfile) so the final file gets the
    # usual umask-derived permissions instead of tempfile's 0o600. The pid in the name tells
    # a later writer whether the file's writer is still alive.
    for _ in range(100):
        tmp = os.path.join(directory, f".{base}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                         0o666)
            break
        except FileExistsError:
            continue
        except OSError as exc:  # no permission, read-only file system, ...
            raise type(exc)(exc.errno, f"cannot write {path!r}: {exc.strerror or exc}") from None
    else:  # pragma: no cover - 100 collisions of 48 random bits
        raise FileExistsError(f"could not create a temporary file next to {path!r}")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    # Persist the rename itself; without this a power loss can still lose the new entry.
    if hasattr(os, "O_DIRECTORY"):
        try:
            dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return
        try:
            os.fsync(dfd)
        except OSError:
            pass
        finally:
            os.close(dfd)


def _remove_stale_temporaries(directory: str, base: str) -> None:
    # Names this module writes (".BASE.PID.HEX.tmp"), and those of earlier versions
    # (".BASE.HEX.tmp", "BASE.PID.tmp"). A file whose writer is alive is another write in
    # progress and is left alone.
    pattern = re.compile(rf"\.?{re.escape(base)}\.(?:(\d+)\.)?(?:[0-9a-f]{{12}}\.)?tmp")
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        m = pattern.fullmatch(name)
        if m is None or (m.group(1) is not None and _pid_alive(int(m.group(1)))):
            continue
        try:
            os.unlink(os.path.join(directory, name))
        except OSError:
            pass


def _pid_alive(pid: int) -> bool:
    if os.name != "posix":
        return True  # no safe probe (os.kill would terminate the process): keep the file
    if pid <= 0:
        return False  # 0 and negatives address process groups, not a writer
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    return True


# --------------------------------------------------------------------------------------------
# enforcement during training
# --------------------------------------------------------------------------------------------


class _Entry:
    """The pruned-positions mask of one parameter, shared by its grad hook and the step hook."""

    __slots__ = ("pruned", "active")

    def __init__(self, pruned: torch.Tensor):
        self.pruned = pruned  # True where the weight is pruned
        self.active = True

    def pruned_on(self, device: torch.device) -> torch.Tensor:
        # The parameter can move after apply_masks (model.to("cuda") keeps the Parameter
        # object and swaps its data), so follow it instead of failing inside a hook.
        if self.pruned.device != device:
            self.pruned = self.pruned.to(device)
        return self.pruned


# Parameter -> _Entry. Keyed by identity and held weakly so the registry never keeps a model
# alive; torch's WeakIdKeyDictionary is used rather than weakref.WeakKeyDictionary because
# the latter relies on key `==`, which for tensors is elementwise.
_REGISTRY: "WeakIdKeyDictionary" = WeakIdKeyDictionary()
_LOCK = threading.RLock()
_STEP_HOOK = None  # RemovableHandle of the global optimizer step post-hook, while needed


def _make_grad_hook(entry: _Entry):
    # Closes over the entry only (never the parameter) so no reference cycle pins the parameter.
    def hook(grad: torch.Tensor) -> Optional[torch.Tensor]:
        if not entry.active:
            return None
        # Zero gradients mean momentum / Adam moments of pruned weights stay exactly zero,
        # so the optimizer state is as if those weights did not exist.
        return grad.masked_fill(entry.pruned_on(grad.device), 0)

    return hook


def _after_optimizer_step(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
    # The gradient hook alone is not enough: decoupled weight decay only scales (0 stays 0),
    # but optimizer state from before apply_masks, noise-injecting or custom optimizers, and
    # gradients written to .grad directly all bypass it. Re-masking after every step makes
    # "pruned weights are exactly zero after step()" hold for any optimizer.
    if not _REGISTRY:
        return
    with torch.no_grad():
        for group in optimizer.param_groups:
            for p in group["params"]:
                entry = _REGISTRY.get(p)
                if entry is not None and entry.active:
                    p.masked_fill_(entry.pruned_on(p.device), 0)


def _ensure_step_hook() -> None:
    global _STEP_HOOK
    if _STEP_HOOK is None:
        _STEP_HOOK = register_optimizer_step_post_hook(_after_optimizer_step)


def _maybe_drop_step_hook() -> None:
    global _STEP_HOOK
    if _STEP_HOOK is not None and not _REGISTRY:
        _STEP_HOOK.remove()
        _STEP_HOOK = None


class MaskHandle:
    """Returned by :func:`apply_masks`; ``remove()`` stops enforcing the masks.

    Removing does not restore pruned weights (their values are gone); they simply become
    trainable again. Also usable as a context manager.
    """

    def __init__(self, records: list, names: list):
        # records: (weakref to parameter, entry, grad-hook RemovableHandle)
        self._records = records
        self.names = tuple(names)

    @property
    def active(self) -> bool:
        return any(entry.active for _, entry, _ in self._records)

    def remove(self) -> None:
        with _LOCK:
            for pref, entry, hook_handle in self._records:
                entry.active = False
                if hook_handle is not None:
                    hook_handle.remove()
                p = pref()
                if p is not None and _REGISTRY.get(p) is entry:
                    del _REGISTRY[p]
            self._records = []
            _maybe_drop_step_hook()

    def __enter__(self) -> "MaskHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        return f"MaskHandle({len(self.names)} parameters, {state})"


def apply_masks(model: nn.Module, masks: Union[Masks, Mapping[str, torch.Tensor]]) -> MaskHandle:
    """Zero the pruned weights of ``model`` in place and keep them zero during training.

    Two mechanisms, both installed per parameter:

    * a gradient hook that zeroes the gradient of pruned entries, so optimizer state
      (momentum buffers, Adam moments) of pruned weights never becomes nonzero for an
      optimizer created after this call;
    * a global optimizer step post-hook that re-zeroes pruned entries of every masked
      parameter an optimizer owns after each ``step()``, whatever that optimizer does.

    Masks are validated against the model (names and shapes) and moved to each parameter's
    device before anything is modified. Applying masks again to a parameter that is already
    masked replaces the earlier mask. Parameters tied under several names must be given equal
    masks. Returns a :class:`MaskHandle`.
    """
    _check_model(model)
    if not isinstance(masks, collections.abc.Mapping):
        raise TypeError(f"masks must be a sparseforce.Masks or a mapping name -> bool tensor, "
                        f"got {type(masks).__name__}")
    if not isinstance(masks, Masks):
        masks = Masks(masks)
    if masks.is_sharded:
        raise NotImplementedError("apply_masks does not take sharded (DTensor) masks yet; gather them with "
                                  "masks.full() on every rank and train the model with DDP")
    masks.check(model)

    params = dict(model.named_parameters(remove_duplicate=False))
    for name, mask in masks.items():
        _check_dense(f"parameter {name!r}", params[name])
        _check_dense(f"mask {name!r}", mask)
    # Resolve everything first so that a failure (conflicting tied masks, device transfer)
    # leaves the model untouched.
    plan: dict = {}  # id(param) -> (param, pruned, name)
    for name, mask in masks.items():
        p = params[name]
        pruned = (~mask).to(p.device)
        prev = plan.get(id(p))
        if prev is not None:
            if not torch.equal(prev[1], pruned):
                raise ValueError(f"parameters {prev[2]!r} and {name!r} are the same tensor "
                                 f"(tied weights) but were given different masks")
            continue
        plan[id(p)] = (p, pruned, name)

    records = []
    with _LOCK, torch.no_grad():
        for p, pruned, _name in plan.values():
            p.masked_fill_(pruned, 0)
            # A gradient already computed (masks applied between backward and step) must not
            # leak into the next update either.
            if p.grad is not None:
                p.grad.masked_fill_(pruned.to(p.grad.device), 0)
            old = _REGISTRY.get(p)
            if old is not None:
                old.active = False  # superseded: its grad hook becomes a no-op
            entry = _Entry(pruned)
            # Frozen parameters get no gradient (and torch refuses the hook); the step hook
            # still covers them if they are unfrozen later.
            hook_handle = (p.register_hook(_make_grad_hook(entry)) if p.requires_grad
                           else None)
            _REGISTRY[p] = entry
            records.append((weakref.ref(p), entry, hook_handle))
        _ensure_step_hook()
    return MaskHandle(records, [name for _, _, name in plan.values()])
