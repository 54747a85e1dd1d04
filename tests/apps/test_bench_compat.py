"""The global_unstructured cases of ``sparseforce bench`` (drop-in against torch.nn.utils.prune):
their plumbing at tiny sizes, each variant in a subprocess of its own, and the committed run."""
import json
import re
import textwrap
from pathlib import Path

import pytest
import torch

from sparseforce import bench, bench_compat
from sparseforce.bench_memory import PeakMemory

ROOT = Path(__file__).resolve().parents[2]
TINY_STACK = {"model": "linear-stack", "width": 48, "ff": 192, "layers": 2, "repeats": 3, "seed": 2}
TINY_WIDE = {"model": "wide-mlp", "width": 96, "depth": 2, "repeats": 1, "seed": 0}
GiB = 1 << 30


def quiet(*args):
    pass


@pytest.fixture(scope="module")
def tiny_rows():
    """Both cases at tiny sizes through the same code paths as the real ones."""
    return (bench_compat.compat_prune(bench_compat.stack_name(48, 192, 2), TINY_STACK, echo=quiet)
            + bench_compat.compat_prune(bench_compat.beyond_name(96, 2), TINY_WIDE, echo=quiet))


def test_both_variants_run_side_by_side_with_time_memory_and_counts(tiny_rows):
    ours, theirs, wide_ours, wide_theirs = tiny_rows
    n = 2 * (4 * 48 * 48 + 2 * 48 * 192)
    assert [r["variant"] for r in tiny_rows] == list(bench_compat.VARIANTS) * 2
    for r in tiny_rows:
        assert "error" not in r and "skipped" not in r
        assert r["median_s"] > 0 and r["peak_extra_bytes"] > 0 and len(r["times_s"]) == r["repeats"]
        assert r["pruned"] == r["asked"] and r["exact"]
    assert ours["params"] == n and ours["asked"] == round(0.995 * n)
    assert wide_ours["params"] == 2 * 96 * 96 + 10 * 96 and wide_ours["asked"] == round(0.995 * wide_ours["params"])
    # Normal fp32 weights: no tie at the threshold, so torch's masks are ours.
    assert not ours["tie_at_threshold"] and theirs["same_masks_as_ours"]
    assert theirs["time_vs_ours"] == pytest.approx(theirs["median_s"] / ours["median_s"])
    # bf16 weights tie at the threshold: both exact, torch keeps another of the tied weights.
    assert wide_ours["tie_at_threshold"] and not wide_theirs["same_masks_as_ours"]
    table = bench_compat.format_compat(tiny_rows)
    assert f"{ours['asked']:,} / {ours['asked']:,}" in table and "median of 3" in table
    assert "a tie at the threshold" in table and " MiB" in table


def test_each_measure_resets_the_peak_left_by_what_ran_before():
    big = torch.ones(256 << 20, dtype=torch.uint8)  # touched: the process's peak RSS rises by 256 MiB
    del big
    with PeakMemory(torch.device("cpu")) as mem:
        torch.ones(1 << 20, dtype=torch.uint8)
    assert mem.extra < 64 << 20


BROKEN = {
    "raises": """
        raise RuntimeError("nonzero is not supported for tensors with more than INT_MAX elements\\nsee #100989")
    """,
    "killed": """
        import os, signal
        os.kill(os.getpid(), signal.SIGKILL)
    """,
    "too-big": """
        import torch
        torch.empty(8 << 30, dtype=torch.uint8)  # untouched: only the address-space cap refuses it
    """,
}


@pytest.fixture
def broken_variants(tmp_path, monkeypatch):
    for name, body in BROKEN.items():
        (tmp_path / f"broken_{name.replace('-', '_')}.py").write_text(
            "from torch.nn.utils.prune import L1Unstructured\n\n\ndef global_unstructured(*args, **kwargs):\n"
            + textwrap.indent(textwrap.dedent(body).strip(), "    ") + "\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    return {name: f"broken_{name.replace('-', '_')}" for name in BROKEN}


def test_a_failing_run_is_a_failed_row_not_a_crash(broken_variants):
    rows = bench_compat.compat_prune(bench_compat.stack_name(48, 192, 2), {**TINY_STACK, "repeats": 1},
                                     variants=broken_variants, echo=quiet, available=lambda device: 3 * GiB)
    raised, killed, too_big = rows
    assert raised["error"] == "RuntimeError: nonzero is not supported for tensors with more than INT_MAX elements"
    assert raised["peak_extra_bytes"] is not None and "pruned" not in raised
    assert killed["error"] == "killed by SIGKILL" and killed["peak_extra_bytes"] is None
    # The address-space cap (1.5 GiB here: 3 GiB available less the margin) turns an allocation
    # past it into torch's own error in the subprocess.
    assert "can't allocate memory" in too_big["error"] and "pruned" not in too_big
    table = bench_compat.format_compat(rows)
    assert table.count("| failed") == 3 and "MiB reached: RuntimeError: nonzero" in table
    assert not any("same_masks_as_ours" in r for r in rows)


def test_the_memory_guard_skips_what_would_not_fit_and_says_why():
    rows = bench_compat.compat_prune(bench_compat.beyond_name(96, 2), TINY_WIDE, echo=quiet,
                                     available=lambda device: bench_compat.MARGIN + 1000)
    assert [r["variant"] for r in rows] == list(bench_compat.VARIANTS)
    for r in rows:
        assert r["skipped"] == f"needs about 0.0 GiB more memory, 0.0 GiB available" and "error" not in r
    assert bench_compat.format_compat(rows).count("not run") == 2


def test_the_big_case_crosses_2_31_and_runs_only_with_full_or_only():
    assert bench_compat.beyond_name() == "global_unstructured wide-mlp 2,147,811,328 bf16 amount=0.995"
    assert bench_compat.stack_name() == "global_unstructured linear-stack 84,934,656 fp32 amount=0.995"
    assert list(bench_compat.cases()) == [bench_compat.stack_name()]
    assert list(bench_compat.cases(full=True)) == [bench_compat.stack_name(), bench_compat.beyond_name()]
    assert list(bench_compat.cases(scale=8)) == [bench_compat.stack_name(96, 384, 12)]
    with pytest.raises(ValueError, match="global_unstructured wide-mlp"):
        bench.run(device="cpu", only="no such case", echo=quiet)


def test_the_runner_writes_the_rows_into_the_runs_json(tmp_path):
    result = bench.run(device="cpu", out_dir=str(tmp_path), scale=64, min_time=0, echo=quiet,
                       only="global_unstructured linear-stack")
    saved = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert not result["rows"] and not result["beyond_int32"] and len(saved["compat_prune"]) == 2
    assert saved["compat_prune"][0]["params"] == bench_compat.stack_params(12, 48, 12)
    assert bench_compat.format_compat(saved["compat_prune"]) in saved["table"]


def _committed():
    [path] = sorted(ROOT.glob("benchmarks/results/compat-prune-*/cpu-*.json"))
    return json.loads(path.read_text(encoding="utf-8"))


def test_the_committed_run_past_2_31_torch_fails_and_ours_prunes_exactly_the_amount():
    """What the docs quote from the committed run, read from its JSON."""
    saved = _committed()
    assert saved["complete"] and saved["full"] and saved["device_type"] == "cpu"
    rows = {(r["case"], r["variant"]): r for r in saved["compat_prune"]}
    ours = rows[(bench_compat.beyond_name(), "sparseforce.compat.prune")]
    theirs = rows[(bench_compat.beyond_name(), "torch.nn.utils.prune")]
    assert ours["params"] == 2_147_811_328 > 2**31 and ours["asked"] == round(0.995 * ours["params"])
    assert ours["pruned"] == ours["asked"] and ours["exact"] and ours["peak_extra_bytes"] > 0
    assert "error" in theirs and "pruned" not in theirs
    stack_ours = rows[(bench_compat.stack_name(), "sparseforce.compat.prune")]
    stack_theirs = rows[(bench_compat.stack_name(), "torch.nn.utils.prune")]
    assert stack_theirs["same_masks_as_ours"] and not stack_ours["tie_at_threshold"]
    assert stack_ours["pruned"] == stack_theirs["pruned"] == stack_ours["asked"] and len(stack_ours["times_s"]) == 3
    assert stack_theirs["time_vs_ours"] > 1 and stack_theirs["peak_extra_bytes"] > stack_ours["peak_extra_bytes"]
    assert bench_compat.format_compat(saved["compat_prune"]) in saved["table"]
    assert re.fullmatch(r"[0-9a-f]{7,40}", saved["git_commit"])


def test_the_docs_table_is_the_committed_run():
    """docs/compat.md's past-2^31 numbers are those of the committed JSON, cell by cell."""
    page = (ROOT / "docs" / "compat.md").read_text(encoding="utf-8")
    section = page[page.index("## Past 2^31 weights"):]
    path = re.search(r"`(benchmarks/results/compat-prune-[\w-]+/[\w-]+\.json)`", section).group(1)
    saved = json.loads((ROOT / path).read_text(encoding="utf-8"))
    assert saved == _committed()
    rows = {(r["case"], r["variant"]): r for r in saved["compat_prune"]}
    table = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines()
             if line.startswith("| ") and not line.startswith("|---")][1:]
    (stack_ours, stack_theirs, big_ours, big_theirs) = table
    gib = lambda r: f"{r['peak_extra_bytes'] / 2**30:.1f} GiB"  # noqa: E731
    counts = lambda r: f"{r['pruned']:,} / {r['asked']:,}"  # noqa: E731
    for name, ours_cells, theirs_cells in ((bench_compat.stack_name(), stack_ours, stack_theirs),
                                           (bench_compat.beyond_name(), big_ours, big_theirs)):
        ours, theirs = rows[(name, "sparseforce.compat.prune")], rows[(name, "torch.nn.utils.prune")]
        assert ours_cells[0].startswith(f"{ours['params']:,} ") and ours_cells[1] == ours["variant"]
        assert ours_cells[2] == (f"{ours['median_s']:.2f} s" if ours["median_s"] < 10 else f"{ours['median_s']:.1f} s")
        assert ours_cells[3] == gib(ours) and ours_cells[4] == counts(ours) and ours["pruned"] == ours["asked"]
        assert theirs_cells[1] == theirs["variant"]
        if "error" in theirs:
            assert theirs_cells[2] == "failed" and theirs_cells[3].startswith(gib(theirs) + ", then asked for ")
            asked = int(re.search(r"allocate (\d+) bytes", theirs["error"]).group(1))
            assert f"{asked / 2**30:.1f} GiB more" in theirs_cells[3] and str(asked) in section
        else:
            assert theirs_cells[2] == f"{theirs['median_s']:.1f} s ({theirs['time_vs_ours']:.1f}× ours)"
            assert theirs_cells[3] == gib(theirs) and theirs_cells[4] == counts(theirs)
            assert theirs["same_masks_as_ours"] and theirs_cells[5] == "the same as ours"
    assert saved["torch"] in section and f"{saved['device'].split('(')[1].split()[0]} threads" in section
