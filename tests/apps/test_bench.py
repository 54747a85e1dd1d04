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
                   "masked-sgd", "force-run resnet50/64 b=8 T=1", "force-run resnet50/64 b=8 T=3",
                   "train-step resnet50/64"):
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


def test_segmented_cases_run_small_and_keep_todays_practices_masks():
    """Per-layer, per-row and 2:4 selection: every impl keeps the masks of today's practice
    (random floats: no ties), and the runner times each next to its floor."""
    cpu = torch.device("cpu")
    cases = [c for c in bench.default_cases(cpu, scale=64) if c.name.startswith(("layer-", "row-", "nm-"))]
    assert [c.name for c in cases] == ["layer-topk resnet50/64 float32 k=50%", "row-topk linear-4096/64 float32 k=50%",
                                       "nm-2:4 linear-4096/64 float32"]
    backends = set(ops.available_backends(cpu, "segmented_topk_masks")) - {"triton"}
    for case in cases:
        assert backends <= set(case.impls) and case.floor_bytes == 5 * case.params

        def masks(impl):
            got = case.make(impl, cpu)()
            return flat_bool(got if isinstance(got, list) else [got])

        want = masks("baseline")
        for impl in case.impls[1:]:
            np.testing.assert_array_equal(masks(impl), want, err_msg=f"{case.name} [{impl}]")
    rows = bench.run_case(cases[2], cpu, 1e9, min_time=0.0)
    assert [r["impl"] for r in rows] == cases[2].impls and all(r["times_floor"] > 0 for r in rows)


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


def test_fewer_than_three_runs_show_their_range_not_extrapolated_quartiles():
    times = iter([0.0, 0.01, 0.03])  # the warm-up, then two timed runs of different length
    m = bench.measure(lambda: time.sleep(next(times)), torch.device("cpu"), min_time=0.0, min_reps=2)
    assert m["reps"] == 2 and m["q1_s"] is None and m["q3_s"] is None
    assert m["min_s"] < m["median_s"] < m["max_s"]
    row = {"case": "c", "impl": "baseline", **m, "speedup_vs_baseline": 1.0, "times_floor": None}
    line = bench.format_table([row]).splitlines()[-1]
    assert f"{bench.fmt_time(m['min_s'])}-{bench.fmt_time(m['max_s'])} (range of 2)" in line
    three = bench.measure(lambda: None, torch.device("cpu"), min_time=0.0, min_reps=3)
    assert three["q1_s"] is not None and "range" not in bench.format_table([{**row, **three}]).splitlines()[-1]


def test_scale_shrinks_every_case_end_to_end_ones_too():
    from sparseforce.models import count_prunable
    from sparseforce.models.resnet import ResNet
    cpu = torch.device("cpu")
    cases = bench.default_cases(cpu, scale=8)
    assert all("/8" in c.name for c in cases), [c.name for c in cases]
    full = {c.name.replace("/8", ""): c.params for c in bench.default_cases(cpu)}
    for c in cases:
        assert c.params < full[c.name.replace("/8", "")] / 7, c.name
    run = next(c for c in cases if c.name.startswith("force-run"))
    assert run.params == count_prunable(ResNet(width=8))
    rows = bench.force_breakdown(cpu, model_name="resnet50", batch=2, iterations=2, backends=("reference",),
                                 echo=lambda *a: None, scale=64)
    assert {r["case"] for r in rows} == {"force-breakdown resnet50/64 b=2 T=2"}
    with pytest.raises(ValueError, match="only the ResNet50s scale down"):
        bench.force_run_case("digits_cnn", 2, 1, scale=2)
    with pytest.raises(ValueError, match="scale must be a whole number"):
        bench.run(device="cpu", cases=[], scale=0)


def test_only_matching_nothing_is_an_error_naming_the_cases(tmp_path):
    out = tmp_path / "results"
    with pytest.raises(ValueError, match=r"--only 'no such case' matches no case; the cases: force-select") as e:
        bench.run(device="cpu", out_dir=str(out), only="no such case", scale=64, echo=lambda *a: None)
    assert "force-breakdown resnet50/64" in str(e.value) and "\n" not in str(e.value)
    assert not out.exists()  # refused before any work


def test_quick_shrinks_sizes_and_repetitions(tmp_path):
    result = bench.run(device="cpu", out_dir=str(tmp_path), quick=True, echo=lambda *a: None,
                       cases=[_sleep_case(0.001)])
    assert (result["quick"], result["scale"], result["min_time"]) == (True, 8, 0.0)
    assert all(r["reps"] == 3 for r in result["rows"]) and result["seconds"] > 0
    assert bench.run(device="cpu", out_dir=str(tmp_path), quick=True, scale=2, min_time=0.01,
                     echo=lambda *a: None, cases=[])["scale"] == 2


def test_plot_says_what_it_measures_with_numbers_colours_and_the_breakdown():
    rows = []
    for case, base in (("select", 1.0), ("topk", 0.5)):
        rows.append({"case": case, "impl": "baseline", "median_s": base, "speedup_vs_baseline": 1.0})
        for impl, t in (("reference", base * 4), ("cpp", base / 20)):
            rows.append({"case": case, "impl": impl, "median_s": t, "speedup_vs_baseline": base / t})
    breakdown = [{"case": "force-breakdown resnet50 b=8 T=3", "variant": v, "total_s": t, "step_s": t / 3,
                  "gradients_share": g, "selection_share": 1 - g - 0.01, "other_share": 0.01,
                  "same_masks_as_plain": v != "cpp + channels_last"}
                 for v, t, g in (("cpp", 3.0, 0.95), ("reference", 15.0, 0.2), ("cpp + channels_last", 3.5, 0.93))]
    fig = bench.figure(rows, "x86_64, 2026-12-01", breakdown)
    speed, phases = fig.axes[:2]
    assert "Speed-up over today's practice" in speed.get_title() and "speed-up = baseline" in speed.get_xlabel()
    labels = [t.get_text() for t in speed.texts]
    assert "20.00x  (50 ms)" in labels and "0.25x  (2 s)" in labels and len(labels) == 4
    colours = {tick.get_text().split("[")[1][:-1]: tuple(bar.get_facecolor())
               for tick, bar in zip(speed.get_yticklabels(), speed.patches)}
    assert len(colours) == 2 and len(set(colours.values())) == 2  # one colour per implementation
    assert "End to end: force-breakdown resnet50 b=8 T=3" in phases.get_title()
    texts = [t.get_text() for t in phases.texts]
    assert "15 s (5 s per step)" in texts and "3.5 s (1.17 s per step, other masks)" in texts and "95%" in texts
    assert [t.get_text() for t in phases.get_legend().get_texts()] == ["forward + backward", "selection", "other"]
    import matplotlib.pyplot as plt
    plt.close(fig)
    assert bench.figure([], "nothing") is None


def test_force_beyond_int32_runs_force_and_both_selections_at_a_small_width():
    """The 2^31 case's plumbing at a width that runs in a second (the real size is bench --full)."""
    rows = bench.force_beyond_int32(torch.device("cpu"), width=96, depth=2, iterations=3, echo=lambda *a: None)
    force_row, ours, theirs = rows
    n = 2 * 96 * 96 + 10 * 96
    assert force_row["params"] == n and force_row["kept"] == force_row["k"] == round(n * 0.005)
    assert 0 < force_row["selection_share"] < 1 and force_row["step_s"] * 3 == pytest.approx(force_row["total_s"])
    assert ours["kept"] == ours["k"]  # exactly k; the baseline's `>=` may keep ties on top
    assert theirs["kept"] >= theirs["k"] and "cat + topk" in theirs["variant"]
    table = bench.format_beyond_int32(rows)
    assert f"{ours['k']:,} / {ours['k']:,}" in table and "of a step" in table


def test_force_beyond_int32_does_not_start_what_would_not_fit():
    rows = bench.force_beyond_int32(torch.device("cpu"), width=96, depth=2, echo=lambda *a: None,
                                    available=lambda device: 1000)
    assert len(rows) == 1 and "GiB available" in rows[0]["skipped"]
    assert "not run" in bench.format_beyond_int32(rows)
    # Only the baseline's copies of the scores fail to fit: ours still runs.
    n = 2 * 96 * 96 + 10 * 96
    left = iter([9 * n, 9 * n, n // 2])  # before FORCE, before our selection, before the baseline's
    rows = bench.force_beyond_int32(torch.device("cpu"), width=96, depth=2, echo=lambda *a: None,
                                    available=lambda device: next(left))
    assert "kept" in rows[1] and "skipped" in rows[2]


def test_full_run_includes_the_beyond_int32_case_and_only_selects_it():
    assert bench.beyond_int32_name() == "force-run wide-mlp 2,147,811,328 bf16 T=3"
    assert 2 * bench.WIDE_WIDTH ** 2 + 10 * bench.WIDE_WIDTH > 2**31
    with pytest.raises(ValueError, match="wide-mlp") as refused:
        bench.run(device="cpu", full=True, only="no such case", echo=lambda *a: None)
    # global_unstructured past 2^31 beside it (sparseforce.bench_compat), on the same model
    assert "global_unstructured wide-mlp 2,147,811,328 bf16" in str(refused.value)


def test_readme_beyond_int32_table_is_the_committed_run():
    """The results page's FORCE-past-2^31 numbers are those of the committed JSON, cell by cell."""
    import re
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    readme = (root / "docs" / "results.md").read_text(encoding="utf-8")
    section = readme[readme.index("## FORCE past 2^31 prunable weights"):]
    section = section[:(section + "\n## ").index("\n## ", 1)]
    path = re.search(r"`(benchmarks/results/beyond-int32-[\w-]+/[\w-]+\.json)`", section).group(1)
    saved = json.loads((root / path).read_text(encoding="utf-8"))
    force_row, ours, theirs = saved["beyond_int32"]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| ") and not line.startswith("|---")]
    header, readme_force, readme_ours, readme_theirs = rows
    assert f"{force_row['params']:,} bf16 weights" == header[0] and "T = 3" in readme_force[0]
    assert readme_force[1:4] == [f"{force_row['total_s']:.1f} s", f"{force_row['step_s']:.1f} s",
                                 f"{force_row['selection_share']:.1%} of a step".replace("%", " %")]
    assert readme_force[4] == f"{force_row['peak_extra_bytes'] / 2**30:.1f} GiB"
    assert readme_ours[1] == f"{ours['total_s']:.2f} s"
    assert readme_ours[4].startswith(f"{ours['peak_extra_bytes'] / 2**30:.1f} GiB")
    for row, r in ((readme_force, force_row), (readme_ours, ours)):
        assert row[5] == f"{r['kept']:,} / {r['k']:,}" and r["kept"] == r["k"]
    need = float(re.search(r"needs about ([\d.]+) GiB", theirs["skipped"]).group(1))
    assert readme_theirs[1] == "not run" and f"needs about {need:.0f} GiB" in readme_theirs[4]
    assert f"{saved['torch']}" in section


def test_end_to_end_cases_do_not_warn_of_the_layer_collapse_they_expect(tmp_path, recwarn):
    # was: four LayerCollapseWarnings in `bench --quick`: FORCE to 99.5 % of a narrowed ResNet50 on
    # one random batch empties layers, which is harmless for a timing and no news to the reader
    import warnings
    import sparseforce as sf
    warnings.simplefilter("always")
    result = bench.run(device="cpu", out_dir=str(tmp_path), only="force-", scale=64, min_time=0,
                       echo=lambda *a: None)
    assert result["rows"] and result["breakdown"]
    assert not [w for w in recwarn if issubclass(w.category, sf.LayerCollapseWarning)]
    with pytest.warns(sf.LayerCollapseWarning):  # the filter is bench's own, not left behind
        warnings.warn("collapse", sf.LayerCollapseWarning)


def test_readme_cpu_results_are_the_committed_run():
    """The results page's CPU results (table, bandwidth, speed-ups, x-floor range, plot) are those of
    the committed JSON it names."""
    import re
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    readme = (root / "docs" / "results.md").read_text(encoding="utf-8")
    start = readme.index("Latest CPU results")
    section = readme[start:readme.index("\n## ", start)]
    path = re.search(r"`(benchmarks/results/cpu-[\d-]+\.json)`", section).group(1)
    saved = json.loads((root / path).read_text(encoding="utf-8"))
    assert saved["complete"] and not saved["full"] and saved["scale"] == 1
    block = section[section.index("```\n") + 4:]
    block = block[:block.index("```")]
    assert [line.rstrip() for line in block.strip("\n").splitlines()] == \
        [line.rstrip() for line in saved["table"].splitlines()]
    prose = " ".join(section.split())
    assert f"`sparseforce bench`, {saved['date'][:10]}," in prose
    assert f"copy bandwidth {saved['copy_bandwidth_Bps'] / 1e9:.1f} GB/s measured in this run" in prose
    assert f"![CPU benchmark](../{path[:-len('.json')]}.png)" in section  # relative to docs/
    assert (root / path).with_suffix(".png").is_file()
    cpp = {r["case"]: r for r in saved["rows"] if r["impl"] == "cpp"}

    def speedup(prefix):
        return f"{next(r for c, r in cpp.items() if c.startswith(prefix))['speedup_vs_baseline']:.1f}×"
    assert (f"FORCE selection **{speedup('force-select resnet50 float32 k=0.5%')} / "
            f"{speedup('force-select resnet50 float32 k=5.0%')}**") in prose
    assert f"(**{speedup('force-select vgg19')}** on VGG19), Iter SNIP **{speedup('itersnip-select')}**" in prose
    assert f"plain `topk_masks` **{speedup('topk ')}**" in prose
    segmented = ("layer-", "row-", "nm-")
    floors = [r["times_floor"] for c, r in cpp.items()
              if r["kind"] == "kernel" and not c.startswith(("masked-sgd", "rigl-") + segmented)]
    assert f"Selection runs at {min(floors):.2f}–{max(floors):.2f}× the memory floor" in prose
    assert f"A whole masked training step gains only {cpp[next(c for c in cpp if c.startswith('train-step'))]['speedup_vs_baseline']:.2f}×" in prose
    # The segmented selections: speed-up and x floor of each, and the per-layer topk baseline's ratio.
    layer, row, nm = (next(r for c, r in cpp.items() if c.startswith(p)) for p in segmented)
    topk = next(r for r in saved["rows"] if r["case"] == layer["case"] and r["impl"] == "topk")
    assert (f"**{layer['speedup_vs_baseline']:.1f}×** a `kthvalue` per layer (and "
            f"{layer['speedup_vs_baseline'] / topk['speedup_vs_baseline']:.0f}× a `topk` per layer") in prose
    assert f"per row on a 4096×4096 Linear **{row['speedup_vs_baseline']:.1f}×**" in prose
    assert f"2:4 on the same **{nm['speedup_vs_baseline']:.1f}×**" in prose
    assert f"2:4 runs at **{nm['times_floor']:.2f}×** (target ≤ 1.5×, met)" in prose
    assert (f"per layer at **{layer['times_floor']:.2f}×** and per row at **{row['times_floor']:.2f}×** "
            "(target ≤ 1.5×, **missed**)") in prose
    # Dynamic sparse training: the RigL update (the op, the whole sf.dst.RigL update), its cost in
    # training and the masked step.
    rigl = {r["impl"]: r for r in saved["rows"] if r["case"].startswith("rigl-update")}
    cost = {r["impl"]: r for r in saved["rows"] if r["case"].startswith("rigl-cost")}
    ours = rigl["sf.dst.RigL [cpp]"]
    assert f"`ops.drop_grow_masks` with the same zeroing **{rigl['cpp']['speedup_vs_baseline']:.1f}×**" in prose
    assert f"**{ours['speedup_vs_baseline']:.1f}×** (target ≥ 10×, **missed**), at {ours['times_floor']:.1f}× the memory floor" in prose
    share = cost["sf.dst.RigL [cpp]"]["median_s"] / 100 / cost["train-step"]["median_s"]
    assert f"**{share:.3%}** of training".replace("%", " %") in prose
    assert f"batch 32 takes {cost['train-step']['median_s']:.2f} s here" in prose
    masked = next(r for r in saved["rows"] if r["case"].startswith("masked-sgd") and r["impl"] == "MaskedSGD")
    assert f"`MaskedSGD`, runs at {masked['speedup_vs_baseline']:.1f}× the speed" in prose
    assert f"Why {ours['speedup_vs_baseline']:.1f}× and not 10×" in prose
    # sparsimony's row, from the run made where it imports (its own environment).
    other = re.search(r"`(benchmarks/results/rigl-sparsimony-[\d-]+/cpu-[\d-]+\.json)`", prose).group(1)
    rows = {r["impl"]: r for r in json.loads((root / other).read_text(encoding="utf-8"))["rows"]}
    theirs, ours_there = rows["sparsimony"], rows["sf.dst.RigL [cpp]"]
    assert f"RigL update at **{theirs['speedup_vs_baseline']:.2f}×** the ports'" in prose
    assert f"`sf.dst.RigL` at **{ours_there['speedup_vs_baseline']:.1f}×**" in prose
    assert f"{theirs['median_s'] / ours_there['median_s']:.1f}× faster than sparsimony" in prose
