// The CPU radix select over raw inputs (common/operand.h): the exact k-th largest key of a list
// of inputs and the masks keeping exactly the k largest (ties: lowest global position), or one
// digit histogram of a selection run elsewhere. No torch tensors here: ops_cpu.cpp is the torch
// layer. NaN is reported in the results, never raised.
#pragma once

#include <cstdint>
#include <vector>

#include <c10/core/ScalarType.h>

#include "../common/operand.h"

namespace sparseforce {
namespace cpu {

constexpr int kDigit = 16;  // bits per radix digit
constexpr int64_t kBins = int64_t(1) << kDigit;

struct Result {
  int64_t nan_index = -1;  // first input holding a (competing) NaN, or -1; then nothing is written
  int64_t competing = 0;   // elements that compete; below k: nothing is written
  uint64_t key = 0;        // the k-th largest key
};

// topk_masks (write_masks: each input's `out`) and kth_largest: the keys of the inputs' values
// (n elements in all, 0 <= k <= n) ranked as `rank`, which holds every input dtype exactly.
Result select_scores(const std::vector<Operand>& inputs, int64_t n, int64_t k, at::ScalarType rank,
                     bool write_masks);

// saliency_topk_masks: the keys of |a*b|, ranked in float64 when `wide`, else float32.
Result select_saliency(const std::vector<Operand>& inputs, int64_t n, int64_t k, bool wide);

// drop_grow_masks' global segment: the masks (each input's `out`) keeping the k largest |x| of
// the competing elements (0 <= k <= competing), x ranked as `rank`, which holds every input
// dtype exactly. A NaN anywhere in an input is reported, competing or not.
Result select_magnitude(const std::vector<Operand>& inputs, int64_t n, int64_t k, at::ScalarType rank);

// The value of `key` (a key of `rank`) written as a `rank` scalar; the zero key is +0.0's.
void store_value(uint64_t key, at::ScalarType rank, void* dst);

struct DigitCounts {
  std::vector<int64_t> counts;  // kBins
  int64_t nan_index = -1;       // the top pass's first input with a competing NaN, or -1
};

// radix_histogram: the counts of the digit at `shift` of the competing keys (of the inputs'
// values, or of |a*b| when `saliency`, ranked as `rank`) whose bits above it equal `prefix`.
DigitCounts digit_histogram(const std::vector<Operand>& inputs, at::ScalarType rank, bool saliency, int shift,
                            uint64_t prefix);

}  // namespace cpu
}  // namespace sparseforce
