"""The cpp backend beyond the shared kernel tests: sizes where its multi-chunk and multi-pass
paths run, thread-count invariance, tie runs longer than any radix bin, and the torch.library
integration (opcheck, torch.compile). Every comparison is bit-for-bit against the reference.
"""
import math

import numpy as np
import pytest
import torch

import sparseforce.ops as ops
from sparseforce.ops.cpp import loader as _ext

pytestmark = pytest.mark.skipif("cpp" not in ops.available_backends("cpu"),
                                reason="the cpp backend is not available here")


def equal_lists(a, b):
    return len(a) == len(b) and all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b))


def layer_shapes(gen, n_tensors=50, total=1_500_000):
    """Conv/linear-like shapes of random sizes adding up to about `total` elements."""
    sizes = torch.rand(n_tensors, generator=gen) ** 3 + 0.01
    sizes = (sizes / sizes.sum() * total).long().clamp(min=1).tolist()
    shapes = []
    for i, n in enumerate(sizes):
        if i % 3 == 0:
            shapes.append((max(1, n // 9), 1, 3, 3))
        elif i % 3 == 1:
            shapes.append((n,))
        else:
            shapes.append((max(1, n // 7), 7))
    return shapes


@pytest.fixture
def many_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_large_saliency_and_topk_bit_identical(dtype, rng):
    shapes = layer_shapes(rng, 50, 1_500_000)
    w = [torch.randn(s, generator=rng).to(dtype) for s in shapes]
    g = [(torch.randn(s, generator=rng) * 1e-3).to(dtype) for s in shapes]
    g[3].zero_()  # a dead layer: a long run of zero saliencies
    n = sum(t.numel() for t in w)
    prev = [torch.rand(s, generator=rng) < 0.5 for s in shapes]
    alive = int(sum(int(m.sum()) for m in prev))
    for density in (0.005, 0.05):
        k = round(n * density)
        got = ops.saliency_topk_masks(w, g, k, backend="cpp")
        assert equal_lists(got, ops.saliency_topk_masks(w, g, k, backend="reference"))
        assert sum(int(m.sum()) for m in got) == k
        kk = round(alive * density)
        got = ops.saliency_topk_masks(w, g, kk, prev_masks=prev, resurrect=False, backend="cpp")
        assert equal_lists(got, ops.saliency_topk_masks(w, g, kk, prev_masks=prev, resurrect=False,
                                                        backend="reference"))
        scores = [t.abs() * 3 - 1 for t in w]  # negatives and positives, own dtype
        assert equal_lists(ops.topk_masks(scores, k, backend="cpp"), ops.topk_masks(scores, k, backend="reference"))
        assert torch.equal(ops.kth_largest(scores, k, backend="cpp"), ops.kth_largest(scores, k, backend="reference"))


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_thread_count_does_not_change_results(threads, rng, many_threads, monkeypatch):
    shapes = layer_shapes(rng, 20, 400_000)
    w = [torch.randn(s, generator=rng) for s in shapes]
    g = [torch.randint(-2, 3, s, generator=rng).float() for s in shapes]  # ties and zeros
    n = sum(t.numel() for t in w)
    k = n // 3
    want = ops.saliency_topk_masks(w, g, k, backend="reference")
    torch.set_num_threads(threads)
    assert equal_lists(ops.saliency_topk_masks(w, g, k, backend="cpp"), want)
    # Many small chunks: chunk borders fall inside tensors and inside runs of ties.
    for chunks in (7, 64):
        monkeypatch.setenv("SPARSEFORCE_CPU_CHUNKS", str(chunks))
        assert equal_lists(ops.saliency_topk_masks(w, g, k, backend="cpp"), want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cap", ["0", "1", "1000000000"])
def test_radix_passes_and_candidates_agree(dtype, cap, rng, monkeypatch):
    """cap 0 runs the radix passes down to the full key (4 for fp64), a huge cap always resolves
    the k-th bin from candidates; both must give the reference's masks and threshold."""
    monkeypatch.setenv("SPARSEFORCE_CPU_CANDIDATE_CAP", cap)
    monkeypatch.setenv("SPARSEFORCE_CPU_CHUNKS", "5")
    shapes = [(300, 17), (1,), (0,), (4099,), (64, 3, 3)]
    base = [torch.randn(s, generator=rng) for s in shapes]
    # Values that agree in their top 16 bits and differ below: the k-th bin is crowded.
    scores = [(1.0 + t.abs() * 1e-4).to(dtype) for t in base]
    scores[0][::7] = scores[3][5]  # exact ties across tensors
    n = sum(t.numel() for t in scores)
    for k in (1, 17, n // 3, n - 2):
        assert equal_lists(ops.topk_masks(scores, k, backend="cpp"), ops.topk_masks(scores, k, backend="reference"))
        assert torch.equal(ops.kth_largest(scores, k, backend="cpp"), ops.kth_largest(scores, k, backend="reference"))


@pytest.mark.parametrize("sample", ["0", "16", "64", "100000"])
def test_sampled_band_and_its_misses(sample, rng, monkeypatch):
    """The first pass histograms only a band of top digits that a sample of the keys places
    around the k-th key. A sample of 16 or 64 keys (one or four runs) misplaces it often, above
    and below: the kernel must notice and histogram the whole range. 0: no band at all."""
    monkeypatch.setenv("SPARSEFORCE_CPU_SAMPLE", sample)
    monkeypatch.setenv("SPARSEFORCE_CPU_CHUNKS", "3")
    shapes = [(300, 170), (1,), (4099,), (64, 3, 3), (20000,), (333,)]
    # Layers on scales far apart, negatives too: a sample from a few of them is no guide.
    scores = [torch.randn(s, generator=rng) * 10.0 ** (i - 2) for i, s in enumerate(shapes)]
    scores[2][::5] = scores[4][7]  # ties across tensors
    grads = [torch.randn(s, generator=rng) for s in shapes]
    grads[3][:20] = 0.0
    prev = [torch.rand(s, generator=rng) < 0.5 for s in shapes]
    n = sum(t.numel() for t in scores)
    alive = int(sum(int(m.sum()) for m in prev))
    for k in (1, 17, n // 200, n // 3, n - 2):
        assert equal_lists(ops.topk_masks(scores, k, backend="cpp"), ops.topk_masks(scores, k, backend="reference"))
        assert torch.equal(ops.kth_largest(scores, k, backend="cpp"), ops.kth_largest(scores, k, backend="reference"))
        assert equal_lists(ops.saliency_topk_masks(scores, grads, k, backend="cpp"),
                           ops.saliency_topk_masks(scores, grads, k, backend="reference"))
        kk = min(k, alive)
        want = ops.saliency_topk_masks(scores, grads, kk, prev_masks=prev, resurrect=False, backend="reference")
        assert equal_lists(ops.saliency_topk_masks(scores, grads, kk, prev_masks=prev, resurrect=False,
                                                   backend="cpp"), want)
        inplace = [m.clone() for m in prev]
        ops.saliency_topk_masks(scores, grads, kk, prev_masks=inplace, resurrect=False, out=inplace, backend="cpp")
        assert equal_lists(inplace, want)


@pytest.mark.parametrize("sampled", ["low", "high"])
def test_band_missed_by_an_unrepresentative_sample(sampled, rng, monkeypatch):
    """Keys at exactly the positions the kernel samples (SPARSEFORCE_CPU_SAMPLE=1024: 64 runs of
    16, evenly spread) that are unlike all others: the band lies below the k-th key ("low") or
    above it ("high"), the first pass must notice and redo the whole range."""
    monkeypatch.setenv("SPARSEFORCE_CPU_SAMPLE", "1024")
    monkeypatch.setenv("SPARSEFORCE_CPU_CHUNKS", "2")
    sizes = [60_000, 37, 40_000]
    n = sum(sizes)
    runs, span = 64, n - 16
    sampled_at = torch.zeros(n, dtype=torch.bool)
    for r in range(runs):
        start = (span // (runs - 1)) * r + (span % (runs - 1)) * r // (runs - 1)
        sampled_at[start:start + 16] = True
    flat = torch.rand(n, generator=rng) + 4.0 if sampled == "low" else torch.rand(n, generator=rng)
    flat[sampled_at] = 0.0 if sampled == "low" else 9.0
    scores = list(flat.split(sizes))
    grads = [torch.ones(m) for m in sizes]
    prev = [torch.ones(m, dtype=torch.bool) for m in sizes]
    for k in (n // 2, n // 3, 2 * n // 3):
        want = ops.topk_masks(scores, k, backend="reference")
        assert equal_lists(ops.topk_masks(scores, k, backend="cpp"), want)
        assert torch.equal(ops.kth_largest(scores, k, backend="cpp"), ops.kth_largest(scores, k, backend="reference"))
        assert equal_lists(ops.saliency_topk_masks(scores, grads, k, backend="cpp"), want)
        assert equal_lists(ops.saliency_topk_masks(scores, grads, k, prev_masks=prev, resurrect=False,
                                                   backend="cpp"), want)


@pytest.mark.parametrize("where", [0, 15, 16, 4103, 24_995])
def test_nan_found_anywhere_in_the_vector_loops(where, rng):
    """A NaN at a 16-element step's edge, inside one, or in a tail: found, its tensor named; a
    pruned NaN is ignored. Also ±0 and ±inf among many keys."""
    shapes = [(4100,), (20_000,), (901,)]
    w = [torch.randn(s, generator=rng) for s in shapes]
    g = [torch.randn(s, generator=rng) for s in shapes]
    flat_w = torch.cat([t.view(-1) for t in w])
    flat_w[where] = float("nan")
    w = list(flat_w.split([4100, 20_000, 901]))
    index = 0 if where < 4100 else 1 if where < 24_100 else 2
    with pytest.raises(ops.NaNScoreError, match=rf"scores\[{index}\]"):
        ops.topk_masks(w, 100, backend="cpp")
    with pytest.raises(ops.NaNScoreError, match=rf"weights\[{index}\]"):
        ops.saliency_topk_masks(w, g, 100, backend="cpp")
    prev = [torch.ones(s, dtype=torch.bool) for s in shapes]
    with pytest.raises(ops.NaNScoreError, match=rf"weights\[{index}\]"):
        ops.saliency_topk_masks(w, g, 100, prev_masks=prev, resurrect=False, backend="cpp")
    prev_flat = torch.cat([m.view(-1) for m in prev])
    prev_flat[where] = False
    prev = list(prev_flat.split([4100, 20_000, 901]))
    for k in (100, 5000):
        want = ops.saliency_topk_masks(w, g, k, prev_masks=prev, resurrect=False, backend="reference")
        assert equal_lists(ops.saliency_topk_masks(w, g, k, prev_masks=prev, resurrect=False, backend="cpp"), want)
    special = torch.tensor([0.0, -0.0, float("inf"), float("-inf")])
    scores = [t.clone() for t in w]
    for t in scores:
        t[torch.isnan(t)] = 0.0
        t[torch.randint(0, t.numel(), (t.numel() // 3,), generator=rng)] = special[
            torch.randint(0, 4, (t.numel() // 3,), generator=rng)]
    n = sum(t.numel() for t in scores)
    for k in (1, 50, n // 3, n // 2, n - 1):
        assert equal_lists(ops.topk_masks(scores, k, backend="cpp"), ops.topk_masks(scores, k, backend="reference"))


@pytest.mark.slow
def test_ties_longer_than_a_radix_bin(rng, monkeypatch):
    """3 M scores of three values: the k-th value's bin holds far more than the candidate cap, so
    ties are split between chunks by quotas; the lowest global positions must win."""
    monkeypatch.setenv("SPARSEFORCE_CPU_CHUNKS", "6")
    vals = torch.tensor([0.0, 1.0, 2.0])
    shapes = [(1_000_003,), (999, 1001), (2, 500_001)]
    scores = [vals[torch.randint(0, 3, s, generator=rng)] for s in shapes]
    scores[1][0, :10] = -0.0  # -0.0 ties with +0.0
    n = sum(t.numel() for t in scores)
    for k in (n // 2, n - 5, 1_000_000):
        got = ops.topk_masks(scores, k, backend="cpp")
        assert equal_lists(got, ops.topk_masks(scores, k, backend="reference"))
    zeros = [torch.zeros(s) for s in shapes]
    got = ops.topk_masks(zeros, 1_500_000, backend="cpp")
    flat = torch.cat([m.reshape(-1) for m in got])
    assert flat[:1_500_000].all() and not flat[1_500_000:].any()


def test_non_contiguous_and_out(rng):
    base = torch.randn(300, 200, generator=rng)
    scores = [base.t(), base[::3, 1::2], torch.randn(6, 8, generator=rng).expand(50, 6, 8)]
    n = sum(t.numel() for t in scores)
    out = [torch.ones(300, 200, dtype=torch.bool).t(), torch.zeros(100, 100, dtype=torch.bool),
           torch.empty(50, 6, 8, dtype=torch.bool)]
    assert not out[0].is_contiguous()
    masks = ops.topk_masks(scores, n // 10, out=out, backend="cpp")
    assert all(m is o for m, o in zip(masks, out))
    assert equal_lists(out, ops.topk_masks(scores, n // 10, backend="reference"))
    out2 = [torch.empty(t.shape, dtype=torch.bool) for t in scores]
    ops.saliency_topk_masks(scores, scores, n // 10, out=out2, backend="cpp")
    assert equal_lists(out2, ops.saliency_topk_masks(scores, scores, n // 10, backend="reference"))


def test_saliency_mixed_dtypes_in_one_call(rng):
    shapes = [(40, 3), (55,), (7, 7), (9,)]
    w = [torch.randn(s, generator=rng).to(dt) for s, dt in
         zip(shapes, [torch.bfloat16, torch.float16, torch.float32, torch.float64])]
    g = [torch.randn(s, generator=rng).to(dt) for s, dt in
         zip(shapes, [torch.float32, torch.bfloat16, torch.float16, torch.float32])]
    n = sum(t.numel() for t in w)
    for k in (1, n // 4, n - 1):
        assert equal_lists(ops.saliency_topk_masks(w, g, k, backend="cpp"),
                           ops.saliency_topk_masks(w, g, k, backend="reference"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_masked_sgd_matches_reference_and_stays_zero(dtype, rng):
    shapes = [(257, 33), (5,), (0,), (3, 3, 8, 8)]
    masks = [torch.rand(s, generator=rng) < 0.3 for s in shapes]
    masks[1] = None
    p_ref = [torch.randn(s, generator=rng).to(dtype) for s in shapes]
    p_cpp = [p.clone() for p in p_ref]
    b_ref = b_cpp = None
    for step in range(6):
        grads = [torch.randn(s, generator=rng).to(dtype) for s in shapes]
        hp = dict(lr=0.05, momentum=0.9, dampening=0.1 if step % 2 else 0.0, weight_decay=1e-3)
        b_ref = ops.masked_sgd_(p_ref, grads, b_ref, masks, backend="reference", **hp)
        b_cpp = ops.masked_sgd_(p_cpp, grads, b_cpp, masks, backend="cpp", **hp)
    for p, q, b, c, m in zip(p_cpp, p_ref, b_cpp, b_ref, masks):
        if dtype == torch.bfloat16:
            # Both round every intermediate to bf16, but torch fuses a*alpha+b (one float rounding,
            # two here), which can move a bf16 result by an ulp that later steps carry along.
            ulp = 2.0 ** -8 * max(1.0, float(c.abs().max()) if c.numel() else 1.0)
            tol = dict(rtol=0, atol=4 * ulp)
        else:
            tol = dict(rtol=1.3e-6, atol=1e-6)
        torch.testing.assert_close(p, q, **tol)
        torch.testing.assert_close(b, c, **tol)
        if m is not None:
            zero = torch.zeros((), dtype=dtype)
            assert torch.equal(p[~m], zero.expand_as(p[~m])) and torch.equal(b[~m], zero.expand_as(b[~m]))
            assert not torch.signbit(p[~m]).any() and not torch.signbit(b[~m]).any()  # +0, not -0


def test_masked_sgd_non_contiguous_param_is_updated_in_place(rng):
    base = torch.randn(20, 30, generator=rng)
    p = [base.t()]
    q = [base.t().clone()]
    g = [torch.randn(30, 20, generator=rng)]
    m = [torch.rand(30, 20, generator=rng) < 0.5]
    buf_c = ops.masked_sgd_(p, g, None, m, lr=0.1, momentum=0.9, nesterov=True, backend="cpp")
    buf_r = ops.masked_sgd_(q, g, None, m, lr=0.1, momentum=0.9, nesterov=True, backend="reference")
    torch.testing.assert_close(base.t(), q[0], rtol=1.3e-6, atol=1e-6)
    torch.testing.assert_close(buf_c[0], buf_r[0], rtol=1.3e-6, atol=1e-6)


# ---------------------------------------------------------------- torch.library integration

def test_opcheck():
    gen = torch.Generator().manual_seed(0)
    scores = [torch.randn(5, 3, generator=gen), torch.randn(7, generator=gen).double()]
    w = [torch.randn(4, 4, generator=gen), torch.randn(9, generator=gen)]
    g = [torch.randn(4, 4, generator=gen), torch.randn(9, generator=gen)]
    prev = [torch.rand(4, 4, generator=gen) < 0.7, torch.ones(9, dtype=torch.bool)]
    sf = torch.ops.sparseforce
    bool_like = [torch.empty(5, 3, dtype=torch.bool), torch.empty(7, dtype=torch.bool)]
    cases = [
        (sf.topk_masks.default, (scores, 6, bool_like)),
        (sf.kth_largest.default, (scores, 4)),
        (sf.saliency_topk_masks.default, (w, g, 5, prev, [torch.empty(4, 4, dtype=torch.bool),
                                                          torch.empty(9, dtype=torch.bool)])),
        (sf.saliency_topk_masks.default, (w, g, 5, [], [torch.empty(4, 4, dtype=torch.bool),
                                                        torch.empty(9, dtype=torch.bool)])),
        (sf.masked_sgd_.default, ([t.clone() for t in w], g, [torch.zeros(4, 4), torch.zeros(9)], [prev[0], None],
                                  0.1, 0.9, 0.0, 1e-4, True, [True, False])),
        (sf.radix_histogram.default, (scores, [], [], torch.float64, 48, 0)),
        (sf.radix_histogram.default, (w, g, prev, torch.float32, 0, 12345)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


def test_fake_kernels_give_shapes_on_meta():
    scores = [torch.empty(3, 4, device="meta"), torch.empty(5, device="meta", dtype=torch.float64)]
    nan = torch.ops.sparseforce.topk_masks(scores, 2, [torch.empty(s.shape, device="meta", dtype=torch.bool)
                                                       for s in scores])
    assert nan.shape == () and nan.dtype == torch.int64 and nan.device.type == "meta"
    t, nan = torch.ops.sparseforce.kth_largest(scores, 2)
    assert t.shape == () and t.dtype == torch.float64 and nan.dtype == torch.int64


def test_torch_compile_fullgraph():
    def step(w, g, k):
        out = [torch.empty_like(t, dtype=torch.bool) for t in w]
        torch.ops.sparseforce.saliency_topk_masks(w, g, k, [], out)
        return out

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    gen = torch.Generator().manual_seed(1)
    w = [torch.randn(16, 9, generator=gen), torch.randn(33, generator=gen)]
    g = [torch.randn(16, 9, generator=gen), torch.randn(33, generator=gen)]
    assert equal_lists(compiled(w, g, 20), ops.saliency_topk_masks(w, g, 20, backend="reference"))


def test_cpp_backend_is_what_auto_picks_on_cpu():
    assert ops.resolve_name("auto", "saliency_topk_masks", torch.device("cpu")) == "cpp"
    assert _ext.load() is None and _ext.HOW in ("prebuilt", "jit", "preloaded")


def test_kth_largest_returns_promoted_dtype_and_positive_zero():
    scores = [torch.tensor([-0.0, -1.0], dtype=torch.bfloat16), torch.tensor([-0.0], dtype=torch.float16)]
    t = ops.kth_largest(scores, 2, backend="cpp")
    assert t.dtype == torch.float32 and t.item() == 0.0 and math.copysign(1.0, t.item()) == 1.0
    assert np.isneginf(ops.kth_largest([torch.tensor([float("-inf")] * 3)], 3, backend="cpp").item())
