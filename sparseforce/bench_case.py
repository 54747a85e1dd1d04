"""What one case of ``sparseforce bench`` is (the runner is ``bench``; the cases live there, in
``bench_segmented`` and in ``bench_dst``), and the plain-text tables they are printed as."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch


@dataclasses.dataclass
class Case:
    """One benchmark: ``make(impl, device)`` returns a zero-argument callable to time."""
    name: str
    layers: str
    dtype: torch.dtype
    params: int
    floor_bytes: float  # bytes that must cross memory at least once
    impls: list[str]
    make: Callable[[str, torch.device], Callable[[], object]]
    kind: str = "kernel"


class Unavailable(Exception):
    """Raised by a case's ``make`` for an impl that cannot run here (e.g. an optional third-party
    package missing); its message is the reason, shown in the impl's row instead of a time."""


def text_table(header: list[str], lines: list[list]) -> str:
    """Columns padded to their widest cell, ``|``-separated, a dashed rule under the header."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    out = [" | ".join(h.ljust(w) for h, w in zip(header, widths)), "-|-".join("-" * w for w in widths)]
    out += [" | ".join(str(x).ljust(w) for x, w in zip(line, widths)) for line in lines]
    return "\n".join(out)
