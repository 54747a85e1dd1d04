"""Planted bugs: proof that the emulated kernel tests catch real kernel mistakes.

Each mutant is ONE small edit to a copy of csrc/ (the edit's text must occur exactly once). For
each, the emulator library is rebuilt from the copy and the emulated kernel tests run against it
(``SFEMU_CSRC`` points conftest at the copy); the suite must fail. Not part of the test run (each
mutant costs a build and a test run); run by hand:

    python tests/support/cuda_emu/mutants.py            # all mutants; prints a table, exit 1 if one survives
    python tests/support/cuda_emu/mutants.py tie_quota  # one
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

# name -> (file under csrc/, original text, mutated text, what it breaks)
MUTANTS = {
    "digit_off_by_one": ("cuda/select.cu", "if (acc + h >= need) {", "if (acc + h > need) {",
                         "the digit choice skips the bin holding the k-th key when it ends exactly there"),
    "missing_syncthreads": ("cuda/common.cuh", "  if (lane == 31) scratch[warp] = x;\n  __syncthreads();\n",
                            "  if (lane == 31) scratch[warp] = x;\n",
                            "block scan: thread 0 sums the warp totals before every warp wrote its own"),
    "tie_quota": ("cuda/select.cu", "const long long before = carry + incl - c;", "const long long before = carry + incl - c - 1;",
                  "each tile's quota of ties counts one tie too few before it"),
    "negative_zero": ("cuda/common.cuh", "  b = (b << 1) == 0 ? 0u : b;\n", "",
                      "-0.0 gets a key below +0.0 (fp32)"),
    "counter_not_reset": ("cuda/select.cu", "    s.blocks_done = 0;\n    *st = s;\n  }\n  for (int i = threadIdx.x; i < kBins; i += kThreads) w.hist[i] = 0;\n}\n\n// Known key",
                          "    *st = s;\n  }\n  for (int i = threadIdx.x; i < kBins; i += kThreads) w.hist[i] = 0;\n}\n\n// Known key",
                          "the last-block-done counter of the full-data passes is not reset"),
    "candidate_slot": ("cuda/select.cu", "long long at = static_cast<long long>(base) + (incl - mine);",
                       "long long at = static_cast<long long>(base) + incl - 1;",
                       "warp-aggregated candidate append writes to the wrong slots"),
    "position_tiebreak": ("cuda/select.cu", "x = pmask - uint64_t(w.cand_pos[i]);", "x = uint64_t(w.cand_pos[i]);",
                          "ties among candidates go to the highest position"),
    "run_flush": ("cuda/select.cu", "if (run != 0 && bin != run_bin) {", "if (false && run != 0 && bin != run_bin) {",
                  "the shared histogram merges a run of different digits into one bin"),
    "sgd_pruned_not_zeroed": ("cuda/masked_sgd.cu", "np = keep ? np : A(0);", "np = keep ? np : pi;",
                              "masked SGD leaves pruned weights at their old value"),
    "nan_index_max": ("cuda/select.cu", "nan_index = ref.seg.index < nan_index ? ref.seg.index : nan_index;",
                      "nan_index = ref.seg.index > nan_index || nan_index == INT64_MAX ? ref.seg.index : nan_index;",
                      "NaN is reported in the last tensor holding one, not the first"),
    "histogram_prefix": ("cuda/select.cu", "take[v] = live[v] && (top || (kv >> high) == p.prefix);",
                         "take[v] = live[v];", "key_histogram counts keys outside the prefix"),
    "histogram_warp_sum": ("cuda/select.cu", "for (int d = 16; d >= 1; d >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, d);",
                           "for (int d = 16; d >= 2; d >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, d);",
                           "key_histogram's warp-uniform sum misses half the lanes"),
    "missing_threadfence": ("cuda/common.cuh", "  __threadfence();\n  __syncthreads();\n  if (threadIdx.x == 0) last = atomicAdd(",
                            "  __syncthreads();\n  if (threadIdx.x == 0) last = atomicAdd(",
                            "no fence before the last-block-done counter: the last block may read stale histograms"),
    "candidate_overrun": ("cuda/select.cu", "} else if (s.count <= p.cap) {", "} else if (s.count <= p.cap + 1) {",
                          "a bin one larger than the candidate buffer is appended anyway: one write past its end"),
    "seg_row_hist_clear": ("cuda/segmented.cu", "      __syncthreads();  // every bin is cleared before any is counted\n", "",
                           "row path: threads count into bins other threads have not cleared yet"),
    "seg_row_choice_sync": ("cuda/segmented.cu", "      __syncthreads();  // the digit is chosen before anyone reads it\n", "",
                            "row path: threads read the chosen digit before its owner wrote it"),
    "seg_row_tie_quota": ("cuda/segmented.cu", "(tie && rank < need)", "(tie && rank <= need)",
                          "row path: one tie more than the k-th key's quota is kept"),
    "seg_row_digit": ("cuda/segmented.cu", "if (above < need && need <= above + h) {", "if (above < need && need < above + h) {",
                      "row path: the digit choice skips the bin holding the k-th key when it ends exactly there"),
    "seg_tie_order": ("cuda/segmented.cu", "(key[j] > key[i] || (key[j] == key[i] && j < i))",
                      "(key[j] > key[i] || (key[j] == key[i] && j > i))",
                      "thread path: ties go to the highest position in the group"),
    "seg_segment_boundary": ("cuda/segmented.cu", "const int64_t end = (row + 1) * t->len;",
                             "const int64_t end = (row + 1) * t->len + 1;",
                             "radix path: a segment's last chunk reaches one element into the next segment"),
    "seg_flush_not_atomic": ("cuda/segmented.cu", "if (n != 0) atomicAdd(hist + i, static_cast<unsigned long long>(n));",
                             "if (n != 0) hist[i] += n;",
                             "radix path: chunks flush a segment's histogram with a plain add, not an atomic (caught under the weak-memory schedule only)"),
    "seg_quota_inclusive": ("cuda/segmented.cu",
                            "const long long before = carry + block_inclusive_scan<long long>(c, scratch, &total) - c;",
                            "const long long before = carry + block_inclusive_scan<long long>(c, scratch, &total);",
                            "radix path: a chunk's quota of ties counts its own ties as earlier ones"),
    "seg_nan_not_reset": ("cuda/segmented.cu", "  if (first == 0) *nan_out = ~0ull;\n", "",
                          "the NaN index is never initialised (reads whatever the memory held)"),
    "seg_hist_prefix": ("cuda/segmented.cu", "if (l == 0 || (key >> (shift + kSegDigitBits)) == st.prefix) {",
                        "if (true) {", "radix path: levels after the first count keys outside the segment's prefix"),
    "seg_partial_quota": ("cuda/segmented.cu", "keep |= tie && quota > 0;", "keep |= tie;",
                          "radix path: a chunk whose quota of ties is 0 keeps its ties anyway"),
    "dg_scan_vote": ("cuda/drop_grow.cu", "if (__syncthreads_or(nan) && threadIdx.x == 0)", "if (nan && threadIdx.x == 0)",
                     "drop/grow NaN scan: the block's vote (a barrier) skipped, so only thread 0's elements count"),
    "dg_drop_ties_tensor": ("cuda/segmented.cu", "(key[j] > key[i] || (key[j] == key[i] && j < i))",
                            "(key[j] > key[i] || (key[j] == key[i] && ((t.flags & kFlagUnion) ? j < i : j > i)))",
                            "drop phase, per tensor (thread path): of equal weight magnitudes the lowest positions drop first"),
    "dg_grow_ties_tensor": ("cuda/segmented.cu", "(key[j] > key[i] || (key[j] == key[i] && j < i))",
                            "(key[j] > key[i] || (key[j] == key[i] && ((t.flags & kFlagUnion) ? j > i : j < i)))",
                            "grow phase, per tensor (thread path): of equal score magnitudes the highest positions grow first"),
    "dg_drop_ties_global": ("cuda/host.cpp", "const Table t = segment_table(list, rank, false, true);",
                            "const Table t = segment_table(phase == 0 ? std::vector<Input>(list.rbegin(), list.rend()) : list, "
                            "rank, false, true);",
                            "drop phase, global: the tensors' positions run in reverse, so ties across tensors go wrong"),
    "dg_grow_ties_global": ("cuda/host.cpp", "const Table t = segment_table(list, rank, false, true);",
                            "const Table t = segment_table(phase == 1 ? std::vector<Input>(list.rbegin(), list.rend()) : list, "
                            "rank, false, true);",
                            "grow phase, global: the tensors' positions run in reverse, so ties across tensors go wrong"),
    "dg_dropped_not_offered": ("cuda/host.cpp", "grows_in.push_back(Input{in.s, nullptr, k, in.out,",
                               "grows_in.push_back(Input{in.s, nullptr, in.mask, in.out,",
                               "the grow phase competes outside the old mask, not outside K: dropped weights are never "
                               "offered for growth (and stay)"),
    "dg_nan_not_atomic": ("cuda/drop_grow.cu", "atomicMin(nan_out, static_cast<unsigned long long>(seg.index));",
                          "*nan_out = *nan_out < static_cast<unsigned long long>(seg.index) ? *nan_out : seg.index;",
                          "drop/grow NaN scan: blocks fold the NaN code with a plain read-min-write, not an atomic, "
                          "so racing blocks can lose the lower code"),
    "dg_scratch_boundary": ("cuda/host.cpp", "at += in.n;", "at += in.n - 1;",
                            "each tensor's K scratch starts one byte early, on the previous tensor's last element"),
    "dg_scan_boundary": ("cuda/drop_grow.cu", "const int64_t hi = lo + kTile < seg.n ? lo + kTile : seg.n;",
                         "const int64_t hi = lo + kTile < seg.n ? lo + kTile : seg.n - 1;",
                         "drop/grow NaN scan: each tensor's last element is never checked"),
    "dg_union_rest": ("cuda/common.cuh", "return uint8_t((flags & kFlagUnion) != 0);", "return uint8_t(0);",
                      "the grow phase writes false, not K, for the elements outside its competition"),
    "dg_signed_global": ("cuda/select.cu", "const bool abs = !SAL && (flags & kFlagAbs) != 0;", "const bool abs = false;",
                         "global select: kFlagAbs ignored, values rank signed"),
    "dg_k_dev_ignored": ("cuda/select.cu", "s.need = k_dev != nullptr ? *k_dev : k;", "s.need = k;",
                         "global select: the k on the device is ignored (the host's placeholder 0 is used)"),
}

# The drop/grow and segmented kernels' tests first: with -x, a bug in drop_grow.cu or segmented.cu
# fails there, before the AddressSanitizer rerun at the end of test_cuda_emulated.py.
TESTS = ["tests/ops/test_cuda_emulated_drop_grow.py", "tests/ops/test_drop_grow.py", "tests/ops/test_cuda_emulated_segmented.py", "tests/ops/test_segmented.py", "tests/ops/test_cuda_emulated.py",
         "tests/ops/test_ops.py", "tests/ops/test_radix_histogram.py", "-k", "cuda_emu"]


def run(name: str | None) -> tuple[bool, float, str]:
    """Runs the tests on a copy of csrc/ with mutant ``name`` applied (None: unmodified, the
    control, which must pass). Returns (the tests failed, seconds, pytest's last line)."""
    rel, old, new, _ = MUTANTS[name] if name is not None else ("cuda/select.cu", "", "", "")
    with tempfile.TemporaryDirectory(prefix=f"sfmut-{name}-") as tmp:
        csrc = Path(tmp) / "csrc"
        shutil.copytree(ROOT / "csrc", csrc)
        path = csrc / rel
        text = path.read_text()
        if name is not None and text.count(old) != 1:
            raise SystemExit(f"mutant {name}: its text occurs {text.count(old)} times in {rel}; update the mutant")
        if name is not None:
            path.write_text(text.replace(old, new))
        env = dict(os.environ, SFEMU_CSRC=str(csrc), SFEMU_BUILD_DIR=str(Path(tmp) / "build"))
        t0 = time.time()
        r = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *TESTS],
                           cwd=ROOT, env=env, capture_output=True, text=True)
        tail = [l for l in r.stdout.splitlines() if l.strip()][-1:] or [r.stderr[-200:]]
        return r.returncode != 0, time.time() - t0, tail[0]


def main(argv: list[str]) -> int:
    names = argv or list(MUTANTS)
    failed, secs, tail = run(None)
    print(f"{'(control: no bug)':24s} {'FAILS' if failed else 'passes':9s} {secs:5.0f} s  {tail}", flush=True)
    if failed:
        print("the unmodified kernels fail the tests: fix that first")
        return 1
    rows = []
    for name in names:
        killed, secs, tail = run(name)
        rows.append((name, "caught" if killed else "SURVIVED", f"{secs:.0f} s", tail))
        print(f"{name:24s} {rows[-1][1]:9s} {rows[-1][2]:>6s}  {tail}", flush=True)
    print("\n| planted bug | what it breaks | result |\n|---|---|---|")
    for name, res, _, _ in rows:
        print(f"| `{name}` | {MUTANTS[name][3]} | {res} |")
    return 0 if all(r[1] == "caught" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
