// The CPU drop/grow update behind drop_grow_masks (design: drop_grow.cpp). No torch tensors here:
// ops_cpu.cpp is the torch layer. NaN is reported, never raised.
#pragma once

#include <cstdint>
#include <vector>

#include <c10/core/ScalarType.h>

#include "../common/operand.h"

namespace sparseforce {
namespace cpu {

// One update. `weights` and `scores` list the same non-empty tensors in the same order
// (Operand::index: the position in the caller's lists).
struct DropGrow {
  std::vector<Operand> weights;  // competing: the active set; out: scratch bytes (the survivors K)
  std::vector<Operand> scores;   // out: the new masks (competing: unused, the kernel sets it)
  // keeps[s] survivors of the drop and grows[s] grown, s = Operand::index (one segment per
  // tensor), or s = 0 for all tensors together when `global`.
  const int64_t* keeps = nullptr;
  const int64_t* grows = nullptr;
  bool global = false;
  at::ScalarType weight_rank = at::kFloat;  // global: the dtypes that hold every input exactly
  at::ScalarType score_rank = at::kFloat;
};

// Writes the new masks K ∪ G and returns the NaN code: the least of 2i for a NaN in weights[i]
// and 2i + 1 for one in scores[i] (any element, active or not), or -1 (the masks are then
// unspecified).
int64_t drop_grow(const DropGrow& update);

}  // namespace cpu
}  // namespace sparseforce
