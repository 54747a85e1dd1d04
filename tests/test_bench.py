"""The benchmark runner's plumbing (not its timings: tests never assert a wall-clock time)."""
import json
import time

import numpy as np
import pytest
import torch

from conftest import flat_bool
from sparseforce import bench, ops


def test_layer_sets_have_the_papers_sizes():
    assert sum(np.prod(s) for s in bench.layer_set("resnet50")) == 23_467_712
    assert sum(np.prod(s) for s in bench.layer_set("vgg19")) == 20_024_000
    assert abs(sum(np.prod(s) for s in bench.layer_set("transformer-1B")) - 1e9) < 0.05e9
    assert abs(sum(np.prod(s) for s in bench.layer_set("transformer-4B")) - 4e9) < 0.2e9


def test_baseline_is_todays_practice_and_agrees_without_ties():
    g = torch.Generator().manual_seed(0)
    w = [torch.randn(30, 7, generator=g), torch.randn(100, generator=g)]
    grads = [torch.randn(30, 7, generator=g), torch.randn(100, generator=g)]
    ours = ops.saliency_topk_masks(w, grads, 31)
    np.testing.assert_array_equal(flat_bool(bench.baseline_select(w, grads, 31)), flat_bool(ours))
    # ... but with ties the baseline's `>=` keeps them all: the reason exact-k exists.
    zeros = [torch.zeros(10)]
    assert int(bench.baseline_select(zeros, zeros, 3)[0].sum()) == 10


def test_runner_writes_table_json_and_plot(tmp_path):
    cases = [bench.select_case("resnet50/64", 0.05, backends=ops.available_backends("cpu")),
             bench.masked_sgd_case("resnet50/64", backends=["reference"])]
    lines = []
    result = bench.run(device="cpu", out_dir=str(tmp_path), min_time=0.0, echo=lines.append, cases=cases)
    rows = result["rows"]
    assert {(r["case"], r["impl"]) for r in rows} >= {(cases[0].name, "baseline"), (cases[0].name, "reference")}
    for r in rows:
        assert r["median_s"] > 0 and r["speedup_vs_baseline"] > 0 and r["times_floor"] > 0
    assert "vs baseline" in lines[-2] and "GB/s" in lines[0]
    saved = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert saved["device_type"] == "cpu" and saved["torch"] == torch.__version__ and len(saved["rows"]) == len(rows)
    assert next(tmp_path.glob("*.png")).stat().st_size > 1000


def test_force_breakdown_splits_each_run_into_phases():
    from sparseforce.pruning import force
    from sparseforce.pruning.progressive import profile
    backends = tuple(ops.available_backends("cpu"))
    rows = bench.force_breakdown(torch.device("cpu"), model_name="digits_cnn", batch=4, iterations=3,
                                 backends=backends, echo=lambda *a: None)
    assert [r["variant"] for r in rows] == [*backends, f"{backends[0]} + channels_last"]
    for r in rows:
        assert r["total_s"] > 0
        assert abs(r["gradients_share"] + r["selection_share"] + r["other_share"] - 1) < 1e-9
    # Every backend is bit-identical to the reference, so the plain runs agree.
    assert all(r["same_masks_as_plain"] for r in rows[:len(backends)])
    assert "selection" in bench.format_breakdown(rows)
    # The profile counts the steps it saw, and only inside its block.
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    data = [(torch.randn(2, 4), torch.tensor([0, 2]))]
    with profile() as phases:
        force(model, data, 0.5, iterations=4)
    force(model, data, 0.5, iterations=2)
    assert phases["steps"] == 4 and phases["gradients"] > 0 and phases["selection"] > 0


def test_every_default_case_times_equivalent_work():
    """Each impl of a case must compute what the baseline computes, or the ratio means nothing."""
    cpu = torch.device("cpu")
    names = [c.name for c in bench.default_cases(cpu, scale=64)]
    for wanted in ("force-select resnet50/64", "force-select vgg19/64", "itersnip-select", "topk resnet50/64",
                   "masked-sgd", "force-run resnet50 b=8 T=1", "force-run resnet50 b=8 T=3", "train-step"):
        assert any(n.startswith(wanted) for n in names), (wanted, names)

    topk = bench.topk_case("resnet50/64", 0.05, backends=ops.available_backends("cpu"))
    want = flat_bool(topk.make("baseline", cpu)())  # random floats: no ties, so `>=` keeps exactly k
    for impl in topk.impls[1:]:
        np.testing.assert_array_equal(flat_bool(topk.make(impl, cpu)()), want)

    step = bench.train_step_case("digits_cnn", 4, backends=["reference"])
    params = {}
    for impl in step.impls:
        fn = step.make(impl, cpu)
        for _ in range(3):
            fn()
        params[impl] = {n: p.detach().clone() for n, p in fn.model.named_parameters()}
    for n, p in params["baseline"].items():
        torch.testing.assert_close(params["reference"][n], p, rtol=1e-5, atol=1e-6)


def _sleep_case(seconds, impls=("baseline", "reference")):
    return bench.Case(f"sleep {seconds}", "none", torch.float32, 1, 1.0, list(impls),
                      lambda impl, device: (lambda: time.sleep(seconds)))


def test_max_case_time_cuts_repetitions_not_impls():
    case = _sleep_case(0.02)
    start = time.perf_counter()
    rows = bench.run_case(case, torch.device("cpu"), 1e9, min_time=30.0, max_case_s=0.2)
    assert time.perf_counter() - start < 5  # min_time alone would take 60 s
    assert [r["impl"] for r in rows] == ["baseline", "reference"]
    for r in rows:
        # 0.1 s each: the warm-up, then runs until the share is spent (fewer than min_reps=3 allows).
        assert r["time_capped"] and 1 <= r["reps"] <= 6 and r["median_s"] >= 0.02
    uncapped = bench.run_case(case, torch.device("cpu"), 1e9, min_time=0.0)
    assert all(not r["time_capped"] and r["reps"] == 3 for r in uncapped)
    # Past its deadline a measurement still times one run.
    one = bench.measure(lambda: None, torch.device("cpu"), min_time=10.0, deadline=time.perf_counter() - 1)
    assert one["reps"] == 1 and one["time_capped"]


def test_results_are_written_after_every_case(tmp_path):
    seen = []

    def echo(line):
        if line.startswith("  running sleep 0.002"):  # the second case starts: the first is saved
            saved = json.loads(next(tmp_path.glob("*.json")).read_text())
            seen.append((saved["complete"], {r["case"] for r in saved["rows"]}))

    result = bench.run(device="cpu", out_dir=str(tmp_path), min_time=0.0, echo=echo,
                       cases=[_sleep_case(0.001), _sleep_case(0.002)], max_case_s=1.0)
    assert seen == [(False, {"sleep 0.001"})]
    saved = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert saved["complete"] and saved["max_case_s"] == 1.0 and len(saved["rows"]) == len(result["rows"]) == 4
    with pytest.raises(ValueError, match="max_case_s must be a positive number"):
        bench.run(device="cpu", out_dir=str(tmp_path), cases=[], max_case_s=0)
