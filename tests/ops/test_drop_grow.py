"""The drop/grow update (one RigL / SET / gradual-magnitude step) on every backend against a numpy oracle.

Per segment the oracle is two of ``oracle_keep``'s rankings: the kept active weights by |w|, then
the grown ones by |score| among the rest; backends register themselves and each one found runs
every test here.
"""
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sparseforce.ops as ops
from conftest import BACKEND_DEVICE, flat64, flat_bool, oracle_keep
from test_ops import DTYPES, random_scores


def oracle(weights, scores, masks, drops, grows, segment):
    """One flat bool array per tensor."""
    groups = [[i] for i in range(len(weights))] if segment == "tensor" else [list(range(len(weights)))]
    drops = drops if segment == "tensor" else [drops]
    grows = drops if grows is None else (grows if segment == "tensor" else [grows])
    out = [None] * len(weights)
    for group, d, g in zip(groups, drops, grows):
        active = flat_bool([masks[i] for i in group])
        kept = oracle_keep(np.abs(flat64([weights[i] for i in group])), int(active.sum()) - d, active)
        grown = oracle_keep(np.abs(flat64([scores[i] for i in group])), g, ~kept)
        new = kept | grown
        offset = 0
        for i in group:
            out[i] = new[offset: offset + weights[i].numel()]
            offset += weights[i].numel()
    return out


def check(weights, scores, masks, drops, grows, segment, backend, device, out=None):
    weights, scores, masks = ([t.to(device) for t in ts] for ts in (weights, scores, masks))
    before = [m.clone() for m in masks]
    got = ops.drop_grow_masks(weights, scores, masks, drops, grows, segment=segment, out=out, backend=backend)
    want = oracle(weights, scores, before, drops, grows, segment)
    assert len(got) == len(weights)
    for m, w, expected in zip(got, weights, want):
        assert m.dtype == torch.bool and m.shape == w.shape and m.device == w.device
        np.testing.assert_array_equal(m.cpu().reshape(-1).numpy(), expected)
    if out is None:
        for m, b in zip(masks, before):
            assert torch.equal(m, b), "the caller's masks changed"
    return got


SHAPES = [(7, 3, 3, 3), (1,), (0,), (130,), (33, 8), (4, 0, 2), (3, 1100), ()]


def random_masks(gen, shapes, density):
    return [torch.rand(shape, generator=gen) < density for shape in shapes]


def per_tensor_drops(masks, fraction):
    return [int(fraction * int(m.sum())) for m in masks]


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@pytest.mark.parametrize("kind", ["normal", "ties", "zeros", "signed_zeros", "inf"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_per_tensor_update_matches_oracle(backend, device, kind, dtype, rng):
    weights = random_scores(rng, SHAPES, dtype, kind)
    scores = random_scores(rng, SHAPES, dtype, kind)
    for density in (0.0, 0.1, 0.5, 1.0):
        masks = random_masks(rng, SHAPES, density)
        for fraction in (0.0, 0.3, 1.0):
            check(weights, scores, masks, per_tensor_drops(masks, fraction), None, "tensor", backend, device)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@pytest.mark.parametrize("kind", ["normal", "ties", "signed_zeros", "inf"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_global_update_matches_oracle(backend, device, kind, dtype, rng):
    weights = random_scores(rng, SHAPES, dtype, kind)
    scores = random_scores(rng, SHAPES, dtype, kind)
    for density in (0.0, 0.2, 1.0):
        masks = random_masks(rng, SHAPES, density)
        active = sum(int(m.sum()) for m in masks)
        for fraction in (0.0, 0.3, 1.0):
            check(weights, scores, masks, int(fraction * active), None, "global", backend, device)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_mixed_dtypes_rank_exactly(backend, device, rng):
    shapes = [(40, 9), (17,), (5, 5, 3), (300,)]
    dtypes = [torch.float16, torch.float64, torch.bfloat16, torch.float32]
    weights = [w.to(d) for w, d in zip(random_scores(rng, shapes, kind="ties"), dtypes)]
    scores = [s.to(d) for s, d in zip(random_scores(rng, shapes), reversed(dtypes))]
    masks = random_masks(rng, shapes, 0.4)
    check(weights, scores, masks, per_tensor_drops(masks, 0.5), None, "tensor", backend, device)
    check(weights, scores, masks, 20, None, "global", backend, device)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_grows_other_than_drops(backend, device, rng):
    """Gradual magnitude pruning grows nothing; GraNet grows fewer than it drops."""
    weights = random_scores(rng, SHAPES)
    scores = random_scores(rng, SHAPES, kind="ties")
    masks = random_masks(rng, SHAPES, 0.6)
    drops = per_tensor_drops(masks, 0.5)
    check(weights, scores, masks, drops, [0] * len(drops), "tensor", backend, device)
    check(weights, scores, masks, drops, [d // 2 for d in drops], "tensor", backend, device)
    inactive = [m.numel() - int(m.sum()) + d for m, d in zip(masks, drops)]
    check(weights, scores, masks, drops, inactive, "tensor", backend, device)  # grow every candidate
    active = sum(int(m.sum()) for m in masks)
    check(weights, scores, masks, active // 3, 0, "global", backend, device)
    check(weights, scores, masks, 0, sum(m.numel() for m in masks) - active, "global", backend, device)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_ties_go_to_the_lowest_position_and_dropped_weights_may_return(backend, device):
    w = [torch.tensor([3.0, -1.0, 0.0, 1.0, 5.0, 1.0], device=device)]
    s = [torch.tensor([0.0, 9.0, 9.0, -9.0, 0.0, 0.0], device=device)]
    m = [torch.tensor([True, True, False, True, False, True], device=device)]
    # Active |w|: 3, 1, 1, 1 at 0, 1, 3, 5: dropping 2 drops the highest positions of the tie (5, 3).
    got = ops.drop_grow_masks(w, s, m, [2], [0], backend=backend)[0]
    assert got.tolist() == [True, True, False, False, False, False]
    # Growing 2 of |score| among the rest: 9 at 2, 3 (|-9|): position 1 stayed active, 5 does not return.
    got = ops.drop_grow_masks(w, s, m, [2], backend=backend)[0]
    assert got.tolist() == [True, True, True, True, False, False]
    # Drop 3 (positions 1, 3, 5 all tie at |w| = 1) and grow 3: the dropped 1 and 3 come back.
    got = ops.drop_grow_masks(w, s, m, [3], backend=backend)[0]
    assert got.tolist() == [True, True, True, True, False, False]
    signed = [torch.tensor([-0.0, 0.0, -0.0, 0.0], device=device)]
    got = ops.drop_grow_masks(signed, signed, [torch.ones(4, dtype=torch.bool, device=device)], [2], [1],
                              backend=backend)[0]
    assert got.tolist() == [True, True, True, False]


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_non_contiguous_inputs_and_out(backend, device, rng):
    base = [torch.randn(12, 40, generator=rng), torch.randn(9, 7, 3, generator=rng)]
    weights = [base[0].t(), base[1][:, ::2]]
    scores = [torch.randn(12, 40, generator=rng).t(), torch.randn(3, 4, 9, generator=rng).permute(2, 1, 0)]
    masks = [(torch.rand(12, 40, generator=rng) < 0.5).t(), (torch.rand(9, 7, 3, generator=rng) < 0.5)[:, ::2]]
    masks = [m.to(device) for m in masks]
    out = [torch.empty(12, 40, dtype=torch.bool, device=device).t(),
           torch.empty(9, 8, 3, dtype=torch.bool, device=device)[:, ::2]]
    got = check(weights, scores, masks, per_tensor_drops(masks, 0.4), None, "tensor", backend, device, out=out)
    assert all(g is o for g, o in zip(got, out))
    check(weights, scores, masks, 30, None, "global", backend, device, out=out)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@pytest.mark.parametrize("segment", ["tensor", "global"])
def test_in_place_update_of_the_masks(backend, device, segment, rng):
    weights = [t.to(device) for t in random_scores(rng, SHAPES, kind="ties")]
    scores = [t.to(device) for t in random_scores(rng, SHAPES)]
    masks = [m.to(device) for m in random_masks(rng, SHAPES, 0.5)]
    before = [m.clone() for m in masks]
    drops = per_tensor_drops(masks, 0.3) if segment == "tensor" else sum(int(m.sum()) for m in masks) // 3
    want = oracle(weights, scores, before, drops, None, segment)
    got = ops.drop_grow_masks(weights, scores, masks, drops, segment=segment, out=masks, backend=backend)
    for g, m, expected in zip(got, masks, want):
        assert g is m
        np.testing.assert_array_equal(m.cpu().reshape(-1).numpy(), expected)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_nan_raises_naming_the_tensor_and_leaves_out_alone(backend, device):
    w = [torch.ones(5, device=device), torch.ones(3, device=device)]
    s = [torch.ones(5, device=device), torch.ones(3, device=device)]
    m = [torch.tensor([True, False, True, False, True], device=device), torch.ones(3, dtype=torch.bool, device=device)]
    out = [torch.zeros(5, dtype=torch.bool, device=device), torch.zeros(3, dtype=torch.bool, device=device)]
    cases = [((1, 2), "scores[1]"), ((0, 1), "weights[0]")]  # a NaN at an inactive weight counts too
    for (tensor, place), name in cases:
        ws, ss = [t.clone() for t in w], [t.clone() for t in s]
        ss[1][0] = float("nan")  # scores[1] always holds one: the lowest of the order still wins
        (ws if name.startswith("weights") else ss)[tensor][place] = float("nan")
        with pytest.raises(ops.NaNScoreError, match="^" + re.escape(name) + " contains NaN"):
            ops.drop_grow_masks(ws, ss, m, [1, 1], out=out, backend=backend)
        assert not any(o.any() for o in out)
    # NaN comes before a count that does not fit the masks (the error order).
    ws = [t.clone() for t in w]
    ws[1][2] = float("nan")
    with pytest.raises(ops.NaNScoreError, match=r"weights\[1\]"):
        ops.drop_grow_masks(ws, s, m, [4, 0], backend=backend)
    with pytest.raises(ops.NaNScoreError, match=r"weights\[1\]"):
        ops.drop_grow_masks(ws, s, m, 99, segment="global", backend=backend)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_empty_zero_dim_and_one_element(backend, device, rng):
    assert ops.drop_grow_masks([], [], [], [], backend=backend) == []
    assert ops.drop_grow_masks([], [], [], 0, segment="global", backend=backend) == []
    empty = [torch.empty(0, 3, device=device)]
    got = ops.drop_grow_masks(empty, empty, [torch.empty(0, 3, dtype=torch.bool, device=device)], [0], backend=backend)
    assert got[0].shape == (0, 3)
    scalar = [torch.tensor(2.0, device=device)]
    on = [torch.tensor(True, device=device)]
    assert ops.drop_grow_masks(scalar, scalar, on, [1], [0], backend=backend)[0].item() is False
    assert ops.drop_grow_masks(scalar, scalar, on, [1], backend=backend)[0].item() is True
    off = [torch.tensor(False, device=device)]
    assert ops.drop_grow_masks(scalar, scalar, off, [0], [1], backend=backend)[0].item() is True
    shapes = [(1,), (), (0,), (1, 1)]
    weights, scores = random_scores(rng, shapes), random_scores(rng, shapes)
    for density in (0.0, 1.0):
        masks = random_masks(rng, shapes, density)
        check(weights, scores, masks, per_tensor_drops(masks, 1.0), None, "tensor", backend, device)
        check(weights, scores, masks, sum(int(m.sum()) for m in masks), None, "global", backend, device)


def test_argument_errors_name_the_problem():
    w = [torch.randn(4, 3), torch.randn(5)]
    s = [torch.randn(4, 3), torch.randn(5)]
    m = [torch.ones(4, 3, dtype=torch.bool), torch.zeros(5, dtype=torch.bool)]
    cases = [
        (dict(weights=w[:1]), ValueError, "weights has 1 tensors but scores has 2"),
        (dict(scores=[s[0], torch.randn(6)]), ValueError, r"scores\[1\] has shape \(6,\) but weights\[1\] has \(5,\)"),
        (dict(masks=[m[0], m[1].float()]), TypeError, r"masks\[1\] must be torch.bool"),
        (dict(masks=m[:1]), ValueError, "masks has 1 tensors"),
        (dict(weights=[w[0].int(), w[1]]), TypeError, r"weights\[0\] has dtype torch.int32"),
        (dict(drops=[1]), ValueError, "drops has 1 entries but weights has 2 tensors"),
        (dict(drops=[1, -1]), ValueError, r"drops\[1\]=-1 is negative"),
        (dict(drops=[1.5, 0]), TypeError, r"drops\[0\] must be an integer"),
        (dict(drops=3), TypeError, "drops must be a list or tuple"),
        (dict(grows=[0, -2]), ValueError, r"grows\[1\]=-2 is negative"),
        (dict(segment="row"), ValueError, "segment must be 'tensor' or 'global'"),
        (dict(segment="global"), TypeError, "drops must be an integer"),
        (dict(drops=[13, 0]), ValueError, r"drops=13 but masks\[0\] holds only 12 active weights"),
        (dict(drops=[2, 0], grows=[2, 6]), ValueError, r"grows=6 but only 5 weights of masks\[1\] are inactive"),
        (dict(drops=[0, 0], out=[torch.zeros(4, 3, dtype=torch.bool), torch.zeros(4, dtype=torch.bool)]),
         ValueError, r"out\[1\] has shape"),
        (dict(backend="nope"), ValueError, "nope"),
    ]
    for change, error, message in cases:
        kw = dict(weights=w, scores=s, masks=m, drops=[1, 0], grows=None, segment="tensor", out=None,
                  backend="reference")
        kw.update(change)
        args = [kw.pop(k) for k in ("weights", "scores", "masks", "drops", "grows")]
        with pytest.raises(error, match=message):
            ops.drop_grow_masks(*args, **kw)
    with pytest.raises(ValueError, match="drops=13 but masks holds only 12 active weights"):
        ops.drop_grow_masks(w, s, m, 13, segment="global", backend="reference")
    with pytest.raises(ValueError, match="grows=10 but only 6 weights of masks are inactive"):
        ops.drop_grow_masks(w, s, m, 1, 10, segment="global", backend="reference")


def test_out_may_only_alias_the_masks_exactly():
    w = [torch.randn(8)]
    m = [torch.ones(8, dtype=torch.bool)]
    buf = torch.zeros(16, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"out\[0\] overlaps masks\[0\]"):
        ops.drop_grow_masks(w, w, [buf[:8]], [1], out=[buf[4:12]])
    with pytest.raises(ValueError, match=r"out\[0\] overlaps weights\[0\]"):
        ops.drop_grow_masks(w, [torch.randn(8)], m, [1], out=[w[0].view(torch.bool)[:8]])


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@settings(max_examples=60, deadline=None)
@given(case=st.data())
def test_each_segment_keeps_its_count_and_ranks(backend, device, case):
    """Whatever the values: the count is A - drops + grows, and the masks are the oracle's."""
    n = case.draw(st.integers(0, 60))
    values = st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.0, float("inf"), -float("inf"), 0.5])
    w = torch.tensor(case.draw(st.lists(values, min_size=n, max_size=n)), dtype=torch.float32, device=device)
    s = torch.tensor(case.draw(st.lists(values, min_size=n, max_size=n)), dtype=torch.float32, device=device)
    m = torch.tensor(case.draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=torch.bool, device=device)
    a = int(m.sum())
    d = case.draw(st.integers(0, a))
    g = case.draw(st.integers(0, n - a + d))
    new = ops.drop_grow_masks([w], [s], [m], [d], [g], backend=backend)[0]
    assert int(new.sum()) == a - d + g
    np.testing.assert_array_equal(new.cpu().numpy(), oracle([w], [s], [m], [d], [g], "tensor")[0])
