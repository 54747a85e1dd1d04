"""Shared memory layout of the per-call tables the kernels read (host and device agree here).

One int64 row per non-empty tensor; a program finds its row through the per-program ``rows``
table, so one launch covers every tensor of a dtype group without concatenating them. Every
table has NCOLS columns, with the tensor's length and first program at COL_NUMEL and COL_PID0
(blocks.program_block reads them); the other columns are the kernel's own.
"""
import triton.language as tl

COL_NUMEL = tl.constexpr(4)
COL_PID0 = tl.constexpr(5)     # first program of this tensor within its launch
NCOLS = tl.constexpr(12)

# The other columns of a selection table row.
COL_X = tl.constexpr(0)        # scores (topk) or weights (saliency): address
COL_G = tl.constexpr(1)        # grads (saliency), or the scores (drop/grow's one-pass tiles): address
COL_PREV = tl.constexpr(2)     # prev_masks (Iter SNIP), viewed as uint8: address
COL_OUT = tl.constexpr(3)      # output mask, viewed as uint8: address
COL_GBLOCK = tl.constexpr(6)   # global index of its first block: tie ranks follow global order
COL_INDEX = tl.constexpr(7)    # position in the caller's list: names the tensor in NaN errors

# The segmented ops' columns: a tensor is cut into COL_SEGS segments of COL_SEGLEN elements.
COL_SEGLEN = tl.constexpr(8)
COL_SEGS = tl.constexpr(9)
COL_KS = tl.constexpr(10)      # address of its int64 k per segment (unused for N:M: k = n)
COL_SEG0 = tl.constexpr(11)    # radix path: its first segment's index in the state and histograms

# The drop/grow tables (drop_grow.py) also use COL_SEG0 (the segment's index) and COL_INDEX (the
# NaN code of COL_X's tensor: 2i for weights[i], 2i+1 for scores[i]), and:
COL_TIE0 = tl.constexpr(8)     # global index of its segment's first block: tie ranks count from there

# Slots of the selection state: what the passes have learnt about the k-th largest key.
ST_PREFIX = tl.constexpr(0)    # high digits of the k-th key found so far (all of it at the end)
ST_KREM = tl.constexpr(1)      # its rank among the keys sharing that prefix (1-based)
ST_TIES = tl.constexpr(2)      # how many competing keys equal the final k-th key
ST_NAN = tl.constexpr(3)       # nonzero once a competing score is NaN
NSTATE = tl.constexpr(4)

# The other columns of a masked-SGD table row.
SGD_P = tl.constexpr(0)
SGD_G = tl.constexpr(1)
SGD_BUF = tl.constexpr(2)
SGD_MASK = tl.constexpr(3)
SGD_FRESH = tl.constexpr(6)    # 1: no momentum buffer yet, start it at d_p (torch.optim.SGD)
SGD_HAS_MASK = tl.constexpr(7)
