"""Loading the compiled kernels: the prebuilt extension, the JIT build, and the fallback when
neither works (``auto`` -> reference with one warning, explicit ``cpp`` -> a clear error).

The loader's steps are replaced by stubs here; a real JIT build takes minutes and runs only when
SPARSEFORCE_TEST_JIT=1 (test_real_jit_build_in_a_fresh_process).
"""
import os
import shutil
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

import sparseforce.ops as ops
from sparseforce.ops.cpp import loader as _ext


@pytest.fixture
def fresh_loader(monkeypatch):
    """The loader as if nothing had been tried in this process (restored afterwards)."""
    monkeypatch.setattr(_ext, "_STATE", None)
    monkeypatch.setattr(_ext, "HOW", "")
    return monkeypatch


def test_auto_falls_back_to_reference_with_one_warning(fresh_loader):
    fresh_loader.setattr(_ext, "_try_load", lambda: "no C++ compiler (test stub)")
    scores = [torch.tensor([3.0, 1.0, 2.0]), torch.tensor([5.0])]
    with pytest.warns(_ext.ExtensionWarning, match=r"unavailable: no C\+\+ compiler \(test stub\).*reference"):
        masks = ops.topk_masks(scores, 2)
    assert masks[0].tolist() == [True, False, False] and masks[1].tolist() == [True]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once, not on every call
        ops.topk_masks(scores, 2)
        ops.saliency_topk_masks(scores, scores, 1)
    assert "cpp" not in ops.available_backends("cpu")
    with pytest.raises(ops.BackendUnavailableError,
                       match=r"backend 'cpp' is not available for topk_masks on cpu tensors: no C\+\+ compiler"):
        ops.topk_masks(scores, 2, backend="cpp")


def test_no_ext_switch(fresh_loader):
    fresh_loader.setenv("SPARSEFORCE_NO_EXT", "1")
    with pytest.warns(_ext.ExtensionWarning):
        assert "SPARSEFORCE_NO_EXT" in _ext.load()
    with pytest.raises(ops.BackendUnavailableError, match="SPARSEFORCE_NO_EXT=1"):
        ops.kth_largest([torch.ones(2)], 1, backend="cpp")


def test_an_installed_compiler_means_cpp_is_available():
    # Guards CI against a build that failed quietly (setup.py lets the install finish without the
    # extension): where a compiler exists, the prebuilt or JIT-built kernels must load.
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        pytest.skip("no C++ compiler")
    assert _ext.load() is None, _ext.load()
    assert "cpp" in ops.available_backends("cpu")


def test_cpp_refuses_non_cpu_tensors():
    from sparseforce.ops.cpp import _availability
    assert "CPU tensors only" in _availability(torch.device("meta"))


def _jit_stubs(monkeypatch, *, compiler=True, load_error=None):
    """Prebuilt missing; JIT build steps replaced. Returns the calls made to cpp_extension.load."""
    from torch.utils import cpp_extension
    calls = []
    registered = {"yes": False}
    monkeypatch.setattr(_ext, "_ops_registered", lambda: registered["yes"])
    monkeypatch.setattr(_ext, "_import_prebuilt", lambda: "not built at install time")
    monkeypatch.setattr(_ext, "_compiler", lambda: "/usr/bin/c++" if compiler else None)
    monkeypatch.setattr(cpp_extension, "verify_ninja_availability", lambda: None)

    def fake_load(**kwargs):
        calls.append(kwargs)
        if load_error is not None:
            raise RuntimeError(load_error)
        registered["yes"] = True

    monkeypatch.setattr(cpp_extension, "load", fake_load)
    return calls


def test_jit_build_when_not_prebuilt(fresh_loader, tmp_path):
    fresh_loader.setenv("SPARSEFORCE_EXT_DIR", str(tmp_path))
    calls = _jit_stubs(fresh_loader)
    with pytest.warns(_ext.ExtensionWarning, match="building it with ninja into"):
        assert _ext.load() is None
    assert _ext.HOW == "jit" and len(calls) == 1
    call = calls[0]
    assert call["build_directory"] == str(tmp_path) and call["is_python_module"] is False
    assert "-fopenmp" in call["extra_cflags"] and "-O3" in call["extra_cflags"]
    assert any(s.endswith("register.cpp") for s in call["sources"])
    assert any(s.endswith(os.path.join("cpu", "radix_select.cpp")) for s in call["sources"])
    assert _ext.load() is None and len(calls) == 1  # once per process


def test_jit_build_is_quiet_when_cached(fresh_loader, tmp_path):
    fresh_loader.setenv("SPARSEFORCE_EXT_DIR", str(tmp_path))
    (tmp_path / f"{_ext.JIT_NAME}.so").write_bytes(b"")
    calls = _jit_stubs(fresh_loader)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _ext.load() is None
    assert len(calls) == 1  # ninja still checks the sources are unchanged


def test_no_compiler_is_the_reason_given(fresh_loader):
    _jit_stubs(fresh_loader, compiler=False)
    with pytest.warns(_ext.ExtensionWarning, match="no C\\+\\+ compiler"):
        reason = _ext.load()
    assert "no C++ compiler" in reason
    with pytest.raises(ops.BackendUnavailableError, match="no C\\+\\+ compiler"):
        ops.topk_masks([torch.ones(3)], 1, backend="cpp")


def test_failed_build_is_the_reason_given(fresh_loader, tmp_path):
    fresh_loader.setenv("SPARSEFORCE_EXT_DIR", str(tmp_path))
    _jit_stubs(fresh_loader, load_error="Error building extension 'sparseforce_C'")
    with pytest.warns(_ext.ExtensionWarning):
        reason = _ext.load()
    assert "building it with ninja failed" in reason and "sparseforce_C" in reason


def test_no_jit_switch(fresh_loader):
    calls = _jit_stubs(fresh_loader)
    fresh_loader.setenv("SPARSEFORCE_NO_JIT", "1")
    with pytest.warns(_ext.ExtensionWarning, match="SPARSEFORCE_NO_JIT"):
        assert "SPARSEFORCE_NO_JIT" in _ext.load()
    assert calls == []


@pytest.mark.skipif(os.environ.get("SPARSEFORCE_TEST_JIT") != "1",
                    reason="a real JIT build takes minutes: set SPARSEFORCE_TEST_JIT=1")
def test_real_jit_build_in_a_fresh_process(tmp_path):
    script = textwrap.dedent("""
        import sys, warnings, torch
        sys.modules["sparseforce._C"] = None  # hide the prebuilt extension: imports then fail
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import sparseforce.ops as ops
            from sparseforce.ops.cpp import loader as _ext
            masks = ops.topk_masks([torch.tensor([1.0, 3.0, 2.0])], 2, backend="cpp")
        assert _ext.HOW == "jit", _ext.HOW
        assert masks[0].tolist() == [False, True, True]
        print(sum("building it with ninja" in str(w.message) for w in caught))
    """)
    env = dict(os.environ, SPARSEFORCE_EXT_DIR=str(tmp_path))
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "1"
