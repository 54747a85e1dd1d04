"""Triton-specific cases of drop_grow_masks: each kernel path forced (the shared tests in
test_drop_grow.py run the default thresholds, where every tensor of segment="tensor" below 4096
elements takes the one-pass tile).

Paths (sparseforce.ops.triton.drop_grow): the tile kernel with its all-pairs or bitwise select,
and the radix select run twice (drop, then grow), per long tensor or over every tensor of
segment="global". The configs shrink the thresholds so that small inputs take each path, radix
segments span several 64-element blocks with a ragged last one, and one call mixes paths.
"""
import numpy as np
import pytest
import torch

import sparseforce.ops as ops
from test_drop_grow import check, oracle, per_tensor_drops, random_masks
from test_ops import DTYPES, random_scores

DEVICES = [d for d in ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
           if "triton" in ops.available_backends(d, "drop_grow_masks")]
pytestmark = pytest.mark.skipif(not DEVICES, reason="the triton backend is unavailable here")

PATHS = {
    "mixed": dict(group_width=8, row_tile=64, block=64),  # <= 8: all pairs, 9..64: bitwise, longer: radix
    "pairs": dict(group_width=64, row_tile=64, block=64),
    "radix": dict(group_width=0, row_tile=0, block=64),  # every tensor by the radix select
}
# Lengths 6 (all pairs), 49 and 64 (bitwise, one padded), 150 (radix: 3 blocks, the last ragged),
# 128 (radix: 2 full blocks), 0-dim and empty.
SHAPES = [(2, 3), (7, 7), (150,), (), (0, 4), (2, 64), (64,)]


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


def configured(**values):
    from sparseforce.ops.triton.config import config
    saved = {attr: getattr(config, attr) for attr in values}
    for attr, value in values.items():
        setattr(config, attr, value)
    return config, saved


@pytest.fixture(params=list(PATHS))
def path(request):
    config, saved = configured(**PATHS[request.param])
    yield request.param
    for attr, value in saved.items():
        setattr(config, attr, value)


@pytest.fixture
def radix():
    config, saved = configured(**PATHS["radix"])
    yield
    for attr, value in saved.items():
        setattr(config, attr, value)


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_path_per_tensor_and_global(device, path, dtype):
    gen = torch.Generator().manual_seed(30)
    weights = random_scores(gen, SHAPES, dtype, "ties")
    scores = random_scores(gen, SHAPES, dtype, "ties")
    masks = random_masks(gen, SHAPES, 0.5)
    for fraction in (0.0, 0.4, 1.0):
        check(weights, scores, masks, per_tensor_drops(masks, fraction), None, "tensor", "triton", device)
    active = sum(int(m.sum()) for m in masks)
    for drops, grows in ((active // 3, None), (active, 0)):
        check(weights, scores, masks, drops, grows, "global", "triton", device)


def test_mixed_key_widths_in_one_call(device, path):
    """Per tensor, each phase ranks in its tensors' own widths (16, 32, 64 bits: radix segments of
    each width take their own passes); globally in the promoted dtype of each list."""
    gen = torch.Generator().manual_seed(31)
    shapes = [(3, 50), (40,), (130,), (2, 90)]
    dtypes = [torch.float16, torch.float64, torch.bfloat16, torch.float32]
    weights = [t.to(d) for t, d in zip(random_scores(gen, shapes, kind="ties"), dtypes)]
    scores = [t.to(d) for t, d in zip(random_scores(gen, shapes, kind="ties"), dtypes[1:] + dtypes[:1])]
    masks = random_masks(gen, shapes, 0.6)
    check(weights, scores, masks, per_tensor_drops(masks, 0.5), None, "tensor", "triton", device)
    check(weights, [s.half() for s in scores], masks, 77, 90, "global", "triton", device)
    check([w.bfloat16() for w in weights], [s.bfloat16() for s in scores], masks, 50, None, "global", "triton",
          device)


def tied(gen, shapes, value=1.0):
    """Every |x| equal, signs and zero signs mixed: only positions decide."""
    return [value * torch.where(torch.rand(s, generator=gen) < 0.5, -1.0, 1.0) for s in shapes]


def first_true(shapes, counts):
    return [np.arange(int(np.prod(s))) < c for s, c in zip(shapes, counts)]


@pytest.mark.parametrize("segment", ["tensor", "global"])
def test_drop_ties_drop_the_highest_positions(device, path, segment):
    """All |w| tied, every weight active, no growth: the drop keeps the first positions of each
    segment; a global segment counts across tensors and blocks."""
    gen = torch.Generator().manual_seed(32)
    shapes = [(70,), (5,), (2, 65), (30,)]
    weights, scores = tied(gen, shapes), random_scores(gen, shapes)
    masks = [torch.ones(s, dtype=torch.bool) for s in shapes]
    if segment == "tensor":
        drops = [31, 2, 100, 29]
        want = first_true(shapes, [70 - 31, 5 - 2, 130 - 100, 1])
    else:
        drops, want = 150, first_true(shapes, [70, 5, 10, 0])  # keeps 235 - 150 = 85
    got = check(weights, scores, masks, drops, [0] * 4 if segment == "tensor" else 0, segment, "triton", device)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g.cpu().reshape(-1).numpy(), w)


@pytest.mark.parametrize("segment", ["tensor", "global"])
def test_grow_ties_grow_the_lowest_positions(device, path, segment):
    """Nothing active, all |score| tied: the grow picks the first positions of each segment."""
    gen = torch.Generator().manual_seed(33)
    shapes = [(70,), (5,), (2, 65), (30,)]
    weights, scores = random_scores(gen, shapes), tied(gen, shapes, 2.0)
    masks = [torch.zeros(s, dtype=torch.bool) for s in shapes]
    if segment == "tensor":
        grows, want = [69, 3, 71, 13], first_true(shapes, [69, 3, 71, 13])
    else:
        grows, want = 140, first_true(shapes, [70, 5, 65, 0])
    got = check(weights, scores, masks, [0] * 4 if segment == "tensor" else 0, grows, segment, "triton", device)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g.cpu().reshape(-1).numpy(), w)


@pytest.mark.parametrize("segment", ["tensor", "global"])
def test_dropped_weights_compete_for_growth(device, path, segment):
    """The largest scores sit on the weights the drop removes: they come straight back, and the
    weights inactive before the update only get what is left."""
    gen = torch.Generator().manual_seed(34)
    shapes = [(3, 40), (9,), (100,)]
    weights = random_scores(gen, shapes)
    masks = random_masks(gen, shapes, 0.5)
    if segment == "tensor":
        drops = per_tensor_drops(masks, 0.5)
        none, grows = [0] * 3, [d + 1 for d in drops]
    else:
        drops = sum(int(m.sum()) for m in masks) // 2
        none, grows = 0, drops + 1
    dropped = [m.reshape(-1) & ~torch.from_numpy(k) for m, k in
               zip(masks, oracle(weights, weights, masks, drops, none, segment))]
    scores = [torch.where(d, 10.0, 1.0).reshape(s) + 0.01 * torch.rand(s, generator=gen)
              for d, s in zip(dropped, shapes)]
    got = check(weights, scores, masks, drops, grows, segment, "triton", device)
    for g, d in zip(got, dropped):
        assert torch.equal(g.cpu().reshape(-1) & d, d)
    assert sum(int(g.sum()) for g in got) == sum(int(m.sum()) for m in masks) + len(got if segment == "tensor" else [0])


def test_nan_anywhere_names_the_first_tensor_on_every_path(device, path):
    def nan_at(shape, where):
        t = torch.ones(shape)
        t.view(-1)[where] = float("nan")
        return t.to(device)

    shapes = [(3, 8), (150,), (40,)]
    ones = [torch.ones(s, device=device) for s in shapes]
    masks = [torch.ones(s, dtype=torch.bool, device=device) for s in shapes]
    masks[1][100:] = False
    for segment, drops in (("tensor", [1, 1, 1]), ("global", 3)):
        # An inactive weight's NaN counts; weights[1] (code 2) comes before scores[1] (3) and scores[2] (5).
        weights = [ones[0], nan_at((150,), 120), ones[2]]
        scores = [ones[0], nan_at((150,), 3), nan_at((40,), 39)]
        with pytest.raises(ops.NaNScoreError, match=r"weights\[1\]"):
            ops.drop_grow_masks(weights, scores, masks, drops, segment=segment, backend="triton")
        with pytest.raises(ops.NaNScoreError, match=r"scores\[1\]"):
            ops.drop_grow_masks(ones, scores, masks, drops, segment=segment, backend="triton")
        with pytest.raises(ops.NaNScoreError, match=r"scores\[0\]"):
            ops.drop_grow_masks(ones, [nan_at((3, 8), 23)] + scores[1:], masks, drops, segment=segment,
                                backend="triton")


@pytest.mark.parametrize("segment", ["tensor", "global"])
def test_offsets_are_64_bit(device, radix, segment):
    """Each tensor addressed as if it started 2**31 elements before its data: every offset the
    radix kernels compute is above 2**31, so 32-bit index math would read and write the wrong place."""
    from sparseforce.ops.triton import drop_grow
    from sparseforce.ops.triton.layout import COL_GBLOCK, COL_NUMEL, COL_OUT, COL_PID0, COL_PREV, COL_X, NCOLS
    from sparseforce.ops.triton.plan import nan_index
    gen = torch.Generator().manual_seed(35)
    shapes = [(3, 50), (200,)]
    weights = [torch.randint(-2, 3, s, generator=gen).float().to(device) for s in shapes]
    scores = [torch.randint(-2, 3, s, generator=gen).double().to(device) for s in shapes]
    masks = [(torch.rand(s, generator=gen) < 0.5).to(device) for s in shapes]
    active = [int(m.sum()) for m in masks]
    drops = [a // 3 for a in active] if segment == "tensor" else sum(active) // 3
    out = [torch.empty(s, dtype=torch.bool, device=device) for s in shapes]
    keeps = [a - d for a, d in zip(active, drops)] if segment == "tensor" else [sum(active) - drops]
    grows = [d - 5 for d in drops] if segment == "tensor" else drops - 5
    op = drop_grow._DropGrow(weights, scores, masks, torch.tensor(keeps, device=device),
                             torch.tensor(grows if segment == "tensor" else [grows], device=device),
                             [o.view(torch.uint8) for o in out])
    shift, blocks_before = 2 ** 31, 2 ** 31 // 64
    for phase in (op.drop, op.grow):
        for grp in phase.launches:
            table = grp.table.view(-1, NCOLS.value)
            table[:, COL_X.value] -= shift * grp.tensors[0].element_size()
            table[:, COL_PREV.value] -= shift
            table[:, COL_OUT.value] -= shift
            table[:, COL_NUMEL.value] += shift
            table[:, COL_PID0.value] -= blocks_before
            table[:, COL_GBLOCK.value] -= blocks_before
    op.run()
    assert int(nan_index(op.nan_flags)) == -1
    for o, want in zip(out, oracle(weights, scores, masks, drops, grows, segment)):
        np.testing.assert_array_equal(o.cpu().reshape(-1).numpy(), want)
