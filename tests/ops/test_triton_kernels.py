"""Triton-specific kernel cases (the shared tests in test_ops*.py cover the op contract).

On a machine without a GPU these run on CPU tensors under the Triton interpreter (conftest sets
TRITON_INTERPRET=1); with a GPU they run the compiled kernels on CUDA tensors. Most cases shrink
the block to 64 elements so that small inputs span many programs, tensor boundaries fall inside
and between blocks, and ties spread over several blocks.
"""
import os

import numpy as np
import pytest
import torch

import sparseforce.ops as ops
from conftest import flat64, flat_bool, oracle_keep

DEVICES = [d for d in ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
           if "triton" in ops.available_backends(d)]
pytestmark = pytest.mark.skipif(not DEVICES, reason="the triton backend is unavailable here: "
                                + str(ops.unavailable_reason("triton", "topk_masks", torch.device("cpu"))))


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture
def small_blocks():
    """64-element programs and an 8-wide scan step: many programs and scan iterations."""
    from sparseforce.ops.triton.config import config
    saved = (config.block, config.scan_chunk)
    config.block, config.scan_chunk = 64, 8
    yield config
    config.block, config.scan_chunk = saved


def topk(scores, k, **kw):
    return ops.topk_masks(scores, k, backend="triton", **kw)


def check_topk(scores, k, kth=False):
    got = flat_bool(topk(scores, k))
    np.testing.assert_array_equal(got, oracle_keep(flat64(scores), k))
    if kth:
        assert ops.kth_largest(scores, k, backend="triton").item() == np.sort(flat64(scores))[::-1][k - 1]


# ------------------------------------------------------------------------------ availability

def test_backend_is_available_under_the_interpreter():
    # Guards against the triton tests silently skipping: conftest asks for the interpreter when
    # there is no GPU, so an importable triton must give a usable CPU backend.
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") == "1":
        assert "triton" in ops.available_backends("cpu"), \
            ops.unavailable_reason("triton", "topk_masks", torch.device("cpu"))


def test_auto_never_picks_triton_on_cpu():
    for op in ("topk_masks", "saliency_topk_masks", "kth_largest", "masked_sgd_"):
        assert ops.resolve_name("auto", op, torch.device("cpu")) != "triton"
    reason = ops.unavailable_reason("triton", "topk_masks", torch.device("meta"))
    assert reason is not None and "CUDA" in reason


# ------------------------------------------------------------------------------ topk / kth

def test_sizes_around_the_block(device, small_blocks):
    gen = torch.Generator().manual_seed(0)
    sizes = [1, 63, 64, 65, 130]
    scores = [torch.randn(n, generator=gen).to(device) for n in sizes]
    n = sum(sizes)
    for k in (1, 64, n - 1):
        check_topk(scores, k, kth=True)


def test_many_ties_at_the_threshold_span_blocks(device, small_blocks):
    # 30 values above, then 450 zeros (+0 and -0, in three tensors over 8 blocks), then 30
    # below: k = 250 keeps the first 220 zeros in global order, so the tie counts and their
    # prefix sum decide, across tensor and block boundaries.
    gen = torch.Generator().manual_seed(1)
    scores = [torch.rand(30, generator=gen) + 1, torch.zeros(100), -torch.zeros(5, 30),
              torch.zeros(200), -torch.rand(30, generator=gen) - 1]
    scores = [s.to(device) for s in scores]
    for k in (31, 479, 481):
        check_topk(scores, k)
    keep = flat_bool(topk(scores, 250))
    assert keep[:250].all() and not keep[250:].any()


def test_all_equal_scores(device, small_blocks):
    for dtype, ks in ((torch.float32, (77,)), (torch.bfloat16, (0, 131, 340))):
        scores = [torch.full((130,), 2.5, dtype=dtype, device=device),
                  torch.full((3, 70), 2.5, dtype=dtype, device=device)]
        for k in ks:
            keep = flat_bool(topk(scores, k))
            assert keep[:k].all() and not keep[k:].any()
    assert ops.kth_largest(scores, 200, backend="triton").item() == 2.5


def test_half_precision_and_mixed_dtypes(device, small_blocks):
    special = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), 1.0, -1.0, 65504.0, 2.0 ** -24])
    gen = torch.Generator().manual_seed(2)
    for dtype in (torch.float16, torch.bfloat16):
        x = torch.cat([special, torch.randn(100, generator=gen) * 100]).to(dtype)
        scores = [x.to(device), x.flip(0).to(device)]
        for k in (9, 150):
            check_topk(scores, k, kth=True)
        assert ops.kth_largest(scores, 5, backend="triton").dtype == dtype
    # fp16 + bf16 promote to fp32 (ranked exactly); an fp64 tensor promotes everything to fp64.
    base = torch.randn(60, generator=gen)
    mixed = [base.half(), base.bfloat16(), special.half(), special.bfloat16()]
    for extra in ([], [base.double() / 3]):
        scores = [s.to(device) for s in mixed + extra]
        for k in (50, 120):
            check_topk(scores, k)
    assert ops.kth_largest([s.to(device) for s in mixed], 3, backend="triton").dtype == torch.float32


def test_non_contiguous_misaligned_inputs_and_out(device):
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(70, 40, generator=gen).to(device)
    storage = torch.randn(301, generator=gen).to(device)
    scores = [base.t(), base[::3, 1::2], storage[1:], storage[3:3 + 160].view(8, 20)]  # offsets 1, 3
    assert not scores[0].is_contiguous() and scores[2].data_ptr() % 16
    big = torch.zeros(300, 300, dtype=torch.bool, device=device)
    out = [big[:70, :40].t(),                                              # non-contiguous
           torch.zeros(24, 40, dtype=torch.bool, device=device)[:, ::2],   # non-contiguous
           torch.zeros(301, dtype=torch.bool, device=device)[1:],          # misaligned
           torch.zeros(8, 20, dtype=torch.bool, device=device)]
    for k in (333, 2000):
        masks = topk(scores, k, out=out)
        assert all(m is o for m, o in zip(masks, out))
        np.testing.assert_array_equal(flat_bool(out), oracle_keep(flat64(scores), k))
    assert not big[70:].any() and not big[:, 40:].any()  # nothing written outside the views


def test_schedule_variants(device, small_blocks):
    """Every digit counted by tl.histogram (8-bit digits), and 1-bit digits (32 passes)."""
    gen = torch.Generator().manual_seed(4)
    scores = [torch.randint(-4, 5, (150,), generator=gen).float().to(device),
              torch.randn(99, generator=gen).to(device)]
    saved = (small_blocks.digit_bits, small_blocks.dense_later_digits, small_blocks.first_digit_bits,
             small_blocks.block)
    try:
        small_blocks.digit_bits, small_blocks.dense_later_digits = 8, True
        for k in (100, 249):
            check_topk(scores, k)
        small_blocks.first_digit_bits, small_blocks.digit_bits, small_blocks.dense_later_digits = 1, 1, False
        small_blocks.block = 4096
        check_topk(scores, 120)
    finally:
        (small_blocks.digit_bits, small_blocks.dense_later_digits, small_blocks.first_digit_bits,
         small_blocks.block) = saved


def test_offsets_are_64_bit(device):
    """A tensor addressed as if it started 2**31 elements before its data: every offset the
    kernels compute is above 2**31, so 32-bit index math would read and write the wrong place."""
    from sparseforce.ops.triton import selection
    from sparseforce.ops.triton.layout import COL_GBLOCK, COL_NUMEL, COL_OUT, COL_PID0, COL_X
    gen = torch.Generator().manual_seed(5)
    x = torch.randint(0, 5, (3000,), generator=gen).float().to(device)  # ties: exercises tie ranks
    out = torch.empty(3000, dtype=torch.bool, device=device)
    shift = 2 ** 31
    for k in (1, 1234):
        sel = selection._Selection([x], None, None, k, 32, [out.view(torch.uint8)])
        table = sel.launches[0].table
        blocks_before = shift // sel.block
        table[COL_X.value] -= shift * 4
        table[COL_OUT.value] -= shift
        table[COL_NUMEL.value] += shift
        table[COL_PID0.value] -= blocks_before
        table[COL_GBLOCK.value] -= blocks_before
        sel.find_kth_key()
        sel.write_masks()
        np.testing.assert_array_equal(out.cpu().numpy(), oracle_keep(x.cpu().numpy(), k))


# ------------------------------------------------------------------------------ saliency

def test_force_and_iter_snip_small_blocks(device, small_blocks):
    gen = torch.Generator().manual_seed(6)
    shapes = [(9, 13), (1,), (200,), (3, 5, 7)]
    w = [torch.randn(s, generator=gen).to(device) for s in shapes]
    g = [torch.randint(-2, 3, s, generator=gen).float().to(device) for s in shapes]  # many zeros
    prev = [(torch.rand(s, generator=gen) < 0.5).to(device) for s in shapes]
    s64 = np.abs(flat64(w) * flat64(g))
    n, alive = s64.size, int(flat_bool(prev).sum())
    for k in (0, n // 2, n):
        got = ops.saliency_topk_masks(w, g, k, prev_masks=prev, resurrect=True, backend="triton")
        np.testing.assert_array_equal(flat_bool(got), oracle_keep(s64, k))
    for k in (1, alive // 2):
        got = ops.saliency_topk_masks(w, g, k, prev_masks=prev, resurrect=False, backend="triton")
        np.testing.assert_array_equal(flat_bool(got), oracle_keep(s64, k, flat_bool(prev)))
    assert flat_bool(ops.saliency_topk_masks(w, g, alive, prev_masks=prev, resurrect=False,
                                             backend="triton")).tolist() == flat_bool(prev).tolist()


def test_saliency_precision_is_per_tensor_pair(device):
    # An fp32 pair scores in fp32 even when another pair is fp64. (1 + 2**-12)**2 rounds to
    # 1 + 2**-11 in fp32, tying with the fp64 pair's exact 1 + 2**-11, which comes first and so
    # wins k=1. Scoring the fp32 pair in fp64 would keep it instead.
    a = 1 + 2.0 ** -12
    w = [torch.tensor([1 + 2.0 ** -11], dtype=torch.float64), torch.tensor([a], dtype=torch.float32)]
    g = [torch.tensor([1.0], dtype=torch.float64), torch.tensor([a], dtype=torch.float32)]
    w, g = [t.to(device) for t in w], [t.to(device) for t in g]
    for backend in ("reference", "triton"):
        masks = ops.saliency_topk_masks(w, g, 1, backend=backend)
        assert flat_bool(masks).tolist() == [True, False], backend
    # bf16 and fp16 weights with fp32 grads: exact products, one fp32 key space.
    gen = torch.Generator().manual_seed(7)
    w = [torch.randn(70, generator=gen).bfloat16().to(device), torch.randn(50, generator=gen).half().to(device)]
    g = [torch.randn(70, generator=gen).to(device), torch.randn(50, generator=gen).half().to(device)]
    for k in (1, 60, 120):
        np.testing.assert_array_equal(flat_bool(ops.saliency_topk_masks(w, g, k, backend="triton")),
                                      oracle_keep(np.abs(flat64(w) * flat64(g)), k))


# ------------------------------------------------------------------------------ NaN

def test_nan_raises_and_leaves_out_untouched(device):
    scores = [torch.ones(5, device=device), torch.tensor([1.0, 2.0], device=device),
              torch.tensor([float("nan"), 1.0], device=device).half()]
    out = [torch.ones(5, dtype=torch.bool, device=device),
           torch.zeros(2, 2, dtype=torch.bool, device=device)[:, 0],  # non-contiguous
           torch.ones(2, dtype=torch.bool, device=device)]
    before = [o.clone() for o in out]
    for k in (0, 3):
        with pytest.raises(ops.NaNScoreError) as info:
            topk(scores, k, out=out)
        assert info.value.index == 2 and "scores[2]" in str(info.value)
        assert all(torch.equal(o, b) for o, b in zip(out, before))


def test_saliency_nan_message_matches_reference(device):
    w = [torch.ones(3, device=device), torch.tensor([float("inf"), 1.0], device=device)]
    g = [torch.ones(3, device=device), torch.tensor([0.0, 1.0], device=device)]
    messages = []
    for backend in ("reference", "triton"):
        with pytest.raises(ops.NaNScoreError) as info:
            ops.saliency_topk_masks(w, g, 1, backend=backend)
        messages.append((info.value.index, str(info.value)))
    assert messages[0] == messages[1]


# ------------------------------------------------------------------------------ masked SGD

@pytest.mark.parametrize("hp", [dict(lr=0.1), dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2),
                                dict(lr=0.01, momentum=0.8, dampening=0.3, weight_decay=1e-3)],
                         ids=["plain", "nesterov-wd", "dampening-wd"])
def test_masked_sgd_matches_reference(device, small_blocks, hp):
    gen = torch.Generator().manual_seed(8)
    shapes = [(13, 11), (64,), (1,), (130,)]
    masks = [torch.rand(s, generator=gen) < 0.5 for s in shapes]
    masks[2] = None  # unmasked
    params = [torch.randn(s, generator=gen) for s in shapes]
    params[0] = params[0].t().contiguous().t()  # non-contiguous parameter, updated in place
    results = {}
    for backend in ("reference", "triton"):
        ps = [p.to(device).clone() for p in params]  # clone keeps the transposed layout
        ms = [None if m is None else m.to(device) for m in masks]
        bufs = [None, torch.zeros(64, device=device), None, torch.ones(130, device=device)]  # some given
        for step in range(4):
            gs = [torch.randn(s, generator=torch.Generator().manual_seed(100 + step)).to(device) for s in shapes]
            bufs = ops.masked_sgd_(ps, gs, bufs, ms, backend=backend, **hp)
        assert not ps[0].is_contiguous()
        results[backend] = (ps, bufs)
    for i, (got, want) in enumerate(zip(*[results[b][0] for b in ("triton", "reference")])):
        torch.testing.assert_close(got, want, rtol=2e-6, atol=2e-6)
        if masks[i] is not None:
            assert (got[~masks[i].to(device)] == 0).all()
            assert not torch.signbit(got[~masks[i].to(device)]).any()  # +0, not -0
    if hp.get("momentum"):
        for got, want in zip(results["triton"][1], results["reference"][1]):
            torch.testing.assert_close(got, want, rtol=2e-6, atol=2e-6)
    else:
        assert results["triton"][1][0] is None and results["triton"][1][1].sum() == 0  # untouched


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_masked_sgd_other_dtypes(device, dtype):
    gen = torch.Generator().manual_seed(9)
    shapes = [(70,), (5, 9)]
    masks = [(torch.rand(s, generator=gen) < 0.5).to(device) for s in shapes]
    params = [torch.randn(s, generator=gen).to(dtype).to(device) for s in shapes]
    grads = [torch.randn(s, generator=gen).to(dtype).to(device) for s in shapes]
    hp = dict(lr=0.1, momentum=0.9, weight_decay=1e-2)
    got_p = [p.clone() for p in params]
    want_p = [p.clone() for p in params]
    got_b = ops.masked_sgd_(got_p, grads, None, masks, backend="triton", **hp)
    want_b = ops.masked_sgd_(want_p, grads, None, masks, backend="reference", **hp)
    # Triton computes in fp32 (fp64) and rounds once; the reference rounds after every op.
    tol = dict(rtol=1e-15, atol=1e-15) if dtype == torch.float64 else dict(rtol=1.6e-2, atol=1e-2)
    for a, b in zip(got_p + got_b, want_p + want_b):
        assert a.dtype == dtype
        torch.testing.assert_close(a, b, **tol)


# ------------------------------------------------------------------------------ half-precision subnormals
# The interpreter's bf16 -> fp32 cast flushes subnormals to zero, and its fp32 -> bf16 cast
# truncates; the kernels convert bf16 by its bits instead, which is exact on the GPU too.

def _subnormals(dtype, n, gen):
    """``n`` random subnormals of ``dtype`` (both signs, every mantissa width)."""
    mant = 0x7F if dtype == torch.bfloat16 else 0x3FF
    bits = torch.randint(1, mant + 1, (n,), generator=gen)
    bits = torch.where(torch.rand(n, generator=gen) < 0.5, bits, bits | 0x8000)
    return bits.to(torch.int32).to(torch.int16).view(dtype)


def test_bf16_conversions_are_exact(device):
    """floats.widen over every bf16 bit pattern, floats.narrow over random and edge fp32 bits,
    against torch's conversions (NaN only as NaN: its payload is not specified)."""
    from triton_floats import convert

    every = torch.arange(-2 ** 15, 2 ** 15, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).to(device)
    torch.testing.assert_close(convert(every, torch.float32), every.float(), rtol=0, atol=0, equal_nan=True)
    gen = torch.Generator().manual_seed(14)
    bits = torch.randint(-2 ** 31, 2 ** 31, (50000,), generator=gen, dtype=torch.int64).to(torch.int32)
    ties = (bits & ~0xFFFF) | 0x8000  # exactly half way: to even
    edge = torch.tensor([0x7F7FFFFF, 0x7F7F8000, 0x007FFFFF, 0x00008000, 0x00018000, 0x80000000, 0x7F800000],
                        dtype=torch.int64).to(torch.int32)
    f = torch.cat([bits, ties, edge, -edge]).view(torch.float32).to(device)
    got, want = convert(f, torch.bfloat16), f.bfloat16()
    assert torch.equal(got.isnan(), want.isnan())
    assert torch.equal(got[~got.isnan()].view(torch.int16), want[~want.isnan()].view(torch.int16))


def test_bf16_subnormal_ranks_above_zero_in_a_wider_key(device):
    scores = [torch.zeros(3, dtype=torch.float64, device=device),
              torch.tensor([1], dtype=torch.int16).view(torch.bfloat16).to(device)]
    got = ops.kth_largest(scores, 1, backend="triton")
    assert got.item() == 2.0 ** -133 == ops.kth_largest(scores, 1, backend="reference").item()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_subnormals_rank_exactly_in_every_key_width(device, small_blocks, dtype):
    gen = torch.Generator().manual_seed(11)
    sub = _subnormals(dtype, 150, gen)
    edge = torch.tensor([0.0, -0.0, 1.0, -1.0], dtype=dtype)
    smallest_normal = torch.tensor([0x0080 if dtype == torch.bfloat16 else 0x0400], dtype=torch.int16).view(dtype)
    half = torch.cat([sub, edge, smallest_normal, -smallest_normal])
    other = torch.float16 if dtype == torch.bfloat16 else torch.bfloat16
    # alone (16-bit keys), next to fp32 or the other half type (32-bit), next to fp64 (64-bit)
    for extra in ([], [torch.zeros(5)], [torch.zeros(5, dtype=other)], [torch.zeros(5, dtype=torch.float64)]):
        scores = [half.to(device)] + [e.to(device) for e in extra]
        n = sum(s.numel() for s in scores)
        for k in (1, 40, 75, 76, 80, n - 1):
            check_topk(scores, k)
            assert torch.equal(ops.kth_largest(scores, k, backend="triton"),
                               ops.kth_largest(scores, k, backend="reference"))


def test_bf16_saliency_with_subnormals_and_inf(device, small_blocks):
    gen = torch.Generator().manual_seed(12)
    n = 200
    w = _subnormals(torch.bfloat16, n, gen)
    # products from below fp32's range (flushed by fp32 itself) up to normal numbers
    g = (torch.randn(n, generator=gen) * 2.0 ** torch.randint(0, 120, (n,), generator=gen).float()).bfloat16()
    g[:7] = float("inf")
    g[7:10] = -float("inf")
    w, g = [w[:130].to(device), w[130:].to(device)], [g[:130].to(device), g[130:].to(device)]
    for k in (1, 10, 11, 100, n):
        for f64_grads in (False, True):
            gs = [t.double() for t in g] if f64_grads else g
            want = ops.saliency_topk_masks(w, gs, k, backend="reference")
            np.testing.assert_array_equal(flat_bool(ops.saliency_topk_masks(w, gs, k, backend="triton")),
                                          flat_bool(want))
    zero_times_inf = [torch.tensor([0.0, 1.0], dtype=torch.bfloat16, device=device)]
    with pytest.raises(ops.NaNScoreError):
        ops.saliency_topk_masks(zero_times_inf, [torch.full((2,), float("inf"), dtype=torch.bfloat16,
                                                            device=device)], 1, backend="triton")


def test_bf16_masked_sgd_is_exact_where_the_step_is(device, small_blocks):
    """lr a power of two: the step p - lr*g is one rounding in torch's bf16 add and in the fused
    fp32 kernel alike, so the two agree to the bit, subnormals and round-to-nearest-even included."""
    gen = torch.Generator().manual_seed(13)
    n = 300
    p = torch.cat([_subnormals(torch.bfloat16, 100, gen), torch.randn(200, generator=gen).bfloat16()])
    g = torch.cat([_subnormals(torch.bfloat16, 100, gen),
                   (torch.randn(200, generator=gen) * 2.0 ** -5).bfloat16()])  # rounding on every add
    mask = torch.rand(n, generator=gen) < 0.8
    for lr in (1.0, 0.5):
        got, want = p.clone().to(device), p.clone().to(device)
        ops.masked_sgd_([got], [g.to(device)], None, [mask.to(device)], lr=lr, backend="triton")
        ops.masked_sgd_([want], [g.to(device)], None, [mask.to(device)], lr=lr, backend="reference")
        assert torch.equal(got.view(torch.int16), want.view(torch.int16))
        assert got[:100][mask[:100].to(device)].ne(0).any()  # subnormal results survived


# ------------------------------------------------------------------------------ torch.library

def test_custom_ops_trace_under_torch_compile(device):
    import sparseforce.ops.triton.selection  # noqa: F401  (register the kernels of torch.ops.sparseforce_triton)
    import sparseforce.ops.triton.sgd  # noqa: F401
    gen = torch.Generator().manual_seed(10)
    scores = [torch.randn(50, generator=gen).to(device), torch.randn(4, 7, generator=gen).to(device)]
    params = [torch.randn(30, generator=gen).to(device)]
    grads = [torch.randn(30, generator=gen).to(device)]

    def step(scores, params, grads, bufs):
        out = [torch.empty_like(s, dtype=torch.bool) for s in scores]
        nan = torch.ops.sparseforce_triton.topk_masks(scores, 20, out)
        value, _ = torch.ops.sparseforce_triton.kth_largest(scores, 20)
        counts, _ = torch.ops.sparseforce_triton.radix_histogram(scores, [], [], torch.float32, 16, 0)
        torch.ops.sparseforce_triton.masked_sgd_(params, grads, bufs, [out[0][:30]], 0.1, 0.9, 0.0, 0.0, False,
                                                 [False])
        return out, nan, value, counts

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    p_eager, p_comp = [p.clone() for p in params], [p.clone() for p in params]
    b_eager, b_comp = [torch.ones(30, device=device)], [torch.ones(30, device=device)]
    want = step(scores, p_eager, grads, b_eager)
    got = compiled(scores, p_comp, grads, b_comp)
    assert all(torch.equal(a, b) for a, b in zip(got[0], want[0]))
    assert got[2].item() == want[2].item() and int(got[1]) == -1  # no NaN
    assert torch.equal(got[3], want[3]) and int(got[3].sum()) == 78
    assert torch.equal(p_comp[0], p_eager[0]) and torch.equal(b_comp[0], b_eager[0])
