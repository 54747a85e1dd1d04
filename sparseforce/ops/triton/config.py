"""Tunables of the Triton backend (plain Python: importing this never imports triton).

Tests shrink ``block`` so that small inputs span many programs; benchmarks may sweep the rest.
The values are read at every call, so changing them takes effect on the next op.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Config:
    # Elements per program. Large enough that the per-program histogram atomics and table
    # lookups are amortised, small enough that a 23M-weight model still fills an H200.
    block: int = 4096
    num_warps: int = 8
    # The first radix digit is counted with tl.histogram, whose GPU lowering costs
    # O(num_bins / 32) instructions per element: 256 bins keeps it below the memory time.
    first_digit_bits: int = 8
    # Later digits only count the elements still in the running (usually a small fraction),
    # with one atomic per element, so wide digits are cheap and save full passes:
    # fp32 takes 8 + 12 + 12 bits = 3 passes.
    digit_bits: int = 12
    # Count later digits with tl.histogram as well (then digit_bits should be <= 8).
    dense_later_digits: bool = False
    # Programs per launch of the one-program exclusive scan: elements per loop step.
    scan_chunk: int = 1024
    # Segmented ops: segments of at most group_width elements (N:M groups, m <= 32) are ranked by
    # an all-pairs comparison, group_tile comparisons per program; longer ones up to row_tile
    # elements by a bitwise select in registers, a tile of row_tile elements per program; longer
    # ones by the radix select, blocks of `block` elements.
    group_width: int = 32
    group_tile: int = 8192
    row_tile: int = 4096


config = Config()
