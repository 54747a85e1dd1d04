"""The segmented CUDA kernels (csrc/cuda/segmented.cu) under the emulator, on each of their paths.

The shared tests (test_segmented.py) run the emulated backends on every kind of input; this file
forces each path with ``SPARSEFORCE_CUDA_SEGMENT_SMALL`` (the longest segment selected without
histograms) and asserts the paths the host reports, reaches what the shared shapes do not (radix
segments of many chunks with ties across them, NaN found by different paths in one call), and
runs everything over weak global memory across blocks too (``cuda_emu_weak``).
"""
import pytest
import torch

import sparseforce.ops as ops
from conftest import EMULATED_CUDA, EMULATED_CUDA_PATHS
from cuda_emu import register
from sparseforce.ops import NaNScoreError

pytestmark = pytest.mark.skipif(not EMULATED_CUDA, reason="the CUDA emulator is not built here (no C++ compiler, or SPARSEFORCE_TEST_NO_EMU=1)")

# csrc/cuda/host.h: SegPathBit
TINY, ROW, RADIX = 1, 2, 4


EMU = EMULATED_CUDA_PATHS


@pytest.fixture
def small(monkeypatch):
    """Sets the longest segment the host sends to the histogram-free paths."""
    def set_small(value):
        monkeypatch.setenv("SPARSEFORCE_CUDA_SEGMENT_SMALL", str(value))
    return set_small


def check(backend, scores, ks, segment, paths=None):
    got = ops.segmented_topk_masks(scores, ks, segment=segment, backend=backend)
    if paths is not None:
        assert register.last_mode() == paths
    want = ops.segmented_topk_masks(scores, ks, segment=segment, backend="reference")
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def check_saliency(backend, w, g, ks, segment, prev=None, resurrect=True, paths=None):
    kw = dict(segment=segment, prev_masks=prev, resurrect=resurrect)
    got = ops.segmented_saliency_topk_masks(w, g, ks, backend=backend, **kw)
    if paths is not None:
        assert register.last_mode() == paths
    want = ops.segmented_saliency_topk_masks(w, g, ks, backend="reference", **kw)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def tied(shape, rng, dtype=torch.float32, levels=5):
    """Scores drawn from a few values (signed zeros among them): ties straddle every k."""
    x = torch.randint(-levels // 2, levels // 2 + 1, shape, generator=rng).to(dtype)
    return torch.where(torch.rand(shape, generator=rng) < 0.1, -x * 0, x)


@pytest.mark.parametrize("backend", EMU)
@pytest.mark.parametrize("limit,paths", [(0, RADIX), (32, TINY | RADIX), (1024, TINY | ROW | RADIX), (2048, TINY | ROW)])
def test_row_segments_on_each_path(backend, small, limit, paths, rng):
    # Rows of 4, 40, 300 and 1500 elements, ties across the row path's strides of 256: each limit
    # moves some of them to another path.
    small(limit)
    scores = [tied((9, 4), rng), tied((5, 40), rng, torch.float16), tied((3, 300), rng, torch.float64),
              tied((2, 1500), rng, torch.bfloat16)]
    ks = [torch.tensor([0, 1, 2, 3, 4, 2, 2, 1, 3]), 17, torch.tensor([0, 150, 300]), torch.tensor([700, 1])]
    check(backend, scores, ks, "row", paths)


@pytest.mark.parametrize("backend", EMU)
@pytest.mark.parametrize("limit,paths", [(0, RADIX), (1024, TINY)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_nm_groups_on_the_thread_and_radix_paths(backend, small, limit, paths, dtype, rng):
    small(limit)
    scores = [tied((6, 32), rng, dtype), tied((3, 4, 8), rng, dtype), torch.randn(4, 16, generator=rng).to(dtype)]
    for n in (0, 1, 3, 8):
        check(backend, scores, None, ("nm", n, 8), paths)
    check(backend, [tied((5, 64), rng, dtype)], None, ("nm", 19, 32), paths)


@pytest.mark.parametrize("backend", EMU)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_radix_segments_of_many_chunks_break_ties_by_position(backend, dtype, rng):
    # 3 and 5 chunks of 4096 elements, drawn from a few values: the k-th value's ties spread over
    # every chunk, so each chunk's quota of them comes from the per-segment scan.
    scores = [tied((10000,), rng, dtype), tied((17000,), rng, dtype), tied((70,), rng, dtype)]
    for ks in ([5000, 8000, 35], [1, 16999, 0], [0, 17000, 70], [10000, 3, 1]):
        check(backend, scores, ks, "tensor")


@pytest.mark.parametrize("backend", EMU)
def test_radix_rows_of_many_chunks_with_a_k_per_row(backend, rng):
    scores = [tied((3, 9000), rng), torch.randn(2, 4500, generator=rng).half()]
    check(backend, scores, [torch.tensor([4500, 0, 9000]), torch.tensor([2250, 4499])], "row", RADIX)


@pytest.mark.parametrize("backend", EMU)
@pytest.mark.parametrize("limit", [0, 1024])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_saliency_with_survivors_on_every_path(backend, small, limit, dtype, rng):
    small(limit)
    shapes = [(2, 3000), (4, 200), (12, 8)]
    w = [tied(s, rng, dtype) for s in shapes]
    g = [torch.randn(s, generator=rng).to(dtype if dtype != torch.float16 else torch.bfloat16) for s in shapes]
    prev = [torch.rand(s, generator=rng) < 0.7 for s in shapes]
    check_saliency(backend, w, g, [3000, 100, 30], "tensor", prev, resurrect=True)
    check_saliency(backend, w, g, [1500, 60, 20], "tensor", prev, resurrect=False)
    keep = [int(p.sum()) for p in prev]
    check_saliency(backend, w, g, keep, "tensor", prev, resurrect=False)  # k = survivors: all of them
    rows = [p.reshape(p.shape[0], -1).sum(1) // 2 for p in prev]
    check_saliency(backend, w, g, rows, "row", prev, resurrect=False)
    check_saliency(backend, w, g, None, ("nm", 2, 4), prev, resurrect=True)


@pytest.mark.parametrize("backend", EMU)
def test_nan_names_the_first_tensor_whichever_path_finds_it(backend, small):
    small(64)
    # tensor 1 takes the radix path, 2 the row path, 3 the thread path: 1 must win.
    scores = [torch.ones(20), torch.ones(5000), torch.ones(50), torch.ones(8)]
    for i, j in ((1, 4321), (2, 49), (3, 7)):
        scores[i][j] = float("nan")
    for order in ([1, 2, 3], [2, 3], [3]):
        s = [t.clone() for t in scores]
        for i in {1, 2, 3} - set(order):
            s[i] = torch.ones_like(s[i])
        with pytest.raises(NaNScoreError) as e:
            ops.segmented_topk_masks(s, [10, 10, 10, 3], segment="tensor", backend=backend)
        assert e.value.index == order[0]
    # A NaN that does not compete is no error.
    w = [torch.ones(5000), torch.full((300,), float("nan"))]
    prev = [torch.ones(5000, dtype=torch.bool), torch.zeros(300, dtype=torch.bool)]
    prev[1][:5] = True
    w[1][:5] = 1.0
    check_saliency(backend, w, [torch.ones(5000), torch.ones(300)], [7, 5], "tensor", prev, resurrect=False)


@pytest.mark.parametrize("backend", EMU[:1])
def test_launches_do_not_grow_with_the_number_of_tensors(backend, small, rng):
    small(64)
    def count(n_tensors):
        scores = [torch.randn(300, generator=rng) for _ in range(n_tensors)]
        before = register.launches()
        ops.segmented_topk_masks(scores, [100] * n_tensors, segment="tensor", backend=backend)
        return register.launches() - before
    assert count(2) == count(25)
