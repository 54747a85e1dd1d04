"""The launch sequence of the per-segment radix select (segment_radix.py, drop_grow_radix.py),
on the host: per pass, the histogram launches of every key width still counting, each followed
by one choose_digit program per segment of that width; then the tie counts, their exclusive
prefix sum and the masks. Nothing waits for the GPU in between.
"""
from __future__ import annotations

import torch

from .digit import choose_digit_kernel

# 8-bit digits: a 256-bin histogram per segment and pass, so the memory is bounded by the
# segment count, not by the digit width.
DIGIT_BITS = 8


def select_segments(state, widths, histogram, ties, nblocks):
    """``state``: a selection state per segment (layout.ST_*), ST_KREM set to its k.
    ``widths``: key width -> (first segment, count), the segments of one width consecutive.
    ``histogram(hist, key_bits, shift, first)`` launches the histogram kernels of the segments of
    that key width into ``hist`` (2**DIGIT_BITS bins per segment); ``ties(buffer, count)`` the
    tie kernels over ``nblocks`` blocks: counting into ``buffer``, or writing the masks with
    ``buffer`` the counts' exclusive prefix sum."""
    hist = torch.empty(state.shape[0] << DIGIT_BITS, dtype=torch.int64, device=state.device)
    for p in range(max(widths) // DIGIT_BITS):
        hist.zero_()
        for key_bits, (first, count) in widths.items():
            shift = key_bits - DIGIT_BITS * (p + 1)
            if shift < 0:
                continue
            histogram(hist, key_bits, shift, p == 0)
            choose_digit_kernel[(count,)](hist[first << DIGIT_BITS:], state[first:], SHIFT=shift,
                                          BITS=DIGIT_BITS)
    counts = torch.zeros(nblocks, dtype=torch.int64, device=state.device)
    ties(counts, True)
    ties(torch.cumsum(counts, 0) - counts, False)
