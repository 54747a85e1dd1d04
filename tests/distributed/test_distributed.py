"""sparseforce.distributed and distributed pruning/training, on 2-4 local gloo processes.

The oracle for the sharded selection is the single-process op on every rank's tensors laid end
to end in rank order; each worker builds all ranks' inputs from one shared seed, so it can
compute that oracle itself and compare its own share.
"""
from __future__ import annotations

import copy
import os
import re

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

import sparseforce as sf
import sparseforce.distributed as sd
import sparseforce.ops as ops
from ranks import run_ranks, values

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch built without torch.distributed")

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def _fresh_seed() -> int:
    return int(np.random.SeedSequence().entropy % (2**31))


def _rank_inputs(seed: int, world: int, case: int):
    """Every rank's score lists for one case; awkward on purpose."""
    g = torch.Generator().manual_seed(seed * 1000 + case)
    kind = case % 6
    # Some cases in one narrow or wide dtype on every rank: 16-bit keys take one histogram pass, 64-bit four.
    uniform = {12: torch.float16, 13: torch.bfloat16, 14: torch.float64, 16: torch.float16}.get(case)
    out = []
    for r in range(world):
        if r == 2 and kind in (0, 3):  # a rank with no tensors at all
            out.append([])
            continue
        n_tensors = int(torch.randint(0, 4, (1,), generator=g))
        ts = []
        for _ in range(n_tensors):
            n = int(torch.randint(0, 300, (1,), generator=g))
            if kind in (0, 1):  # few distinct values: ties across ranks and tensors
                t = torch.randint(-3, 4, (n,), generator=g).float() * 0.5
            elif kind == 2:  # all equal: ranking by position only
                t = torch.full((n,), 1.25)
            else:
                t = torch.randn(n, generator=g) * 10 ** float(torch.randint(-3, 4, (1,), generator=g))
            if n and kind in (1, 4):
                t[torch.randint(0, n, (3,), generator=g)] = float("inf")
                t[torch.randint(0, n, (3,), generator=g)] = -float("inf")
                t[torch.randint(0, n, (3,), generator=g)] = -0.0
            dtype = DTYPES[int(torch.randint(0, 4, (1,), generator=g))] if kind >= 3 else torch.float32
            t = t.to(uniform or dtype)
            if kind == 5 and n >= 4:  # non-contiguous
                t = t.repeat(2)[::2]
            ts.append(t)
        out.append(ts)
    return out


def _split_for(rank, inputs, flat_result):
    off = sum(len(ts) for ts in inputs[:rank])
    return flat_result[off: off + len(inputs[rank])]


def _topk_worker(rank, world, seed, device="cpu"):
    failures = []
    for case in range(18):
        inputs = [[t.to(device) for t in ts] for ts in _rank_inputs(seed, world, case)]
        flat = [t for ts in inputs for t in ts]
        n = sum(t.numel() for t in flat)
        g = torch.Generator().manual_seed(seed + case)
        ks = sorted({0, n, min(1, n), int(torch.randint(0, n + 1, (1,), generator=g)), n // 2})
        for k in ks:
            for backend in ("auto", "reference"):
                got = sd.topk_masks(inputs[rank], k, backend=backend)
                want = _split_for(rank, inputs, ops.topk_masks(flat, k, backend="reference"))
                if len(got) != len(want) or not all(torch.equal(a, b) for a, b in zip(got, want)):
                    failures.append(("topk", case, k, backend))
            if k >= 1:
                v, w = sd.kth_largest(inputs[rank], k), ops.kth_largest(flat, k, backend="reference")
                if v.dtype != w.dtype or v.view(-1).to(torch.float64).item() != w.to(torch.float64).item() \
                        or torch.signbit(v) != torch.signbit(w):
                    failures.append(("kth", case, k, float(v), float(w)))
        # out= keeps the caller's tensors
        out = [torch.ones_like(t, dtype=torch.bool) for t in inputs[rank]]
        got = sd.topk_masks(inputs[rank], n // 3, out=out)
        if not all(a is b for a, b in zip(got, out)):
            failures.append(("out", case))
    return failures


def _saliency_worker(rank, world, seed, device="cpu"):
    failures = []
    for case in range(8):
        g = torch.Generator().manual_seed(seed * 7 + case)
        ranks = []
        for r in range(world):
            if r == 1 and case % 2 == 0:
                ranks.append(([], [], []))
                continue
            shapes = [(int(torch.randint(1, 9, (1,), generator=g)), 5), (7,), (0, 3)]
            w = [torch.randn(s, generator=g) for s in shapes]
            gr = [torch.randint(-2, 3, s, generator=g).float() for s in shapes]  # ties and zeros
            if case % 3 == 1:
                w[0] = w[0].to(torch.bfloat16)
            prev = [torch.rand(s, generator=g) < 0.6 for s in shapes]
            ranks.append(tuple([t.to(device) for t in ts] for ts in (w, gr, prev)))
        flat = [sum((list(x[i]) for x in ranks), []) for i in range(3)]
        n = sum(t.numel() for t in flat[0])
        alive = sum(int(m.sum()) for m in flat[2])
        for resurrect in (True, False):
            top = n if resurrect else alive
            for k in sorted({0, top, top // 3, min(1, top)}):
                got = sd.saliency_topk_masks(*ranks[rank][:2], k, prev_masks=ranks[rank][2], resurrect=resurrect)
                want = ops.saliency_topk_masks(flat[0], flat[1], k, prev_masks=flat[2], resurrect=resurrect,
                                               backend="reference")
                want = _split_for(rank, [x[0] for x in ranks], want)
                if not all(torch.equal(a, b) for a, b in zip(got, want)) or len(got) != len(want):
                    failures.append(("saliency", case, resurrect, k))
    return failures


# CUDA tensors too when there is a GPU: the ranks share it, and gloo moves the histograms via the CPU.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_topk_masks_matches_single_process_on_the_concatenation(device):
    seed = _fresh_seed()
    for r, failures in enumerate(values(run_ranks(_topk_worker, 4, seed, device))):
        assert failures == [], f"seed {seed}, rank {r}: {failures[:5]}"


@pytest.mark.parametrize("device", DEVICES)
def test_saliency_topk_masks_matches_single_process(device):
    seed = _fresh_seed()
    for r, failures in enumerate(values(run_ranks(_saliency_worker, 3, seed, device))):
        assert failures == [], f"seed {seed}, rank {r}: {failures[:5]}"


def _errors_worker(rank, world):
    outcomes = []

    def attempt(fn):
        try:
            fn()
            outcomes.append("ok")
        except Exception as e:  # noqa: BLE001
            outcomes.append((type(e).__name__, getattr(e, "index", "-"), str(e)))

    x = [torch.arange(10.0) + rank]
    nan = [torch.tensor([1.0, float("nan")]) if rank == 1 else torch.ones(2), torch.ones(3)]
    attempt(lambda: sd.topk_masks(nan, 2))                                     # NaN on rank 1
    attempt(lambda: sd.topk_masks(x, 3 + rank))                                # k differs
    attempt(lambda: sd.topk_masks(x, 10 * world + 1))                          # k > N over all ranks
    attempt(lambda: sd.topk_masks(x if rank else ["not a tensor"], 3))         # bad argument on rank 0
    attempt(lambda: sd.saliency_topk_masks(x, x, 12, prev_masks=[torch.arange(10) < 5], resurrect=False))
    attempt(lambda: sd.kth_largest(x, 0))
    attempt(lambda: sd.topk_masks(x, 5))                                       # the group still works
    return outcomes


def test_errors_are_raised_on_every_rank_and_leave_the_group_usable():
    r0, r1 = values(run_ranks(_errors_worker, 2))
    # NaN: the rank that has it names its tensor; the other rank gets index None
    assert r1[0][:2] == ("NaNScoreError", 0) and "rank 1 (this rank)" in r1[0][2]
    assert r0[0][:2] == ("NaNScoreError", None) and "rank 1" in r0[0][2]
    for r in (r0, r1):
        assert r[1][0] == "ValueError" and "k differs across ranks" in r[1][2]
        assert r[2][0] == "ValueError" and "k=21 is outside [0, 20]" in r[2][2]
        assert r[4][0] == "ValueError" and "prev_masks keep only 10" in r[4][2]
        assert r[5][0] == "ValueError" and "k=0 has no k-th largest" in r[5][2]
        assert r[6] == "ok"
    assert r0[3][0] == "TypeError" and "scores[0]" in r0[3][2]
    assert r1[3][0] == "DistributedError" and "rank(s) [0] rejected" in r1[3][2]


def _dying_worker(rank, world):
    x = [torch.randn(1000)]
    sd.topk_masks(x, 10)  # everyone is up
    if rank == world - 1:
        os._exit(7)
    sd.topk_masks(x, 10)


def test_a_rank_dying_ends_the_others_with_a_clear_error():
    results = run_ranks(_dying_worker, 3, deadline=120, pg_timeout=30)
    assert results[2] == ("exit", 7)
    for r in (0, 1):
        assert results[r][0] == "error", results[r]
        assert results[r][1] == "DistributedError", results[r][3]
        assert "another rank has probably exited" in results[r][2]


def _dying_force_worker(rank, world):
    def batches():  # rank 1's data loader dies at its third batch: mid-way through FORCE
        for i, b in enumerate(_batches(rank, 10)):
            if rank == 1 and i == 2:
                os._exit(9)
            yield b

    class Loader:
        def __iter__(self):
            return batches()

    sf.force(_small_model(0), Loader(), 0.9, iterations=5, group=dist.group.WORLD)


def test_a_rank_dying_mid_force_ends_the_others_with_a_clear_error():
    results = run_ranks(_dying_force_worker, 2, deadline=120, pg_timeout=30)
    assert results[1] == ("exit", 9)
    assert results[0][:2] == ("error", "DistributedError"), results[0]
    assert "all_reduce of the gradients failed on rank 0" in results[0][2]


# -- data-parallel and sharded FORCE -------------------------------------------------------------

def _small_model(seed=0, batchnorm=True):
    torch.manual_seed(seed)
    norm = nn.BatchNorm2d(6) if batchnorm else nn.Identity()
    return nn.Sequential(nn.Conv2d(1, 6, 3), norm, nn.ReLU(), nn.Flatten(),
                         nn.Linear(6 * 6 * 6, 13), nn.ReLU(), nn.Linear(13, 3))


def _batches(seed, n, size=8):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 1, 8, 8, generator=g), torch.randint(0, 3, (size,), generator=g)) for _ in range(n)]


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _masks_hashes(masks, group=None):
    fingerprint = [int(m.to(torch.int64).reshape(-1).mul(torch.arange(m.numel()) % 9973 + 1).sum()) for m in masks.values()]
    gathered = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, fingerprint, group=group)
    return gathered


def _ddp_force_worker(rank, world, seed):
    iters, per_rank = 4, 1
    data = {r: _batches(seed + r, iters * per_rank) for r in range(world)}
    out = {}
    for method in ("force", "iter_snip"):
        model = _small_model(seed)
        before = _state(model)
        masks = getattr(sf, method)(model, data[rank], 0.9, iterations=iters, group=dist.group.WORLD)
        out[method + "_untouched"] = all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
        out[method + "_hashes"] = _masks_hashes(masks)
        # One process on the union: step t takes rank 0's, rank 1's, ... t-th batches.
        union = [data[r][t] for t in range(iters) for r in range(world)]
        single = getattr(sf, method)(_small_model(seed), union, 0.9, iterations=iters, batches_per_iteration=world)
        out[method + "_diff"] = sum(int((masks[n] != single[n]).sum()) for n in masks)
        out[method + "_numel"] = masks.numel()
        out[method + "_kept"] = (masks.num_kept(), single.num_kept())
    # A DDP-wrapped model: same masks, named like the wrapped module's parameters.
    model = _small_model(seed)
    ddp = nn.parallel.DistributedDataParallel(model)
    masks = sf.force(ddp, data[rank], 0.9, iterations=iters)
    plain = sf.force(_small_model(seed), data[rank], 0.9, iterations=iters, group=dist.group.WORLD)
    out["ddp_equal"] = masks == plain
    # Different initial weights on each rank: refused, on every rank.
    try:
        sf.force(_small_model(seed + rank), data[rank], 0.9, iterations=1, group=dist.group.WORLD)
        out["mismatch"] = "no error"
    except sd.DistributedError as e:
        out["mismatch"] = str(e)
    return out


@pytest.mark.parametrize("world", [2, 3])
def test_data_parallel_force_gives_identical_masks_on_every_rank(world):
    seed = _fresh_seed()
    results = values(run_ranks(_ddp_force_worker, world, seed))
    for res in results:
        for method in ("force", "iter_snip"):
            hashes = res[method + "_hashes"]
            assert all(h == hashes[0] for h in hashes), f"{method}: masks differ across ranks"
            assert res[method + "_untouched"]
            kept, kept_single = res[method + "_kept"]
            assert kept == kept_single
            if world == 2:
                # Two addends sum the same in any order: bit-identical to one process.
                assert res[method + "_diff"] == 0, (method, seed)
            else:
                # More ranks: the all_reduce's summation order may round differently from one
                # process summing in rank order, which can swap weights at the threshold.
                assert res[method + "_diff"] <= 0.01 * res[method + "_numel"], (method, seed, res[method + "_diff"])
        assert res["ddp_equal"]
        assert "differ across ranks" in res["mismatch"] and "DistributedDataParallel" in res["mismatch"]


def _fsdp_worker(rank, world, seed):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor
    mesh = init_device_mesh("cpu", (world,))
    iters = 4
    data = _batches(seed, iters)  # the same batches on every rank: one process sees the same mean
    out = {}
    for method in ("force", "iter_snip"):
        reference = getattr(sf, method)(_small_model(seed), data, 0.9, iterations=iters)
        model = _small_model(seed)
        for layer in model:
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        before = {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().clone()
                  for k, v in model.state_dict().items()}
        masks = getattr(sf, method)(model, data, 0.9, iterations=iters)
        after = {k: (v.full_tensor() if isinstance(v, DTensor) else v) for k, v in model.state_dict().items()}
        out[method + "_untouched"] = all(torch.equal(after[k], before[k]) for k in before) and \
            all(p.grad is None for p in model.parameters())
        out[method + "_dtensor"] = all(isinstance(m, DTensor) and m.placements == model.get_parameter(n).placements
                                      for n, m in masks.items())
        full = masks.full()
        out[method + "_equal"] = full == reference and full.num_kept() == reference.num_kept()
        # Counting a sharded mask needs every rank: refused, not silently this rank's shard.
        out[method + "_guarded"] = masks.is_sharded and not full.is_sharded and "sharded" in repr(masks)
        for refused in (masks.num_kept, masks.per_layer, lambda: masks.save("never.pt"),
                        lambda: sf.MaskedSGD(model.named_parameters(), masks)):
            try:
                refused()
                out[method + "_guarded"] = False
            except (ValueError, NotImplementedError) as e:
                out[method + "_guarded"] &= "masks.full()" in str(e)
        out[method + "_shards"] = [tuple(m.to_local().shape) for m in masks.values()]
        # Per-layer and N:M selection rank each layer whole, which a sharded layer is not on any rank.
        out[method + "_scopes_refused"] = []
        for kw in ({"scope": "layer"}, {"scope": "layer", "distribution": "erk"}, {"nm": (1, 1)}):
            try:
                getattr(sf, method)(model, data, None if "nm" in kw else 0.9, iterations=iters, **kw)
            except NotImplementedError as e:
                out[method + "_scopes_refused"].append("sharded with FSDP2" in str(e))
    return out


def test_fsdp2_sharded_force_matches_one_process():
    seed = _fresh_seed()
    results = values(run_ranks(_fsdp_worker, 2, seed))
    for res in results:
        for method in ("force", "iter_snip"):
            assert res[method + "_untouched"]
            assert res[method + "_dtensor"]
            assert res[method + "_equal"], (method, seed)
            assert res[method + "_guarded"]
            assert res[method + "_scopes_refused"] == [True, True, True]
    # Linear(13, 3) splits its 3 rows 2 + 1: the ranks really hold different shards.
    assert results[0]["force_shards"] != results[1]["force_shards"]


def _ddp_train_worker(rank, world, seed):
    # No BatchNorm: DDP normalises each rank's batch on its own, one process the stacked batch.
    model = _small_model(seed, batchnorm=False)
    data = _batches(seed + 100 + rank, 1)
    masks = sf.force(model, data, 0.8, iterations=2, group=dist.group.WORLD)
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = sf.MaskedSGD(ddp.module.named_parameters(), masks, lr=0.1, momentum=0.9, weight_decay=5e-4)
    with torch.no_grad():
        for n, p in ddp.module.named_parameters():
            if n in masks:
                p.mul_(masks[n])
    batches = _batches(seed + 200 + rank, 3, size=4)
    for x, y in batches:
        opt.zero_grad()
        nn.functional.cross_entropy(ddp(x), y).backward()
        opt.step()
    # One process, the ranks' batches stacked, torch SGD with the mask reapplied.
    single = _small_model(seed, batchnorm=False)
    every = [_batches(seed + 200 + r, 3, size=4) for r in range(world)]
    ref_opt = torch.optim.SGD(single.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    with torch.no_grad():
        for n, p in single.named_parameters():
            if n in masks:
                p.mul_(masks[n])
    for step in range(3):
        x = torch.cat([every[r][step][0] for r in range(world)])
        y = torch.cat([every[r][step][1] for r in range(world)])
        ref_opt.zero_grad()
        nn.functional.cross_entropy(single(x), y).backward()
        for n, p in single.named_parameters():
            if n in masks:
                p.grad.mul_(masks[n])
        ref_opt.step()
    params = dict(ddp.module.named_parameters())
    gathered = [None] * world
    dist.all_gather_object(gathered, {n: p.detach() for n, p in params.items()})
    return dict(
        same=all(torch.equal(g[n], params[n]) for g in gathered for n in params),
        zeros=all(bool((params[n][~m] == 0).all()) for n, m in masks.items()),
        max_diff=max(float((params[n] - p).detach().abs().max()) for n, p in single.named_parameters()),
    )


def test_masked_sgd_under_ddp_keeps_ranks_identical_and_pruned_weights_zero():
    seed = _fresh_seed()
    results = values(run_ranks(_ddp_train_worker, 2, seed))
    for res in results:
        assert res["same"]
        assert res["zeros"]
        # DDP averages the ranks' mean gradients; one process takes the mean over the stacked
        # batch: equal up to float32 rounding.
        assert res["max_diff"] < 1e-5, res["max_diff"]


def test_needs_an_initialized_process_group():
    with pytest.raises(RuntimeError, match="init_process_group"):
        sd.topk_masks([torch.ones(3)], 1)
    model = _small_model()
    with pytest.raises(RuntimeError, match="init_process_group"):
        sf.force(copy.deepcopy(model), _batches(0, 1), 0.5, iterations=1, group=object())


def _traffic_worker(rank, world):
    sent = []
    for n in (1_000, 200_000):
        x = [torch.randn(n, generator=torch.Generator().manual_seed(rank))]
        sd.traffic(reset=True)
        sd.topk_masks(x, n // 10)
        sent.append(sd.traffic())
    sd.traffic(reset=True)
    sd.topk_masks([torch.randn(500, dtype=torch.float16)], 7)
    sent.append(sd.traffic())
    return sent


def test_only_histograms_and_counts_cross_the_network():
    world = 2
    for small, large, half in values(run_ranks(_traffic_worker, world)):
        # meta (6 + 2 per rank counts), one 2**16-bin int64 histogram per 16 key bits (the first
        # with a NaN flag per rank) and the per-rank tie counts
        fp32 = 8 * ((6 + 2 * world) + 2 * 2**16 + world + world)
        assert small == large == {"calls": 4, "bytes": fp32}  # independent of the number of scores
        assert half == {"calls": 3, "bytes": 8 * ((6 + 2 * world) + 2**16 + world + world)}


def test_torchrun_ddp_command(tmp_path):
    """The README's CPU command: FORCE + masked DDP training on 2 gloo processes."""
    import json
    import subprocess
    import sys
    from pathlib import Path
    root = str(Path(__file__).resolve().parents[2])  # this checkout's sparseforce, whatever is installed
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([root] + ([os.environ["PYTHONPATH"]] if "PYTHONPATH" in os.environ else []))}
    if os.path.exists("/sys/class/net/lo"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "sparseforce",
           "ddp", "--device", "cpu", "--iterations", "3", "--epochs", "1", "--out", str(tmp_path), "--timeout", "60"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "masks identical on all 2 ranks" in proc.stdout
    assert re.search(r"all-reduced [\d,.]+ KiB in \d+ calls over 3 steps \([\d,.]+ KiB per step\)", proc.stdout), \
        proc.stdout
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["world_size"] == 2 and result["pruned_weights_zero"]
    assert result["kept"] == round(result["numel"] * 0.1)
    masks = sf.Masks.load(tmp_path / "masks.pt")
    assert masks.num_kept() == result["kept"]


def test_ddp_reports_whole_all_reduce_calls():
    # was: "... KiB per step in 1.2 calls": a count of calls averaged over the steps
    from sparseforce.ddp import traffic_summary
    text = traffic_summary({"calls": 12, "bytes": 10 * 2**10 * 3}, steps=10)
    assert text == "all-reduced 30.0 KiB in 12 calls over 10 steps (3.0 KiB per step)"
    assert traffic_summary({"calls": 1, "bytes": 2**10}, steps=1) == "all-reduced 1.0 KiB in 1 call over 1 step"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the NCCL command needs a GPU")
@pytest.mark.parametrize("sharded", [False, True], ids=["ddp", "fsdp2"])
def test_torchrun_ddp_command_on_gpus_with_nccl(tmp_path, sharded):
    """The README's GPU command: one rank per visible GPU, NCCL."""
    import json
    import subprocess
    import sys
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={torch.cuda.device_count()}", "-m", "sparseforce", "ddp", "--device", "cuda",
           "--iterations", "3", "--epochs", "1", "--out", str(tmp_path), "--timeout", "120"]
    proc = subprocess.run(cmd + (["--sharded"] if sharded else []), capture_output=True, text=True,
                          timeout=400, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["backend"] == "nccl" and result["pruned_weights_zero"]
    assert result["kept"] == round(result["numel"] * 0.1)


def test_ddp_command_outside_torchrun_says_how_to_launch(capsys):
    from sparseforce.cli import main
    env = {k: os.environ.pop(k) for k in ("RANK", "WORLD_SIZE") if k in os.environ}
    try:
        assert main(["ddp", "--device", "cpu"]) == 2
    finally:
        os.environ.update(env)
    assert "torchrun" in capsys.readouterr().err


def _triton_histogram_worker(rank, world, seed):
    """backend="triton" on CPU ranks (the workers run the Triton interpreter): the histogram
    passes go through the Triton key_histogram kernel, the masks through Triton's topk."""
    from sparseforce.ops import _registry
    if "triton" not in ops.available_backends("cpu", "radix_histogram"):
        return ["triton unavailable: " + str(ops.unavailable_reason("triton", "radix_histogram",
                                                                    torch.device("cpu")))]
    kernels = _registry._KERNELS["triton"]
    histogram, calls = kernels["radix_histogram"], []
    kernels["radix_histogram"] = lambda *args: calls.append(1) or histogram(*args)
    failures = []
    for case in (3, 4, 12, 14):  # mixed dtypes, with ±inf and -0, all fp16, all fp64 (four passes)
        inputs = _rank_inputs(seed, world, case)
        flat = [t for ts in inputs for t in ts]
        n = sum(t.numel() for t in flat)
        for k in sorted({0, min(1, n), n // 3, n}):
            got = sd.topk_masks(inputs[rank], k, backend="triton")
            want = _split_for(rank, inputs, ops.topk_masks(flat, k, backend="reference"))
            if not all(torch.equal(a, b) for a, b in zip(got, want)):
                failures.append(("topk", case, k))
    g = torch.Generator().manual_seed(seed)
    w = [[torch.randn(40, generator=g).bfloat16(), torch.randn(3, 7, generator=g)] for _ in range(world)]
    gr = [[torch.randint(-2, 3, t.shape, generator=g).float() for t in ws] for ws in w]
    flat_w, flat_g = sum(w, []), sum(gr, [])
    for k in (1, 50, 100):
        got = sd.saliency_topk_masks(w[rank], gr[rank], k, backend="triton")
        want = _split_for(rank, w, ops.saliency_topk_masks(flat_w, flat_g, k, backend="reference"))
        if not all(torch.equal(a, b) for a, b in zip(got, want)):
            failures.append(("saliency", k))
    return failures + ([] if calls else ["the Triton histogram kernel never ran"])


def test_triton_backend_runs_the_histogram_passes_too():
    seed = _fresh_seed()
    for r, failures in enumerate(values(run_ranks(_triton_histogram_worker, 2, seed))):
        assert failures == [], f"seed {seed}, rank {r}: {failures[:5]}"


def _tanh_model(seed):
    # float64 and no ReLU: no saliency is exactly 0, so no ties, and the inverted (bottom-k)
    # selection is the same whatever order the ranks' shards are laid end to end in (sharded
    # ties go to the lowest rank first). Only 4.weight is pruned: a collapsed layer would zero
    # the gradients of every weight before it, and those would tie.
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 6, 3), nn.BatchNorm2d(6), nn.Tanh(), nn.Flatten(),
                         nn.Linear(6 * 6 * 6, 13), nn.Tanh(), nn.Linear(13, 3)).double()


def _fsdp_inverted_worker(rank, world, seed):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    mesh = init_device_mesh("cpu", (world,))
    data = [(x.double(), y) for x, y in _batches(seed, 3)]
    out = {}
    for method in ("force", "iter_snip"):
        kw = dict(iterations=3, invert=True, train_mode=False, k_rounding="floor", prunable=["4.weight"])
        reference = getattr(sf, method)(_tanh_model(seed), data, 0.9, **kw)
        model = _tanh_model(seed)
        for layer in model:
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        model.train()
        full = getattr(sf, method)(model, data, 0.9, **kw).full()
        out[method] = full == reference and all(m.training for m in model.modules())
    return out


def test_fsdp2_sharded_inverted_eval_mode_pruning_matches_one_process():
    seed = _fresh_seed()
    for res in values(run_ranks(_fsdp_inverted_worker, 2, seed)):
        assert res == {"force": True, "iter_snip": True}, seed
