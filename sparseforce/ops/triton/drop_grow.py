"""The fused drop/grow step of dynamic sparse training on Triton:
``sparseforce_triton::drop_grow_masks`` (importing this module registers its kernel, for CUDA
tensors and, under the interpreter, CPU ones).

Per segment s (one per tensor, or one over every tensor in global order) two exact selections
on keys of |x| (keys.magnitude_keys: the sign bit cleared, so -0.0 == +0.0), ties by position:
the drop keeps K = the keeps[s] largest |w| among the active elements (masks True), the grow
picks G = the grows[s] largest |score| among the elements not in K (a weight just dropped may
come straight back), and the output is K | G. The output holds K in between: the drop writes it,
the grow reads it as its competing set (the front guarantees out never aliases an input) and
only sets its picks, so no scratch memory beyond the selection states. The counts stay on the
device (the states take them from keeps and grows), so nothing waits for the GPU.

Two paths:
* segment="tensor", tensors of at most config.row_tile elements (drop_grow_tile): one program
  per tensor holds it in registers and runs both selections (all pairs up to
  config.group_width elements, the bitwise select above), one pass over w, score and mask.
  One launch per tile width and dtype pair.
* longer tensors, and every tensor of segment="global" (drop_grow_radix): the segmented radix
  select (8-bit digits, one state and 256-bin histogram per segment) run twice, the drop then
  the grow, in the key width of each segment's dtype (global: the promoted dtype of the weights,
  then of the scores, so mixed dtypes rank exactly). Per phase and pass one histogram launch per
  dtype and one choose_digit program per segment; then one tie-count launch, a prefix sum and
  one mask launch. A global segment is a segment whose blocks lie in several tensors: its tie
  ranks count from its first block (COL_TIE0), in global position order.

NaN: the first pass of each phase (the tile kernel, for short tensors) flags every NaN of
weights[i] as 2i and of scores[i] as 2i+1, active or not; the op's code is the first flagged.
"""
from __future__ import annotations

import numpy as np
import torch

from .._schema import promoted_dtype
from .config import config
from .drop_grow_radix import drop_grow_histogram_kernel, drop_grow_ties_kernel
from .drop_grow_tile import drop_grow_tile_kernel
from .layout import (COL_G, COL_GBLOCK, COL_INDEX, COL_OUT, COL_PREV, COL_SEG0, COL_TIE0, COL_X, NSTATE,
                     ST_KREM)
from .plan import as_bytes, blocks, nan_index, pack, ready, tile_width, writing_masks
from .radix_passes import DIGIT_BITS, select_segments
from .register import kernel


class _Phase:
    """The drop or the grow over the radix segments."""

    def __init__(self, grow: bool):
        self.grow = grow
        self.segments = []  # (key bits, index in keeps / grows, [(x, competing, out, NaN code)])

    def tables(self):
        """The launch groups (one per key width and dtype) for plan.pack, and each segment's index
        in keeps / grows, segments of one key width consecutive (one choose_digit launch each)."""
        self.segments.sort(key=lambda seg: seg[0])
        self.widths, groups, gblock = {}, {}, 0
        for seg, (key_bits, _, members) in enumerate(self.segments):
            first, count = self.widths.get(key_bits, (seg, 0))
            self.widths[key_bits] = (first, count + 1)
            tie0 = gblock
            for x, competing, out, code in members:
                programs = blocks(x.numel(), config.block)
                cols = {COL_X: x.data_ptr(), COL_PREV: competing.data_ptr(), COL_OUT: out.data_ptr(),
                        COL_INDEX: code, COL_SEG0: seg, COL_GBLOCK: gblock, COL_TIE0: tie0}
                groups.setdefault((key_bits, str(x.dtype)), ((x,), []))[1].append((x.numel(), programs, cols))
                gblock += programs
        self.nblocks, self.order = gblock, sorted(groups)
        return [groups[key] for key in self.order], [index for _, index, _ in self.segments]

    def select(self, ks, nan_flags):
        """Launches the phase with ``ks`` its segments' counts (on the device)."""
        state = torch.zeros((len(self.segments), NSTATE.value), dtype=torch.int64, device=ks.device)
        state[:, ST_KREM.value] = ks

        def launch(kernel, key_bits, *args, **const):
            for (bits, _), grp in zip(self.order, self.launches):
                if key_bits in (None, bits):
                    kernel[(grp.nblocks,)](grp.table, grp.rows, state, *args, grp.tensors[0], **const,
                                           GROW=self.grow, KEY_BITS=bits, BLOCK=config.block,
                                           num_warps=config.num_warps)

        def histogram(hist, key_bits, shift, first):
            launch(drop_grow_histogram_kernel, key_bits, hist, nan_flags, SHIFT=shift, BITS=DIGIT_BITS, FIRST=first)

        def ties(buffer, count):
            launch(drop_grow_ties_kernel, None, buffer, COUNT=count)

        select_segments(state, self.widths, histogram, ties, self.nblocks)


class _DropGrow:
    """One call: the tables of both paths, built on the host and sent in one copy."""

    def __init__(self, weights, scores, masks, keeps, grows, outs):
        n = len(weights)
        self.keeps, self.grows = keeps, grows
        one_segment = keeps.numel() == 1 and n > 1
        self.keep_alive = []  # copies whose addresses are in the tables
        self.drop, self.grow = _Phase(False), _Phase(True)
        tiles, dropped, grown = {}, [], []
        for i in range(n):
            numel = weights[i].numel()
            if numel == 0:
                continue
            w, s, m = ready(weights[i]), ready(scores[i]), as_bytes(ready(masks[i]))
            self.keep_alive += [w, s, m]
            if one_segment or numel > config.row_tile:
                dropped.append((i, w, m))
                grown.append((i, s))
                continue
            width = tile_width(numel)
            key = (numel <= config.group_width, width, str(w.dtype), str(s.dtype))
            cols = {COL_X: w.data_ptr(), COL_G: s.data_ptr(), COL_PREV: m.data_ptr(), COL_OUT: outs[i].data_ptr(),
                    COL_INDEX: 2 * i, COL_SEG0: i}
            tiles.setdefault(key, ((w, s), []))[1].append((numel, 1, cols))
        if one_segment:
            if dropped:
                self.drop.segments.append((promoted_dtype(weights).itemsize * 8, 0,
                                           [(w, m, outs[i], 2 * i) for i, w, m in dropped]))
                self.grow.segments.append((promoted_dtype(scores).itemsize * 8, 0,
                                           [(s, outs[i], outs[i], 2 * i + 1) for i, s in grown]))
        else:
            for (i, w, m), (_, s) in zip(dropped, grown):
                self.drop.segments.append((w.itemsize * 8, i, [(w, m, outs[i], 2 * i)]))
                self.grow.segments.append((s.itemsize * 8, i, [(s, outs[i], outs[i], 2 * i + 1)]))
        self.tile_keys = sorted(tiles)
        drop_groups, drop_ks = self.drop.tables()
        grow_groups, grow_ks = self.grow.tables()
        head = np.concatenate([np.zeros(2 * n), drop_ks, grow_ks]).astype(np.int64)
        shared, launches = pack(head, [tiles[key] for key in self.tile_keys] + drop_groups + grow_groups,
                                keeps.device)
        self.nan_flags = shared[:2 * n]
        self.drop_ks, self.grow_ks = shared[2 * n:2 * n + len(drop_ks)], shared[2 * n + len(drop_ks):]
        self.tiles = launches[:len(tiles)]
        self.drop.launches = launches[len(tiles):len(tiles) + len(drop_groups)]
        self.grow.launches = launches[len(tiles) + len(drop_groups):]

    def run(self):
        for (all_pairs, width, _, _), grp in zip(self.tile_keys, self.tiles):
            w, s = grp.tensors
            drop_grow_tile_kernel[(grp.nblocks,)](grp.table, self.nan_flags, self.keeps, self.grows, w, s,
                                                  W_BITS=w.itemsize * 8, S_BITS=s.itemsize * 8,
                                                  ALL_PAIRS=all_pairs, WIDTH=width, num_warps=config.num_warps)
        if self.drop.segments:
            self.drop.select(self.keeps[self.drop_ks], self.nan_flags)
            self.grow.select(self.grows[self.grow_ks], self.nan_flags)


@kernel("drop_grow_masks")
def drop_grow_masks(weights, scores, masks, keeps, grows, out):
    with writing_masks(weights, out) as views:
        op = _DropGrow(weights, scores, masks, keeps, grows, views)
        op.run()
    return nan_index(op.nan_flags)
