"""The cpp backend's drop_grow_masks beyond the shared tests (tests/ops/test_drop_grow.py): each of
its paths forced (per tensor: the tiny, rows and radix paths of the segmented selection, the radix
one down to the exact key with per-piece tie quotas; global: the radix select over every tensor in
several chunks, with candidates or with per-chunk tie quotas), long segments cut into pieces
across threads, ties deciding each phase, -0.0 in every dtype, and the NaN code over every
element. Every comparison is bit-for-bit against the reference backend.
"""
import pytest
import torch

import sparseforce.ops as ops
from test_cpp_segmented import tied

pytestmark = pytest.mark.skipif("cpp" not in ops.available_backends("cpu"),
                                reason="the cpp backend is not available here")

# SPARSEFORCE_CPU_DG_SMALL: per-tensor segments up to this long take the in-memory rows path (up to
# 32 elements: the tiny path), longer ones the radix path; SPARSEFORCE_CPU_CHUNKS cuts the global
# select into chunks; CANDIDATE_CAP=0 and SAMPLE=0 take both selects down to the exact key.
PATHS = {"default": {},
         "rows": {"SPARSEFORCE_CPU_DG_SMALL": str(1 << 30)},
         "radix": {"SPARSEFORCE_CPU_DG_SMALL": "0", "SPARSEFORCE_CPU_CHUNKS": "5"},
         "radix-exact": {"SPARSEFORCE_CPU_DG_SMALL": "0", "SPARSEFORCE_CPU_CANDIDATE_CAP": "0",
                         "SPARSEFORCE_CPU_SAMPLE": "0", "SPARSEFORCE_CPU_CHUNKS": "3"}}


@pytest.fixture(params=list(PATHS))
def path(request, monkeypatch):
    """The path's knobs set; torch's thread count (which a test may change) restored after."""
    for name, value in PATHS[request.param].items():
        monkeypatch.setenv(name, value)
    threads = torch.get_num_threads()
    yield request.param
    torch.set_num_threads(threads)


def active(shapes, gen, density):
    return [torch.rand(s, generator=gen) < density for s in shapes]


def same(weights, scores, masks, drops, grows=None, segment="tensor"):
    got = ops.drop_grow_masks(weights, scores, masks, drops, grows, segment=segment, backend="cpp")
    want = ops.drop_grow_masks(weights, scores, masks, drops, grows, segment=segment, backend="reference")
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and torch.equal(g, w)
    return got


def drops_of(masks, fraction):
    return [int(fraction * int(m.sum())) for m in masks]


def updates(weights, scores, masks):
    """Per tensor and global, drop 0 / some / all, grow as many, none, fewer, every candidate."""
    n = sum(m.numel() for m in masks)
    alive = sum(int(m.sum()) for m in masks)
    for fraction in (0.0, 0.3, 1.0):
        drops = drops_of(masks, fraction)
        same(weights, scores, masks, drops)
        same(weights, scores, masks, drops, [0] * len(drops))
        same(weights, scores, masks, drops, [m.numel() - int(m.sum()) + d for m, d in zip(masks, drops)])
        d = int(fraction * alive)
        same(weights, scores, masks, d, segment="global")
        same(weights, scores, masks, d, d // 3, segment="global")
        same(weights, scores, masks, d, n - alive + d, segment="global")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_every_path_per_tensor_and_global(path, dtype, rng):
    """Tensors of the tiny (<= 32), rows and (past 2^16 by default) radix lengths, non-contiguous ones."""
    shapes = [(4, 8), (5,), (40, 33), (70_000,), (3, 3, 3, 3), ()]
    weights = [tied(s, rng, dtype, levels=3) for s in shapes]
    weights[2] = weights[2].t().contiguous().t()
    scores = [tied(s, rng, dtype, levels=5) for s in shapes]
    for density in (0.05, 0.5, 1.0):
        updates(weights, scores, active(shapes, rng, density))


def test_mixed_dtypes_rank_in_their_own_or_the_promoted_dtype(path, rng):
    shapes = [(300, 7), (40_000,), (9,), (70_001,)]
    dtypes = [torch.float16, torch.bfloat16, torch.float64, torch.float32]
    weights = [tied(s, rng, d, levels=40) for s, d in zip(shapes, dtypes)]
    scores = [torch.randn(s, generator=rng).to(d) for s, d in zip(shapes, reversed(dtypes))]
    updates(weights, scores, active(shapes, rng, 0.2))


@pytest.mark.parametrize("n_threads", [1, 3])
def test_long_segments_in_many_pieces(path, n_threads, rng):
    """Three threads cut a 600k-element tensor into pieces of 64k (ties and candidates span piece
    borders) and the global select into chunks that span tensors."""
    torch.set_num_threads(n_threads)
    shapes = [(600, 1000), (300_000,), (150, 40)]
    weights = [tied(shapes[0], rng), torch.randn(shapes[1], generator=rng), tied(shapes[2], rng, torch.bfloat16)]
    scores = [torch.randn(shapes[0], generator=rng), tied(shapes[1], rng), tied(shapes[2], rng, torch.bfloat16)]
    for density in (0.01, 0.1, 0.9):
        masks = active(shapes, rng, density)
        same(weights, scores, masks, drops_of(masks, 0.3))
        same(weights, scores, masks, sum(drops_of(masks, 0.3)), segment="global")


def test_ties_decide_each_phase(path, rng):
    """Drop ties only (every active |w| equal, scores distinct), then grow ties only (weights distinct,
    every |score| equal): each phase alone keeps the lowest positions."""
    shapes = [(7, 11), (50_000,), (3000,)]
    masks = active(shapes, rng, 0.5)
    equal = [torch.where(torch.rand(s, generator=rng) < 0.5, -1.0, 1.0) for s in shapes]
    distinct = [torch.randperm(torch.Size(s).numel(), generator=rng).float().view(s) + 1 for s in shapes]
    for weights, scores in ((equal, distinct), (distinct, equal)):
        for fraction in (0.1, 0.5):
            got = same(weights, scores, masks, drops_of(masks, fraction))
            assert [int(g.sum()) for g in got] == [int(m.sum()) for m in masks]
            same(weights, scores, masks, sum(drops_of(masks, fraction)), segment="global")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_minus_zero_ties_plus_zero(path, dtype, rng):
    """|-0.0| == |+0.0| in both phases: with only zeros, drops take the highest positions and grows
    the lowest; among larger values the zeros are what is dropped and never grown first."""
    shapes = [(64,), (70_000,), (9, 9)]
    zeros = [torch.where(torch.rand(s, generator=rng) < 0.5, -0.0, 0.0).to(dtype) for s in shapes]
    masks = active(shapes, rng, 0.5)
    got = same(zeros, zeros, masks, drops_of(masks, 0.5), [5, 5, 5])
    for g, m in zip(got, masks):
        assert int(g.sum()) == int(m.sum()) - int(0.5 * int(m.sum())) + 5
    mixed = [torch.where(z == 0, z, torch.ones((), dtype=dtype)).to(dtype) for z in zeros]
    for m in mixed:
        m.view(-1)[::3] = 2.0
    same(mixed, zeros, masks, drops_of(masks, 0.4))
    same(zeros, mixed, masks, drops_of(masks, 0.4), segment="tensor")
    same(mixed, zeros, masks, 20, segment="global")


def kernel_code(weights, scores, masks, keeps, grows):
    out = [torch.empty(w.shape, dtype=torch.bool) for w in weights]
    return int(torch.ops.sparseforce.drop_grow_masks(weights, scores, masks, torch.tensor(keeps),
                                                     torch.tensor(grows), out))


def test_nan_code_covers_every_element_in_tensor_order(path):
    """A NaN counts wherever it is: at an inactive weight (no drop candidate), at the score of a
    surviving weight (no grow candidate); the code is the least of 2i (weights[i]) and 2i + 1
    (scores[i]), across tiny, rows and radix tensors and in the global select."""
    shapes = [(4, 8), (2, 40_000), (3, 40)]
    masks = [torch.zeros(s, dtype=torch.bool) for s in shapes]
    for m in masks:
        m.view(-1)[::2] = True

    def code(where, keeps, grows):
        w = [torch.ones(s) for s in shapes]
        s = [torch.ones(s) for s in shapes]
        for kind, i, pos in where:
            (w if kind == "w" else s)[i].view(-1)[pos] = float("nan")
        return kernel_code(w, s, masks, keeps, grows)

    alive = [int(m.sum()) for m in masks]
    for keeps, grows in ((alive, [1, 1, 1]), ([0, 0, 0], [0, 0, 0]), ([sum(alive)], [7])):
        assert code([], keeps, grows) == -1
        assert code([("w", 1, 79_999)], keeps, grows) == 2  # inactive (odd position)
        assert code([("s", 1, 40_000)], keeps, grows) == 3  # active, and kept when keeps = alive
        assert code([("w", 2, 0), ("s", 1, 3)], keeps, grows) == 3
        assert code([("s", 2, 5), ("w", 1, 2)], keeps, grows) == 2
        assert code([("s", 0, 31), ("w", 0, 30)], keeps, grows) == 0
        assert code([("s", 0, 31), ("w", 1, 30)], keeps, grows) == 1
        assert code([("s", 2, 119)], keeps, grows) == 5


def test_direct_calls_are_guarded_against_reading_out_of_bounds():
    """The front checks every argument; the kernel re-checks what would read or write out of
    bounds, for direct torch.ops calls, each in one line naming the argument."""
    w = [torch.randn(4, 6), torch.randn(5)]
    m = [torch.ones(4, 6, dtype=torch.bool), torch.ones(5, dtype=torch.bool)]
    out = [torch.empty(4, 6, dtype=torch.bool), torch.empty(5, dtype=torch.bool)]
    op = torch.ops.sparseforce.drop_grow_masks
    two = torch.tensor([1, 1])
    for args, message in [((w, w[:1], m, two, two), r"weights, scores and masks hold 2, 1 and 2 tensors"),
                          ((w, w, m, torch.tensor([1, 1, 1]), two), r"keeps must be a contiguous 1-D int64 CPU"),
                          ((w, w, m, two, torch.tensor([1.0, 1.0])), r"grows must be a contiguous 1-D int64 CPU"),
                          ((w, w, m, torch.tensor([25, 1]), two), r"keeps\[0\]=25 and grows\[0\]=1 do not fit"),
                          ((w, w, m, torch.tensor([5]), torch.tensor([25])), r"keeps\[0\]=5 and grows\[0\]=25"),
                          ((w, [w[0], torch.randn(6)], m, two, two), r"scores\[1\] and weights\[1\] differ"),
                          ((w, w, [m[0], torch.ones(5)], two, two), r"masks\[1\] must be a bool CPU tensor")]:
        with pytest.raises((ValueError, RuntimeError), match=message):
            op(*args, out)


def test_opcheck():
    """The kernel as a torch.library op: schema, fake kernel, aliasing (out written, nothing else)."""
    gen = torch.Generator().manual_seed(0)
    w = [torch.randn(6, 4, generator=gen), torch.randn(8, generator=gen).double()]
    s = [torch.randn(6, 4, generator=gen).half(), torch.randn(8, generator=gen)]
    m = [torch.rand(6, 4, generator=gen) < 0.5, torch.rand(8, generator=gen) < 0.5]
    alive = [int(x.sum()) for x in m]
    out = [torch.empty(6, 4, dtype=torch.bool), torch.empty(8, dtype=torch.bool)]
    op = torch.ops.sparseforce.drop_grow_masks.default
    torch.library.opcheck(op, (w, s, m, torch.tensor([a // 2 for a in alive]), torch.tensor([2, 1]), out))
    torch.library.opcheck(op, (w, s, m, torch.tensor([sum(alive) // 2]), torch.tensor([3]), out))
