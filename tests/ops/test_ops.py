"""The shared kernel tests: every available backend against an independent numpy oracle.

Backends register themselves; each one found on this machine runs every test here.
"""
import math
import re

import numpy as np
import pytest
import torch

import sparseforce.ops as ops
from conftest import BACKEND_DEVICE, flat64, flat_bool, oracle_keep

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def random_scores(gen, shapes, dtype=torch.float32, kind="normal"):
    out = []
    for shape in shapes:
        n = math.prod(shape)
        if kind == "normal":
            t = torch.randn(n, generator=gen)
        elif kind == "ties":  # few distinct values: heavy ties across tensors
            t = torch.randint(-3, 4, (n,), generator=gen).float()
        elif kind == "zeros":
            t = torch.zeros(n)
        elif kind == "signed_zeros":
            t = torch.where(torch.rand(n, generator=gen) < 0.5, torch.tensor(-0.0), torch.tensor(0.0))
        elif kind == "inf":
            t = torch.randn(n, generator=gen)
            r = torch.rand(n, generator=gen)
            t[r < 0.1] = float("inf")
            t[r > 0.9] = float("-inf")
        out.append(t.reshape(shape).to(dtype))
    return out


def check_topk(scores, k, backend, device):
    scores = [s.to(device) for s in scores]
    masks = ops.topk_masks(scores, k, backend=backend)
    assert len(masks) == len(scores)
    for m, s in zip(masks, scores):
        assert m.dtype == torch.bool and m.shape == s.shape and m.device == s.device
    got = flat_bool(masks)
    assert got.sum() == k
    np.testing.assert_array_equal(got, oracle_keep(flat64(scores), k))


SHAPES = [(7, 3, 3, 3), (1,), (0,), (130,), (33, 5), (4, 0, 2), (2049,)]


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@pytest.mark.parametrize("kind", ["normal", "ties", "zeros", "signed_zeros", "inf"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_topk_masks_matches_oracle(backend, device, kind, dtype, rng):
    scores = random_scores(rng, SHAPES, dtype, kind)
    n = sum(s.numel() for s in scores)
    for k in {0, 1, n // 200, n // 20, n // 2, n - 1, n}:
        check_topk(scores, k, backend, device)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_ties_go_to_lowest_global_position(backend, device):
    scores = [torch.tensor([1.0, 5.0, 5.0]), torch.tensor([[5.0, 2.0], [5.0, 9.0]])]
    masks = ops.topk_masks([s.to(device) for s in scores], 3, backend=backend)
    # 9 first, then the two lowest-positioned 5s: tensor 0 entries 1 and 2.
    assert masks[0].tolist() == [False, True, True]
    assert masks[1].tolist() == [[False, False], [False, True]]


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_all_zero_scores_keep_exactly_k(backend, device):
    # The official code's `>=` would keep all 300 here.
    scores = [torch.zeros(100, device=device), torch.zeros(10, 20, device=device)]
    masks = ops.topk_masks(scores, 150, backend=backend)
    assert int(masks[0].sum()) == 100 and int(masks[1].sum()) == 50
    assert masks[1].reshape(-1)[:50].all() and not masks[1].reshape(-1)[50:].any()


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_negative_zero_equals_positive_zero(backend, device):
    scores = [torch.tensor([-0.0, 0.0, -0.0, 0.0], device=device)]
    assert ops.topk_masks(scores, 2, backend=backend)[0].tolist() == [True, True, False, False]
    t = ops.kth_largest([torch.tensor([-0.0, -0.0, -1.0], device=device)], 2, backend=backend)
    assert t.item() == 0.0 and math.copysign(1.0, t.item()) == 1.0  # +0.0, same bits everywhere


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_infinities_are_ordinary_values(backend, device):
    scores = [torch.tensor([float("-inf"), 1.0, float("inf")], device=device),
              torch.tensor([float("inf"), -1.0], device=device)]
    masks = ops.topk_masks(scores, 4, backend=backend)
    assert masks[0].tolist() == [False, True, True] and masks[1].tolist() == [True, True]
    assert ops.kth_largest(scores, 2, backend=backend).item() == float("inf")
    assert ops.kth_largest(scores, 5, backend=backend).item() == float("-inf")


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_nan_raises_naming_the_tensor(backend, device):
    scores = [torch.ones(4, device=device), torch.tensor([1.0, float("nan")], device=device)]
    with pytest.raises(ValueError, match=r"scores\[1\]"):
        ops.topk_masks(scores, 2, backend=backend)
    with pytest.raises(ops.NaNScoreError) as info:
        ops.kth_largest(scores, 2, backend=backend)
    assert info.value.index == 1


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_k_bounds(backend, device):
    scores = [torch.randn(5, device=device), torch.randn(2, 3, device=device)]
    assert flat_bool(ops.topk_masks(scores, 0, backend=backend)).sum() == 0
    assert flat_bool(ops.topk_masks(scores, 11, backend=backend)).all()
    for bad in (-1, 12):
        with pytest.raises(ValueError, match=r"k=.* outside \[0, 11\]"):
            ops.topk_masks(scores, bad, backend=backend)
    for bad in (2.0, True, "3"):
        with pytest.raises(TypeError, match="k must be an integer"):
            ops.topk_masks(scores, bad, backend=backend)
    assert flat_bool(ops.topk_masks(scores, torch.tensor(3), backend=backend)).sum() == 3
    # was: "[0, 11]" for k=12, and "k must be in [1, N]" with N unfilled for k=0
    for bad in (0, -1, 12):
        with pytest.raises(ValueError, match=rf"^k={bad} is outside \[1, 11\]: scores hold 11 elements in all$"):
            ops.kth_largest(scores, bad, backend=backend)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_empty_inputs(backend, device):
    assert ops.topk_masks([], 0, backend=backend) == []
    masks = ops.topk_masks([torch.empty(0, device=device), torch.empty(3, 0, device=device)], 0, backend=backend)
    assert [m.shape for m in masks] == [torch.Size([0]), torch.Size([3, 0])]
    with pytest.raises(ValueError, match="outside"):
        ops.topk_masks([torch.empty(0, device=device)], 1, backend=backend)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_one_element(backend, device):
    for k in (0, 1):
        assert ops.topk_masks([torch.tensor([-3.0], device=device)], k, backend=backend)[0].tolist() == [bool(k)]
    assert ops.kth_largest([torch.tensor(2.5, device=device)], 1, backend=backend).item() == 2.5


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_non_contiguous_inputs(backend, device, rng):
    base = torch.randn(40, 30, generator=rng).to(device)
    scores = [base.t(), base[::3, 1::2], torch.randn(6, 8, generator=rng).to(device).expand(2, 6, 8)]
    assert not any(s.is_contiguous() for s in scores)
    for k in (0, 7, 500, sum(s.numel() for s in scores)):
        check_topk(scores, k, backend, device)
    # Row-major position of the *logical* tensor decides ties, not the memory layout.
    tied = torch.zeros(3, 2, device=device).t()
    assert ops.topk_masks([tied], 2, backend=backend)[0].tolist() == [[True, True, False], [False] * 3]


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_mixed_dtypes_rank_exactly(backend, device, rng):
    scores = [torch.randn(50, generator=rng).to(torch.bfloat16), torch.randn(70, generator=rng).half(),
              torch.randn(20, generator=rng), torch.randn(9, generator=rng).double()]
    scores.append(scores[0].float())  # equal values across dtypes: ties by position
    for k in (1, 33, 100, 199):
        check_topk(scores, k, backend, device)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_out_argument(backend, device, rng):
    scores = [torch.randn(4, 5, generator=rng).to(device), torch.randn(3, generator=rng).to(device)]
    out = [torch.ones(4, 5, dtype=torch.bool, device=device), torch.ones(3, dtype=torch.bool, device=device)]
    masks = ops.topk_masks(scores, 6, out=out, backend=backend)
    assert masks[0] is out[0] and masks[1] is out[1]
    np.testing.assert_array_equal(flat_bool(out), oracle_keep(flat64(scores), 6))
    with pytest.raises(TypeError, match=r"out\[1\] must be torch.bool"):
        ops.topk_masks(scores, 6, out=[out[0], torch.zeros(3, device=device)], backend=backend)
    with pytest.raises(ValueError, match=r"out\[0\] has shape"):
        ops.topk_masks(scores, 6, out=[out[1], out[0]], backend=backend)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@pytest.mark.parametrize("dtype", DTYPES)
def test_kth_largest_matches_oracle(backend, device, dtype, rng):
    for kind in ("normal", "ties", "inf"):
        scores = [s.to(device) for s in random_scores(rng, SHAPES, dtype, kind)]
        values = np.sort(flat64(scores))[::-1]
        for k in (1, 5, len(values) // 3, len(values)):
            got = ops.kth_largest(scores, k, backend=backend)
            assert got.dim() == 0 and got.item() == values[k - 1]


# ---------------------------------------------------------------- fused saliency (FORCE / Iter SNIP)

def saliency64(weights, grads):
    return np.abs(flat64(weights) * flat64(grads))


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_force_step_matches_oracle(backend, device, dtype, rng):
    shapes = [(16, 3, 3, 3), (1,), (0,), (257,), (10, 17)]
    w = [s.to(device) for s in random_scores(rng, shapes, dtype)]
    g = [s.to(device) for s in random_scores(rng, shapes, dtype, "ties")]  # many zero products
    n = sum(t.numel() for t in w)
    prev = [torch.rand(t.shape, generator=rng).to(device) < 0.3 for t in w]  # ignored by FORCE
    for k in (0, 1, n // 10, n // 2, n):
        masks = ops.saliency_topk_masks(w, g, k, prev_masks=prev, resurrect=True, backend=backend)
        np.testing.assert_array_equal(flat_bool(masks), oracle_keep(saliency64(w, g), k))


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_iter_snip_step_only_survivors_compete(backend, device, dtype, rng):
    shapes = [(20, 9), (3,), (64,)]
    w = [s.to(device) for s in random_scores(rng, shapes, dtype)]
    g = [s.to(device) for s in random_scores(rng, shapes, dtype, "ties")]
    prev = [torch.rand(t.shape, generator=rng).to(device) < 0.6 for t in w]
    alive = int(flat_bool(prev).sum())
    for k in (0, 1, alive // 3, alive):
        masks = ops.saliency_topk_masks(w, g, k, prev_masks=prev, resurrect=False, backend=backend)
        got = flat_bool(masks)
        assert not (got & ~flat_bool(prev)).any()  # nested
        np.testing.assert_array_equal(got, oracle_keep(saliency64(w, g), k, flat_bool(prev)))
    with pytest.raises(ValueError, match="prev_masks keep only"):
        ops.saliency_topk_masks(w, g, alive + 1, prev_masks=prev, resurrect=False, backend=backend)


IN_PLACE_CASES = ["ties", "distinct", "several", "several-ties", "non-contiguous"]


def in_place_inputs(case, gen, device):
    """(weights, grads, prev_masks, bases) for an in-place Iter SNIP step; ``bases``: the buffers
    non-contiguous masks view into, whose other bytes must stay as they were."""
    if case in ("ties", "distinct"):  # one large tensor: every radix pass and mask path runs
        n = 200_000
        w = torch.ones(n) if case == "ties" else torch.randn(n, generator=gen)
        m = torch.zeros(n, dtype=torch.bool)
        m[::2] = True
        return [w.to(device)], [torch.ones(n, device=device)], [m.to(device)], []
    shapes = [(33, 17), (5, 3), (0, 4), (64, 9), (1, 1), (7, 300)]
    if case == "non-contiguous":
        bases = [(torch.rand(r, 2 * c, generator=gen) < 0.6).to(device) for r, c in shapes]
        bases.append((torch.rand(40, 30, generator=gen) < 0.6).to(device))
        prev = [b[:, ::2] for b in bases[:-1]] + [bases[-1].t()]
    else:
        bases = []
        prev = [(torch.rand(s, generator=gen) < 0.6).to(device) for s in shapes]
    shapes = [tuple(m.shape) for m in prev]
    w = random_scores(gen, shapes, kind="ties" if case == "several-ties" else "normal")
    g = random_scores(gen, shapes, kind="ties")
    return [t.to(device) for t in w], [t.to(device) for t in g], prev, bases


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@pytest.mark.parametrize("case", IN_PLACE_CASES)
@pytest.mark.parametrize("which_k", ["some", "zero", "all-survivors"])
@pytest.mark.parametrize("cpp_knobs", [False, True], ids=["default", "cpp-exact-key-3-chunks"])
def test_iter_snip_in_place(backend, device, case, which_k, cpp_knobs, rng, monkeypatch):
    # out= the very tensors passed as prev_masks: the natural in-place Iter SNIP update.
    if cpp_knobs:  # the cpp kernel's other mask pass (the k-th key fully known) and chunk seams
        monkeypatch.setenv("SPARSEFORCE_CPU_CANDIDATE_CAP", "0")
        monkeypatch.setenv("SPARSEFORCE_CPU_CHUNKS", "3")
    w, g, prev, bases = in_place_inputs(case, rng, device)
    alive = int(flat_bool(prev).sum())
    k = {"some": min(1000, alive // 3), "zero": 0, "all-survivors": alive}[which_k]
    want = ops.saliency_topk_masks(w, g, k, prev_masks=[m.clone() for m in prev], resurrect=False,
                                   backend="reference")
    bases_before = [b.clone() for b in bases]
    got = ops.saliency_topk_masks(w, g, k, prev_masks=prev, resurrect=False, out=prev, backend=backend)
    assert len(got) == len(prev) and all(a is b for a, b in zip(got, prev))
    assert flat_bool(prev).sum() == k
    np.testing.assert_array_equal(flat_bool(prev), flat_bool(want))
    for b, before in zip(bases[:-1], bases_before):
        assert torch.equal(b[:, 1::2], before[:, 1::2])  # the bytes between the view's elements


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_saliency_nan_and_inf(backend, device):
    w = [torch.tensor([1.0, 2.0], device=device), torch.tensor([float("inf"), 3.0], device=device)]
    g = [torch.tensor([1.0, 1.0], device=device), torch.tensor([0.0, 1.0], device=device)]  # inf*0 = NaN
    with pytest.raises(ValueError, match=r"weights\[1\]"):
        ops.saliency_topk_masks(w, g, 2, backend=backend)
    # Iter SNIP: a pruned weight does not compete, so its NaN is never ranked.
    prev = [torch.tensor([True, True], device=device), torch.tensor([False, True], device=device)]
    masks = ops.saliency_topk_masks(w, g, 2, prev_masks=prev, resurrect=False, backend=backend)
    assert flat_bool(masks).tolist() == [False, True, False, True]
    g[1] = torch.tensor([1.0, 1.0], device=device)
    masks = ops.saliency_topk_masks(w, g, 1, backend=backend)
    assert flat_bool(masks).tolist() == [False, False, True, False]


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_saliency_is_exact_for_half_inputs(backend, device):
    # Two products that differ only below fp16 precision must still rank correctly.
    w2 = [torch.tensor([1.0009765625, 1.0009765625], dtype=torch.float16, device=device)]
    g2 = [torch.tensor([1.0009765625, 1.0], dtype=torch.float16, device=device)]
    # (1+2^-10)^2 = 1+2^-9+2^-20 > 1+2^-10; rounding the product to fp16 would lose the 2^-20.
    masks = ops.saliency_topk_masks(w2, g2, 1, backend=backend)
    assert masks[0].tolist() == [True, False]
    tie_in_fp16 = [torch.tensor([1.0009765625 ** 2], dtype=torch.float32, device=device).half(),
                   torch.tensor([1.001953125], dtype=torch.float16, device=device)]
    assert ops.saliency_topk_masks([tie_in_fp16[1], torch.ones(1, dtype=torch.float16, device=device)],
                                   [torch.ones(1, dtype=torch.float16, device=device), tie_in_fp16[0]], 1,
                                   backend=backend)[0].tolist() == [True]


def test_saliency_argument_errors():
    w, g = [torch.ones(3)], [torch.ones(3)]
    with pytest.raises(ValueError, match=r"grads\[0\] has"):
        ops.saliency_topk_masks(w, [torch.ones(4)], 1)
    with pytest.raises(ValueError, match="weights has 1 tensors but grads has 2"):
        ops.saliency_topk_masks(w, g * 2, 1)
    with pytest.raises(TypeError, match=r"prev_masks\[0\] must be torch.bool"):
        ops.saliency_topk_masks(w, g, 1, prev_masks=[torch.ones(3)])
    with pytest.raises(TypeError, match=r"weights\[0\] has dtype torch.int64"):
        ops.saliency_topk_masks([torch.ones(3, dtype=torch.long)], g, 1)
    with pytest.raises(TypeError, match="resurrect must be a bool"):
        ops.saliency_topk_masks(w, g, 1, resurrect=1)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_error_order_arguments_then_nan_then_k(backend, device):
    nan = float("nan")
    w = [torch.tensor([1.0, 2.0, 3.0], device=device), torch.tensor([4.0, nan, 5.0], device=device)]
    g = [torch.ones(3, device=device), torch.ones(3, device=device)]
    prev = [torch.tensor([True, False, False], device=device), torch.tensor([False, True, True], device=device)]
    snapshot = [m.clone() for m in prev]
    # A NaN among the survivors and k > survivors: the NaN is reported, naming its tensor, and the
    # in-place masks are untouched.
    with pytest.raises(ops.NaNScoreError, match=r"weights\[1\]") as info:
        ops.saliency_topk_masks(w, g, 4, prev_masks=prev, resurrect=False, out=prev, backend=backend)
    assert info.value.index == 1
    assert all(torch.equal(m, s) for m, s in zip(prev, snapshot))
    # Argument errors come before the NaN: k outside [0, N], overlapping outputs.
    with pytest.raises(ValueError, match=r"k=7 is outside \[0, 6\]"):
        ops.saliency_topk_masks(w, g, 7, prev_masks=prev, resurrect=False, backend=backend)
    with pytest.raises(ValueError, match=r"out\[1\] overlaps out\[0\]"):
        ops.saliency_topk_masks(w, g, 4, prev_masks=prev, resurrect=False, out=[prev[0], prev[0]], backend=backend)
    # A NaN that does not compete (pruned) is no error: then k against the survivors is.
    prev[1][1] = False
    with pytest.raises(ValueError, match="prev_masks keep only 2") as info:
        ops.saliency_topk_masks(w, g, 3, prev_masks=prev, resurrect=False, backend=backend)
    assert not isinstance(info.value, ops.NaNScoreError)


# ---------------------------------------------------------------- memory overlap between arguments

def refuses(call, match, tensors):
    """``call()`` raises ValueError matching ``match`` and writes none of ``tensors``."""
    before = [t.clone() for t in tensors]
    with pytest.raises(ValueError, match=match):
        call()
    for t, b in zip(tensors, before):
        assert torch.equal(t, b), "a refused call wrote into an argument"


def both(a, b):
    """Either order of 'a overlaps b'."""
    a, b = re.escape(a), re.escape(b)
    return f"({a} overlaps {b}|{b} overlaps {a}) in memory"


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_topk_masks_refuses_overlapping_out(backend, device):
    s = [torch.randn(4, 5, device=device), torch.randn(4, 5, device=device)]
    a = torch.zeros(4, 5, dtype=torch.bool, device=device)

    def run(out, scores=s):
        return lambda: ops.topk_masks(scores, 7, out=out, backend=backend)

    refuses(run([a, a]), both("out[1]", "out[0]"), [a])
    base = torch.zeros(36, dtype=torch.bool, device=device)
    refuses(run([base[:20].view(4, 5), base[16:].view(4, 5)]), both("out[1]", "out[0]"), [base])
    flat = torch.randn(40, device=device)  # out[0] is a bool view of scores[0]'s own bytes
    refuses(run([flat.view(torch.bool)[:20].view(4, 5), a], scores=[flat[:20].view(4, 5), s[1]]),
            both("out[0]", "scores[0]"), [flat, a])
    expanded = torch.zeros(1, dtype=torch.bool, device=device).expand(4, 5)
    refuses(run([a, expanded]), r"out\[1\] has elements that share memory", [a])
    # Disjoint parts of one buffer, and empty tensors, are fine.
    halves = [base[:18], base[18:]]
    ops.topk_masks([torch.randn(18, device=device), torch.randn(18, device=device)], 7, out=halves, backend=backend)
    assert int(base.sum()) == 7
    e = torch.zeros(0, dtype=torch.bool, device=device)
    ops.topk_masks([torch.randn(0, device=device), torch.randn(0, device=device)], 0, out=[e, e], backend=backend)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@pytest.mark.parametrize("resurrect", [False, True])
def test_saliency_refuses_overlapping_out(backend, device, resurrect):
    w = [torch.randn(8, device=device), torch.randn(8, device=device)]
    g = [torch.randn(8, device=device), torch.randn(8, device=device)]
    prev = [torch.rand(8, device=device) < 0.7, torch.rand(8, device=device) < 0.7]
    prev[0][:2] = prev[1][:2] = True
    fresh = [torch.zeros(8, dtype=torch.bool, device=device) for _ in range(2)]

    def run(out, weights=w, grads=g, prev_masks=prev):
        return lambda: ops.saliency_topk_masks(weights, grads, 3, prev_masks=prev_masks, resurrect=resurrect,
                                               out=out, backend=backend)

    everything = w + g + prev + fresh
    refuses(run([fresh[0], fresh[0]]), both("out[1]", "out[0]"), everything)
    refuses(run([prev[0], prev[0]]), both("out[1]", "out[0]"), everything)
    refuses(run([prev[1], prev[0]]), r"out\[\d\] overlaps prev_masks\[\d\] in memory", everything)
    refuses(run([fresh[0], prev[0]]), both("out[1]", "prev_masks[0]"), everything)
    base = torch.rand(9, device=device) < 0.5  # out[0] is prev_masks[0] shifted by one element
    refuses(run([base[1:], fresh[1]], prev_masks=[base[:8], prev[1]]), both("out[0]", "prev_masks[0]"),
            everything + [base])
    sq = torch.rand(4, 4, device=device) < 0.5  # same bytes and shape, other strides: not the same view
    refuses(lambda: ops.saliency_topk_masks([torch.randn(4, 4, device=device)], [torch.randn(4, 4, device=device)],
                                            3, prev_masks=[sq], resurrect=resurrect, out=[sq.t()], backend=backend),
            both("out[0]", "prev_masks[0]"), [sq])
    wf = torch.randn(16, device=device)  # bool views of a weight's / a grad's bytes
    refuses(run([wf.view(torch.bool)[:8], fresh[1]], weights=[wf[:8], w[1]]), both("out[0]", "weights[0]"),
            everything + [wf])
    refuses(run([fresh[0], wf.view(torch.bool)[40:48]], grads=[g[0], wf[8:]]), both("out[1]", "grads[1]"),
            everything + [wf])
    one = torch.ones(1, dtype=torch.bool, device=device).expand(8)
    refuses(run([one, fresh[1]], prev_masks=[one, prev[1]]), r"out\[0\] has elements that share memory",
            everything)
    # The legal in-place call still works.
    want = ops.saliency_topk_masks(w, g, 3, prev_masks=[m.clone() for m in prev], resurrect=resurrect,
                                   backend="reference")
    ops.saliency_topk_masks(w, g, 3, prev_masks=prev, resurrect=resurrect, out=prev, backend=backend)
    np.testing.assert_array_equal(flat_bool(prev), flat_bool(want))


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_masked_sgd_refuses_overlapping_tensors(backend, device):
    p, g, b = ([torch.randn(6, device=device), torch.randn(6, device=device)] for _ in range(3))
    m = [torch.rand(6, device=device) < 0.5, torch.rand(6, device=device) < 0.5]

    def run(p, g, b, m):
        return lambda: ops.masked_sgd_(p, g, b, m, lr=0.1, momentum=0.9, weight_decay=1e-4, backend=backend)

    everything = p + g + b + m
    refuses(run([p[0], p[0]], g, b, m), both("params[1]", "params[0]"), everything)
    refuses(run(p, [p[0], g[1]], b, m), both("params[0]", "grads[0]"), everything)
    refuses(run(p, g, [p[1], b[1]], m), both("params[1]", "momentum_buffers[0]"), everything)
    refuses(run(p, g, [b[0], b[0]], m), both("momentum_buffers[1]", "momentum_buffers[0]"), everything)
    refuses(run(p, g, [g[0], b[1]], m), both("momentum_buffers[0]", "grads[0]"), everything)
    flat = torch.randn(12, device=device)  # a mask that is a bool view of a param's bytes
    refuses(run([flat[:6], p[1]], g, b, [flat.view(torch.bool)[8:14], m[1]]), both("params[0]", "masks[0]"),
            everything + [flat])
    refuses(run([torch.zeros(1, device=device).expand(6), p[1]], g, b, m),
            r"params\[0\] has elements that share memory", everything)
    refuses(run(p, g, [torch.zeros(1, device=device).expand(6), None], m),
            r"momentum_buffers\[0\] has elements that share memory", everything)
    # Reads may share memory (one mask for two params, grads in one bucket); params may be disjoint
    # views of one buffer; None buffers are created.
    bucket = torch.randn(12, device=device)
    want = [flat[:6].clone(), flat[6:].clone()]
    ops.masked_sgd_(want, [bucket[:6], bucket[6:]], None, [m[0], m[0]], lr=0.1, momentum=0.9, backend="reference")
    bufs = ops.masked_sgd_([flat[:6], flat[6:]], [bucket[:6], bucket[6:]], [None, None], [m[0], m[0]], lr=0.1,
                           momentum=0.9, backend=backend)
    torch.testing.assert_close(flat, torch.cat(want), rtol=1.3e-6, atol=1e-6)
    assert all(x.data_ptr() != flat.data_ptr() for x in bufs)


# ---------------------------------------------------------------- masked SGD

def torch_sgd_reference(params, grads, masks, steps, **hp):
    """torch.optim.SGD on masked gradients: the behaviour masked_sgd_ must match on kept weights."""
    ps = [torch.nn.Parameter(p.clone()) for p in params]
    opt = torch.optim.SGD(ps, foreach=False, **hp)
    for gs in steps:
        for p, g, m in zip(ps, gs, masks):
            p.grad = g * m
        opt.step()
    return [p.detach() for p in ps], [opt.state[p].get("momentum_buffer") for p in ps]


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@pytest.mark.parametrize("hp", [
    dict(lr=0.1),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4),
    dict(lr=0.01, momentum=0.8, dampening=0.3, weight_decay=1e-2),
], ids=["plain", "momentum", "nesterov-wd", "dampening-wd"])
def test_masked_sgd_matches_torch_sgd(backend, device, hp, rng):
    shapes = [(33, 7), (5,), (2, 3, 4, 4), (0,)]
    masks = [torch.rand(s, generator=rng) < 0.4 for s in shapes]
    params = [torch.randn(s, generator=rng) * m for s, m in zip(shapes, masks)]
    steps = [[torch.randn(s, generator=rng) for s in shapes] for _ in range(25)]
    want_p, want_b = torch_sgd_reference(params, [None] * 4, masks, steps, **hp)

    p_dev = [p.clone().to(device) for p in params]
    m_dev = [m.to(device) for m in masks]
    bufs = None
    for gs in steps:
        bufs = ops.masked_sgd_(p_dev, [g.to(device) for g in gs], bufs, m_dev, backend=backend, **hp)
    for got, want, m in zip(p_dev, want_p, masks):
        torch.testing.assert_close(got.cpu(), want, rtol=1.3e-6, atol=1e-6)
        assert (got.cpu()[~m] == 0).all()
    if hp.get("momentum"):
        for got, want, m in zip(bufs, want_b, masks):
            torch.testing.assert_close(got.cpu(), want, rtol=1.3e-6, atol=1e-6)
            assert (got.cpu()[~m] == 0).all()


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_masked_sgd_zeroes_pruned_entries_that_started_nonzero(backend, device):
    p = [torch.tensor([1.0, 2.0, 3.0], device=device)]
    m = [torch.tensor([True, False, True], device=device)]
    bufs = ops.masked_sgd_(p, [torch.ones(3, device=device)], [torch.ones(3, device=device)], m, lr=0.1,
                           momentum=0.9, weight_decay=0.1, backend=backend)
    assert p[0][1].item() == 0.0 and bufs[0][1].item() == 0.0
    # Unmasked entries (masks None) are plain SGD.
    q = [torch.tensor([1.0, 2.0], device=device)]
    ops.masked_sgd_(q, [torch.ones(2, device=device)], None, None, lr=0.5, backend=backend)
    assert q[0].tolist() == [0.5, 1.5]


def test_masked_sgd_argument_errors():
    p, g = [torch.ones(3)], [torch.ones(3)]
    with pytest.raises(ValueError, match=r"masks\[0\] must be None or a torch.bool"):
        ops.masked_sgd_(p, g, None, [torch.ones(3)], lr=0.1)
    with pytest.raises(ValueError, match="lr must be a non-negative"):
        ops.masked_sgd_(p, g, None, None, lr=-1.0)
    with pytest.raises(ValueError, match="nesterov"):
        ops.masked_sgd_(p, g, None, None, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match=r"grads\[0\] has shape"):
        ops.masked_sgd_(p, [torch.ones(2)], None, None, lr=0.1)
    with pytest.raises(ValueError, match=r"momentum_buffers\[0\]"):
        ops.masked_sgd_(p, g, [torch.ones(3, dtype=torch.float64)], None, lr=0.1, momentum=0.9)


# ---------------------------------------------------------------- dispatch

def test_unknown_and_unavailable_backends():
    s = [torch.ones(3)]
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        ops.topk_masks(s, 1, backend="fast")
    for name in ops.KNOWN_BACKENDS:
        if name not in ops.available_backends("cpu"):
            with pytest.raises(ops.BackendUnavailableError, match=f"backend '{name}' is not available.*: .+"):
                ops.topk_masks(s, 1, backend=name)
    assert "reference" in ops.available_backends("cpu")
    assert ops.topk_masks(s, 2, backend="auto")[0].tolist() == [True, True, False]


def test_register_backend_plugs_an_out_of_tree_backend_in(monkeypatch):
    from sparseforce.ops import _registry, reference
    for name, value in (("_KERNELS", dict(_registry._KERNELS)), ("_AVAILABILITY", dict(_registry._AVAILABILITY)),
                        ("_AUTO", [])):
        monkeypatch.setattr(_registry, name, value)  # forgotten after the test
    calls = []

    def topk(scores, k, out):
        calls.append(k)
        return reference.topk_masks(scores, k, out)

    with pytest.raises(ValueError, match="unknown ops"):
        ops.register_backend("toy", lambda device: None, {"top_k": topk})
    ops.register_backend("toy", lambda device: None if device.type == "cpu" else "CPU only", {"topk_masks": topk})
    s = [torch.tensor([1.0, 3.0, 2.0])]
    assert ops.topk_masks(s, 2, backend="toy")[0].tolist() == [False, True, True] and calls == [2]
    with pytest.raises(ops.NaNScoreError, match=r"scores\[0\] contains NaN"):  # the front raises it
        ops.topk_masks([torch.tensor([float("nan")])], 1, backend="toy")
    with pytest.raises(ops.BackendUnavailableError, match="no kernel for op 'kth_largest'"):
        ops.kth_largest(s, 1, backend="toy")
    assert ops.unavailable_reason("toy", "topk_masks", "meta") == "CPU only"
    assert "toy" not in ops.available_backends("cpu") and ops.resolve_name("auto", "topk_masks", torch.device("meta")) == "reference"
    ops.register_backend("toy", lambda device: None, {"topk_masks": topk}, auto=True)
    assert ops.resolve_name("auto", "topk_masks", torch.device("meta")) == "toy"  # before reference


def test_tensors_on_different_devices_are_refused():
    s = [torch.ones(3), torch.ones(2, device="meta")]
    with pytest.raises(ValueError, match=r"scores\[1\] is on meta but scores\[0\] is on cpu"):
        ops.topk_masks(s, 1)


def test_non_list_arguments_are_refused():
    with pytest.raises(TypeError, match="scores must be a list or tuple of tensors"):
        ops.topk_masks(torch.ones(3), 1)
    with pytest.raises(TypeError, match=r"scores\[0\] has dtype torch.int32"):
        ops.topk_masks([torch.ones(3, dtype=torch.int32)], 1)


def _every_op_on(make, device="cpu"):
    """Each op with the tensor ``make(dense)`` in each of its tensor arguments in turn, the
    others on ``device``."""
    w, g = torch.randn(2, 3, device=device), torch.randn(2, 3, device=device)
    m = torch.ones(2, 3, dtype=torch.bool, device=device)
    buf = torch.zeros(2, 3, device=device)
    return {
        "topk_masks scores": (lambda b: ops.topk_masks([make(w)], 1, backend=b), "scores[0]"),
        "topk_masks out": (lambda b: ops.topk_masks([w], 1, out=[make(m)], backend=b), "out[0]"),
        "kth_largest scores": (lambda b: ops.kth_largest([make(w)], 1, backend=b), "scores[0]"),
        "saliency weights": (lambda b: ops.saliency_topk_masks([make(w)], [g], 1, backend=b), "weights[0]"),
        "saliency grads": (lambda b: ops.saliency_topk_masks([w], [make(g)], 1, backend=b), "grads[0]"),
        "saliency prev_masks": (lambda b: ops.saliency_topk_masks([w], [g], 1, prev_masks=[make(m)], resurrect=False,
                                                                   backend=b), "prev_masks[0]"),
        "key_histogram": (lambda b: ops.key_histogram([make(w)], rank_dtype=torch.float32, shift=16, backend=b),
                          "scores[0]"),
        "saliency_key_histogram": (lambda b: ops.saliency_key_histogram([w], [make(g)], rank_dtype=torch.float32,
                                                                        shift=16, backend=b), "grads[0]"),
        "masked_sgd_ params": (lambda b: ops.masked_sgd_([make(w)], [g], None, None, lr=0.1, backend=b), "params[0]"),
        "masked_sgd_ grads": (lambda b: ops.masked_sgd_([w.clone()], [make(g)], None, None, lr=0.1, backend=b),
                              "grads[0]"),
        "masked_sgd_ momentum_buffers": (lambda b: ops.masked_sgd_([w.clone()], [g], [make(buf)], None, lr=0.1,
                                                                   momentum=0.9, backend=b), "momentum_buffers[0]"),
        "masked_sgd_ masks": (lambda b: ops.masked_sgd_([w.clone()], [g], None, [make(m)], lr=0.1, backend=b),
                              "masks[0]"),
    }


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)  # the CPU tensors are refused before any kernel runs
@pytest.mark.parametrize("layout", ["coo", "csr"])
@pytest.mark.parametrize("case", sorted(_every_op_on(lambda t: t)))
def test_sparse_tensors_are_refused_with_one_clear_message(backend, device, layout, case):
    # Was: torch's internal messages ("reshape is not implemented for sparse tensors", "Could not
    # run 'sparseforce::topk_masks' with arguments from the 'SparseCPU' backend", ...).
    call, name = _every_op_on(lambda t: t.to_sparse() if layout == "coo" else t.to_sparse_csr())[case]
    with pytest.raises(ValueError, match=rf"^{re.escape(name)} is a sparse tensor \(torch\.sparse_(coo|csr)\); "
                                         r".*dense.*\.to_dense\(\)"):
        call(backend)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@pytest.mark.parametrize("case", sorted(c for c in _every_op_on(lambda t: t) if not c.startswith("masked_sgd_")))
def test_meta_tensors_are_refused_by_the_selections_with_one_clear_message(backend, device, case):
    # A selection needs the values, which a meta tensor has not; was: "Tensor.item() cannot be
    # called on meta tensors" from reference, "not available ... on meta tensors" from cpp.
    call, _ = _every_op_on(lambda t: t, device="meta")[case]
    with pytest.raises(ValueError, match=r"is on the meta device.*has no values"):
        call(backend)
