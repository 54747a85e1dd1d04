"""The CUDA kernels compile for a real GPU target, even on a machine without one.

Nothing in csrc/cuda can run without a GPU, so CI checks what it can: every ``.cu`` file builds
with nvcc for sm_90 (H100/H200) with the flags torch's CUDAExtension adds (no implicit
half/bfloat16 conversions, relaxed constexpr), and the device code includes CUDA headers only,
so it builds without torch's headers (the torch glue lives in ops_cuda.cpp). The files compile
in parallel into a temporary directory, with ptxas reporting each kernel's resource use: the
table is printed at the end of the test run, and a spill in a per-element kernel or static
shared memory over sm_90's limit fails the run.
"""
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import REPORTS

ROOT = Path(__file__).resolve().parents[2]
CUDA_DIR = ROOT / "csrc" / "cuda"
SOURCES = sorted(CUDA_DIR.glob("*.cu"))
NVCC = shutil.which("nvcc")
CXXFILT = shutil.which("c++filt")

# torch.utils.cpp_extension.COMMON_NVCC_FLAGS, spelled out so the check does not need torch.
TORCH_NVCC_FLAGS = ["-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
                    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
                    "--expt-relaxed-constexpr"]

# The kernels that touch every element: a spill there is a local-memory round trip in the loop
# that sets the speed, so none is allowed. The others run once or over a short list per selection.
HOT_KERNELS = {"hist_kernel", "tie_count_kernel", "mask_kernel", "masked_sgd_kernel", "digit_hist_kernel",
               "seg_tiny_kernel", "seg_row_kernel", "seg_hist_kernel", "seg_tie_count_kernel", "seg_mask_kernel",
               "nan_scan_kernel"}
_HOT_PATTERN = re.compile(r"radix|key_hist|histogram")  # a radix-histogram kernel, whatever its name
# sm_90's limit on a kernel's static __shared__ arrays (more needs dynamic shared memory).
STATIC_SMEM_LIMIT = 48 * 1024

needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("cuda_objs")

    def build(src):
        cmd = [NVCC, "-std=c++17", "-O3", "-arch=sm_90", *TORCH_NVCC_FLAGS, "-Xptxas", "-v",
               "-I", str(ROOT / "csrc"), "-c", str(src), "-o", str(out / (src.stem + ".o"))]
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


# ------------------------------------------------------------------------ ptxas resource use

_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(\w+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas(text):
    """The kernels of one ``-Xptxas -v`` log: dicts of mangled name, arch, registers, stack frame,
    spill stores/loads and static shared memory (bytes), in the order ptxas compiled them."""
    kernels, cur = [], None
    for line in text.splitlines():
        if m := _ENTRY.search(line):
            cur = dict(mangled=m[1], arch=m[2], registers=0, stack=0, spill_stores=0, spill_loads=0, smem=0)
            kernels.append(cur)
        elif cur is None:
            continue
        elif m := _FRAME.search(line):
            cur.update(stack=int(m[1]), spill_stores=int(m[2]), spill_loads=int(m[3]))
        elif m := _USED.search(line):
            cur["registers"] = int(m[1])
            smem = _SMEM.search(line)
            cur["smem"] = int(smem[1]) if smem else 0
    return kernels


def base_name(mangled):
    """The unqualified function name of an Itanium-mangled symbol (``hist_kernel`` of
    ``_ZN11sparseforce4cuda..11hist_kernelILi3ELb0EEEv..``); an unmangled name as it is."""
    if not mangled.startswith("_Z"):
        return mangled
    rest = mangled[2:]
    nested = rest.startswith("N")
    rest = rest[1:] if nested else rest
    name = None
    while m := re.match(r"(\d+)", rest):  # <length><identifier>, one per nesting level
        n, start = int(m[1]), len(m[1])
        name, rest = rest[start:start + n], rest[start + n:]
        if not nested:
            break
    return name or mangled


def _split_top(text, sep):
    """``text`` split at ``sep`` outside <...> and (...)."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(text):
        c = text[i]
        depth += c in "<(" or -(c in ">)")
        if depth == 0 and text.startswith(sep, i):
            parts.append(text[start:i])
            start = i = i + len(sep)
            continue
        i += 1
    return parts + [text[start:]]


def short_name(demangled):
    """``hist_kernel<3, false>`` of ``void ns::(anonymous namespace)::hist_kernel<3, false>(args)``:
    no return type, namespaces or parameter list."""
    text, depth = demangled.rstrip(), 0
    for i in range(len(text) - 1, -1, -1):  # drop the parameter list: the last balanced (...)
        depth += (text[i] == ")") - (text[i] == "(")
        if depth == 0 and text[i] == "(":
            text = text[:i]
            break
    return _split_top(_split_top(text, "::")[-1], " ")[-1]


def demangle(names):
    if CXXFILT is None or not names:
        return {n: base_name(n) for n in names}
    out = subprocess.run([CXXFILT], input="\n".join(names), capture_output=True, text=True, timeout=60)
    lines = out.stdout.splitlines()
    if out.returncode != 0 or len(lines) != len(names):
        return {n: base_name(n) for n in names}
    return {n: short_name(d) for n, d in zip(names, lines)}


def is_hot(kernel):
    name = base_name(kernel["mangled"])
    return name in HOT_KERNELS or bool(_HOT_PATTERN.search(name))


def resource_table(per_file):
    """The readable table of {file name: parse_ptxas(...)}."""
    names = demangle([k["mangled"] for ks in per_file.values() for k in ks])
    header = ["file", "kernel", "regs", "stack B", "spill st B", "spill ld B", "smem B", "hot"]
    rows = [[f, names[k["mangled"]], k["registers"], k["stack"], k["spill_stores"], k["spill_loads"], k["smem"],
             "yes" if is_hot(k) else ""] for f, ks in sorted(per_file.items())
            for k in sorted(ks, key=lambda k: names[k["mangled"]])]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = [" | ".join(str(h).ljust(w) for h, w in zip(header, widths)), "-|-".join("-" * w for w in widths)]
    lines += [" | ".join(str(x).ljust(w) for x, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def resource_problems(per_file):
    names = demangle([k["mangled"] for ks in per_file.values() for k in ks])
    problems = []
    for f, ks in sorted(per_file.items()):
        for k in ks:
            label = f"{f}: {names[k['mangled']]}"
            if is_hot(k) and (k["spill_stores"] or k["spill_loads"]):
                problems.append(f"{label} spills {k['spill_stores']} B stores / {k['spill_loads']} B loads "
                                "in a per-element kernel")
            if k["smem"] > STATIC_SMEM_LIMIT:
                problems.append(f"{label} uses {k['smem']} B of static shared memory, over sm_90's "
                                f"{STATIC_SMEM_LIMIT} B")
    return problems


@needs_nvcc
def test_ptxas_resource_use(compiled):
    _, results = compiled
    per_file = {name: parse_ptxas(r.stderr) for name, r in results.items() if r.returncode == 0}
    REPORTS.append(("ptxas resource use, sm_90 (-Xptxas -v)", resource_table(per_file)))
    assert all(per_file.values()), f"ptxas reported no kernels for {[f for f, ks in per_file.items() if not ks]}"
    found = {base_name(k["mangled"]) for ks in per_file.values() for k in ks}
    assert HOT_KERNELS <= found, f"hot kernels {sorted(HOT_KERNELS - found)} are gone: update HOT_KERNELS"
    problems = resource_problems(per_file)
    assert not problems, "\n".join(problems)


# Real nvcc 13.0 -Xptxas -v output (select.cu / masked_sgd.cu, sm_90), trimmed to three kernels.
PTXAS_SAMPLE = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_ZN11sparseforce4cuda41_GLOBAL__N__1cc1e82f_9_select_cu_f942142111hist_kernelILi3ELb0EEEvNS1_9SelParamsENS1_9WorkspaceEiii' for 'sm_90'
ptxas info    : Function properties for _ZN11sparseforce4cuda41_GLOBAL__N__1cc1e82f_9_select_cu_f942142111hist_kernelILi3ELb0EEEvNS1_9SelParamsENS1_9WorkspaceEiii
    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 48 registers, used 1 barriers, 8 bytes cumulative stack size, 16584 bytes smem
ptxas info    : Compile time = 126.302 ms
ptxas info    : Compiling entry function '_ZN11sparseforce4cuda41_GLOBAL__N__1cc1e82f_9_select_cu_f942142112value_kernelENS1_9WorkspaceEPvi' for 'sm_90'
ptxas info    : Function properties for _ZN11sparseforce4cuda41_GLOBAL__N__1cc1e82f_9_select_cu_f942142112value_kernelENS1_9WorkspaceEPvi
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 14 registers, used 0 barriers
ptxas info    : Compile time = 3.001 ms
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_ZN11sparseforce4cuda46_GLOBAL__N__624429a9_13_masked_sgd_cu_8d9ebad417masked_sgd_kernelEPKNS0_10SgdSegmentEixNS1_5HyperE' for 'sm_90'
ptxas info    : Function properties for _ZN11sparseforce4cuda46_GLOBAL__N__624429a9_13_masked_sgd_cu_8d9ebad417masked_sgd_kernelEPKNS0_10SgdSegmentEixNS1_5HyperE
    16 bytes stack frame, 72 bytes spill stores, 72 bytes spill loads
ptxas info    : Used 48 registers, used 1 barriers, 16 bytes cumulative stack size, 64 bytes smem
ptxas info    : Compile time = 945.077 ms
"""


def test_ptxas_parser_on_real_output():
    hist, value, sgd = parse_ptxas(PTXAS_SAMPLE)
    assert (base_name(hist["mangled"]), hist["arch"], hist["registers"], hist["stack"], hist["spill_stores"],
            hist["spill_loads"], hist["smem"]) == ("hist_kernel", "sm_90", 48, 8, 4, 4, 16584)
    assert (base_name(value["mangled"]), value["registers"], value["smem"], value["spill_stores"]) == \
        ("value_kernel", 14, 0, 0)
    assert (base_name(sgd["mangled"]), sgd["registers"], sgd["spill_stores"], sgd["spill_loads"], sgd["smem"]) == \
        ("masked_sgd_kernel", 48, 72, 72, 64)
    assert [is_hot(k) for k in (hist, value, sgd)] == [True, False, True]
    assert base_name("_Z5div32Pxi") == "div32" and base_name("plain") == "plain"


def test_ptxas_checks_flag_hot_spills_and_big_shared_memory():
    hist, value, sgd = parse_ptxas(PTXAS_SAMPLE)
    problems = resource_problems({"select.cu": [hist, value], "masked_sgd.cu": [sgd]})
    assert len(problems) == 2 and "hist_kernel" in problems[1] and "masked_sgd_kernel" in problems[0]
    assert all("spills" in p for p in problems)
    # A cold kernel may spill; nothing may pass the static shared memory limit.
    cold_spill = dict(value, spill_stores=8, spill_loads=8)
    big = dict(value, smem=STATIC_SMEM_LIMIT + 4)
    assert resource_problems({"a.cu": [cold_spill]}) == []
    assert "static shared memory" in resource_problems({"a.cu": [big]})[0]
    # The table names every kernel, demangled where c++filt exists, and marks the hot ones.
    table = resource_table({"select.cu": [hist, value]})
    assert "hist_kernel" in table and "value_kernel" in table and "16584" in table
    hist_row = next(line for line in table.splitlines() if "hist_kernel" in line)
    assert hist_row.rstrip().endswith("yes")


def test_short_name_strips_namespaces_return_type_and_parameters():
    assert short_name("void sparseforce::cuda::(anonymous namespace)::hist_kernel<3, false>(sparseforce::cuda::"
                      "(anonymous namespace)::SelParams, int, int)") == "hist_kernel<3, false>"
    assert short_name("sparseforce::cuda::(anonymous namespace)::masked_sgd_kernel(long long, "
                      "sparseforce::cuda::(anonymous namespace)::Hyper)") == "masked_sgd_kernel"
    assert short_name("div32(long long*, int)") == "div32"


def test_without_cxxfilt_kernels_go_by_their_mangled_base_name(monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "CXXFILT", None)
    hist, _, sgd = parse_ptxas(PTXAS_SAMPLE)
    assert demangle([hist["mangled"], sgd["mangled"]]) == {hist["mangled"]: "hist_kernel",
                                                           sgd["mangled"]: "masked_sgd_kernel"}


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
    # The CPU emulator (tests/support/cuda_emu) compiles these sources as host C++ and replaces the one
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
               if not re.match(r"^(host\.h|launch\.h|\.\./common/env\.h|[a-z_]+)$", h)]
        assert not bad, f"{name} includes {bad}: only launch.h, common/env.h and the standard library"
    bad = [h for h in _INCLUDE.findall((CUDA_DIR.parent / "common" / "env.h").read_text()) if not re.match(r"^[a-z_]+$", h)]
    assert not bad, f"common/env.h includes {bad}: only the standard library"
    assert "#if defined(SPARSEFORCE_WITH_CUDA) || defined(SPARSEFORCE_CUDA_EMULATION)" in (CUDA_DIR / "host.cpp").read_text()


@pytest.mark.skipif(shutil.which("g++") is None or _cuda_include() is None, reason="no g++ or CUDA headers")
@pytest.mark.parametrize("path", [CUDA_DIR / "host.cpp", ROOT / "tests" / "support" / "cuda_emu" / "abi.cpp"], ids=lambda p: p.name)
def test_host_orchestration_compiles_against_the_cuda_headers(path):
    cmd = ["g++", "-std=c++17", "-fsyntax-only", "-Wall", "-Werror", "-DSPARSEFORCE_WITH_CUDA", "-I", str(ROOT / "csrc"),
           "-I", str(_cuda_include()), str(path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-6000:]
