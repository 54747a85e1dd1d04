#!/usr/bin/env bash
# CI: the real CUDA extension builds (the .cu kernels with nvcc and their torch glue) and
# registers its kernels, on a machine without a GPU.
#
# In a venv of its own with a CUDA build of torch (torch==2.14.1, CUDA 13.0), it builds
# sparseforce._C with SPARSEFORCE_FORCE_CUDA=1 from a copy of the tree into a scratch folder, so
# the checkout's in-place CPU build (the main suite's torch) is never touched; imports the
# module from there and checks that the CUDA and the CPU dispatch keys hold a kernel for every
# op csrc/ registers for them (scripts/check_ext_dispatch.py parses the m.impl names).
#
#   bash scripts/ci_cuda_build.sh                                        # CI: a fresh venv
#   SPARSEFORCE_CUDA_VENV=/work/venv-cuda bash scripts/ci_cuda_build.sh  # local: reuse a venv
#
# Environment: SPARSEFORCE_CUDA_VENV (a venv to reuse, with torch, setuptools, wheel, ninja,
# pybind11), CUDA_HOME (the toolkit root, default /usr/local/cuda-13.0 or /usr/local/cuda),
# MAX_JOBS (default 2), TORCH_CUDA_ARCH_LIST (default 9.0), PYTHON (makes the venv, default
# python3), KEEP_WORK=1 (keep the scratch folder under ${TMPDIR:-/tmp}).
#
# Measured on the 2-core CI machine (MAX_JOBS=2, nvcc 13.0): a fresh venv + pip install of
# torch 2.14.1 and the build deps (about 5 GB, from the local package store) 55 s; the build
# 40-48 s (ninja, per file: cpu/radix_select.cpp 29 s, cuda/ops_cuda.cpp 21 s, cpu/masked_sgd.cpp 20 s,
# cuda/select.cu 8 s, register.cpp 8 s, cuda/masked_sgd.cu 4 s); import + check 1 s.
# 99 s in all (51 s with a reused venv); the scratch folder is removed on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export MAX_JOBS="${MAX_JOBS:-2}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
TORCH_SPEC="torch==2.14.1"  # a CUDA 13.0 build, matching the toolkit's nvcc

WORK="$(mktemp -d "${TMPDIR:-/tmp}/sparseforce-cuda-build.XXXXXX")"
cleanup() { if [ "${KEEP_WORK:-0}" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi; }
trap cleanup EXIT
t_start=$SECONDS
phase() { echo "--- ci_cuda_build: $1 ($((SECONDS - t_start)) s so far)"; }

# The toolkit's own root: left unset, torch infers it from the nvcc on PATH, which may be a
# wrapper script (/usr/local/bin/nvcc) whose parent folder has no include/cuda_runtime.h.
if [ -z "${CUDA_HOME:-}" ]; then
  for d in /usr/local/cuda-13.0 /usr/local/cuda; do
    if [ -x "$d/bin/nvcc" ]; then CUDA_HOME="$d"; break; fi
  done
fi
if [ -z "${CUDA_HOME:-}" ] || [ ! -x "$CUDA_HOME/bin/nvcc" ] || [ ! -f "$CUDA_HOME/include/cuda_runtime.h" ]; then
  echo "ci_cuda_build: no CUDA toolkit (set CUDA_HOME to a root with bin/nvcc and include/cuda_runtime.h)" >&2
  exit 1
fi
export CUDA_HOME PATH="$CUDA_HOME/bin:$PATH"

if [ -n "${SPARSEFORCE_CUDA_VENV:-}" ]; then
  PY="$SPARSEFORCE_CUDA_VENV/bin/python"
  [ -x "$PY" ] || { echo "ci_cuda_build: SPARSEFORCE_CUDA_VENV=$SPARSEFORCE_CUDA_VENV has no bin/python" >&2; exit 1; }
  phase "reusing the venv $SPARSEFORCE_CUDA_VENV"
else
  phase "creating a venv with $TORCH_SPEC"
  "${PYTHON:-python3}" -m venv "$WORK/venv"
  PY="$WORK/venv/bin/python"
  "$PY" -m pip install --quiet --disable-pip-version-check "$TORCH_SPEC" numpy "setuptools>=64" wheel ninja pybind11
fi
"$PY" -c "import torch, sys; print('torch', torch.__version__, 'CUDA', torch.version.cuda); sys.exit(torch.version.cuda is None)" \
  || { echo "ci_cuda_build: $PY's torch is not a CUDA build" >&2; exit 1; }
nvcc --version | tail -n 1

# A copy of what setup.py reads, without the checkout's compiled files.
SRC="$WORK/src"
mkdir -p "$SRC"
cp -r "$ROOT/setup.py" "$ROOT/README.md" "$ROOT/pyproject.toml" "$ROOT/csrc" "$ROOT/sparseforce" "$SRC/"
find "$SRC" \( -name '*.so' -o -name '*.o' -o -name __pycache__ \) -prune -exec rm -rf {} +
so_files() { find "$ROOT/sparseforce" -name '*.so' -printf '%p %s %T@\n' | sort; }
before="$(so_files)"

phase "building sparseforce._C with the CUDA kernels (MAX_JOBS=$MAX_JOBS, arch $TORCH_CUDA_ARCH_LIST)"
(cd "$SRC" && env -u SPARSEFORCE_NO_EXT -u SPARSEFORCE_NO_CUDA SPARSEFORCE_FORCE_CUDA=1 SPARSEFORCE_REQUIRE_EXT=1 \
  "$PY" setup.py --quiet build_ext --build-temp "$WORK/temp" --build-lib "$WORK/lib")
mapfile -t built < <(find "$WORK/lib" -name '_C*.so')
[ "${#built[@]}" -eq 1 ] || { echo "ci_cuda_build: expected one _C*.so under $WORK/lib, found ${#built[@]}" >&2; exit 1; }
[ "$(so_files)" = "$before" ] || { echo "ci_cuda_build: the build changed the checkout's sparseforce/*.so" >&2; exit 1; }

phase "importing it and checking its dispatch keys"
(cd "$WORK" && "$PY" "$ROOT/scripts/check_ext_dispatch.py" --so "${built[0]}" --csrc "$SRC/csrc" --key CUDA --key CPU)
phase "done"
