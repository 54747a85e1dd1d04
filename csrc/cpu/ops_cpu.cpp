// The torch layer of the CPU kernels: the ops of sparseforce/ops/library.py registered for the CPU
// key, over the radix select (radix_select.h), the segmented selections (segmented_select.h), the
// drop/grow update (drop_grow.h) and the SGD step (masked_sgd.h). Checks, contiguous inputs and
// the outputs are common/aten_glue.h's, shared with the CUDA kernels.
#include <algorithm>
#include <cstdint>
#include <tuple>
#include <vector>

#include <ATen/ATen.h>
#include <torch/library.h>

#include "../common/aten_glue.h"
#include "../common/radix_args.h"
#include "drop_grow.h"
#include "masked_sgd.h"
#include "radix_select.h"
#include "segmented_select.h"

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

// The segments of the gathered inputs: m == 0: ks[i] holds one k per segment of input i (its
// rows, or 1 for the whole tensor); m > 0: groups of m keeping n each.
std::vector<Segmented> segments_of(const Operands& ops, size_t inputs, at::TensorList ks, int64_t n, int64_t m) {
  TORCH_CHECK_VALUE(m >= 0 && m <= 32 && n >= 0 && n <= std::max<int64_t>(m, 0), "sparseforce: n=", n, ", m=", m,
                    " is not an N:M pattern (0 <= n <= m <= 32)");
  TORCH_CHECK(m > 0 ? ks.empty() : ks.size() == inputs, "sparseforce: ks has ", ks.size(), " tensors for ", inputs,
              " inputs; expected ", m > 0 ? "none (N:M)" : "one per input");
  std::vector<Segmented> segs;
  for (const Operand& o : ops.list) {
    Segmented s;
    s.op = o;
    if (m > 0) {
      TORCH_CHECK_VALUE(o.n % m == 0, "sparseforce: input ", o.index, " holds ", o.n, " elements, not a multiple of m=", m);
      s.len = m;
      s.keep = n;
    } else {
      const at::Tensor& k = ks[o.index];
      TORCH_CHECK(k.scalar_type() == at::kLong && k.dim() == 1 && k.is_contiguous() && k.device().is_cpu(),
                  "sparseforce: ks[", o.index, "] must be a contiguous 1-D int64 CPU tensor");
      const int64_t rows = k.numel();
      TORCH_CHECK_VALUE(rows > 0 && o.n % rows == 0, "sparseforce: ks[", o.index, "] has ", rows,
                        " entries, which do not cut the input's ", o.n, " elements into equal segments");
      s.len = o.n / rows;
      s.ks = k.data_ptr<int64_t>();
      for (int64_t r = 0; r < rows; ++r) {
        TORCH_CHECK_VALUE(s.ks[r] >= 0 && s.ks[r] <= s.len, "sparseforce: ks[", o.index, "][", r, "]=", s.ks[r],
                          " is outside [0, ", s.len, "]");
      }
    }
    segs.push_back(s);
  }
  return segs;
}

at::Tensor segmented_topk_masks(at::TensorList scores, at::TensorList ks, int64_t n, int64_t m, at::TensorList out) {
  std::vector<at::Tensor> w = writable(out, scores);
  const Operands ops = gather(scores, {}, {}, &w, kCpu);
  const int64_t nan = segmented_select(segments_of(ops, scores.size(), ks, n, m), Keys::Scores);
  if (nan < 0) finish_out(out, w);
  return index_tensor(nan, kCpu);
}

at::Tensor segmented_saliency_topk_masks(at::TensorList weights, at::TensorList grads, at::TensorList ks, int64_t n,
                                         int64_t m, at::TensorList competing, at::TensorList out) {
  std::vector<at::Tensor> w = writable(out, weights);
  const Operands ops = gather(weights, grads, competing, &w, kCpu);
  const int64_t nan = segmented_select(segments_of(ops, weights.size(), ks, n, m), Keys::Saliency);
  if (nan < 0) finish_out(out, w);
  return index_tensor(nan, kCpu);
}

// keeps / grows of drop_grow_masks: one count per tensor, or one for all (`global`).
void check_counts(const at::Tensor& t, const char* name, int64_t segments) {
  TORCH_CHECK(t.scalar_type() == at::kLong && t.dim() == 1 && t.is_contiguous() && t.device().is_cpu() &&
                  t.numel() == segments,
              "sparseforce: ", name, " must be a contiguous 1-D int64 CPU tensor of ", segments, " entries");
}

at::Tensor drop_grow_masks(at::TensorList weights, at::TensorList scores, at::TensorList masks, const at::Tensor& keeps,
                           const at::Tensor& grows, at::TensorList out) {
  const size_t t = weights.size();
  TORCH_CHECK(scores.size() == t && masks.size() == t, "sparseforce: weights, scores and masks hold ", t, ", ",
              scores.size(), " and ", masks.size(), " tensors; expected one of each per tensor");
  const bool global = keeps.numel() == 1 && t > 1;
  const int64_t segments = global ? 1 : static_cast<int64_t>(t);
  check_counts(keeps, "keeps", segments);
  check_counts(grows, "grows", segments);
  int64_t n = 0;
  for (size_t i = 0; i < t; ++i) {
    check_float(weights[i], "weights", i, kCpu);
    TORCH_CHECK(scores[i].sizes() == weights[i].sizes(), "sparseforce: scores[", i, "] and weights[", i,
                "] differ in shape");
    TORCH_CHECK(masks[i].scalar_type() == at::kBool && masks[i].sizes() == weights[i].sizes() &&
                    masks[i].device() == kCpu,
                "sparseforce: masks[", i, "] must be a bool CPU tensor of weights[", i, "]'s shape");
    n += weights[i].numel();
  }
  const int64_t* k = keeps.data_ptr<int64_t>();
  const int64_t* g = grows.data_ptr<int64_t>();
  for (int64_t s = 0; s < segments; ++s) {
    const int64_t len = global ? n : weights[s].numel();
    TORCH_CHECK_VALUE(k[s] >= 0 && k[s] <= len && g[s] >= 0 && g[s] <= len - k[s], "sparseforce: keeps[", s,
                      "]=", k[s], " and grows[", s, "]=", g[s], " do not fit a segment of ", len, " elements");
  }
  std::vector<at::Tensor> w = writable(out, weights);
  // The survivors of the drop, one scratch byte per element.
  const at::Tensor scratch = at::empty({n}, at::TensorOptions().dtype(at::kBool));
  std::vector<at::Tensor> kept;
  int64_t pos = 0;
  for (const at::Tensor& x : weights) {
    kept.push_back(scratch.narrow(0, pos, x.numel()).view(x.sizes()));
    pos += x.numel();
  }
  const Operands wo = gather(weights, {}, masks, &kept, kCpu);
  const Operands so = gather(scores, {}, {}, &w, kCpu);
  DropGrow update{wo.list, so.list, k, g, global, promoted_dtype(weights), promoted_dtype(scores)};
  const int64_t nan = drop_grow(update);
  if (nan < 0) finish_out(out, w);
  return index_tensor(nan, kCpu);
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
  m.impl("segmented_topk_masks", &segmented_topk_masks);
  m.impl("segmented_saliency_topk_masks", &segmented_saliency_topk_masks);
  m.impl("drop_grow_masks", &drop_grow_masks);
}

}  // namespace cpu
}  // namespace sparseforce
