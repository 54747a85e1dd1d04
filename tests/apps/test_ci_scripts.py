"""The CI helper scripts: scripts/check_ext_dispatch.py (what ci_cuda_build.sh checks a CUDA build
of the extension with) and scripts/gpu_check.sh's plumbing (its steps need a GPU; DRY_RUN=1
runs everything else)."""
import importlib.util
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _script_module(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


dispatch = _script_module("check_ext_dispatch")


def test_dispatch_check_finds_every_registration_in_the_sources():
    found = dispatch.registered_impls(ROOT / "csrc")
    # Both keys implement every op of the library, and nothing it does not define.
    from sparseforce.ops.library import SCHEMAS
    assert found["CUDA"] == found["CPU"] == set(SCHEMAS)


def test_dispatch_check_parses_blocks_not_comments(tmp_path):
    (tmp_path / "cuda").mkdir()
    (tmp_path / "cuda" / "a.cpp").write_text("""
// TORCH_LIBRARY_IMPL(sparseforce, CUDA, m) { m.impl("commented_out", &f); }
#ifdef SPARSEFORCE_WITH_CUDA
TORCH_LIBRARY_IMPL(sparseforce, CUDA, lib) {
  lib.impl("one", &one);  /* lib.impl("in_a_comment", &x); */
  if (true) { lib.impl("sparseforce::two", &two); }
}
#endif
void other(torch::Library& m) { m.impl("outside_a_block", &g); }
""")
    (tmp_path / "b.cu").write_text('TORCH_LIBRARY_IMPL( sparseforce , CPU , m ) {\n  m.impl ( "three", &t);\n}\n')
    assert dispatch.registered_impls(tmp_path) == {"CUDA": {"one", "two"}, "CPU": {"three"}}


def test_dispatch_check_reports_a_missing_kernel():
    # sparseforce's CPU kernels are registered in this process once the extension has loaded.
    from sparseforce.ops.cpp import loader as _ext
    if _ext.load() is not None:
        pytest.skip(f"the C++ extension is unavailable here: {_ext.load()}")
    cpu = dispatch.registered_impls(ROOT / "csrc")["CPU"]
    assert dispatch.missing_kernels({"CPU": cpu}, ["CPU"]) == []
    assert dispatch.missing_kernels({"CPU": cpu | {"not_an_op"}}, ["CPU"]) == [
        "sparseforce::not_an_op is not defined (not in sparseforce/ops/library.py)"]
    # A CPU-only build: every CUDA registration is reported.
    import torch
    if not torch._C._dispatch_has_kernel_for_dispatch_key("sparseforce::topk_masks", "CUDA"):
        assert "sparseforce::topk_masks has no CUDA kernel" in dispatch.missing_kernels({"CUDA": {"topk_masks"}}, ["CUDA"])


# --------------------------------------------------------------------------- scripts/gpu_check.sh

GPU_STEPS = ["env", "build", "backends", "tests_cuda", "tests_cap0", "tests_cap64", "distributed", "tests_pruning",
             "semi_structured", "bench", "beyond_int32"]


def _gpu_check(tmp_path, **env):
    run_env = {**os.environ, "OUT": str(tmp_path), **env}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], capture_output=True, text=True,
                          env=run_env, timeout=120, cwd=ROOT)
    rows = {}
    for line in (tmp_path / "summary.txt").read_text().splitlines()[2:]:
        cells = [c.strip() for c in line.split("|")]
        rows[cells[0]] = cells[1:]
    assert proc.stdout.rstrip().endswith((tmp_path / "summary.txt").read_text().rstrip())  # printed last
    return proc, rows


def test_gpu_check_dry_run_plan_and_summary(tmp_path):
    proc, rows = _gpu_check(tmp_path, DRY_RUN="1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert list(rows) == GPU_STEPS + ["total"]
    assert all(rows[s][0] == "ok" for s in GPU_STEPS)
    # The expected seconds fit the 9 minutes one call may take, and the 510 s budget the script
    # holds itself to.
    expected = [int(rows[s][2]) for s in GPU_STEPS]
    assert int(rows["total"][2]) == sum(expected) <= 500 and int(rows["total"][3]) <= 540
    log = (tmp_path / "gpu_check.log").read_text()
    assert "SPARSEFORCE_CUDA_CANDIDATE_CAP=0" in log and "SPARSEFORCE_CUDA_CANDIDATE_CAP=64" in log
    assert "--max-case-time" in log and "-k cuda " in log
    assert "tests/pruning/test_semi_structured.py" in log and "benchmarks.semi_structured --out" in log
    assert all((tmp_path / f"{s}.log").is_file() for s in GPU_STEPS)


def test_gpu_check_timeouts_failures_and_the_time_budget(tmp_path):
    # backends fails, tests_cuda outlives what is left of an 8-second budget, the rest cannot start.
    snippet = 'case $1 in build) echo built;; backends) exit 3;; tests_cuda) sleep 60;; esac'
    start = time.monotonic()
    proc, rows = _gpu_check(tmp_path, DRY_RUN="1", DRY_RUN_STEP=snippet, BUDGET_S="8", RESERVE_S="1",
                            MIN_STEP_S="2")
    assert time.monotonic() - start < 30
    assert proc.returncode == 1
    assert [rows[s][0] for s in GPU_STEPS] == ["ok", "ok", "FAIL (rc=3)", "TIMEOUT"] + ["skipped (out of time)"] * 7
    assert "built" in (tmp_path / "build.log").read_text()
    assert int(rows["tests_cuda"][3]) <= 7  # its 200 s timeout cut to the time left


def test_gpu_check_stops_after_a_failed_build(tmp_path):
    proc, rows = _gpu_check(tmp_path, DRY_RUN="1", DRY_RUN_STEP='[ "$1" != build ]')
    assert proc.returncode == 1
    assert [rows[s][0] for s in GPU_STEPS[:2]] == ["ok", "FAIL (rc=1)"]
    assert all(rows[s][0] == "skipped (build failed)" for s in GPU_STEPS[2:])


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU machine would run the real check")
def test_gpu_check_without_a_gpu_says_so_and_runs_nothing(tmp_path):
    proc, rows = _gpu_check(tmp_path)
    assert proc.returncode == 1
    assert rows["env"][0].startswith("FAIL") and "no CUDA device" in (tmp_path / "env.log").read_text()
    assert all(rows[s][0] == "skipped (no usable GPU)" for s in GPU_STEPS[1:])
