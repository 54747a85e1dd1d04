"""The CUDA kernels compile for a real GPU target, even on a machine without one.

Nothing in csrc/cuda can run without a GPU, so CI checks what it can: every ``.cu`` file builds
with nvcc for sm_90 (H100/H200) with the flags torch's CUDAExtension adds (no implicit
half/bfloat16 conversions, relaxed constexpr), and the device code includes CUDA headers only,
so it builds without torch's headers (the torch glue lives in ops_cuda.cpp). The files compile
in parallel into a temporary directory.
"""
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "csrc" / "cuda"
SOURCES = sorted(CUDA_DIR.glob("*.cu"))
NVCC = shutil.which("nvcc")

# torch.utils.cpp_extension.COMMON_NVCC_FLAGS, spelled out so the check does not need torch.
TORCH_NVCC_FLAGS = ["-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
                    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
                    "--expt-relaxed-constexpr"]

needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("cuda_objs")

    def build(src):
        cmd = [NVCC, "-std=c++17", "-O3", "-arch=sm_90", *TORCH_NVCC_FLAGS, "-I", str(ROOT / "csrc"),
               "-c", str(src), "-o", str(out / (src.stem + ".o"))]
        return src.name, subprocess.run(cmd, capture_output=True, text=True, timeout=900)

    with ThreadPoolExecutor(max_workers=max(1, len(SOURCES))) as pool:
        results = dict(pool.map(build, SOURCES))
    return out, results


def test_there_are_cuda_sources():
    names = {s.name for s in SOURCES}
    assert {"select.cu", "masked_sgd.cu"} <= names
    assert (CUDA_DIR / "ops_cuda.cpp").is_file() and (CUDA_DIR / "launch.h").is_file()


@needs_nvcc
@pytest.mark.parametrize("name", [s.name for s in SOURCES])
def test_cu_compiles_for_sm90(compiled, name):
    out, results = compiled
    result = results[name]
    assert result.returncode == 0, f"nvcc failed on {name}:\n{result.stderr[-6000:]}"
    assert (out / (Path(name).stem + ".o")).stat().st_size > 0


_INCLUDE = re.compile(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]', re.M)
_ALLOWED = re.compile(r"^(cuda[_a-z0-9]*\.h|cub/.*|cuda/.*|common\.cuh|launch\.h|"
                      r"c(std[a-z]+|limits|math|string|stdlib)|type_traits|utility|limits)$")


@pytest.mark.parametrize("path", sorted(CUDA_DIR.glob("*.cu")) + sorted(CUDA_DIR.glob("*.cuh")) + [CUDA_DIR / "launch.h"],
                         ids=lambda p: p.name)
def test_device_code_includes_only_cuda_headers(path):
    bad = [h for h in _INCLUDE.findall(path.read_text()) if not _ALLOWED.match(h)]
    assert not bad, f"{path.name} includes {bad}: device code and launch.h may include CUDA/CCCL headers only"


def test_glue_is_guarded():
    # setup.py compiles ops_cuda.cpp only in CUDA builds, but the JIT loader or a stray glob
    # must not break a CPU-only build either.
    text = (CUDA_DIR / "ops_cuda.cpp").read_text()
    assert "#ifdef SPARSEFORCE_WITH_CUDA" in text
    assert "TORCH_LIBRARY_IMPL(sparseforce, CUDA, m)" in text


def test_kernels_launch_only_through_common_cuh():
    # The CPU emulator (tests/cuda_emu) compiles these sources as host C++ and replaces the one
    # launch in common.cuh; a `<<<` anywhere else would not compile there.
    paths = [p for p in sorted(CUDA_DIR.iterdir()) if p.suffix in (".cu", ".cuh", ".h", ".cpp")]
    bad = [p.name for p in paths if p.name != "common.cuh" and "<<<" in p.read_text()]
    assert not bad, f"{bad} launch kernels with <<<...>>>; use SF_LAUNCH (common.cuh)"
    assert (CUDA_DIR / "common.cuh").read_text().count("<<<") == 1


def _cuda_include():
    import os
    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    if NVCC is not None:
        roots.append(str(Path(NVCC).resolve().parents[1]))
    for root in filter(None, roots):
        if (Path(root) / "include" / "cuda_runtime_api.h").is_file():
            return Path(root) / "include"
    return None


def test_host_orchestration_is_plain_cpp_and_guarded():
    # host.cpp runs in the emulated backend too (g++, no torch), and a CPU-only build that globs
    # it must compile it to nothing.
    for name in ("host.h", "host.cpp"):
        bad = [h for h in _INCLUDE.findall((CUDA_DIR / name).read_text())
               if not re.match(r"^(host\.h|launch\.h|[a-z_]+)$", h)]
        assert not bad, f"{name} includes {bad}: only launch.h and the standard library"
    assert "#if defined(SPARSEFORCE_WITH_CUDA) || defined(SPARSEFORCE_CUDA_EMULATION)" in (CUDA_DIR / "host.cpp").read_text()


@pytest.mark.skipif(shutil.which("g++") is None or _cuda_include() is None, reason="no g++ or CUDA headers")
@pytest.mark.parametrize("path", [CUDA_DIR / "host.cpp", ROOT / "tests" / "cuda_emu" / "abi.cpp"], ids=lambda p: p.name)
def test_host_orchestration_compiles_against_the_cuda_headers(path):
    cmd = ["g++", "-std=c++17", "-fsyntax-only", "-Wall", "-Werror", "-DSPARSEFORCE_WITH_CUDA", "-I", str(ROOT / "csrc"),
           "-I", str(_cuda_include()), str(path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-6000:]
