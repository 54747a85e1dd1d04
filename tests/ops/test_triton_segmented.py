"""Triton-specific cases of the segmented ops: each of the three kernel paths forced on inputs of
every segment form (the shared tests in test_segmented.py run the default thresholds, where the
radix path needs segments longer than 4096 elements).

Paths (sparseforce.ops.triton.segmented): all-pairs rank (segments <= config.group_width),
in-register bitwise row select (<= config.row_tile), per-segment radix select (longer, blocks of
config.block). The configs below shrink the thresholds so that small inputs take every path,
radix segments span several 64-element blocks with a ragged last one, and one call mixes paths.
"""
import numpy as np
import pytest
import torch

import sparseforce.ops as ops
from test_ops import DTYPES, random_scores
from test_segmented import SHAPES, check, check_saliency, oracle, per_tensor_ks, row_view

DEVICES = [d for d in ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
           if "triton" in ops.available_backends(d, "segmented_topk_masks")]
pytestmark = pytest.mark.skipif(not DEVICES, reason="the triton backend is unavailable here")

PATHS = {
    "mixed": dict(group_width=32, row_tile=64, block=256),  # <= 32: rank, 33..64: rows, longer: radix
    "rows": dict(group_width=0),                            # every segment up to 4096 (N:M groups too) by rows
    "radix": dict(group_width=0, row_tile=0, block=64),     # every segment by the radix select
}
# Few segments: the interpreter runs the radix path program by program, pass by pass. Rows of
# 150 end in a ragged block, rows of 128 in a full one.
RADIX_SHAPES = [(3, 150), (2, 4, 5), (2, 128), (9,), (), (0, 3), (1,)]
# Groups of 3, 5 and 15: tile widths padded past the segment.
ODD_NM_SHAPES = [(4, 15), (2, 3, 5), (1, 30)]


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture(params=list(PATHS))
def path(request):
    from sparseforce.ops.triton.config import config
    saved = {attr: getattr(config, attr) for attr in PATHS[request.param]}
    for attr, value in PATHS[request.param].items():
        setattr(config, attr, value)
    yield request.param
    for attr, value in saved.items():
        setattr(config, attr, value)


def per_row_ks(scores, gen):
    """Random k per row, with 0 and the full row among them."""
    ks = []
    for s in scores:
        rows, length = row_view(s)
        k = torch.randint(0, length + 1, (rows,), generator=gen)
        k[:1], k[-1:] = 0, length
        ks.append(k)
    return ks


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_segment_form_on_every_path(device, path, dtype):
    gen = torch.Generator().manual_seed(20)
    scores = random_scores(gen, RADIX_SHAPES if path == "radix" else SHAPES, dtype, "ties")
    for fraction in (0.0, 0.3, 1.0):
        check(scores, per_tensor_ks(scores, fraction), "tensor", "triton", device)
    check(scores, per_row_ks(scores, gen), "row", "triton", device)
    check(scores, [min(5, row_view(s)[1]) for s in scores], "row", "triton", device)
    nm = random_scores(gen, [(2, 8)], dtype, "ties") if path == "radix" else \
        [s for s in scores if row_view(s)[1] % 4 == 0]
    for n, m in ((0, 4), (1, 4), (3, 4), (4, 4), (1, 2)):
        check(nm, None, ("nm", n, m), "triton", device)
    odd = random_scores(gen, ODD_NM_SHAPES[1:] if path == "radix" else ODD_NM_SHAPES, dtype, "ties")
    for n, m in ((2, 5), (7, 15)):
        check(odd, None, ("nm", n, m), "triton", device)


def test_mixed_dtypes_in_one_call(device, path):
    """Key widths 16, 32 and 64 in one call: the radix segments of each width take their own
    number of passes, each pass one launch per dtype group and one digit choice per width."""
    gen = torch.Generator().manual_seed(21)
    base = random_scores(gen, [(3, 150), (2, 40), (9, 4), (2, 100)], kind="ties")
    scores = [s.to(dtype) for s, dtype in zip(base, [torch.float16, torch.float64, torch.bfloat16, torch.float32])]
    check(scores, [100, 33, 0, 200], "tensor", "triton", device)
    check(scores, per_row_ks(scores, gen), "row", "triton", device)
    check([s[:1, :8] for s in scores[:2]], None, ("nm", 2, 4), "triton", device)


def test_radix_ties_span_blocks_within_each_segment(device, path):
    # Rows of 300 (five 64-element blocks, the last of 44): 40 values above, then zeros of both
    # signs, then 40 below. A k inside the zeros keeps its first zeros in row order: the tie
    # counts of earlier blocks of the same row decide, never those of the row before.
    gen = torch.Generator().manual_seed(22)
    row = torch.cat([torch.rand(40, generator=gen) + 1, torch.zeros(110), -torch.zeros(110),
                     -torch.rand(40, generator=gen) - 1])
    scores = [row.repeat(5, 1), row.double().repeat(2, 1)]
    ks = [torch.tensor([41, 150, 200, 259, 260]), torch.tensor([100, 299])]
    masks = check(scores, ks, "row", "triton", device)
    for m, k in zip(masks[0], ks[0].tolist()):
        assert m[:k].all() and not m[k:].any()
    check([row], [170], "tensor", "triton", device)


def test_saliency_and_iter_snip_on_every_path(device, path):
    gen = torch.Generator().manual_seed(23)
    shapes = [(5, 80), (9, 12), (30,), (6, 4)]
    w = random_scores(gen, shapes)
    g = random_scores(gen, shapes, kind="ties")  # many zero products: ties at the threshold
    w[1], g[2] = w[1].bfloat16(), g[2].double()  # bf16 x fp32 in fp32, fp32 x fp64 in fp64
    prev = [torch.rand(s, generator=gen) < 0.7 for s in shapes]
    check_saliency(w, g, per_tensor_ks(w, 0.4), "tensor", "triton", device)
    nm = [t[:2, :8] for t in (w[0], w[1], g[0], g[1], prev[0], prev[1])]
    check_saliency(nm[:2], nm[2:4], None, ("nm", 2, 4), "triton", device, prev=nm[4:])
    alive = [p.reshape(p.shape[0], -1).sum(1) for p in prev]
    for segment, ks in (("row", [a // 2 for a in alive]), ("tensor", [int(a.sum()) // 3 for a in alive])):
        check_saliency(w, g, ks, segment, "triton", device, prev=prev, resurrect=False)


def test_nan_names_the_first_competing_tensor_on_every_path(device, path):
    def nan_at(shape, where):
        t = torch.ones(shape)
        t.view(-1)[where] = float("nan")
        return t.to(device)

    scores = [torch.ones(3, 8, device=device), nan_at((4, 12), 30), nan_at((2, 8), 15)]
    for segment, ks in (("tensor", [1, 1, 1]), ("row", [1, 1, 1]), (("nm", 1, 4), None)):
        with pytest.raises(ops.NaNScoreError) as info:
            ops.segmented_topk_masks(scores, ks, segment=segment, backend="triton")
        assert info.value.index == 1
    # A NaN weight pruned in prev_masks does not compete (Iter SNIP), so it is not reported.
    w = [nan_at((3, 80), 7), nan_at((3, 80), 90)]
    prev = [torch.ones(3, 80, dtype=torch.bool, device=device) for _ in w]
    prev[0].view(-1)[7] = False
    g = [torch.ones(3, 80, device=device)] * 2
    with pytest.raises(ops.NaNScoreError) as info:
        ops.segmented_saliency_topk_masks(w, g, [1, 1], prev_masks=prev, resurrect=False, segment="row",
                                          backend="triton")
    assert info.value.index == 1


def test_segment_offsets_are_64_bit(device, path):
    """Each tensor addressed as if it had 2**31 more elements of earlier segments: every offset
    the kernels compute is above 2**31, so 32-bit index math would read and write the wrong place."""
    from sparseforce.ops.triton import segmented
    from sparseforce.ops.triton.layout import (COL_GBLOCK, COL_KS, COL_OUT, COL_PID0, COL_SEG0, COL_SEGLEN,
                                               COL_SEGS, COL_X, NCOLS)
    gen = torch.Generator().manual_seed(24)
    scores = [torch.randint(0, 5, s, generator=gen).float().to(device) for s in [(6, 100), (33, 12), (40, 4)]]
    ks = [k.to(device) for k in per_row_ks(scores, gen)]
    out = [torch.empty_like(s, dtype=torch.bool) for s in scores]
    sel = segmented._Segmented(scores, None, None, ks, 0, 0, [o.view(torch.uint8) for o in out])
    for grp in sel.groups:
        table = grp.launch.table.view(-1, NCOLS.value)
        for row in table:
            length = int(row[COL_SEGLEN.value])
            per_program = 1 if grp.width else -(-length // grp.tile)  # radix: blocks per segment
            unit = grp.tile if grp.width else 1                          # small: segments per program
            segs = unit * -(-2 ** 31 // (length * unit))  # earlier segments, a whole number of programs
            row[COL_X.value] -= segs * length * 4
            row[COL_OUT.value] -= segs * length
            row[COL_KS.value] -= segs * 8
            row[COL_SEGS.value] += segs
            row[COL_PID0.value] -= segs // unit * per_program
            row[COL_SEG0.value] -= segs
            row[COL_GBLOCK.value] -= segs * per_program
    sel.select_small()
    sel.select_radix()
    for o, want in zip(out, oracle(scores, "row", ks)):
        np.testing.assert_array_equal(o.cpu().reshape(-1).numpy(), want)


def test_segmented_ops_trace_under_torch_compile(device):
    import sparseforce.ops.triton.segmented  # noqa: F401  (register the kernels)
    gen = torch.Generator().manual_seed(25)
    scores = [torch.randn(6, 8, generator=gen).to(device), torch.randn(30, generator=gen).to(device)]
    ks = [torch.arange(6, device=device), torch.tensor([7], device=device)]

    def select(scores, ks):
        rows = [torch.empty_like(s, dtype=torch.bool) for s in scores]
        nan = torch.ops.sparseforce_triton.segmented_topk_masks(scores, ks, 0, 0, rows)
        nm = [torch.empty_like(scores[0], dtype=torch.bool)]
        torch.ops.sparseforce_triton.segmented_saliency_topk_masks(scores[:1], scores[:1], [], 2, 4, [], nm)
        return rows, nm, nan

    got = torch.compile(select, backend="aot_eager", fullgraph=True)(scores, ks)
    want = select(scores, ks)
    assert all(torch.equal(a, b) for a, b in zip(got[0] + got[1], want[0] + want[1])) and int(got[2]) == -1
    np.testing.assert_array_equal(got[0][0].cpu().reshape(-1).numpy(), oracle(scores[:1], "row", ks[:1])[0])
