"""ops.key_histogram / ops.saliency_key_histogram (the per-rank pass of sparseforce.distributed)
on every backend and device that has them, against a numpy oracle of the key definition."""
import numpy as np
import pytest
import torch

import sparseforce.ops as ops
from conftest import EMULATED_CUDA

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
BACKEND_DEVICE = [pytest.param(b, d, id=f"{b}-{d}") for d in DEVICES
                  for b in ops.available_backends(d, "radix_histogram")] + \
    [pytest.param(b, "cpu", id=f"{b}-cpu") for b in EMULATED_CUDA]
WIDTH = {torch.float16: 16, torch.bfloat16: 16, torch.float32: 32, torch.float64: 64}


@pytest.fixture(autouse=True)
def small_triton_blocks():
    """64-element Triton programs: the small inputs here span many, tensors ending inside blocks."""
    from sparseforce.ops.triton.config import config
    saved, config.block = config.block, 64
    yield
    config.block = saved


def oracle_keys(values: torch.Tensor, rank_dtype) -> np.ndarray:
    """Unsigned order-preserving keys by the definition: sign bit set for positives, every bit
    flipped for negatives, -0.0 as +0.0. Independent of the package's code."""
    v = values.detach().reshape(-1).to(rank_dtype).cpu()
    v = torch.where(v == 0, torch.zeros_like(v), v)
    w = WIDTH[rank_dtype]
    if rank_dtype == torch.bfloat16:
        bits = (v.float().numpy().view(np.uint32) >> 16).astype(np.uint64)
    else:
        bits = v.numpy().view({16: np.uint16, 32: np.uint32, 64: np.uint64}[w]).astype(np.uint64)
    sign = np.uint64(1) << np.uint64(w - 1)
    full = np.uint64((1 << w) - 1) if w < 64 else np.uint64(0xFFFFFFFFFFFFFFFF)
    return np.where(bits & sign, bits ^ full, bits | sign).astype(np.uint64)


def oracle_counts(keys: np.ndarray, shift: int, prefix: int, w: int) -> np.ndarray:
    if shift + 16 < w:
        keys = keys[(keys >> np.uint64(shift + 16)) == np.uint64(prefix)]
    return np.bincount(((keys >> np.uint64(shift)) & np.uint64(0xFFFF)).astype(np.int64), minlength=1 << 16)


def check_every_pass(histogram, keys, w, target, device):
    """Walk the digits of the key ``target`` (so every filter matches some keys), comparing each
    pass's counts with the oracle; returns the NaN index of each pass, top first."""
    nans = []
    for shift in range(w - 16, -1, -16):
        prefix = int(target >> np.uint64(shift + 16)) if shift + 16 < w else 0
        counts, nan = histogram(shift, prefix)
        assert counts.dtype == torch.int64 and counts.shape == (1 << 16,) and counts.device.type == device
        np.testing.assert_array_equal(counts.cpu().numpy(), oracle_counts(keys, shift, prefix, w))
        nans.append(nan)
    return nans


def scores_pass(scores, rank_dtype, backend):
    return lambda shift, prefix: ops.key_histogram(scores, rank_dtype=rank_dtype, shift=shift, prefix=prefix,
                                                   backend=backend)


def subnormals(dtype, n, gen):
    """``n`` random subnormals of a 16-bit ``dtype``, both signs."""
    mant = 0x7F if dtype == torch.bfloat16 else 0x3FF
    bits = torch.randint(1, mant + 1, (n,), generator=gen)
    bits = torch.where(torch.rand(n, generator=gen) < 0.5, bits, bits | 0x8000)
    return bits.to(torch.int32).to(torch.int16).view(dtype)


def _inputs(gen, dtype, kind):
    shapes = [(int(torch.randint(0, 40, (1,), generator=gen)), 7), (0,), (301,), (1,)]
    ts = []
    for s in shapes:
        if kind == "ties":
            t = torch.randint(-2, 3, s, generator=gen).float() * 0.25
        else:
            t = torch.randn(s, generator=gen) * 10 ** float(torch.randint(-4, 5, (1,), generator=gen))
        if t.numel() > 3 and kind == "special":
            t.view(-1)[:3] = torch.tensor([float("inf"), -float("inf"), -0.0])
        ts.append(t.to(dtype))
    ts.append(torch.randn(9, 4, generator=gen).to(dtype)[:, ::2])  # non-contiguous
    return ts


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@pytest.mark.parametrize("rank_dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["random", "ties", "special"])
def test_key_histogram_every_pass_matches_the_oracle(backend, device, rank_dtype, kind):
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence().entropy % 2**31))
    in_dtype = rank_dtype if rank_dtype in (torch.float16, torch.bfloat16) else torch.float32
    scores = [t.to(device) for t in _inputs(gen, in_dtype, kind)]
    keys = np.concatenate([oracle_keys(t, rank_dtype) for t in scores])
    nans = check_every_pass(scores_pass(scores, rank_dtype, backend), keys, WIDTH[rank_dtype],
                            keys[len(keys) // 2], device)
    assert nans == [None] * len(nans)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@pytest.mark.parametrize("rank_dtype", [torch.float32, torch.float64])
def test_mixed_dtypes_rank_as_rank_dtype(backend, device, rank_dtype):
    """fp16, bf16 (subnormals included), fp32 and fp64 tensors in one call, widened exactly to
    ``rank_dtype``, which may be wider than they promote to (another rank may hold fp64)."""
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence().entropy % 2**31))
    special = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), 1.0, -1.0])
    scores = [torch.cat([subnormals(torch.float16, 40, gen), special.half(), torch.randn(60, generator=gen).half()]),
              torch.cat([subnormals(torch.bfloat16, 70, gen), special.bfloat16()]),
              torch.empty(0, dtype=torch.bfloat16),
              (torch.randn(130, generator=gen) * 1e-30).float(),
              torch.randn(12, 11, generator=gen).bfloat16().t()]  # non-contiguous
    if rank_dtype == torch.float64:
        scores.append(torch.cat([torch.randn(90, generator=gen).double() * 1e-300, special.double()]))
    scores = [t.to(device) for t in scores]
    keys = np.concatenate([oracle_keys(t, rank_dtype) for t in scores])
    for target in (keys.max(), keys.min(), np.sort(keys)[len(keys) // 3]):
        check_every_pass(scores_pass(scores, rank_dtype, backend), keys, WIDTH[rank_dtype], target, device)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@pytest.mark.parametrize("rank_dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_signed_zeros_and_infinities(backend, device, rank_dtype):
    # -0.0 counts as +0.0; ±inf and the extremes of the range are ordinary keys. Every value's
    # own key is walked, so each lands in its bin on every pass.
    finfo = torch.finfo(rank_dtype)
    values = torch.tensor([-0.0, 0.0, float("inf"), -float("inf"), finfo.max, -finfo.max, finfo.tiny,
                           -finfo.tiny, -0.0], dtype=rank_dtype)
    tiniest = torch.tensor([1], dtype={16: torch.int16, 32: torch.int32, 64: torch.int64}[WIDTH[rank_dtype]])
    scores = [values.to(device), torch.cat([tiniest, -tiniest]).view(rank_dtype).to(device)]  # ± smallest subnormal
    keys = np.concatenate([oracle_keys(t, rank_dtype) for t in scores])
    assert (keys == keys[1]).sum() == 3  # the oracle itself: both zeros share +0.0's key
    for target in np.unique(keys):
        check_every_pass(scores_pass(scores, rank_dtype, backend), keys, WIDTH[rank_dtype], target, device)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@pytest.mark.parametrize("rank_dtype", [torch.float32, torch.float64])
def test_saliency_key_histogram_counts_only_survivors(backend, device, rank_dtype):
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence().entropy % 2**31))
    shapes = [(33, 5), (0, 2), (128,)]
    w = [torch.randn(s, generator=gen) for s in shapes]
    w[0] = w[0].to(torch.bfloat16)
    g = [torch.randint(-2, 3, s, generator=gen).float() for s in shapes]
    prev = [torch.rand(s, generator=gen) < 0.5 for s in shapes]
    scores = [(a.float() * b.float()).abs()[m] for a, b, m in zip(w, g, prev)]
    keys = np.concatenate([oracle_keys(s, rank_dtype) for s in scores])
    w, g, prev = ([t.to(device) for t in ts] for ts in (w, g, prev))
    nans = check_every_pass(
        lambda shift, prefix: ops.saliency_key_histogram(w, g, prev_masks=prev, rank_dtype=rank_dtype, shift=shift,
                                                         prefix=prefix, backend=backend),
        keys, WIDTH[rank_dtype], keys[len(keys) // 3], device)
    assert nans == [None] * len(nans)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@pytest.mark.parametrize("rank_dtype", [torch.float32, torch.float64])
def test_saliency_is_formed_per_pair_like_the_reference(backend, device, rank_dtype):
    """|w·g| in float32 unless the pair holds a float64, then widened to ``rank_dtype``; bf16
    subnormal times inf is inf; non-contiguous weights, grads and masks."""
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence().entropy % 2**31))
    w_sub = subnormals(torch.bfloat16, 150, gen)
    g_big = (torch.randn(150, generator=gen) * 2.0 ** torch.randint(0, 120, (150,), generator=gen).float()).bfloat16()
    g_big[:5], g_big[5:8] = float("inf"), -float("inf")  # w is never 0 here: inf, not NaN
    pairs = [(w_sub, g_big),
             (torch.randn(77, generator=gen).half(), torch.randn(77, generator=gen)),
             (torch.randn(20, 9, generator=gen).t(), torch.randn(9, 20, generator=gen)),  # non-contiguous w
             (torch.empty(0), torch.empty(0))]
    if rank_dtype == torch.float64:
        pairs += [(subnormals(torch.bfloat16, 60, gen), torch.randn(60, generator=gen).double() * 1e200),
                  (torch.randn(50, generator=gen).double(), torch.randn(50, generator=gen).double())]
    w, g = [p[0] for p in pairs], [p[1] for p in pairs]
    prev = [torch.rand(t.shape, generator=gen) < 0.7 for t in w]
    prev[2] = (torch.rand(20, 9, generator=gen) < 0.7).t()  # non-contiguous mask
    for masks in (None, prev):
        scores = []
        for i, (a, b) in enumerate(zip(w, g)):
            dtype = torch.float64 if torch.float64 in (a.dtype, b.dtype) else torch.float32
            s = (a.to(dtype) * b.to(dtype)).abs()
            scores.append(s if masks is None else s[masks[i]])
        keys = np.concatenate([oracle_keys(s, rank_dtype) for s in scores])
        wd, gd = [t.to(device) for t in w], [t.to(device) for t in g]
        md = None if masks is None else [m.to(device) for m in masks]
        for target in (keys.max(), np.sort(keys)[len(keys) // 2]):
            check_every_pass(
                lambda shift, prefix: ops.saliency_key_histogram(wd, gd, prev_masks=md, rank_dtype=rank_dtype,
                                                                 shift=shift, prefix=prefix, backend=backend),
                keys, WIDTH[rank_dtype], target, device)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_nan_is_reported_on_the_top_pass_among_competing_elements(backend, device):
    def on(ts):
        return [t.to(device) for t in ts]

    scores = on([torch.ones(5), torch.tensor([1.0, float("nan")]), torch.tensor([float("nan")])])
    assert ops.key_histogram(scores, rank_dtype=torch.float32, shift=16, backend=backend)[1] == 1
    w = on([torch.ones(3), torch.tensor([float("inf"), 2.0])])
    g = on([torch.ones(3), torch.tensor([0.0, 1.0])])  # inf * 0: a NaN saliency
    assert ops.saliency_key_histogram(w, g, rank_dtype=torch.float32, shift=16, backend=backend)[1] == 1
    dead = on([torch.ones(3, dtype=torch.bool), torch.tensor([False, True])])  # ... of a pruned weight
    assert ops.saliency_key_histogram(w, g, prev_masks=dead, rank_dtype=torch.float32, shift=16,
                                      backend=backend)[1] is None


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@pytest.mark.parametrize("rank_dtype", [torch.bfloat16, torch.float32, torch.float64])
def test_nan_index_is_the_first_tensor_with_one_and_nan_keys_count_like_others(backend, device, rank_dtype):
    # Tensors of different dtypes run in different launches: the index is still the first in
    # the caller's order. Below the top pass no NaN is reported, but its key is counted.
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence().entropy % 2**31))
    nan = float("nan")
    if rank_dtype == torch.bfloat16:
        dtypes = [torch.bfloat16] * 4
    else:
        dtypes = [torch.float16, torch.float32, torch.bfloat16, rank_dtype]
    for at in (1, 2, 3):
        scores = []
        for i, dt in enumerate(dtypes):
            t = torch.randn(70, generator=gen)
            if i >= at:
                t[int(torch.randint(0, 70, (1,), generator=gen))] = nan
            scores.append(t.to(dt).to(device))
        keys = np.concatenate([oracle_keys(t, rank_dtype) for t in scores])
        nan_key = oracle_keys(scores[at][scores[at].isnan()], rank_dtype)[0]
        nans = check_every_pass(scores_pass(scores, rank_dtype, backend), keys, WIDTH[rank_dtype], nan_key, device)
        assert nans == [at] + [None] * (len(nans) - 1)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_empty_inputs_count_nothing(backend, device):
    for rank_dtype in (torch.bfloat16, torch.float32, torch.float64):
        for shift in (0, WIDTH[rank_dtype] - 16):
            for scores in ([], [torch.empty(0, dtype=rank_dtype, device=device),
                                torch.empty(3, 0, dtype=rank_dtype, device=device)]):
                counts, nan = ops.key_histogram(scores, rank_dtype=rank_dtype, shift=shift, backend=backend)
                assert counts.shape == (1 << 16,) and int(counts.sum()) == 0 and nan is None
    w = [torch.empty(0, 4, device=device)]
    counts, nan = ops.saliency_key_histogram(w, w, prev_masks=[torch.empty(0, 4, dtype=torch.bool, device=device)],
                                             rank_dtype=torch.float32, shift=16, backend=backend)
    assert int(counts.sum()) == 0 and nan is None
    counts, nan = ops.saliency_key_histogram([torch.ones(4, device=device)], [torch.ones(4, device=device)],
                                             prev_masks=[torch.zeros(4, dtype=torch.bool, device=device)],
                                             rank_dtype=torch.float32, shift=16, backend=backend)
    assert int(counts.sum()) == 0 and nan is None  # nothing survives


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_bad_arguments_name_the_problem(backend, device):
    x = [torch.randn(4, device=device)]
    with pytest.raises(ValueError, match=r"scores\[0\] ranks as torch.float32"):
        ops.key_histogram(x, rank_dtype=torch.float16, shift=0, backend=backend)
    with pytest.raises(ValueError, match="shift=8"):
        ops.key_histogram(x, rank_dtype=torch.float32, shift=8, backend=backend)
    with pytest.raises(ValueError, match="prefix=70000"):
        ops.key_histogram(x, rank_dtype=torch.float32, shift=0, prefix=70000, backend=backend)
    with pytest.raises(TypeError, match="rank_dtype"):
        ops.key_histogram(x, rank_dtype=torch.int32, shift=0, backend=backend)
    with pytest.raises(ValueError, match="grads has 2"):
        ops.saliency_key_histogram(x, [x[0], x[0]], rank_dtype=torch.float32, shift=16, backend=backend)
    counts, nan = ops.key_histogram([], rank_dtype=torch.float32, shift=16, backend=backend)
    assert counts.shape == (1 << 16,) and int(counts.sum()) == 0 and nan is None
