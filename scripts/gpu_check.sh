#!/usr/bin/env bash
# The GPU verification of the cuda backend, in one run on a CUDA machine (made for the H200 box:
# torch 2.11 + CUDA 13, triton 3.6, no network). From the repository root:
#
#   bash scripts/gpu_check.sh            # build, full test suite, CUDA fallback tests, benchmarks
#   BENCH_FULL=1 bash scripts/gpu_check.sh   # also the 1 B / 4 B parameter benchmark cases
#
# Everything it produces goes under $OUT if set (else ./gpu_check_out): the build log, the test
# logs + JUnit XML, the benchmark JSON/PNG (also left in benchmarks/results for committing) and a
# summary. Steps keep going after a failure so one run reports everything; the exit status is
# nonzero if any step failed.
set -uo pipefail

cd "$(dirname "$0")/.."
DEST="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$DEST"
LOG="$DEST/gpu_check.log"
: > "$LOG"
STATUS=0
declare -a SUMMARY=()

step() {  # step NAME CMD...: run, log, record pass/fail
  local name="$1"; shift
  echo "=== $name: $*" | tee -a "$LOG"
  local t0=$SECONDS
  "$@" 2>&1 | tee -a "$LOG" "$DEST/$name.log"
  local rc=${PIPESTATUS[0]}
  SUMMARY+=("$name: rc=$rc ($((SECONDS - t0)) s)")
  [ "$rc" -eq 0 ] || STATUS=1
  return "$rc"
}

step env bash -c 'nvidia-smi; nvcc --version; python -c "import torch, sys; print(sys.version); print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else \"NO GPU\")"; python -c "import triton; print(\"triton\", triton.__version__)"'

# The CUDA kernels must build: no silent fallback to a CPU-only extension.
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export SPARSEFORCE_FORCE_CUDA=1 SPARSEFORCE_REQUIRE_EXT=1
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
if ! step build python -m pip install --no-deps --no-build-isolation -v -e .; then
  printf '%s\n' "${SUMMARY[@]}" | tee "$DEST/summary.txt"
  exit 1
fi

step backends python - <<'PY'
import torch
import sparseforce.ops as ops
from sparseforce import _ext
from sparseforce.ops._registry import unavailable_reason
print("extension:", _ext.load() or "loaded", _ext.HOW)
print("cuda backends:", ops.available_backends("cuda"), "cpu backends:", ops.available_backends("cpu"))
reason = unavailable_reason("cuda", "topk_masks", torch.device("cuda"))
assert reason is None, f"the cuda backend is unavailable: {reason}"
# A quick smoke test before the suite: bit-identical to the reference on a tie-heavy input.
g = torch.Generator(device="cuda").manual_seed(0)
s = [torch.randint(-3, 4, (1000, 37), device="cuda", generator=g).float(), torch.zeros(5000, device="cuda")]
for k in (0, 1, 12345, 42000):
    a = ops.topk_masks(s, k, backend="cuda"); b = ops.topk_masks(s, k, backend="reference")
    assert all(torch.equal(x, y) for x, y in zip(a, b)), k
print("smoke test passed")
PY

step tests python -m pytest -q tests -x -ra --junitxml="$DEST/tests.xml"

# The full-data fallback (no candidate buffer: radix to the whole key, ties by per-tile quotas)
# is taken only by inputs with huge ties; forcing it runs the shared tests through it too.
step tests_no_candidates env SPARSEFORCE_CUDA_CANDIDATE_CAP=0 \
  python -m pytest -q tests/test_ops.py tests/test_ops_properties.py -x -ra -k cuda --junitxml="$DEST/tests_no_candidates.xml"

# The README's NCCL commands, on every GPU of the machine (one on the H200 box).
NGPU=$(python -c "import torch; print(torch.cuda.device_count())")
step ddp_nccl torchrun --standalone --nproc_per_node="$NGPU" -m sparseforce ddp --device cuda --out "$DEST/ddp"
step ddp_nccl_sharded torchrun --standalone --nproc_per_node="$NGPU" -m sparseforce ddp --device cuda --sharded \
  --out "$DEST/ddp_sharded"

BENCH_FULL="${BENCH_FULL:-0}"
step bench python -c "
from sparseforce import bench
bench.run(out_dir='benchmarks/results', full=bool(int('$BENCH_FULL')))
"
mkdir -p "$DEST/results" && cp -r benchmarks/results/. "$DEST/results/" 2>/dev/null

printf '%s\n' "${SUMMARY[@]}" | tee "$DEST/summary.txt"
exit "$STATUS"
