"""The segmented selections (per tensor, per row, N:M) on every backend against a numpy oracle.

Each segment is ranked by the global ops' rules, so the oracle is ``oracle_keep`` applied to each
segment on its own; backends register themselves and each one found runs every test here.
"""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sparseforce.ops as ops
from conftest import BACKEND_DEVICE, oracle_keep
from test_ops import DTYPES, random_scores


def as64(t):
    return t.detach().to("cpu", torch.float64).reshape(-1).numpy()


def row_view(t):
    return (1, 1) if t.dim() == 0 else (t.shape[0], math.prod(t.shape[1:]))


def oracle(tensors, segment, ks, competing=None, values=None):
    """The masks, one flat numpy bool array per tensor: each segment of ``values`` (default: the
    tensors' own values as float64) ranked on its own."""
    out = []
    for i, t in enumerate(tensors):
        cand = None if competing is None else competing[i].cpu().reshape(-1).numpy()
        v = as64(t) if values is None else values[i]
        if segment == "tensor":
            bounds, per = [(0, v.size)], [ks[i]]
        else:
            if segment == "row":
                n_rows, length = row_view(t)
                per = ks[i].tolist() if isinstance(ks[i], torch.Tensor) else [ks[i]] * n_rows
            else:
                length = segment[2]
                per = [segment[1]] * (v.size // length)
            bounds = [(r * length, (r + 1) * length) for r in range(len(per))]
        keep = np.zeros(v.size, dtype=bool)
        for (lo, hi), k in zip(bounds, per):
            keep[lo:hi] = oracle_keep(v[lo:hi], k, None if cand is None else cand[lo:hi])
        out.append(keep)
    return out


def check(scores, ks, segment, backend, device, out=None):
    scores = [s.to(device) for s in scores]
    masks = ops.segmented_topk_masks(scores, ks, segment=segment, out=out, backend=backend)
    assert len(masks) == len(scores)
    for m, s, want in zip(masks, scores, oracle(scores, segment, ks)):
        assert m.dtype == torch.bool and m.shape == s.shape and m.device == s.device
        np.testing.assert_array_equal(m.cpu().reshape(-1).numpy(), want)
    return masks


# Shapes with rows of 1, 4, 8, 27, 64, 1100 elements (and none), totals not multiples of any block.
SHAPES = [(7, 3, 3, 3), (1,), (0,), (130,), (33, 8), (4, 0, 2), (3, 1100), ()]
NM_SHAPES = [(7, 8), (0, 4), (3, 2, 2), (5, 64), (2, 1100), (1, 4)]


def per_tensor_ks(scores, fraction):
    return [min(s.numel(), round(fraction * s.numel())) for s in scores]


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@pytest.mark.parametrize("kind", ["normal", "ties", "zeros", "signed_zeros", "inf"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_tensor_segments_match_oracle(backend, device, kind, dtype, rng):
    scores = random_scores(rng, SHAPES, dtype, kind)
    for fraction in (0.0, 0.01, 0.3, 0.5, 0.99, 1.0):
        check(scores, per_tensor_ks(scores, fraction), "tensor", backend, device)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@pytest.mark.parametrize("kind", ["normal", "ties", "signed_zeros", "inf"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_row_segments_match_oracle(backend, device, kind, dtype, rng):
    scores = random_scores(rng, SHAPES, dtype, kind)
    for fraction in (0.0, 0.25, 0.5, 1.0):
        ks = [round(fraction * row_view(s)[1]) for s in scores]
        check(scores, ks, "row", backend, device)
    # One k per row, anywhere in [0, row length], rows of k = 0 and k = length included.
    ks = [torch.randint(0, row_view(s)[1] + 1, (row_view(s)[0],), generator=rng) for s in scores]
    for k, s in zip(ks, scores):
        if k.numel() > 2:
            k[0], k[-1] = 0, row_view(s)[1]
    check(scores, ks, "row", backend, device)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@pytest.mark.parametrize("kind", ["normal", "ties", "signed_zeros", "inf"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_nm_segments_match_oracle(backend, device, kind, dtype, rng):
    scores = random_scores(rng, NM_SHAPES, dtype, kind)
    for n in range(5):
        check(scores, None, ("nm", n, 4), backend, device)
    check(scores, None, ("nm", 1, 2), backend, device)
    check([s for s in scores if row_view(s)[1] % 8 == 0], None, ("nm", 3, 8), backend, device)
    check([s for s in scores if row_view(s)[1] % 32 == 0], None, ("nm", 7, 32), backend, device)
    check(scores, None, ("nm", 1, 1), backend, device)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_ties_go_to_the_lowest_position_in_each_segment(backend, device):
    scores = [torch.tensor([[5.0, 5.0, 1.0, 5.0], [2.0, 2.0, 2.0, 2.0]], device=device)]
    tensor = ops.segmented_topk_masks(scores, [3], backend=backend)[0]
    assert tensor.tolist() == [[True, True, False, True], [False] * 4]
    row = ops.segmented_topk_masks(scores, [2], segment="row", backend=backend)[0]
    assert row.tolist() == [[True, True, False, False], [True, True, False, False]]
    nm = ops.segmented_topk_masks(scores, None, segment=("nm", 1, 2), backend=backend)[0]
    assert nm.tolist() == [[True, False, False, True], [True, False, True, False]]
    signed = [torch.tensor([[-0.0, 0.0, 0.0, -0.0]], device=device)]
    assert ops.segmented_topk_masks(signed, None, segment=("nm", 1, 2), backend=backend)[0].tolist() == \
        [[True, False, True, False]]


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_each_tensor_ranks_in_its_own_dtype(backend, device, rng):
    base = torch.randn(12, 16, generator=rng)
    scores = [base.to(torch.bfloat16), base.half(), base, base.double()]
    check(scores, [40, 41, 42, 43], "tensor", backend, device)
    check(scores, [3, 5, 7, 9], "row", backend, device)
    check(scores, None, ("nm", 2, 4), backend, device)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_non_contiguous_inputs_and_out(backend, device, rng):
    base = torch.randn(40, 32, generator=rng).to(device)
    scores = [base.t(), base[::3, ::2], torch.randn(8, 8, generator=rng).to(device).expand(2, 8, 8)]
    assert not any(s.is_contiguous() for s in scores)
    check(scores, [0, 77, 128], "tensor", backend, device)
    check(scores, [13, 5, 8], "row", backend, device)
    check(scores, None, ("nm", 2, 4), backend, device)
    # Ties by the logical row-major position, not the memory layout.
    tied = torch.zeros(4, 2, device=device).t()
    assert ops.segmented_topk_masks([tied], [1], segment="row", backend=backend)[0].tolist() == \
        [[True, False, False, False]] * 2
    out = [torch.ones(32, 40, dtype=torch.bool, device=device).t()]
    got = ops.segmented_topk_masks([scores[0].t()], None, segment=("nm", 2, 4), out=out, backend=backend)
    assert got[0] is out[0]
    np.testing.assert_array_equal(out[0].cpu().reshape(-1).numpy(),
                                  oracle([scores[0].t()], ("nm", 2, 4), None)[0])


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_nan_raises_naming_the_tensor_and_leaves_out_alone(backend, device):
    scores = [torch.ones(2, 4, device=device), torch.tensor([[1.0, 2.0, float("nan"), 0.0]], device=device)]
    for segment, ks in (("tensor", [1, 1]), ("row", [1, 1]), (("nm", 1, 4), None)):
        out = [torch.ones(2, 4, dtype=torch.bool, device=device), torch.ones(1, 4, dtype=torch.bool, device=device)]
        with pytest.raises(ops.NaNScoreError, match=r"scores\[1\]") as info:
            ops.segmented_topk_masks(scores, ks, segment=segment, out=out, backend=backend)
        assert info.value.index == 1
        assert all(bool(o.all()) for o in out)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_empty_and_one_element(backend, device):
    assert ops.segmented_topk_masks([], [], backend=backend) == []
    assert ops.segmented_topk_masks([], None, segment=("nm", 2, 4), backend=backend) == []
    empty = [torch.empty(0, device=device), torch.empty(3, 0, device=device)]
    masks = ops.segmented_topk_masks(empty, [0, 0], segment="row", backend=backend)
    assert [m.shape for m in masks] == [torch.Size([0]), torch.Size([3, 0])]
    for k in (0, 1):
        for segment in ("tensor", "row"):
            one = ops.segmented_topk_masks([torch.tensor(-3.0, device=device)], [k], segment=segment, backend=backend)
            assert one[0].shape == torch.Size([]) and one[0].item() == bool(k)


# ---------------------------------------------------------------- fused saliency (FORCE / Iter SNIP)

def saliency(weights, grads):
    return [np.abs(as64(w) * as64(g)) for w, g in zip(weights, grads)]


def check_saliency(weights, grads, ks, segment, backend, device, prev=None, resurrect=True, out=None):
    weights, grads = [w.to(device) for w in weights], [g.to(device) for g in grads]
    masks = ops.segmented_saliency_topk_masks(weights, grads, ks, prev_masks=prev, resurrect=resurrect,
                                              segment=segment, out=out, backend=backend)
    want = oracle(weights, segment, ks, None if resurrect else prev, values=saliency(weights, grads))
    for m, w, expected in zip(masks, weights, want):
        assert m.shape == w.shape and m.dtype == torch.bool
        np.testing.assert_array_equal(m.cpu().reshape(-1).numpy(), expected)
    return masks


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@pytest.mark.parametrize("dtype", DTYPES)
def test_saliency_segments_match_oracle(backend, device, dtype, rng):
    shapes = [(16, 3, 3, 3), (1,), (0,), (8, 64), (10, 16)]
    w = random_scores(rng, shapes, dtype)
    g = random_scores(rng, shapes, dtype, "ties")  # many zero products: ties at the threshold
    for fraction in (0.0, 0.1, 0.5, 1.0):
        check_saliency(w, g, per_tensor_ks(w, fraction), "tensor", backend, device)
        check_saliency(w, g, [round(fraction * row_view(t)[1]) for t in w], "row", backend, device)
    nm = [t for t in w if row_view(t)[1] % 4 == 0]
    check_saliency(nm, [t for t in g if row_view(t)[1] % 4 == 0], None, ("nm", 2, 4), backend, device)
    # Mixed weight and gradient dtypes: |w*g| in float32, or float64 when either is.
    check_saliency([t.float() for t in w], [t.double() for t in g], per_tensor_ks(w, 0.3), "tensor", backend, device)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_iter_snip_segments_rank_only_survivors_in_place(backend, device, rng):
    shapes = [(6, 16), (4, 2, 2, 2), (12,)]
    w = [t.to(device) for t in random_scores(rng, shapes)]
    g = [t.to(device) for t in random_scores(rng, shapes, kind="ties")]
    alive = [torch.rand(s, generator=rng).to(device) < 0.7 for s in shapes]
    # Where every survivor has saliency 0 but pruned weights do not, only survivors may be kept.
    for segment in ("tensor", "row"):
        counts = [a.reshape(row_view(a)[0] if segment == "row" else 1, -1).sum(1) for a in alive]
        ks = [c.min().item() // 2 for c in counts] if segment == "row" else [int(c) // 2 for c in counts]
        check_saliency(w, g, ks, segment, backend, device, prev=alive, resurrect=False)
    # The in-place update: out is prev_masks itself; the result nests inside it.
    prev = [torch.ones(6, 16, dtype=torch.bool, device=device)]
    prev[0][:, ::4] = False  # 3 survivors per group of 4
    before = prev[0].clone()
    masks = check_saliency(w[:1], g[:1], None, ("nm", 2, 4), backend, device, prev=prev, resurrect=False,
                           out=prev)
    assert masks[0] is prev[0] and not (masks[0] & ~before).any()
    assert (masks[0].reshape(-1, 4).sum(1) == 2).all()


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_iter_snip_segment_short_of_survivors(backend, device):
    w = [torch.ones(2, 4, device=device), torch.ones(3, 4, device=device)]
    g = [torch.ones(2, 4, device=device), torch.ones(3, 4, device=device)]
    prev = [torch.ones(2, 4, dtype=torch.bool, device=device), torch.zeros(3, 4, dtype=torch.bool, device=device)]
    prev[1][1, :3] = True
    with pytest.raises(ValueError, match=r"^weights\[1\], row 0, must keep 1 but prev_masks\[1\] keeps only 0"):
        ops.segmented_saliency_topk_masks(w, g, [1, 1], prev_masks=prev, resurrect=False, segment="row",
                                          backend=backend)
    with pytest.raises(ValueError, match=r"^weights\[1\] must keep 4 but prev_masks\[1\] keeps only 3"):
        ops.segmented_saliency_topk_masks(w, g, [8, 4], prev_masks=prev, resurrect=False, backend=backend)
    with pytest.raises(ValueError, match=r"group 0 \(flat elements 0\.\.3\), must keep 1"):
        ops.segmented_saliency_topk_masks(w, g, None, prev_masks=prev, resurrect=False, segment=("nm", 1, 4),
                                          backend=backend)
    # Error order: a competing NaN is reported before the short segment; a pruned one is ignored.
    w[1][1, 2] = float("nan")
    with pytest.raises(ops.NaNScoreError, match=r"weights\[1\]"):
        ops.segmented_saliency_topk_masks(w, g, [1, 1], prev_masks=prev, resurrect=False, segment="row",
                                          backend=backend)
    w[1][1, 2], w[1][0, 0] = 1.0, float("nan")
    masks = ops.segmented_saliency_topk_masks(w, g, [1, 2], prev_masks=prev, resurrect=False, backend=backend)
    assert masks[1].tolist() == [[False] * 4, [True, True, False, False], [False] * 4]


# ---------------------------------------------------------------- argument errors (before any work)

def test_argument_errors_name_the_problem():
    s = [torch.randn(4, 6), torch.randn(3)]
    cases = [
        (dict(ks=[1, 1], segment="layer"), ValueError, "segment must be 'tensor', 'row' or \\('nm', n, m\\)"),
        (dict(ks=[1, 1], segment=("nm", 2)), ValueError, "segment must be"),
        (dict(ks=None, segment=("nm", 5, 4)), ValueError, "0 <= n <= m, got n=5, m=4"),
        (dict(ks=None, segment=("nm", 1, 33)), ValueError, "1 <= m <= 32"),
        (dict(ks=None, segment=("nm", 1.0, 4)), TypeError, "n must be an integer"),
        (dict(ks=[1], segment="tensor"), ValueError, "ks has 1 entries but scores has 2 tensors"),
        (dict(ks=None, segment="tensor"), ValueError, "ks is required"),
        (dict(ks=[25, 1], segment="tensor"), ValueError, r"ks\[0\]=25 is outside \[0, 24\]: scores\[0\] holds 24"),
        (dict(ks=[1, -1], segment="tensor"), ValueError, r"ks\[1\]=-1 is outside"),
        (dict(ks=[1.5, 1], segment="tensor"), TypeError, r"ks\[0\] must be an integer"),
        (dict(ks=[7, 1], segment="row"), ValueError, r"ks\[0\]=7 is outside \[0, 6\]: the rows of scores\[0\]"),
        (dict(ks=[torch.tensor([1, 2]), 1], segment="row"), ValueError, r"ks\[0\] has 2 entries but scores\[0\] has 4 rows"),
        (dict(ks=[torch.tensor([1, 2, 9, 0]), 1], segment="row"), ValueError, r"ks\[0\]\[2\]=9 is outside \[0, 6\]"),
        (dict(ks=[torch.ones(4), 1], segment="row"), TypeError, r"ks\[0\] must hold integers"),
        (dict(ks=[1, 1], segment=("nm", 2, 4)), ValueError, "ks must be None"),
        (dict(ks=None, segment=("nm", 2, 4)), ValueError, r"scores\[0\] has rows of 6 elements .* not a multiple of m=4"),
        (dict(ks=5, segment="tensor"), TypeError, "ks must be a list or tuple"),
    ]
    for kw, error, message in cases:
        with pytest.raises(error, match=message):
            ops.segmented_topk_masks(s, **kw)
    with pytest.raises(TypeError, match=r"out\[0\] must be torch.bool"):
        ops.segmented_topk_masks(s, [1, 1], out=[torch.zeros(4, 6), torch.zeros(3, dtype=torch.bool)])
    with pytest.raises(ValueError, match=r"out\[0\] overlaps scores\[0\]"):
        ops.segmented_topk_masks(s, [1, 1], out=[s[0].view(torch.int32).view(torch.bool)[:, :6],
                                                 torch.zeros(3, dtype=torch.bool)])
    # A 1-D tensor of k per tensor works as the sequence of ints.
    assert [int(m.sum()) for m in ops.segmented_topk_masks(s, torch.tensor([3, 2]), backend="reference")] == [3, 2]


def test_saliency_argument_errors():
    w, g = [torch.randn(4, 8)], [torch.randn(4, 8)]
    with pytest.raises(ValueError, match=r"grads\[0\] has"):
        ops.segmented_saliency_topk_masks(w, [torch.randn(8, 4)], [1])
    with pytest.raises(TypeError, match="resurrect must be a bool"):
        ops.segmented_saliency_topk_masks(w, g, [1], resurrect=None)
    with pytest.raises(ValueError, match=r"out\[0\] overlaps prev_masks\[0\]"):
        prev = torch.ones(5, 8, dtype=torch.bool)
        ops.segmented_saliency_topk_masks(w, g, [1], prev_masks=[prev[:4]], resurrect=False, out=[prev[1:]])
    caller = [t.clone() for t in w + g]
    ops.segmented_saliency_topk_masks(w, g, None, segment=("nm", 2, 4), backend="reference")
    assert all(torch.equal(a, b) for a, b in zip(caller, w + g))


# ---------------------------------------------------------------- properties

VALUES = st.one_of(st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, float("inf"), float("-inf")]),
                   st.floats(allow_nan=False, width=32))


@st.composite
def segmented_cases(draw):
    tensors = []
    for _ in range(draw(st.integers(0, 3))):
        rows, length = draw(st.integers(0, 4)), draw(st.sampled_from([0, 1, 2, 4, 8, 12]))
        vals = draw(st.lists(VALUES, min_size=rows * length, max_size=rows * length))
        tensors.append(torch.tensor(vals, dtype=torch.float64).reshape(rows, length)
                       .to(draw(st.sampled_from(DTYPES))))
    segment = draw(st.sampled_from(["tensor", "row", ("nm", 1, 2), ("nm", 2, 4), ("nm", 3, 4)]))
    if segment == "tensor":
        ks = [draw(st.integers(0, t.numel())) for t in tensors]
    elif segment == "row":
        ks = [torch.tensor([draw(st.integers(0, t.shape[1])) for _ in range(t.shape[0])], dtype=torch.int64)
              for t in tensors]
    else:
        ks = None
        tensors = [t for t in tensors if t.shape[1] % segment[2] == 0]
    return tensors, ks, segment


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@settings(max_examples=120, deadline=None)
@given(case=segmented_cases())
def test_each_segment_keeps_exactly_its_top_k(backend, device, case):
    scores, ks, segment = case
    masks = check(scores, ks, segment, backend, device)
    # Independently of the oracle: the counts, and every kept value >= every dropped one per segment.
    for i, (m, s) in enumerate(zip(masks, scores)):
        if s.numel() == 0:
            continue
        length = s.numel() if segment == "tensor" else s.shape[1] if segment == "row" else segment[2]
        kept, v = m.cpu().reshape(-1, length).numpy(), as64(s).reshape(-1, length)
        want = [ks[i]] if segment == "tensor" else ks[i].tolist() if segment == "row" else [segment[1]] * len(v)
        assert kept.sum(1).tolist() == want
        for row_kept, row_v in zip(kept, v):
            if row_kept.any() and (~row_kept).any():
                assert row_v[row_kept].min() >= row_v[~row_kept].max()
