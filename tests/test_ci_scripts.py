"""The CI helper scripts: scripts/check_ext_dispatch.py (what ci_cuda_build.sh checks a CUDA build
of the extension with) and scripts/gpu_check.sh's plumbing (its steps need a GPU; DRY_RUN=1
runs everything else)."""
import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script_module(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


dispatch = _script_module("check_ext_dispatch")


def test_dispatch_check_finds_every_registration_in_the_sources():
    found = dispatch.registered_impls(ROOT / "csrc")
    # What the cuda backend (sparseforce/ops/cuda) needs, and what the cpp backend needs.
    assert {"topk_masks", "kth_largest", "saliency_topk_masks", "masked_sgd_"} <= found["CUDA"]
    assert {"topk_masks", "topk_masks_out", "kth_largest", "saliency_topk_masks", "saliency_topk_masks_out",
            "radix_histogram", "masked_sgd_"} <= found["CPU"]
    # Every op registered for a key is one that register.cpp defines.
    defined = set(re.findall(r'm\.def\(\s*"(\w+)\(', (ROOT / "csrc" / "register.cpp").read_text()))
    assert found["CUDA"] | found["CPU"] <= defined


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
    from sparseforce import _ext
    if _ext.load() is not None:
        pytest.skip(f"the C++ extension is unavailable here: {_ext.load()}")
    cpu = dispatch.registered_impls(ROOT / "csrc")["CPU"]
    assert dispatch.missing_kernels({"CPU": cpu}, ["CPU"]) == []
    assert dispatch.missing_kernels({"CPU": cpu | {"not_an_op"}}, ["CPU"]) == [
        "sparseforce::not_an_op is not defined (no m.def in register.cpp)"]
    # A CPU-only build: every CUDA registration is reported.
    import torch
    if not torch._C._dispatch_has_kernel_for_dispatch_key("sparseforce::topk_masks", "CUDA"):
        assert "sparseforce::topk_masks has no CUDA kernel" in dispatch.missing_kernels({"CUDA": {"topk_masks"}}, ["CUDA"])
