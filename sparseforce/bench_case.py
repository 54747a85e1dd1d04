"""What one case of ``sparseforce bench`` is (the runner is ``bench``; the cases live there and in
``bench_segmented``)."""
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
