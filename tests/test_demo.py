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
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text(encoding="utf-8")
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
    # The README's table is not just any file's: it is this one's, whose masks a rerun reproduces.
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
