"""The dynamic-sparse-training cases of ``sparseforce bench`` at a tiny scale: every impl does the
same update, each case runs and prints its floor / its share of training (never a timing)."""
import sys
import types

import pytest
import torch

from sparseforce import bench, bench_dst, ops
from sparseforce._prunable import prunable_parameters
from sparseforce.bench_case import Unavailable
from sparseforce.models.resnet import ResNet

CPU = torch.device("cpu")
LAYERS = "resnet50/64"


def build():
    return ResNet((3, 4, 6, 3), width=1)  # ResNet50-CIFAR with every width / 64


def dst_default_cases():
    return [c for c in bench.default_cases(CPU, scale=64) if c.name.startswith("rigl-")]


OURS = dst_default_cases()[0].impls[2:]  # the op on every backend, then sf.dst.RigL on the first compiled one


def test_the_default_set_holds_both_cases_with_every_usable_backend():
    update, cost = dst_default_cases()
    assert update.name == f"rigl-update {LAYERS} ERK 90% drop=30%" and cost.name == f"rigl-cost {LAYERS} b=32 every=100"
    backends = [b for b in ops.available_backends(CPU, "drop_grow_masks") if b != "triton"]
    fast = next((b for b in backends if b != "reference"), "reference")
    assert update.impls == ["baseline", "sparsimony", *backends, f"sf.dst.RigL [{fast}]"]
    assert cost.impls == [bench_dst.TRAIN_STEP, fast, f"sf.dst.RigL [{fast}]"]
    n = sum(p.numel() for p in prunable_parameters(build()).values())
    assert update.params == cost.params == n and update.floor_bytes == 22 * n
    assert bench.dst_batch(torch.device("cuda")) == 128


def _one_update(impl):
    state = bench_dst.rigl_state(build, CPU)
    before = [m.clone() for m in state["masks"]]
    if impl == "baseline":
        bench_dst.port_rigl_update(*(state[k] for k in ("weights", "grads", "masks", "bufs", "drops")))
    else:
        bench_dst.our_update(impl, state)()
    return before, state


@pytest.mark.parametrize("impl", OURS)
def test_our_update_is_the_ports_update(impl):
    """Random floats, no ties: the ports' per-layer topk, our op and sf.dst.RigL keep, drop and grow
    the same weights, and zero the same weights and momentum."""
    before, want = _one_update("baseline")
    _, got = _one_update(impl)
    for key in ("masks", "weights", "bufs"):
        for a, b in zip(got[key], want[key]):
            assert torch.equal(a, b), key
    changed = 0
    for old, new, w, b, d in zip(before, got["masks"], got["weights"], got["bufs"], got["drops"]):
        assert int(new.sum()) == int(old.sum())  # as many grown as dropped, per layer
        assert not w[~new].any() and not b[~new].any()  # dropped: weight and momentum exactly 0
        assert not w[new & ~old].any() and not b[new & ~old].any()  # grown: start at 0
        assert int((old & ~new).sum()) <= d
        changed += int((old & ~new).sum())
    assert changed > 0.2 * sum(got["drops"])  # most of the dropped stay dropped: the update did something


def test_update_case_runs_small_with_its_floor_and_says_why_sparsimony_did_not(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "sparsimony", None)  # as in CI: not installed
    case = bench_dst.rigl_update_case(LAYERS, build, backends=OURS)
    rows = bench.run_case(case, CPU, 1e9, min_time=0.0)
    assert [r["impl"] for r in rows] == case.impls
    missing = rows[1]
    assert "median_s" not in missing and missing["unavailable"].startswith("sparsimony not importable")
    for r in rows[:1] + rows[2:]:
        assert r["median_s"] > 0 and r["times_floor"] > 0 and r["floor_s"] == case.floor_bytes / 1e9
        assert r["speedup_vs_baseline"] > 0
    cells = [[c.strip() for c in line.split("|")] for line in bench.format_table(rows).splitlines()]
    assert cells[3][1:3] == ["sparsimony", "unavailable"] and cells[3][3].startswith("sparsimony not importable (")
    assert bench.plot(rows, tmp_path / "plot.png", "tiny") and (tmp_path / "plot.png").stat().st_size > 1000


def _fake_sparsimony(monkeypatch) -> dict:
    """Empty modules where sparsimony's would be (a version without the names imported)."""
    fake = {}
    for name in ("sparsimony", "sparsimony.distributions", "sparsimony.distributions.base", "sparsimony.dst",
                 "sparsimony.dst.rigl", "sparsimony.schedulers", "sparsimony.schedulers.base"):
        fake[name] = types.ModuleType(name)
        monkeypatch.setitem(sys.modules, name, fake[name])
    return fake


def test_sparsimony_without_the_names_it_needs_is_unavailable(monkeypatch):
    _fake_sparsimony(monkeypatch)
    with pytest.raises(Unavailable, match=r"^sparsimony not importable \(cannot import name 'ERKDistribution'"):
        bench_dst.sparsimony_update(build, CPU)


def test_sparsimony_that_imports_but_fails_is_unavailable_with_the_reason(monkeypatch):
    fake = _fake_sparsimony(monkeypatch)

    def broken(*args, **kwargs):
        raise AttributeError("module 'torch.ao' has no attribute 'pruning'\nmore")
    fake["sparsimony.distributions.base"].ERKDistribution = broken
    fake["sparsimony.dst.rigl"].RigL = broken
    fake["sparsimony.schedulers.base"].ConstantScheduler = broken
    with pytest.raises(Unavailable, match=r"^sparsimony does not run here: AttributeError: module 'torch.ao' "
                                                 r"has no attribute 'pruning'$"):
        bench_dst.sparsimony_update(build, CPU)


def test_cost_case_runs_small_and_reports_the_updates_share_of_training():
    case = bench_dst.update_cost_case(LAYERS, build, lambda b, dev: bench._model_and_batch("resnet50", b, dev, 64), 2,
                                      backends=OURS)
    rows = bench.run_case(case, CPU, 1e9, min_time=0.0)
    assert [r["impl"] for r in rows] == case.impls and all(r["median_s"] > 0 for r in rows)
    assert all(r["speedup_vs_baseline"] is None and r["floor_s"] is None for r in rows)  # a ratio, not a race
    lines = bench_dst.format_update_cost(rows).splitlines()
    assert "update / 100 steps" in lines[0] and len(lines) == 2 + len(OURS)
    step = rows[0]["median_s"]
    for r, line in zip(rows[1:], lines[2:]):
        share = r["median_s"] / 100 / step
        cells = [c.strip() for c in line.split("|")]
        assert cells[1] == r["impl"] and cells[4:] == [f"{share:.3%}", "met" if share <= 0.01 else "MISSED"]
    assert bench_dst.format_update_cost([r for r in rows if r["impl"] != bench_dst.TRAIN_STEP]) == ""


def test_the_run_prints_the_cost_table_under_the_main_one(tmp_path):
    lines = []
    bench.run(device="cpu", out_dir=str(tmp_path), min_time=0.0, echo=lines.append, scale=64, only="rigl-cost")
    table = lines[-2]
    assert table.index("rigl-cost resnet50/64 b=32 every=100 | train-step") < table.index("RigL update vs training")


def test_masked_sgd_case_times_the_optimizer_too():
    case = bench.masked_sgd_case(LAYERS, backends=["reference"])
    assert case.impls == ["baseline", "reference", bench.MASKED_SGD] and case.floor_bytes == 21 * case.params
    rows = bench.run_case(case, CPU, 1e9, min_time=0.0)
    assert all(r["median_s"] > 0 and r["times_floor"] > 0 for r in rows)


def test_sparsimony_when_installed_is_timed_on_the_same_model():
    pytest.importorskip("sparsimony", reason="sparsimony is optional (not in CI): pip install --no-deps sparsimony")
    update = bench_dst.sparsimony_update(build, CPU)
    assert update() is True  # every step is an update step
    row = bench.run_case(bench_dst.rigl_update_case(LAYERS, build), CPU, 1e9, min_time=0.0)[1]
    assert row["impl"] == "sparsimony" and row["median_s"] > 0 and row["times_floor"] > 0
