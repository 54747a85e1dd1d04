// The torch layer of the CPU kernels: the ops of sparseforce/ops/library.py registered for the CPU
// key, over the radix select (radix_select.h) and the SGD step (masked_sgd.h). Checks, contiguous
// inputs and the outputs are common/aten_glue.h's, shared with the CUDA kernels.
#include <algorithm>
#include <cstdint>
#include <tuple>
#include <vector>

#include <ATen/ATen.h>
#include <torch/library.h>

#include "../common/aten_glue.h"
#include "../common/radix_args.h"
#include "masked_sgd.h"
#include "radix_select.h"

namespace sparseforce {
namespace cpu {
namespace {

const at::Device kCpu(at::kCPU);

at::Tensor topk_masks(at::TensorList scores, int64_t k, at::TensorList out) {
  std::vector<at::Tensor> w = writable(out, scores);
  const Operands ops = gather(scores, {}, {}, &w, kCpu);
  check_k(k, ops.n);
  const Result res = select_scores(ops.list, ops.n, k, promoted_dtype(scores), true);
  if (res.nan_index < 0) finish_out(out, w);
  return index_tensor(res.nan_index, kCpu);
}

std::tuple<at::Tensor, at::Tensor> kth_largest(at::TensorList scores, int64_t k) {
  TORCH_CHECK_VALUE(k >= 1, "k=", k, " has no k-th largest value; k must be in [1, N]");
  const Operands ops = gather(scores, {}, {}, nullptr, kCpu);
  check_k(k, ops.n);
  const at::ScalarType rank = promoted_dtype(scores);
  const Result res = select_scores(ops.list, ops.n, k, rank, false);
  at::Tensor value = at::empty({}, at::TensorOptions().dtype(rank));
  if (res.nan_index < 0) store_value(res.key, rank, value.data_ptr());
  return {value, index_tensor(res.nan_index, kCpu)};
}

at::Tensor saliency_topk_masks(at::TensorList weights, at::TensorList grads, int64_t k, at::TensorList competing,
                               at::TensorList out) {
  std::vector<at::Tensor> w = writable(out, weights);
  const Operands ops = gather(weights, grads, competing, &w, kCpu);
  check_k(k, ops.n);
  const Result res = select_saliency(ops.list, ops.n, k, ops.any_double);
  if (res.nan_index >= 0) return index_tensor(res.nan_index, kCpu);
  TORCH_CHECK_VALUE(k <= res.competing, "k=", k, " but prev_masks keep only ", res.competing,
                    " weights; with resurrect=False only weights kept in prev_masks compete, so k may not exceed that");
  finish_out(out, w);
  return index_tensor(-1, kCpu);
}

std::tuple<at::Tensor, at::Tensor> radix_histogram(at::TensorList a, at::TensorList grads, at::TensorList competing,
                                                   at::ScalarType rank, int64_t shift, int64_t prefix) {
  const Operands ops = histogram_inputs(a, grads, competing, rank, shift, kDigit, kCpu);
  const DigitCounts res = digit_histogram(ops.list, rank, !grads.empty(), static_cast<int>(shift),
                                          static_cast<uint64_t>(prefix));
  at::Tensor counts = at::empty({kBins}, at::TensorOptions().dtype(at::kLong));
  std::copy(res.counts.begin(), res.counts.end(), counts.data_ptr<int64_t>());
  return {counts, index_tensor(res.nan_index, kCpu)};
}

void masked_sgd_(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                 const c10::List<std::optional<at::Tensor>>& masks, double lr, double momentum, double dampening,
                 double weight_decay, bool nesterov, const c10::List<bool>& fresh) {
  SgdOperands ops = gather_sgd(params, grads, momentum_buffers, masks, momentum != 0, fresh, kCpu);
  masked_sgd(ops.list, ops.n, SgdHyper{lr, momentum, dampening, weight_decay, nesterov});
  ops.finish();
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseforce, CPU, m) {
  m.impl("topk_masks", &topk_masks);
  m.impl("kth_largest", &kth_largest);
  m.impl("saliency_topk_masks", &saliency_topk_masks);
  m.impl("radix_histogram", &radix_histogram);
  m.impl("masked_sgd_", &masked_sgd_);
}

}  // namespace cpu
}  // namespace sparseforce
