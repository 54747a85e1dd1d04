// The CPU segmented selections behind segmented_topk_masks, segmented_saliency_topk_masks and
// drop_grow_masks' per-tensor segments: many independent exact top-k selections at once (design:
// segmented_select.cpp). No torch tensors here: ops_cpu.cpp is the torch layer. NaN is reported,
// never raised.
#pragma once

#include <cstdint>
#include <vector>

#include "../common/operand.h"

namespace sparseforce {
namespace cpu {

// One input cut into segments of `len` consecutive elements (row-major; op.n is a multiple of
// len): segment r keeps its ks[r] largest (0 <= ks[r] <= len), or `keep` when ks is null (N:M).
struct Segmented {
  Operand op;
  int64_t len = 1;
  const int64_t* ks = nullptr;
  int64_t keep = 0;
};

// What the selections rank: the scores in their own dtype; |a*b| in float32 (float64 for
// float64 inputs); or |a| in a's dtype (drop_grow_masks, where a NaN anywhere in a is reported,
// competing or not).
enum class Keys { Scores, Saliency, Magnitude };

// Writes every input's mask (op.out) from the keys of `kind`; only competing elements compete
// (none are for Scores), and every segment holds at least its k of them. Returns the lowest
// Operand::index of an input holding a reported NaN (the masks are then unspecified), or -1.
int64_t segmented_select(const std::vector<Segmented>& inputs, Keys kind);

}  // namespace cpu
}  // namespace sparseforce
