"""The segmented selection ops on Triton: ``sparseforce_triton::segmented_topk_masks`` and
``segmented_saliency_topk_masks`` (importing this module registers their kernels, for CUDA
tensors and, under the interpreter, CPU ones).

A tensor is cut into equal segments (the op library: one per tensor, one per row, or N:M groups
of m), each keeping exactly its own k with the global ops' ranking, keys in the tensor's own
score dtype (saliencies in ``saliency_dtype``). Every tensor takes one of three paths, chosen by
its segment length L (config.py):

* L <= group_width (32; N:M groups, short rows), segment_rank (ALL_PAIRS): a program
  holds a [SEGS, WIDTH] tile of whole segments; an element's rank is the number of competing
  elements of its segment that beat it (greater key, or equal key at a lower position), counted
  by one [SEGS, WIDTH, WIDTH] comparison, and it is kept when that rank < k. No histogram, no
  reduction across segments, one pass over the data.
* L <= row_tile (4096; rows), segment_rank: a program holds a [ROWS, WIDTH]
  tile of whole rows and builds each row's k-th key bit by bit in registers (a 1-bit-digit
  radix select: KEY_BITS counting reductions), then keeps the keys above it and the first
  k - (keys above) of its ties in row order. One pass over the data.
* longer segments (segment="tensor" of most layers, very long rows), segment_radix: the global
  ops' radix select with one state and one histogram per segment, 8-bit digits (a 256-bin
  histogram per segment and pass: memory bounded by the segment count, not the digit width).
  Per pass one launch per dtype group over every segment of every tensor, then one
  choose_digit program per segment; then one tie-count launch, an exclusive prefix sum, and
  one mask launch. Nothing waits for the GPU in between.

Launches are grouped by path, tile width and dtype pair (the kernels' compile-time constants),
never per tensor. NaN: each path flags the tensor of a competing NaN as it reads it; the masks
are written regardless (the op library leaves them unspecified after a NaN).
"""
from __future__ import annotations

import numpy as np
import torch

from .._schema import saliency_dtype
from .config import config
from .layout import (COL_G, COL_GBLOCK, COL_INDEX, COL_KS, COL_OUT, COL_PREV, COL_SEG0, COL_SEGLEN,
                     COL_SEGS, COL_X, NSTATE, ST_KREM)
from .plan import as_bytes, blocks, nan_index, pack, ready, tile_width, writing_masks
from .radix_passes import DIGIT_BITS, select_segments
from .register import kernel
from .segment_radix import segment_histogram_kernel, segment_ties_kernel
from .segment_rank import small_segments_kernel


class _Group:
    """The tensors of one launch: one path, tile and dtype pair."""

    def __init__(self, path, tile, width, x, g, key_bits):
        self.path, self.tile, self.width, self.key_bits = path, tile, width, key_bits
        self.tensors = (x, x if g is None else g)
        self.entries = []  # (numel, programs, {column: value}) per tensor: plan.pack's
        self.ks = []       # radix path: each tensor's ks


class _Segmented:
    """One call: the launch tables of every path, built on the host and sent in one copy."""

    def __init__(self, xs, gs, prevs, ks, n, m, outs):
        self.device, self.n, self.per_segment_k = xs[0].device, n, m == 0
        self.flags = dict(SALIENCY=gs is not None, HAS_PREV=prevs is not None)
        self.keep_alive = []  # copies whose addresses are in the tables
        groups = {}
        for i, x in enumerate(xs):
            numel = x.numel()
            if numel == 0:
                continue
            segs = numel // m if m else ks[i].numel()
            length = numel // segs
            x = ready(x)
            g = ready(gs[i]) if gs is not None else None
            p = as_bytes(ready(prevs[i])) if prevs is not None else None
            self.keep_alive += [x, g, p]
            cols = {COL_X: x.data_ptr(), COL_G: 0 if g is None else g.data_ptr(),
                    COL_PREV: 0 if p is None else p.data_ptr(), COL_OUT: outs[i].data_ptr(),
                    COL_INDEX: i, COL_SEGLEN: length, COL_SEGS: segs, COL_KS: 0 if m else ks[i].data_ptr()}
            width = tile_width(length)
            if length <= config.group_width:
                path, tile = "all pairs", max(1, config.group_tile // (width * width))
            elif length <= config.row_tile:
                path, tile = "rows", max(1, config.row_tile // width)
            else:
                path, tile, width = "radix", config.block, 0
            key_bits = (x.dtype if g is None else saliency_dtype(x, g)).itemsize * 8
            key = (key_bits, path, width, str(x.dtype), str(None if g is None else g.dtype))
            group = groups.setdefault(key, _Group(path, tile, width, x, g, key_bits))
            if path == "radix":
                group.ks.append(ks[i] if m == 0 else torch.full((segs,), n, dtype=torch.int64, device=self.device))
                group.entries.append((numel, segs * blocks(length, tile), cols))
            else:
                group.entries.append((numel, blocks(segs, tile), cols))
        # Sorted by key width first: the radix segments of one width get consecutive states,
        # which one choose_digit launch per pass covers.
        self.groups = [groups[key] for key in sorted(groups)]
        self.radix = [grp for grp in self.groups if grp.path == "radix"]
        self.widths, segments, nblocks = {}, 0, 0
        for grp in self.radix:
            first = self.widths.get(grp.key_bits, (segments, 0))[0]
            for _, programs, cols in grp.entries:
                cols[COL_SEG0], cols[COL_GBLOCK] = segments, nblocks
                segments += cols[COL_SEGS]
                nblocks += programs
            self.widths[grp.key_bits] = (first, segments - first)
        self.segments, self.nblocks = segments, nblocks
        self.nan_flags, launches = pack(np.zeros(len(xs), dtype=np.int64),
                                        [(grp.tensors, grp.entries) for grp in self.groups], self.device)
        for grp, launch in zip(self.groups, launches):
            grp.launch = launch

    def launch(self, grp, kernel, *args, **const):
        x, g = grp.tensors
        kernel[(grp.launch.nblocks,)](grp.launch.table, grp.launch.rows, *args, x, g, **const, **self.flags,
                                      KEY_BITS=grp.key_bits, SCORE_F64=grp.key_bits == 64,
                                      num_warps=config.num_warps)

    def select_small(self):
        for grp in self.groups:
            if grp.path != "radix":
                self.launch(grp, small_segments_kernel, self.nan_flags, self.n, PER_SEGMENT_K=self.per_segment_k,
                            ALL_PAIRS=grp.path == "all pairs", SEGS=grp.tile, WIDTH=grp.width)

    def select_radix(self):
        if not self.radix:
            return
        state = torch.zeros((self.segments, NSTATE.value), dtype=torch.int64, device=self.device)
        state[:, ST_KREM.value] = torch.cat([k for grp in self.radix for k in grp.ks])

        def histogram(hist, key_bits, shift, first):
            for grp in self.radix:
                if grp.key_bits == key_bits:
                    self.launch(grp, segment_histogram_kernel, state, hist, self.nan_flags, SHIFT=shift,
                                BITS=DIGIT_BITS, FIRST=first, BLOCK=grp.tile)

        def ties(buffer, count):
            for grp in self.radix:
                self.launch(grp, segment_ties_kernel, state, buffer, COUNT=count, BLOCK=grp.tile)

        select_segments(state, self.widths, histogram, ties, self.nblocks)


def _select_into(xs, gs, prevs, ks, n, m, out) -> torch.Tensor:
    with writing_masks(xs, out) as views:
        sel = _Segmented(xs, gs, prevs, ks, n, m, views)
        sel.select_small()
        sel.select_radix()
    return nan_index(sel.nan_flags)


@kernel("segmented_topk_masks")
def segmented_topk_masks(scores, ks, n, m, out):
    return _select_into(scores, None, None, ks, n, m, out)


@kernel("segmented_saliency_topk_masks")
def segmented_saliency_topk_masks(weights, grads, ks, n, m, competing, out):
    return _select_into(weights, grads, competing or None, ks, n, m, out)
