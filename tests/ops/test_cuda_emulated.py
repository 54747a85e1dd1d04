"""The CUDA kernels and their host orchestration (csrc/cuda), run on the CPU under the emulator
(tests/support/cuda_emu), on every path of the device-side radix select.

The shared kernel tests (test_ops.py, test_ops_properties.py, test_radix_histogram.py) already
run the emulated backends against the reference on random inputs of every awkward kind; this file
makes sure each path of the select is actually taken (the host reports the select's final mode),
with inputs built to reach it, under both scheduler settings and (``cuda_emu_weak``) over weak
global memory across blocks, where a missing __threadfence shows as stale reads.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sparseforce.ops as ops
from conftest import EMULATED_CUDA, EMULATED_CUDA_PATHS
from cuda_emu import register
from sparseforce.ops import NaNScoreError

pytestmark = pytest.mark.skipif(not EMULATED_CUDA, reason="the CUDA emulator is not built here (no C++ compiler, or SPARSEFORCE_TEST_NO_EMU=1)")

ROOT = Path(__file__).resolve().parents[2]

# csrc/cuda/launch.h: SelectMode, the final ones
CAND_DONE, KNOWN, ALL, NONE, ERR_NAN, ERR_K = 3, 4, 5, 6, 7, 8


EMU = EMULATED_CUDA_PATHS


def same_masks(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def check_topk(backend, scores, k, mode=None):
    got = ops.topk_masks(scores, k, backend=backend)
    if mode is not None:
        assert register.last_mode() == mode
    want = ops.topk_masks(scores, k, backend="reference")
    assert same_masks(got, want)
    assert sum(int(m.sum()) for m in got) == k
    if k >= 1:
        v = ops.kth_largest(scores, k, backend=backend)
        r = ops.kth_largest(scores, k, backend="reference")
        assert v.dtype == r.dtype and v.view(-1).view(torch.uint8).tolist() == r.view(-1).view(torch.uint8).tolist()


@pytest.fixture
def cap(monkeypatch):
    """Sets the candidate cap the host orchestration reads per call."""
    def set_cap(value):
        monkeypatch.setenv("SPARSEFORCE_CUDA_CANDIDATE_CAP", str(value))
    return set_cap


@pytest.mark.parametrize("backend", EMU)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_every_key_width_fast_path(backend, dtype, rng):
    # Distinct-ish random scores: the k-th key's first-digit bin is small, so candidates resolve it.
    scores = [torch.randn(5000, generator=rng).to(dtype), torch.randn(37, 11, generator=rng).to(dtype)]
    check_topk(backend, scores, 1234, CAND_DONE)


@pytest.mark.parametrize("backend", EMU)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_every_key_width_full_data_path(backend, dtype, cap, rng):
    # cap 0: no candidate buffer, radix over the full data to the whole key; ties by tile quotas.
    cap(0)
    scores = [torch.randint(-4, 5, (9000,), generator=rng).to(dtype), torch.randn(4100, generator=rng).to(dtype)]
    check_topk(backend, scores, 4321, KNOWN)


@pytest.mark.parametrize("backend", EMU)
def test_k_zero_and_all(backend, rng):
    scores = [torch.randn(3000, generator=rng), torch.randn(10, generator=rng).half()]
    check_topk(backend, scores, 0, NONE)
    check_topk(backend, scores, 3010, ALL)


@pytest.mark.parametrize("backend", EMU)
def test_nan_names_the_first_tensor(backend):
    scores = [torch.ones(5000), torch.tensor([1.0, float("nan")]), torch.tensor([float("nan")])]
    with pytest.raises(NaNScoreError) as e:
        ops.topk_masks(scores, 3, backend=backend)
    assert e.value.index == 1 and register.last_mode() == ERR_NAN


@pytest.mark.parametrize("backend", EMU)
def test_nan_index_with_many_tensors_per_block(backend):
    # 40 one-tile tensors over at most 8 blocks: each block scans several tensors, two of which
    # hold NaN, so the first must win inside a block as well as across blocks.
    scores = [torch.randn(10) for _ in range(40)]
    for i in (1, 2, 9, 17, 33):
        scores[i][3] = float("nan")
    with pytest.raises(NaNScoreError) as e:
        ops.topk_masks(scores, 5, backend=backend)
    assert e.value.index == 1
    w = [s.clone() for s in scores]
    with pytest.raises(NaNScoreError) as e:
        ops.saliency_topk_masks(w, [torch.ones(10)] * 40, 5, backend=backend)
    assert e.value.index == 1


@pytest.mark.parametrize("backend", EMU)
def test_iter_snip_k_above_survivors(backend):
    w, g = [torch.ones(6000)], [torch.ones(6000)]
    prev = [torch.zeros(6000, dtype=torch.bool)]
    prev[0][::3] = True
    with pytest.raises(ValueError, match="prev_masks keep only 2000"):
        ops.saliency_topk_masks(w, g, 2001, prev_masks=prev, resurrect=False, backend=backend)
    # The op front refuses that before the selection runs; the select's own guard, reached by
    # calling the kernel directly:
    with pytest.raises(ValueError, match="prev_masks keep only 2000"):
        register.install.kernels[backend]["saliency_topk_masks"](w, g, 2001, prev, [torch.empty(6000, dtype=torch.bool)])
    assert register.last_mode() == ERR_K


def _bin_heavy_scores(m, rest, rng):
    # m scores in one first-digit bin (1.0 + tiny steps share sign, exponent and top mantissa
    # bits) above `rest` scores well below it: the k-th key's bin holds exactly m elements when k
    # reaches into it.
    top = 1.0 + torch.arange(m, dtype=torch.float32) * 2.0 ** -20
    low = torch.rand(rest, generator=rng) * 0.25
    return [torch.cat([low[: rest // 2], top[torch.randperm(m, generator=rng)], low[rest // 2:]])]


@pytest.mark.parametrize("backend", EMU)
def test_candidate_buffer_one_short_exactly_full_and_overflowing(backend, cap, rng):
    m = 700
    scores = _bin_heavy_scores(m, 3000, rng)
    k = 350
    cap(m + 1)   # one short of full
    check_topk(backend, scores, k, CAND_DONE)
    cap(m)       # exactly full
    check_topk(backend, scores, k, CAND_DONE)
    cap(m - 1)   # the bin overflows the buffer by one: another full-data level narrows it first
    check_topk(backend, scores, k)
    cap(1)       # far too small: down to the whole key over the full data
    check_topk(backend, scores, k)


@pytest.mark.parametrize("backend", EMU)
@pytest.mark.parametrize("cap_value", [None, 0])
def test_position_tie_break(backend, cap, cap_value, rng):
    # Many equal scores straddle the k-th place: the lowest global positions win, found by a radix
    # select on positions among candidates (default cap) or by per-tile quotas (cap 0).
    if cap_value is not None:
        cap(cap_value)
    scores = [torch.zeros(3000), torch.full((5000,), 2.0), torch.zeros(70).half(), torch.full((4097,), 2.0)]
    scores[1][::7] = 3.0
    check_topk(backend, scores, 6000, KNOWN if cap_value == 0 else CAND_DONE)


@pytest.mark.parametrize("backend", EMU)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("resurrect", [True, False])
def test_saliency_both_widths(backend, dtype, resurrect, rng):
    w = [torch.randn(6000, generator=rng).to(dtype), torch.randn(50, 3, generator=rng).to(dtype)]
    g = [torch.randn(6000, generator=rng).to(dtype), torch.randn(50, 3, generator=rng).to(dtype)]
    w[0][:200] = 0  # zero saliencies tie at the bottom
    prev = [torch.rand(t.shape, generator=rng) < 0.6 for t in w]
    k = 1500
    got = ops.saliency_topk_masks(w, g, k, prev_masks=prev, resurrect=resurrect, backend=backend)
    want = ops.saliency_topk_masks(w, g, k, prev_masks=prev, resurrect=resurrect, backend="reference")
    assert same_masks(got, want)


@pytest.mark.parametrize("backend", EMU)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_masked_sgd_is_the_cpu_kernel_bit_for_bit(backend, dtype, rng):
    # csrc/cuda/masked_sgd.cu rounds every intermediate where torch's step stores it, exactly as
    # csrc/cpu/masked_sgd.cpp does, so the two agree bit for bit (the reference only to float32
    # rounding: torch may fuse a multiply-add). Pruned weights and buffers end exactly +0.
    p = [torch.randn(5000, generator=rng).to(dtype), torch.randn(30, 10, generator=rng).to(dtype)]
    g = [torch.randn(t.shape, generator=rng).to(dtype) for t in p]
    masks = [torch.rand(t.shape, generator=rng) < 0.3 for t in p]
    for momentum, nesterov, fresh in ((0.0, False, False), (0.9, False, True), (0.9, True, False)):
        bufs = None if fresh or momentum == 0 else [torch.randn(t.shape, generator=rng).to(dtype) for t in p]
        mine, cpu = [t.clone() for t in p], [t.clone() for t in p]
        mine_b = None if bufs is None else [b.clone() for b in bufs]
        cpu_b = None if bufs is None else [b.clone() for b in bufs]
        kw = dict(lr=0.1, momentum=momentum, weight_decay=5e-4, nesterov=nesterov)
        out_b = ops.masked_sgd_(mine, g, mine_b, masks, backend=backend, **kw)
        ref_b = ops.masked_sgd_(cpu, g, cpu_b, masks, backend="cpp", **kw)
        for a, b, m in zip(mine + (out_b if momentum else []), cpu + (ref_b if momentum else []), masks + masks):
            assert torch.equal(a.view(-1).view(torch.uint8), b.view(-1).view(torch.uint8))
            assert (a[~m] == 0).all() and not torch.signbit(a[~m].float()).any()


def test_failed_occupancy_query_is_not_reported_as_a_launch_failure():
    # The launchers cache the occupancy per kernel, so this needs a fresh process in which every
    # query fails: the fallback (one block per SM) must run and the call succeed.
    code = (
        "import sys; sys.path.insert(0, 'tests/support')\n"
        "import torch, sparseforce.ops as ops\n"
        "from cuda_emu import register; register.install()\n"
        "s = [torch.randn(20000), torch.randn(77)]\n"
        "for b in ('cuda_emu', 'cuda_emu_inorder'):\n"
        "    a = ops.topk_masks(s, 999, backend=b); r = ops.topk_masks(s, 999, backend='reference')\n"
        "    assert all(torch.equal(x, y) for x, y in zip(a, r))\n"
        "    p = [torch.randn(9000)]; q = [p[0].clone()]; g = [torch.randn(9000)]\n"
        "    ops.masked_sgd_(p, g, None, None, lr=0.5, backend=b)\n"
        "    ops.masked_sgd_(q, g, None, None, lr=0.5, backend='reference')\n"
        "    assert torch.equal(p[0], q[0])\n"
        "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, SFEMU_OCCUPANCY="0"), timeout=600)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-3000:]


@pytest.mark.skipif(os.environ.get("SFEMU_VARIANT") == "asan", reason="already the AddressSanitizer run")
def test_under_address_sanitizer():
    """This file's tests and the segmented and drop/grow kernels' again, with the library built with
    AddressSanitizer + UBSan."""
    from cuda_emu import build
    libasan = build.asan_runtime()
    if libasan is None:
        pytest.skip("this compiler has no libasan")
    env = dict(os.environ, SFEMU_VARIANT="asan", LD_PRELOAD=libasan,
               ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:detect_stack_use_after_return=0",
               UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__,
                        str(Path(__file__).with_name("test_cuda_emulated_segmented.py")),
                        str(Path(__file__).with_name("test_cuda_emulated_drop_grow.py")), "-k", "not occupancy"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=1500)
    tail = (r.stdout[-4000:] + r.stderr[-4000:])
    assert r.returncode == 0, tail
    assert " passed" in r.stdout and "ERROR: AddressSanitizer" not in r.stderr and "runtime error" not in r.stderr, tail
