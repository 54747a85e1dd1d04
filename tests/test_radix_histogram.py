"""ops.key_histogram / ops.saliency_key_histogram (the per-rank pass of sparseforce.distributed)
on every backend that has them, against a numpy oracle of the key definition."""
import numpy as np
import pytest
import torch

import sparseforce.ops as ops

BACKENDS = ops.available_backends("cpu", "radix_histogram")
WIDTH = {torch.float16: 16, torch.bfloat16: 16, torch.float32: 32, torch.float64: 64}


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


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rank_dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["random", "ties", "special"])
def test_key_histogram_every_pass_matches_the_oracle(backend, rank_dtype, kind):
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence().entropy % 2**31))
    in_dtype = rank_dtype if rank_dtype in (torch.float16, torch.bfloat16) else torch.float32
    scores = _inputs(gen, in_dtype, kind)
    keys = np.concatenate([oracle_keys(t, rank_dtype) for t in scores])
    w = WIDTH[rank_dtype]
    target = keys[len(keys) // 2]  # walk the digits of a key that exists, so every filter matches some
    for shift in range(w - 16, -1, -16):
        prefix = int(target >> np.uint64(shift + 16)) if shift + 16 < w else 0
        counts, nan = ops.key_histogram(scores, rank_dtype=rank_dtype, shift=shift, prefix=prefix, backend=backend)
        np.testing.assert_array_equal(counts.numpy(), oracle_counts(keys, shift, prefix, w))
        assert nan is None


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rank_dtype", [torch.float32, torch.float64])
def test_saliency_key_histogram_counts_only_survivors(backend, rank_dtype):
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence().entropy % 2**31))
    shapes = [(33, 5), (0, 2), (128,)]
    w = [torch.randn(s, generator=gen) for s in shapes]
    w[0] = w[0].to(torch.bfloat16)
    g = [torch.randint(-2, 3, s, generator=gen).float() for s in shapes]
    prev = [torch.rand(s, generator=gen) < 0.5 for s in shapes]
    scores = [(a.float() * b.float()).abs()[m] for a, b, m in zip(w, g, prev)]
    keys = np.concatenate([oracle_keys(s, rank_dtype) for s in scores])
    width = WIDTH[rank_dtype]
    target = keys[len(keys) // 3]
    for shift in range(width - 16, -1, -16):
        prefix = int(target >> np.uint64(shift + 16)) if shift + 16 < width else 0
        counts, nan = ops.saliency_key_histogram(w, g, prev_masks=prev, rank_dtype=rank_dtype, shift=shift,
                                                 prefix=prefix, backend=backend)
        np.testing.assert_array_equal(counts.numpy(), oracle_counts(keys, shift, prefix, width))
        assert nan is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_is_reported_on_the_top_pass_among_competing_elements(backend):
    scores = [torch.ones(5), torch.tensor([1.0, float("nan")]), torch.tensor([float("nan")])]
    assert ops.key_histogram(scores, rank_dtype=torch.float32, shift=16, backend=backend)[1] == 1
    w = [torch.ones(3), torch.tensor([float("inf"), 2.0])]
    g = [torch.ones(3), torch.tensor([0.0, 1.0])]  # inf * 0: a NaN saliency
    assert ops.saliency_key_histogram(w, g, rank_dtype=torch.float32, shift=16, backend=backend)[1] == 1
    dead = [torch.ones(3, dtype=torch.bool), torch.tensor([False, True])]  # ... of a pruned weight
    assert ops.saliency_key_histogram(w, g, prev_masks=dead, rank_dtype=torch.float32, shift=16,
                                      backend=backend)[1] is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_arguments_name_the_problem(backend):
    x = [torch.randn(4)]
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
