"""The CUDA drop_grow_masks (csrc/cuda/drop_grow.cu over segmented.cu and select.cu) under the
emulator, on each of its paths.

The shared tests (test_drop_grow.py) run the emulated backends on every kind of input; this file
calls the kernel directly (the op library's signature), against the reference kernel, and forces
each path: per tensor on the thread, row and radix paths of the segmented select
(``SPARSEFORCE_CUDA_SEGMENT_SMALL``, the paths the host reports checked), one segment over many
tensors on the global radix select (with and without its candidate buffer,
``SPARSEFORCE_CUDA_CANDIDATE_CAP``), ties straddling every drop and grow count, NaN in an inactive
weight or a kept element's score, many tensors, a fixed number of launches however many tensors,
and weak global memory across blocks (``cuda_emu_weak``).
"""
import pytest
import torch

from conftest import EMULATED_CUDA, EMULATED_CUDA_PATHS
from cuda_emu import register
from sparseforce.ops import reference

pytestmark = pytest.mark.skipif(not EMULATED_CUDA, reason="the CUDA emulator is not built here (no C++ compiler, or SPARSEFORCE_TEST_NO_EMU=1)")

# csrc/cuda/host.h: SegPathBit
TINY, ROW, RADIX = 1, 2, 4


EMU = EMULATED_CUDA_PATHS


def kernel(backend):
    return register.install.kernels[backend]["drop_grow_masks"]


@pytest.fixture
def small(monkeypatch):
    def set_small(value):
        monkeypatch.setenv("SPARSEFORCE_CUDA_SEGMENT_SMALL", str(value))
    return set_small


def tied(shape, rng, dtype=torch.float32, levels=5):
    """Values drawn from a few magnitudes of both signs (signed zeros among them): ties straddle
    every count."""
    x = torch.randint(-levels // 2, levels // 2 + 1, shape, generator=rng).to(dtype)
    return torch.where(torch.rand(shape, generator=rng) < 0.1, -x * 0, x)


def run(backend, weights, scores, masks, keeps, grows, paths=None):
    keeps, grows = torch.tensor(keeps, dtype=torch.int64), torch.tensor(grows, dtype=torch.int64)
    out = [torch.ones(w.shape, dtype=torch.bool) for w in weights]
    nan = kernel(backend)(weights, scores, masks, keeps, grows, out)
    assert int(nan) == -1
    if paths is not None:
        assert register.last_mode() == paths
    want = [torch.zeros(w.shape, dtype=torch.bool) for w in weights]
    assert int(reference.drop_grow_masks(weights, scores, masks, keeps, grows, want)) == -1
    for i, (a, b) in enumerate(zip(out, want)):
        assert torch.equal(a, b), f"tensor {i}"


def counts(masks, rng, global_=False, drop_all=False, grow_max=False):
    """keeps (active - drops) and grows per segment, inside the contract's bounds."""
    parts = [masks] if global_ else [[m] for m in masks]
    keeps, grows = [], []
    for p in parts:
        a = sum(int(m.sum()) for m in p)
        n = sum(m.numel() for m in p)
        k = 0 if drop_all else int(torch.randint(0, a + 1, (), generator=rng))
        keeps.append(k)
        grows.append(n - k if grow_max else int(torch.randint(0, n - k + 1, (), generator=rng)))
    return keeps, grows


def layers(shapes, rng, dtypes=(torch.float32,), density=0.5):
    w = [tied(s, rng, dtypes[i % len(dtypes)]) for i, s in enumerate(shapes)]
    g = [tied(s, rng, dtypes[(i + 1) % len(dtypes)], levels=7) for i, s in enumerate(shapes)]
    m = [torch.rand(s, generator=rng) < density for s in shapes]
    return w, g, m


@pytest.mark.parametrize("backend", EMU)
@pytest.mark.parametrize("limit,paths", [(0, RADIX), (32, TINY | RADIX), (1024, TINY | ROW | RADIX), (2048, TINY | ROW)])
def test_per_tensor_on_each_path(backend, small, limit, paths, rng):
    # Tensors of 7, 40, 300 and 1500 elements (and an empty one): each limit moves some of them
    # to another path of the segmented select; both phases take the same path per tensor.
    small(limit)
    w, g, m = layers([(7,), (5, 8), (3, 100), (0, 4), (2, 750)], rng,
                     (torch.float32, torch.float16, torch.float64, torch.bfloat16))
    for flags in ({}, {"drop_all": True}, {"grow_max": True}, {"drop_all": True, "grow_max": True}):
        keeps, grows = counts(m, rng, **flags)
        run(backend, w, g, m, keeps, grows, paths)
    # Nothing dropped, nothing grown: the mask comes back unchanged.
    run(backend, w, g, m, [int(x.sum()) for x in m], [0] * len(m), paths)


@pytest.mark.parametrize("backend", EMU)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_radix_segments_of_many_chunks(backend, small, dtype, rng):
    # 3 and 5 chunks of 4096 elements: the ties of both phases' k-th magnitudes spread over every
    # chunk, so each chunk's quota comes from the per-segment scan.
    small(0)
    w, g, m = layers([(10000,), (17000,)], rng, (dtype,), density=0.6)
    for _ in range(3):
        keeps, grows = counts(m, rng)
        run(backend, w, g, m, keeps, grows, RADIX)


@pytest.mark.parametrize("backend", EMU)
@pytest.mark.parametrize("cap", [None, 0])
def test_global_segment_over_mixed_tensors(backend, monkeypatch, cap, rng):
    # One segment over tensors of every dtype (ranked promoted, exactly): positions run in tensor
    # order, so ties across tensors go to the earlier tensor. cap 0: no candidate buffer, the
    # full-data passes to the whole key and the per-tile quotas of ties.
    if cap is not None:
        monkeypatch.setenv("SPARSEFORCE_CUDA_CANDIDATE_CAP", str(cap))
    w, g, m = layers([(3, 5), (), (0,), (5000,), (40, 30), (9,)], rng,
                     (torch.float16, torch.bfloat16, torch.float32, torch.float64))
    for flags in ({}, {}, {"drop_all": True}, {"grow_max": True}):
        keeps, grows = counts(m, rng, global_=True, **flags)
        run(backend, w, g, m, keeps, grows)
    total = sum(int(x.sum()) for x in m)
    run(backend, w, g, m, [total], [0])


@pytest.mark.parametrize("backend", EMU)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_global_segment_ranks_magnitudes_in_one_dtype(backend, dtype, rng):
    # Every tensor of one dtype (no promotion), signed infinities and zeros among the values.
    w, g, m = layers([(700,), (300,), (50,)], rng, (dtype,), density=0.7)
    w[0][:5] = torch.tensor([float("inf"), -float("inf"), -0.0, 0.0, -2.0], dtype=dtype)
    g[1][:4] = torch.tensor([-float("inf"), float("inf"), -0.0, 2.0], dtype=dtype)
    m[0][:5] = True
    keeps, grows = counts(m, rng, global_=True)
    run(backend, w, g, m, keeps, grows)


@pytest.mark.parametrize("backend", EMU)
@pytest.mark.parametrize("segments", ["tensor", "global"])
@pytest.mark.parametrize("nans,code", [
    ([(1, "s", 7), (2, "s", 3)], 3),
    ([(1, "w", 4999), (2, "s", 3)], 2),  # the last element of a tensor
    ([(2, "s", 49)], 5),
    ([(0, "s", 19), (1, "w", 4100), (2, "w", 0)], 1),
    ([(2, "w", 49), (1, "s", 4999), (1, "s", 0)], 3),
])
def test_nan_code_is_the_first_of_weights_then_scores(backend, small, segments, nans, code, rng):
    # A NaN weight is inactive and a NaN score's element is kept (its weight huge): neither
    # competes in either phase, yet both are reported, in tiles of different blocks; the code is
    # min(2i for weights[i], 2i+1 for scores[i]).
    small(64)
    shapes = [(20,), (5000,), (50,)]
    w, g, m = layers(shapes, rng)
    for i, which, j in nans:
        if which == "w":
            m[i][j], w[i][j] = False, float("nan")
        else:
            m[i][j], w[i][j], g[i][j] = True, 1e9, float("nan")
    keeps, grows = counts(m, rng, global_=segments == "global")
    out = [torch.zeros(s, dtype=torch.bool) for s in shapes]
    nan = kernel(backend)(w, g, m, torch.tensor(keeps), torch.tensor(grows), out)
    assert int(nan) == code


@pytest.mark.parametrize("backend", EMU[:1])
@pytest.mark.parametrize("segments", ["tensor", "global"])
def test_many_tensors_and_fixed_launches(backend, small, segments, rng):
    # Every path of the segmented select in each call (tensors of 10, 300 and 5000 elements).
    small(64)
    def count(n_tensors):
        w, g, m = layers([((10, 300, 5000)[i % 3],) for i in range(n_tensors)], rng)
        keeps, grows = counts(m, rng, global_=segments == "global")
        before = register.launches()
        run(backend, w, g, m, keeps, grows)
        return register.launches() - before
    assert count(3) == count(24)

