"""Property tests: topk_masks and kth_largest against a sort-based oracle on generated inputs."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sparseforce.ops as ops
from conftest import BACKEND_DEVICE, flat64, flat_bool, oracle_keep

# Small alphabets make ties (and ±0, ±inf) likely rather than rare.
VALUES = st.one_of(st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, float("inf"), float("-inf")]),
                   st.floats(allow_nan=False, width=32))
DTYPE = st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64])


@st.composite
def score_lists(draw):
    tensors = []
    for _ in range(draw(st.integers(0, 4))):
        shape = tuple(draw(st.lists(st.integers(0, 5), min_size=1, max_size=3)))
        n = int(np.prod(shape))
        vals = draw(st.lists(VALUES, min_size=n, max_size=n))
        tensors.append(torch.tensor(vals, dtype=torch.float64).reshape(shape).to(draw(DTYPE)))
    n = sum(t.numel() for t in tensors)
    return tensors, draw(st.integers(0, n))


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@settings(max_examples=150, deadline=None)
@given(case=score_lists())
def test_topk_masks_property(backend, device, case):
    scores, k = case
    scores = [s.to(device) for s in scores]
    got = flat_bool(ops.topk_masks(scores, k, backend=backend))
    assert got.sum() == k
    np.testing.assert_array_equal(got, oracle_keep(flat64(scores), k))
    if k > 0:
        threshold = ops.kth_largest(scores, k, backend=backend).item()
        v = flat64(scores)
        assert threshold == np.sort(v)[::-1][k - 1]
        assert (v[got] >= threshold).all() and (v[~got] <= threshold).all()


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@settings(max_examples=80, deadline=None)
@given(case=score_lists(), data=st.data())
def test_iter_snip_property(backend, device, case, data):
    weights, _ = case
    weights = [w.to(device) for w in weights]
    grads = [torch.ones_like(w) for w in weights]
    prev = [torch.tensor(data.draw(st.lists(st.booleans(), min_size=w.numel(), max_size=w.numel())),
                         dtype=torch.bool).reshape(w.shape).to(device) for w in weights]
    alive = int(flat_bool(prev).sum()) if prev else 0
    k = data.draw(st.integers(0, alive))
    got = flat_bool(ops.saliency_topk_masks(weights, grads, k, prev_masks=prev, resurrect=False, backend=backend))
    want = oracle_keep(np.abs(flat64(weights)), k, flat_bool(prev))
    np.testing.assert_array_equal(got, want)
