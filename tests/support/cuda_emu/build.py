"""Builds the CUDA emulator's test library: csrc/cuda's kernels and host orchestration compiled as
host C++ against the emulator (tests/support/cuda_emu/include), plus its runtime and self-test kernels.

Cached by the content of every source and the flags, under ``$SFEMU_BUILD_DIR`` (default
``~/.cache/sparseforce-emu``), so a second test session reuses it. Two variants: ``"default"``
(-O2; the kernels' stores instrumented for the weak-memory schedules) and ``"asan"``
(AddressSanitizer + UBSan, loaded in a process that preloads libasan; sequentially consistent
memory only, as the two instrumentations cannot be combined).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
CSRC = ROOT / "csrc"

COMMON = ["-std=c++17", "-fPIC", "-g", "-pthread", "-DSPARSEFORCE_CUDA_EMULATION", "-ffp-contract=off",
          "-Wall", "-Wno-unknown-pragmas", "-I", str(HERE / "include")]
VARIANTS = {
    "default": ["-O2"],
    "asan": ["-O1", "-fno-omit-frame-pointer", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"],
}
# For the .cu files only (kernels): GCC's ThreadSanitizer instrumentation calls a hook before every
# memory access; runtime.cpp defines the hooks (no libtsan), which feed the weak memory model.
KERNEL_FLAGS = {
    "default": ["-fsanitize=thread", "--param=tsan-instrument-func-entry-exit=0", "-DSFEMU_INSTRUMENTED=1"],
    "asan": [],
}


class BuildError(RuntimeError):
    pass


def sources(csrc: Path) -> list[Path]:
    cuda = csrc / "cuda"
    files = sorted(cuda.glob("*.cu"))
    # The device-agnostic host orchestration (the torch glue, ops_cuda.cpp, stays GPU-only).
    files += [p for p in sorted(cuda.glob("*.cpp")) if p.name != "ops_cuda.cpp"]
    files += [HERE / "runtime.cpp", HERE / "selftest.cu"]
    if (HERE / "abi.cpp").is_file():
        files.append(HERE / "abi.cpp")
    return files


def _headers(csrc: Path) -> list[Path]:
    return sorted((HERE / "include").glob("*")) + sorted((csrc / "cuda").glob("*.h")) + \
        sorted((csrc / "cuda").glob("*.cuh")) + sorted((csrc / "common").glob("*.h"))


def _key(flags: list[str], srcs: list[Path], csrc: Path) -> str:
    h = hashlib.sha256()
    h.update(" ".join(flags).encode())
    for p in srcs + _headers(csrc):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    return Path(os.environ.get("SFEMU_BUILD_DIR", Path.home() / ".cache" / "sparseforce-emu"))


def build(variant: str = "default", *, csrc: Path | None = None, out_dir: Path | None = None) -> Path:
    """Path of the shared library for ``variant``, compiling it if the cache lacks it.

    ``csrc``: another copy of csrc/ to build (the planted-bug check builds mutated copies)."""
    csrc = Path(csrc) if csrc is not None else CSRC
    srcs = sources(csrc)
    flags = COMMON + ["-I", str(csrc), "-I", str(csrc / "cuda")] + VARIANTS[variant]
    kernel_flags = KERNEL_FLAGS[variant]
    dest = (out_dir or cache_dir()) / f"{variant}-{_key(COMMON + VARIANTS[variant] + kernel_flags, srcs, csrc)}"
    lib = dest / "libsfemu.so"
    if lib.is_file():
        return lib
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        raise BuildError(f"no C++ compiler ({cxx}) to build the CUDA emulator")
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)

    def compile_one(src: Path) -> Path:
        obj = tmp / (src.name + ".o")
        if src.suffix == ".cu":
            extra = ["-x", "c++", *kernel_flags]
        elif src.name == "runtime.cpp":  # it must know whether the kernels call its store hooks
            extra = [f for f in kernel_flags if f.startswith("-D")]
        else:
            extra = []
        cmd = [cxx, *flags, *extra, "-c", str(src), "-o", str(obj)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise BuildError(f"compiling {src.name} for the CUDA emulator failed:\n{' '.join(cmd)}\n{r.stderr[-8000:]}")
        return obj

    jobs = int(os.environ.get("SFEMU_JOBS", os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        objs = list(pool.map(compile_one, srcs))
    r = subprocess.run([cxx, "-shared", *flags, *map(str, objs), "-o", str(tmp / "libsfemu.so"), "-ldl"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise BuildError(f"linking the CUDA emulator failed:\n{r.stderr[-8000:]}")
    try:
        tmp.rename(dest)
    except OSError:  # another process built it first
        shutil.rmtree(tmp, ignore_errors=True)
    return lib


def asan_runtime() -> str | None:
    """The libasan to preload for the asan variant (Python itself is not instrumented)."""
    cxx = os.environ.get("CXX", "g++")
    r = subprocess.run([cxx, "-print-file-name=libasan.so"], capture_output=True, text=True)
    path = r.stdout.strip()
    return path if r.returncode == 0 and os.path.isabs(path) and os.path.exists(path) else None


if __name__ == "__main__":
    print(build(sys.argv[1] if len(sys.argv) > 1 else "default"))
