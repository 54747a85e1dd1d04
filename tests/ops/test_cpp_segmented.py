"""The cpp backend's segmented selections beyond the shared tests (tests/ops/test_segmented.py):
each of its three paths forced onto inputs the default thresholds would send elsewhere (the radix
path on short rows, the in-memory rows path on long segments), the radix path's multi-piece,
multi-batch, exact-key and band-miss branches, the SSE2 2:4 kernels (fp32 straight from values,
other dtypes from keys), and the NaN index across paths. Every comparison is bit-for-bit against
the reference backend.
"""
import pytest
import torch

import sparseforce.ops as ops

pytestmark = pytest.mark.skipif("cpp" not in ops.available_backends("cpu"),
                                reason="the cpp backend is not available here")

# SPARSEFORCE_CPU_SEG_SMALL: rows up to this long take the in-memory rows path, longer ones the
# radix path; 0 sends every row (and tensor) to the radix path, a huge value everything to rows.
PATHS = {"default": {}, "radix": {"SPARSEFORCE_CPU_SEG_SMALL": "0"},
         "rows": {"SPARSEFORCE_CPU_SEG_SMALL": str(1 << 30)},
         # the radix passes down to the full key (ties kept by per-piece quotas), no sampled band
         "radix-exact": {"SPARSEFORCE_CPU_SEG_SMALL": "0", "SPARSEFORCE_CPU_CANDIDATE_CAP": "0",
                         "SPARSEFORCE_CPU_SAMPLE": "0"}}


@pytest.fixture(params=list(PATHS))
def path(request, monkeypatch):
    for name, value in PATHS[request.param].items():
        monkeypatch.setenv(name, value)
    return request.param


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.shape == y.shape and torch.equal(x, y)


def tied(shape, gen, dtype=torch.float32, levels=5):
    """Few distinct values (long runs of ties), both zeros, and ±inf."""
    v = torch.randint(-levels, levels + 1, shape, generator=gen).to(torch.float64) / 2
    flat = v.view(-1)
    flat[::7] = -0.0
    flat[3::11] = float("inf")
    flat[5::13] = float("-inf")
    return v.to(dtype)


def grads(shape, gen, dtype=torch.float32):
    """Normal values but no exact 0 (randn gives one in ~1.5e7), which times an inf weight would
    be a NaN saliency."""
    g = torch.randn(shape, generator=gen).to(dtype)
    return g.masked_fill(g == 0, 1.0)


def inputs(gen):
    """Rows of every path's length (1, 3, 33, 700), mixed dtypes, a non-contiguous tensor."""
    return [tied((64, 700), gen), torch.randn(40, 33, generator=gen, dtype=torch.float64),
            tied((300,), gen, torch.float16), tied((6, 3, 3, 3), gen, torch.bfloat16),
            torch.randn(33, 50, generator=gen).t(), tied((5, 1), gen), torch.randn((), generator=gen)]


def both(fn, *args, **kw):
    return fn(*args, backend="cpp", **kw), fn(*args, backend="reference", **kw)


def test_every_path_on_tensors_rows_and_groups(path, rng):
    scores = inputs(rng)
    sizes = [s.numel() for s in scores]
    same(*both(ops.segmented_topk_masks, scores, [n // 3 for n in sizes]))
    same(*both(ops.segmented_topk_masks, scores, [0, 40 * 33, 300, 1, 2 * 33, 5, 1]))
    rows = [1 if s.dim() == 0 else s.shape[0] for s in scores]
    per_row = [torch.randint(0, max(1, s.numel() // r) + 1, (r,), generator=rng) for s, r in zip(scores, rows)]
    same(*both(ops.segmented_topk_masks, scores, per_row, segment="row"))
    same(*both(ops.segmented_topk_masks, scores, [1] * len(scores), segment="row"))
    for n, m in ((2, 4), (1, 2), (3, 3), (0, 4), (4, 4)):
        groups = [s for s in scores if s.dim() and (s.numel() // s.shape[0]) % m == 0]
        same(*both(ops.segmented_topk_masks, groups, None, segment=("nm", n, m)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_every_path_on_saliencies_with_survivors(path, dtype, rng):
    shapes = [(48, 300), (20, 40), (10, 4, 3, 3)]
    w = [tied(s, rng, dtype) for s in shapes]
    g = [grads(s, rng, dtype) for s in shapes]
    prev = [torch.rand(s, generator=rng) < 0.6 for s in shapes]
    for t, p in zip(w, prev):
        p.view(p.shape[0], -1)[:, :4] = True  # every row and 2:4 group keeps at least 2 survivors
        p.view(-1, 4)[:, :2] = True
    same(*both(ops.segmented_saliency_topk_masks, w, g, [5000, 300, 100]))
    alive = [int(p.sum()) for p in prev]
    kw = dict(prev_masks=prev, resurrect=False)
    same(*both(ops.segmented_saliency_topk_masks, w, g, [a // 2 for a in alive], **kw))
    same(*both(ops.segmented_saliency_topk_masks, w, g, alive, **kw))
    same(*both(ops.segmented_saliency_topk_masks, w, g, [4, 4, 4], segment="row", **kw))
    same(*both(ops.segmented_saliency_topk_masks, w, g, None, segment=("nm", 2, 4), **kw))
    same(*both(ops.segmented_saliency_topk_masks, w, g, None, segment=("nm", 1, 4)))


@pytest.mark.parametrize("n_threads", [1, 3])
def test_long_segments_in_many_pieces_and_batches(path, n_threads, threads, rng):
    """Three threads cut a 600k-element segment into pieces of 64k, so ties and candidates span
    piece borders; 150 rows on the radix path take three batches of at most 64 pieces."""
    threads(n_threads)
    big = [tied((600, 1000), rng), torch.randn(300_000, generator=rng), tied((150, 40), rng, torch.bfloat16)]
    sizes = [t.numel() for t in big]
    for density in (0.001, 0.3, 0.97):
        same(*both(ops.segmented_topk_masks, big, [round(n * density) for n in sizes]))
    same(*both(ops.segmented_topk_masks, big, [100, 1, 7], segment="row"))
    w, g = big[:2], [grads(t.shape, rng) for t in big[:2]]
    same(*both(ops.segmented_saliency_topk_masks, w, g, [5000, 299_999]))


def test_sampled_band_missing_the_kth_key_falls_back_to_every_key(rng, monkeypatch):
    """Values the sample never sees (between its runs), 8 % of the segment: the band it places
    around the median then lies above or below the true k-th key, the first pass finds that
    (too many or too few keys above the band) and repeats over every key. The run starts are
    sample_band's: a segment of n elements samples n / 16 of them in runs of 16."""
    monkeypatch.setenv("SPARSEFORCE_CPU_SEG_SMALL", "0")
    n, run = 200_000, 16
    runs = n // 16 // run
    span = n - run
    starts = torch.tensor([(span // (runs - 1)) * r + (span % (runs - 1)) * r // (runs - 1) for r in range(runs - 1)])
    hidden = (starts[:, None] + run + torch.arange(20)).reshape(-1)  # past each run, before the next
    for value in (5.0, -5.0):
        x = torch.randn(n, generator=rng)
        x[hidden] = value
        same(*both(ops.segmented_topk_masks, [x], [n // 2]))


def test_two_four_kernels_on_every_value_and_remainder(rng):
    """2:4 in SSE2 (fp32 straight from the values, fp16/bf16 saliencies from their fp32 keys)
    with -0.0 == +0.0, ±inf and ties, on group counts that are not multiples of four."""
    for shape in [(3, 12), (7, 4), (1, 4), (5, 44)]:
        x = tied(shape, rng, levels=2)
        same(*both(ops.segmented_topk_masks, [x], None, segment=("nm", 2, 4)))
        same(*both(ops.segmented_topk_masks, [x], None, segment=("nm", 3, 4)))
        per_group = torch.randint(0, 5, (x.numel() // 4,), generator=rng)
        same(*both(ops.segmented_topk_masks, [x.view(-1, 4)], [per_group], segment="row"))
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            w, g = tied(shape, rng, dtype, levels=2), tied(shape, rng, dtype, levels=2)
            prev = torch.rand(shape, generator=rng) < 0.5
            prev.view(-1, 4)[:, 1:3] = True
            same(*both(ops.segmented_saliency_topk_masks, [w], [g], None, segment=("nm", 2, 4)))
            same(*both(ops.segmented_saliency_topk_masks, [w], [g], None, segment=("nm", 2, 4),
                       prev_masks=[prev], resurrect=False))


def test_a_pruned_nan_is_ignored_and_the_lowest_tensor_named_across_paths(path):
    w = [torch.ones(4, 8), torch.ones(2, 5000), torch.ones(3, 4)]
    g = [torch.ones(4, 8), torch.ones(2, 5000), torch.ones(3, 4)]
    prev = [torch.ones(4, 8, dtype=torch.bool), torch.ones(2, 5000, dtype=torch.bool), torch.ones(3, 4, dtype=torch.bool)]
    w[0][1, 2] = float("nan")
    prev[0][1, 2] = False  # pruned: not competing, so not an error
    kw = dict(prev_masks=prev, resurrect=False)
    for segment, ks in (("tensor", [3, 10, 2]), ("row", [1, 1, 1]), (("nm", 2, 4), None)):
        same(*both(ops.segmented_saliency_topk_masks, w, g, ks, segment=segment, **kw))
    g[2][0, 0] = float("inf")
    w[2][0, 0] = 0.0  # inf * 0: a NaN saliency in the last tensor ...
    w[1][1, 4000] = float("nan")  # ... and a NaN weight in the middle one, which is named
    for segment, ks in (("tensor", [3, 10, 2]), ("row", [1, 1, 1]), (("nm", 2, 4), None)):
        with pytest.raises(ops.NaNScoreError, match=r"weights\[1\]"):
            ops.segmented_saliency_topk_masks(w, g, ks, segment=segment, backend="cpp", **kw)


def test_opcheck():
    """The kernels as torch.library ops: schema, fake kernel, aliasing (out written, nothing else)."""
    gen = torch.Generator().manual_seed(0)
    scores = [torch.randn(6, 4, generator=gen), torch.randn(8, generator=gen).double()]
    w, g = [torch.randn(6, 4, generator=gen)], [torch.randn(6, 4, generator=gen)]
    prev = [torch.rand(6, 4, generator=gen) < 0.7]
    prev[0][:, :2] = True
    sf = torch.ops.sparseforce

    def out(like):
        return [torch.empty(t.shape, dtype=torch.bool) for t in like]

    cases = [
        (sf.segmented_topk_masks.default, (scores, [torch.tensor([5]), torch.tensor([3])], 0, 0, out(scores))),
        (sf.segmented_topk_masks.default, (scores, [torch.tensor([1, 2, 3, 4, 0, 4]), torch.ones(8, dtype=torch.long)],
                                           0, 0, out(scores))),
        (sf.segmented_topk_masks.default, (scores, [], 2, 4, out(scores))),
        (sf.segmented_saliency_topk_masks.default, (w, g, [torch.full((6,), 2)], 0, 0, prev, out(w))),
        (sf.segmented_saliency_topk_masks.default, (w, g, [], 1, 2, [], out(w))),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


def test_direct_calls_are_guarded_against_reading_out_of_bounds():
    """The front checks every argument; the kernels re-check what would read or write out of
    bounds, for direct torch.ops calls, each in one line naming the argument."""
    x = [torch.randn(4, 6)]
    out = [torch.empty(4, 6, dtype=torch.bool)]
    op = torch.ops.sparseforce.segmented_topk_masks
    for args, message in [(([torch.ones(5, dtype=torch.long)], 0, 0), r"ks\[0\] has 5 entries"),
                          (([torch.tensor([25])], 0, 0), r"ks\[0\]\[0\]=25 is outside \[0, 24\]"),
                          (([torch.tensor([1.0])], 0, 0), r"ks\[0\] must be a contiguous 1-D int64"),
                          (([], 0, 0), r"ks has 0 tensors for 1 inputs"),
                          (([], 2, 5), r"input 0 holds 24 elements, not a multiple of m=5"),
                          (([], 2, 33), r"n=2, m=33 is not an N:M pattern")]:
        with pytest.raises((ValueError, RuntimeError), match=message):
            op(x, *args, out)
