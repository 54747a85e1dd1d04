// One input tensor of a selection as the kernels read it: raw pointers into contiguous memory.
// aten_glue.h gathers them from the op's tensors; the CPU radix select (csrc/cpu) reads them
// directly, the CUDA glue turns them into host.h's C-ABI inputs.
#pragma once

#include <cstdint>

#include <c10/core/ScalarType.h>

namespace sparseforce {

struct Operand {
  const void* a = nullptr;             // scores, or weights
  const void* b = nullptr;             // grads (saliency) or null
  const uint8_t* competing = nullptr;  // only these elements compete; null: all do
  uint8_t* out = nullptr;              // the bool mask to write, or null (kth_largest, histograms)
  at::ScalarType type = at::kFloat;    // dtype of a (and b)
  int64_t n = 0;                       // elements
  int64_t offset = 0;                  // global position of element 0 (elements of the inputs before it)
  int64_t index = 0;                   // position in the caller's list, for NaN reports
};

// One tensor of a masked_sgd_ step, contiguous.
struct SgdOperand {
  void* p = nullptr;
  const void* g = nullptr;           // same dtype as p
  void* buf = nullptr;               // null when momentum == 0
  const uint8_t* mask = nullptr;     // null: unmasked
  at::ScalarType type = at::kFloat;
  int64_t n = 0;
  int64_t offset = 0;                // global position of element 0
  bool fresh = false;                // buf holds no state yet: it becomes d_p (torch's first step)
};

}  // namespace sparseforce
