// The CPU drop/grow update (drop_grow.h): one dynamic-sparse-training mask update over every
// tensor in one call, as two exact selections on magnitude keys and two byte passes:
//
//   drop   K = the keeps[s] largest |w| among the active elements of each segment: the
//          "competing" selection of Iter SNIP (only masks-True elements compete) on the keys of
//          |w| (float_keys.h's magnitude_key: the sign bit cleared, so -0.0 == +0.0 and every
//          key is a non-negative float's), written into a scratch byte mask;
//   flip   the scratch becomes "not in K" (one vectorised pass over N bytes);
//   grow   G = the grows[s] largest |score| among the elements not in K, the same selection
//          with the flipped scratch as the competing mask, written into the new masks;
//   merge  new mask |= K (the scratch flipped back on the fly: another pass over N bytes).
// Ties go to the lowest position in both selections (the selections' rule), so among equal |w|
// the higher positions are dropped first, and a weight just dropped competes for growth.
// One segment per tensor runs segmented_select (segmented_select.cpp: tensors of up to
// SPARSEFORCE_CPU_SEG_SMALL elements one per thread in memory, longer ones by the radix passes
// cut into pieces across the threads, all of one phase in one parallel region); one segment over
// all tensors runs the global radix select (radix_select.cpp: one histogram over every tensor,
// keys promoted to the dtype holding every input exactly), once per phase. Each tensor keeps its
// own dtype in the per-tensor form. A NaN anywhere in weights or scores (competing or not) is
// seen by the key passes themselves (MagnitudeSrc::kNanAll): no separate NaN pass. A NaN weight
// stops the update before the grow; the scores of the tensors before it are then searched so
// that a NaN score of a lower tensor is reported first. Extra memory: the N-byte scratch, plus
// what the selections use (radix_select.cpp, segmented_select.cpp).
#include "drop_grow.h"

#include <algorithm>
#include <cstdint>
#include <vector>

#include <ATen/Parallel.h>

#include "radix_passes.h"
#include "radix_select.h"
#include "segmented_select.h"

namespace sparseforce {
namespace cpu {
namespace {

constexpr int64_t kByteGrain = int64_t(1) << 18;  // bytes per task of the byte passes

// f(o, a, b) over every input's elements [a, b), in parallel, in pieces of the global positions.
template <typename F>
void for_each_range(const std::vector<Operand>& ops, F&& f) {
  if (ops.empty()) return;
  const int64_t n = ops.back().offset + ops.back().n;
  at::parallel_for(0, n, kByteGrain, [&](int64_t lo, int64_t hi) {
    auto j = std::upper_bound(ops.begin(), ops.end(), lo, [](int64_t v, const Operand& o) { return v < o.offset; }) - 1;
    for (; j != ops.end() && j->offset < hi; ++j) {
      const int64_t a = std::max(lo, j->offset) - j->offset;
      const int64_t b = std::min(hi, j->offset + j->n) - j->offset;
      if (a < b) f(*j, a, b);
    }
  });
}

// One segment per tensor, each keeping ks[its index].
std::vector<Segmented> per_tensor(const std::vector<Operand>& ops, const int64_t* ks) {
  std::vector<Segmented> segs;
  for (const Operand& o : ops) {
    Segmented s;
    s.op = o;
    s.len = o.n;
    s.ks = ks + o.index;
    segs.push_back(s);
  }
  return segs;
}

// The keeps[0] / grows[0] largest over all the tensors, or each tensor's own count.
int64_t select(const std::vector<Operand>& ops, const int64_t* ks, bool global, at::ScalarType rank) {
  if (!global) return segmented_select(per_tensor(ops, ks), Keys::Magnitude);
  int64_t n = 0;
  for (const Operand& o : ops) n += o.n;
  return select_magnitude(ops, n, ks[0], rank).nan_index;
}

bool holds_nan(const Operand& o) {
  bool bad = false;
  dispatch_float(o.type, [&](auto tag) {
    using In = decltype(tag);
    const In* x = static_cast<const In*>(o.a);
    for (int64_t i = 0; i < o.n && !bad; ++i) bad = widen(x[i]) != widen(x[i]);
  });
  return bad;
}

}  // namespace

int64_t drop_grow(const DropGrow& update) {
  const int64_t weight_nan = select(update.weights, update.keeps, update.global, update.weight_rank);
  if (weight_nan >= 0) {
    for (const Operand& o : update.scores) {
      if (o.index < weight_nan && holds_nan(o)) return 2 * o.index + 1;
    }
    return 2 * weight_nan;
  }
  for_each_range(update.weights, [](const Operand& o, int64_t a, int64_t b) {
    uint8_t* __restrict k = o.out;
    for (int64_t i = a; i < b; ++i) k[i] ^= uint8_t(1);
  });
  std::vector<Operand> grow = update.scores;
  for (size_t j = 0; j < grow.size(); ++j) grow[j].competing = update.weights[j].out;
  const int64_t score_nan = select(grow, update.grows, update.global, update.score_rank);
  if (score_nan >= 0) return 2 * score_nan + 1;
  for_each_range(grow, [](const Operand& o, int64_t a, int64_t b) {
    const uint8_t* __restrict not_kept = o.competing;
    uint8_t* __restrict out = o.out;
    for (int64_t i = a; i < b; ++i) out[i] |= not_kept[i] ^ uint8_t(1);
  });
  return -1;
}

}  // namespace cpu
}  // namespace sparseforce
