"""The CUDA emulator itself (tests/support/cuda_emu): its intrinsics, its schedules, the misuse it reports
and its fp16/bf16 conversions, checked against numpy and torch. The kernel tests that run
csrc/cuda under it (test_cuda_emulated.py) are only as good as this."""
import contextlib
import ctypes
import re

import numpy as np
import pytest
import torch

from cuda_emu.emu import SCHEDULES, Schedule, ptr

SCHEDULE_NAMES = list(SCHEDULES)


@pytest.mark.parametrize("schedule", SCHEDULE_NAMES)
def test_block_scan_through_shuffles_and_shared_memory(emulator, schedule, rng):
    emulator.configure(SCHEDULES[schedule], seed=int(torch.randint(1 << 30, (1,), generator=rng)))
    blocks, threads = 5, 256
    x = torch.randint(-5, 6, (blocks * threads,), generator=rng, dtype=torch.int32).numpy()
    out = np.full_like(x, -12345)
    assert emulator.lib.sfemu_test_scan(ptr(x), ptr(out), blocks, threads) == 0, emulator.diagnostic()
    expected = np.cumsum(x.reshape(blocks, threads), axis=1).reshape(-1)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("schedule", SCHEDULE_NAMES)
def test_warp_intrinsics(emulator, schedule, rng):
    emulator.configure(SCHEDULES[schedule], seed=7)
    threads = 96
    pred = (torch.rand(threads, generator=rng) < 0.5).int().numpy()
    pred[32:64] = 1  # one warp where __all_sync is true
    out = np.zeros((threads, 10), dtype=np.uint32)
    assert emulator.lib.sfemu_test_intrinsics(ptr(pred), ptr(out), threads) == 0, emulator.diagnostic()
    for t in range(threads):
        w = t // 32
        lanes = pred[32 * w:32 * w + 32]
        ballot = sum(int(p) << i for i, p in enumerate(lanes))
        lane = t % 32
        assert out[t, 0] == ballot
        assert out[t, 1] == int(lanes.any()) and out[t, 2] == int(lanes.all())
        assert out[t, 3] == (32 * w + 5) * 7                                  # __shfl_sync from lane 5
        assert out[t, 4] == (t + 4) * 3 if lane + 4 < 32 else out[t, 4] == t * 3  # __shfl_down_sync
        assert out[t, 5] == 32 * w + (lane ^ 9)                               # __shfl_xor_sync
        assert out[t, 6] == bin((int(pred[t]) * 0x01010101 + t) & 0xffffffff).count("1")
        assert out[t, 7] == (0 if t == 0 else (t & -t).bit_length())       # __ffs
        assert out[t, 8] == (32 if t == 0 else 32 - t.bit_length())         # __clz
        assert out[t, 9] == pred.sum()                                       # __syncthreads_count


@pytest.mark.parametrize("schedule", SCHEDULE_NAMES)
def test_last_block_done_protocol_in_many_orders(emulator, schedule):
    parts = np.arange(1, 24, dtype=np.uint64) ** 2
    for seed in range(12):
        emulator.configure(SCHEDULES[schedule], seed=seed)
        total = np.zeros(1, dtype=np.uint64)
        lasts = np.zeros(1, dtype=np.int32)
        assert emulator.lib.sfemu_test_last_block(ptr(parts), parts.size, ptr(total), ptr(lasts)) == 0, emulator.diagnostic()
        assert total[0] == parts.sum() and lasts[0] == 1


def test_schedules_really_interleave(emulator):
    # The random schedule switches far more often than the in-order one: preemption and block
    # interleaving happen.
    parts = np.ones(16, dtype=np.uint64)
    counts = {}
    for name in ("inorder", "random"):
        emulator.configure(SCHEDULES[name], seed=3)
        before = emulator.lib.sfemu_switches()
        total, lasts = np.zeros(1, dtype=np.uint64), np.zeros(1, dtype=np.int32)
        emulator.lib.sfemu_test_last_block(ptr(parts), 16, ptr(total), ptr(lasts))
        counts[name] = emulator.lib.sfemu_switches() - before
    assert counts["random"] > counts["inorder"]


def test_shared_memory_starts_as_garbage(emulator):
    emulator.configure(SCHEDULES["random"], seed=1)
    out = np.zeros(4, dtype=np.uint32)
    assert emulator.lib.sfemu_test_unwritten_shared(ptr(out), 4) == 0
    assert (out != 0).all(), "shared memory nobody wrote must not read as zero"


MISUSE = [
    (0, r"__syncthreads reached at different call sites .* selftest\.cu:\d+"),
    (1, r"barrier with exited threads"),
    (2, r"warp op with missing lanes"),
    (3, r"deadlock: .*63 threads wait at __syncthreads at selftest\.cu:\d+; 1 threads wait at a warp collective"),
    (4, r"invalid launch at selftest\.cu:\d+: block \(2048,1,1\) has 2048 threads"),
    (5, r"invalid launch .*65536 bytes of dynamic shared memory"),
    (6, r"invalid launch .*grid \(0,1,1\)"),
]


@pytest.mark.parametrize("which,pattern", MISUSE, ids=[str(m[0]) for m in MISUSE])
@pytest.mark.parametrize("schedule", ["inorder", "random"])
def test_misuse_is_reported_with_file_and_line(emulator, which, pattern, schedule):
    emulator.configure(SCHEDULES[schedule], seed=5)
    emulator.clear()
    scratch = np.zeros(4096, dtype=np.int32)
    rc = emulator.lib.sfemu_test_misuse(which, ptr(scratch))
    assert rc != 0
    assert re.search(pattern, emulator.diagnostic()), emulator.diagnostic()
    assert emulator.lib.sfemu_test_last_error() == 0, "cudaGetLastError clears the error"
    # A good launch afterwards works: a failed launch leaves nothing behind.
    emulator.clear()
    parts = np.ones(4, dtype=np.uint64)
    total, lasts = np.zeros(1, dtype=np.uint64), np.zeros(1, dtype=np.int32)
    assert emulator.lib.sfemu_test_last_block(ptr(parts), 4, ptr(total), ptr(lasts)) == 0
    assert total[0] == 4


def test_occupancy_query_can_fail(emulator):
    import ctypes
    n = ctypes.c_int(0)
    emulator.configure(Schedule("x", 0, 0, 1, 0, occupancy=3), seed=0)
    assert emulator.lib.sfemu_test_occupancy(ctypes.byref(n)) == 0 and n.value == 3
    emulator.configure(Schedule("x", 0, 0, 1, 0, occupancy=0), seed=0)
    assert emulator.lib.sfemu_test_occupancy(ctypes.byref(n)) != 0
    assert emulator.lib.sfemu_test_last_error() != 0, "a failed query leaves the runtime's error set, as CUDA does"
    assert emulator.lib.sfemu_test_last_error() == 0


# ---- fp16 / bf16 conversions against torch


def test_half_to_float_is_exact_for_every_half(emulator):
    bits = torch.arange(1 << 16, dtype=torch.int32).to(torch.int16)
    expected = bits.view(torch.float16).float()
    out = torch.empty(1 << 16, dtype=torch.float32)
    src = bits.to(torch.int16).contiguous()
    emulator.lib.sfemu_half_to_float_n(ptr(src), ptr(out), 1 << 16)
    nan = expected.isnan()
    assert torch.equal(out.isnan(), nan)
    assert torch.equal(out[~nan].view(torch.int32), expected[~nan].view(torch.int32))


def _rounding_probe_floats():
    # Every float whose 13 low bits (those fp16 drops) sit at a rounding boundary or next to one,
    # for every value of the upper 19 bits: covers each fp16 interval's ties, both neighbours of
    # each tie, overflow, and the subnormal range.
    upper = torch.arange(1 << 19, dtype=torch.int64) << 13
    lows = torch.tensor([0, 1, 0xFFF, 0x1000, 0x1001, 0x1FFF], dtype=torch.int64)
    bits = (upper[:, None] | lows[None, :]).reshape(-1)
    return bits.to(torch.int32).view(torch.float32)  # int64 -> int32 wraps to the same bits


def test_float_to_half_rounds_as_torch(emulator):
    f = _rounding_probe_floats()
    f = f[~f.isnan()].contiguous()
    out = torch.empty(f.numel(), dtype=torch.int16)
    emulator.lib.sfemu_float_to_half_n(ptr(f), ptr(out), f.numel())
    assert torch.equal(out, f.half().view(torch.int16))


def test_float_to_bfloat16_rounds_as_torch(emulator):
    upper = torch.arange(1 << 16, dtype=torch.int64) << 16
    lows = torch.tensor([0, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFF], dtype=torch.int64)
    f = (upper[:, None] | lows[None, :]).reshape(-1).to(torch.int32).view(torch.float32)
    f = f[~f.isnan()].contiguous()
    out = torch.empty(f.numel(), dtype=torch.int16)
    emulator.lib.sfemu_float_to_bf16_n(ptr(f), ptr(out), f.numel())
    assert torch.equal(out, f.bfloat16().view(torch.int16))


# ---- weak global memory across blocks


@contextlib.contextmanager
def device_array(emulator, n, dtype, guard=64):
    """A zeroed numpy array registered with the emulator as a device allocation between guard
    bytes (weak memory tracks only such allocations, as it does the workspace and outputs)."""
    nbytes = n * np.dtype(dtype).itemsize
    buf = np.zeros(nbytes + 2 * guard, dtype=np.uint8)
    base = buf.ctypes.data + guard
    emulator.lib.sfemu_guard_add(ctypes.c_void_p(base), nbytes, guard, b"the test's buffer")
    try:
        yield buf[guard:guard + nbytes].view(dtype), ctypes.c_void_p(base), buf
    finally:
        report = emulator.lib.sfemu_guard_remove(ctypes.c_void_p(base))
    assert report == b"", report


def _weak_parts(emulator, schedule, seed, fence, blocks=6):
    emulator.configure(schedule, seed=seed)
    emulator.clear()
    total = np.zeros(1, dtype=np.uint32)
    # The blocks' bytes share one 8-byte word.
    with device_array(emulator, blocks, np.uint32) as (parts, parts_p, _), \
            device_array(emulator, 8, np.uint8) as (word, word_p, _):
        assert emulator.lib.sfemu_test_weak_parts(parts_p, word_p, blocks, fence, ptr(total)) == 0, \
            emulator.diagnostic()
        # Whatever the last block saw, the kernel's end makes every store visible, byte by byte.
        np.testing.assert_array_equal(parts, np.arange(1, blocks + 1))
        np.testing.assert_array_equal(word[:blocks], 0x10 + np.arange(blocks))
    return int(total[0])


@pytest.mark.parametrize("schedule", ["inorder", "random", "weak"])
def test_fenced_handshake_sees_every_part(emulator, schedule):
    for seed in range(6):
        assert _weak_parts(emulator, SCHEDULES[schedule], seed, fence=1) == sum(range(1, 7))


def test_missing_fence_is_seen_only_under_weak_memory(emulator):
    full = sum(range(1, 7))
    for seed in range(6):
        # Sequentially consistent memory cannot tell the fence is missing ...
        assert _weak_parts(emulator, SCHEDULES["random"], seed, fence=0) == full
        # ... weak memory hides every other block's unfenced stores from the last block: it
        # sums its own part alone (the others read as the 0 they were before the kernel).
        got = _weak_parts(emulator, SCHEDULES["weak"], seed, fence=0)
        assert 1 <= got <= 6, got
        # Even one block at a time, in order: the stores are unpublished, not just not yet made.
        inorder_weak = Schedule("inorder_weak", order=0, block_order=0, resident=1, preempt=0, weak=True)
        assert _weak_parts(emulator, inorder_weak, seed, fence=0) == 6  # block 5 is last


def test_weak_memory_needs_the_instrumented_build(emulator):
    assert emulator.weak_supported, "the default build instruments the kernels' stores"


# ---- guard bytes around device allocations


@pytest.mark.parametrize("shift,pattern", [
    (1, r"bytes 0\.\.3 past the end of the test's buffer \(128 bytes\) were written"),
    (-1, r"bytes 1\.\.4 before the start of the test's buffer \(128 bytes\) were written"),
])
@pytest.mark.parametrize("schedule", ["inorder", "weak"])
def test_write_outside_an_allocation_is_reported(emulator, shift, pattern, schedule):
    emulator.configure(SCHEDULES[schedule], seed=2)
    emulator.clear()
    with device_array(emulator, 32, np.int32) as (_, base, _):
        assert emulator.lib.sfemu_test_shifted_write(base, 32, shift) != 0
        d = emulator.diagnostic()
        where = r" \[kernel launched at selftest\.cu:\d+"
        assert re.search(r"out-of-bounds write to device memory: " + pattern + where, d), d
    # (device_array checks the report restored the guards.) Inside the allocation: no report.
    emulator.clear()
    with device_array(emulator, 32, np.int32) as (a, base, _):
        assert emulator.lib.sfemu_test_shifted_write(base, 32, 0) == 0, emulator.diagnostic()
        assert (a == 7).all()


def test_guard_removal_reports_a_write_since_the_last_launch(emulator):
    buf = np.zeros(32 + 2 * 64, dtype=np.uint8)
    base = ctypes.c_void_p(buf.ctypes.data + 64)
    emulator.lib.sfemu_guard_add(base, 32, 64, b"the test's buffer")
    buf[64 + 32 + 2] ^= 0xFF  # written by the host, after any launch checked it
    report = emulator.lib.sfemu_guard_remove(base).decode()
    assert report == "bytes 2..2 past the end of the test's buffer (32 bytes) were written", report
