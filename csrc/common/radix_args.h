// The inputs of the radix_histogram op, checked and gathered the same way by its CPU and CUDA
// kernels.
#pragma once

#include <cstdint>

#include <ATen/ATen.h>

#include "aten_glue.h"

namespace sparseforce {

// grads empty: the keys of `a`; else of |a*grads|, formed as saliency_topk_masks forms it (in
// float32 unless an input is float64). Every input must rank exactly as `rank` (the caller
// promotes over all ranks) and `shift` must be a digit position of its keys.
inline Operands histogram_inputs(at::TensorList a, at::TensorList grads, at::TensorList competing,
                                 at::ScalarType rank, int64_t shift, int digit_bits, const at::Device& dev) {
  const bool saliency = !grads.empty();
  TORCH_CHECK(is_float(rank), "sparseforce: rank_dtype must be a float dtype, got ", rank);
  const int key_bits = static_cast<int>(at::elementSize(rank) * 8);
  TORCH_CHECK(shift >= 0 && shift % digit_bits == 0 && shift + digit_bits <= key_bits, "sparseforce: shift=", shift,
              " is not a digit position of a ", key_bits, "-bit key");
  Operands ops = gather(a, grads, competing, nullptr, dev, /*widen=*/true);
  for (const Operand& o : ops.list) {
    TORCH_CHECK_VALUE(at::promote_types(o.type, rank) == rank, "sparseforce: ", saliency ? "weights" : "scores", "[",
                      o.index, "] ranks as ", o.type, ", which ", rank, " does not hold exactly");
  }
  TORCH_CHECK_VALUE(!saliency || rank == at::kFloat || rank == at::kDouble,
                    "sparseforce: saliencies rank as float32 or float64, not ", rank);
  return ops;
}

}  // namespace sparseforce
