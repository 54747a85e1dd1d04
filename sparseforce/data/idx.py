"""The IDX file format of the standard MNIST files (unsigned bytes; gzipped or not)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

__all__ = ["IDXFileError", "read_idx"]


class IDXFileError(ValueError):
    """A file that is not the MNIST IDX file it should be; the message names the file."""


_IDX_UBYTE = 0x08


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes with ``ndim`` dimensions, checked against its header."""
    import gzip

    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise IDXFileError(f"{path}: cannot be read as {'gzip' if path.suffix == '.gz' else 'a file'} "
                           f"({exc})") from exc
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IDXFileError(f"{path}: {len(raw)} bytes, too short for an IDX header ({header} bytes)")
    zero, dtype, dims = int.from_bytes(raw[:2], "big"), raw[2], raw[3]
    if zero != 0 or dtype != _IDX_UBYTE or dims != ndim:
        raise IDXFileError(f"{path}: magic number 0x{int.from_bytes(raw[:4], 'big'):08x}, expected "
                           f"0x{0x800 + ndim:08x} (an IDX file of unsigned bytes with {ndim} dimension"
                           f"{'s' if ndim > 1 else ''})")
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    expected = header + math.prod(shape)
    if len(raw) != expected:
        raise IDXFileError(f"{path}: the header says shape {shape}, i.e. {expected} bytes, "
                           f"but the file has {len(raw)}{' (truncated?)' if len(raw) < expected else ''}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)
