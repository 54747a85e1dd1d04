"""The masks' files, written over plain dicts ``name -> bool tensor`` (the container, ``Masks``,
validates the masks themselves): torch.save's format, or safetensors for a path ending in
``.safetensors``.

Both are written atomically (:mod:`sparseforce._files`) and read back with every stored byte
checked: torch.load never checks the zip CRCs of a ``.pt`` file, and safetensors has none, so a
``.safetensors`` file carries a CRC32 per mask in its metadata. A file that is corrupt, truncated or
not a masks file raises :class:`MasksFileError` naming it.
"""
from __future__ import annotations

import json
import os
import struct
import zlib
from typing import Any, Mapping

import torch

from .. import _files
from .report import safe_density

__all__ = ["FORMAT", "FORMAT_VERSION", "SAFETENSORS_SUFFIX", "MasksFileError", "load", "payload", "save"]

FORMAT = "sparseforce.masks"
FORMAT_VERSION = 1
SAFETENSORS_SUFFIX = ".safetensors"


class MasksFileError(ValueError):
    """A masks file is corrupt, truncated, or not a sparseforce masks file; the message names it."""


def payload(masks: Mapping[str, torch.Tensor]) -> dict:
    """torch.save's payload: ``{"format", "version", "masks": {name: cpu bool tensor}}``."""
    return {"format": FORMAT, "version": FORMAT_VERSION, "masks": {n: _compact_cpu(m) for n, m in masks.items()}}


def save(masks: Mapping[str, torch.Tensor], path: str) -> None:
    """Write ``masks`` to ``path`` atomically, in safetensors' format for a ``.safetensors`` path and
    torch.save's for any other."""
    if _is_safetensors_path(path):
        data = _safetensors_bytes(masks)
        _files.atomic_write(path, lambda f: f.write(data))
        return
    _files.atomic_torch_save(payload(masks), path)


def load(path: str, map_location: Any) -> dict:
    """The masks :func:`save` wrote to ``path``, in their order, as the file holds them: the caller
    checks that they are valid masks. ``FileNotFoundError`` for a missing file, :class:`MasksFileError`
    for one that is not an intact masks file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"masks file {path!r} does not exist")
    if os.path.isdir(path):
        raise MasksFileError(f"masks file {path!r} is a directory")
    if _is_safetensors_path(path):
        return _load_safetensors(path, map_location)
    if _looks_like_safetensors(path):
        raise MasksFileError(f"{path!r} is a safetensors file, which is read from a path ending in "
                             f"{SAFETENSORS_SUFFIX}: rename it")
    obj = _files.load_verified(path, map_location, MasksFileError, "sparseforce masks file")
    return _masks_in_payload(obj, path)


def _compact_cpu(mask: torch.Tensor) -> torch.Tensor:
    t = mask.detach().cpu()
    # torch.save writes a view's whole storage; a mask sliced out of a bigger tensor would
    # otherwise drag the rest of that tensor into the file.
    if (not t.is_contiguous() or t.storage_offset() != 0
            or t.untyped_storage().nbytes() != t.numel() * t.element_size()):
        t = t.clone(memory_format=torch.contiguous_format)
    return t


def _masks_in_payload(obj: Any, path: str) -> dict:
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
    return raw


# --------------------------------------------------------------------------------------------
# the safetensors format
# --------------------------------------------------------------------------------------------
#
# safetensors has no checksums and keeps tensors in its own order (by dtype, then name), so the
# header metadata (str -> str) carries what the .pt format gets from the zip container and the
# dict: the format tag and version, the masks' order ("names", JSON) and a CRC32 of each mask's
# bytes ("crc32", JSON name -> int); "kept", "numel" and "density" are for people reading it.

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


def _safetensors_bytes(masks: Mapping[str, torch.Tensor]) -> bytes:
    st = _safetensors_module("saving")
    tensors, storages = {}, set()
    for n, m in masks.items():
        t = _compact_cpu(m)
        # safetensors refuses tensors that share memory (one mask given under two names).
        if t.numel() and t.untyped_storage().data_ptr() in storages:
            t = t.clone()
        storages.add(t.untyped_storage().data_ptr())
        tensors[n] = t
    kept = sum(int(t.count_nonzero()) for t in tensors.values())
    numel = sum(t.numel() for t in tensors.values())
    metadata = {
        "format": FORMAT,
        "version": str(FORMAT_VERSION),
        "names": json.dumps(list(tensors)),
        "crc32": json.dumps({n: _mask_crc(t) for n, t in tensors.items()}),
        "kept": str(kept),
        "numel": str(numel),
        "density": repr(safe_density(kept, numel)),
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


def _load_safetensors(path: str, map_location: Any) -> dict:
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
                             f"{_files.first_line(exc)}") from None
    for name in names:
        t = tensors.get(name)
        if t is None or t.dtype != torch.bool:
            raise MasksFileError(f"{path!r} changed while it was read (mask {name!r})")
        if _mask_crc(t) != crcs[name]:
            raise MasksFileError(f"{path!r} is corrupt: the stored bytes of {name!r} do not match their checksum")
        if t.numel() and int(t.view(torch.uint8).max()) > 1:  # a bool byte must be 0 or 1
            raise MasksFileError(f"{path!r} is corrupt: mask {name!r} holds bytes other than 0 and 1")
    if map_location in (None, "cpu"):
        return {name: tensors[name] for name in names}
    return {name: tensors[name].to(map_location) for name in names}


