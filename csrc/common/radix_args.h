// The argument checks of the radix_histogram op, shared by its CPU and CUDA kernels (the Python
// layer checks first; these guard direct torch.ops calls).
#pragma once

#include <cstdint>

#include <ATen/ATen.h>

namespace sparseforce {

inline void check_radix_histogram_args(at::TensorList a, at::TensorList b, at::TensorList prev_masks,
                                       at::ScalarType rank, int64_t shift, int digit_bits) {
  TORCH_CHECK(b.empty() || a.size() == b.size(), "sparseforce: weights has ", a.size(), " tensors but grads has ",
              b.size());
  TORCH_CHECK(prev_masks.empty() || prev_masks.size() == a.size(), "sparseforce: prev_masks has ",
              prev_masks.size(), " tensors but there are ", a.size(), " inputs");
  TORCH_CHECK(rank == at::kHalf || rank == at::kBFloat16 || rank == at::kFloat || rank == at::kDouble,
              "sparseforce: rank_dtype must be a float dtype, got ", rank);
  const int key_bits = static_cast<int>(at::elementSize(rank) * 8);
  TORCH_CHECK(shift >= 0 && shift % digit_bits == 0 && shift + digit_bits <= key_bits, "sparseforce: shift=", shift,
              " is not a digit position of a ", key_bits, "-bit key");
}

}  // namespace sparseforce
