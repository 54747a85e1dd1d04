// The torch layer of the CUDA kernels: the ops of sparseforce/ops/library.py registered for the
// CUDA key, with the device guard and current stream, torch's allocator behind host.h's Device,
// and host.h's statuses turned into the ops' results and errors. Checks, contiguous inputs and
// the outputs are common/aten_glue.h's, shared with the CPU kernels. Everything device-agnostic
// (segment tables, workspace, launches, reading the select's state) is host.cpp's, which the CPU
// emulation of the kernels (tests/cuda_emu) runs too.
#ifdef SPARSEFORCE_WITH_CUDA

#include <cstdint>
#include <cstring>
#include <tuple>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include "../common/aten_glue.h"
#include "../common/radix_args.h"
#include "host.h"
#include "launch.h"

namespace sparseforce {
namespace cuda {
namespace {

int32_t dtype_code(at::ScalarType t) {
  switch (t) {
    case at::kHalf: return kF16;
    case at::kBFloat16: return kBF16;
    case at::kFloat: return kF32;
    case at::kDouble: return kF64;
    default: TORCH_INTERNAL_ASSERT(false, "sparseforce: unexpected dtype ", t);
  }
  return kF32;
}

// host.h's device on torch's terms: memory from the caching allocator (so temporaries released
// before their kernels ran are reused only by later work on the same stream), the current
// stream. Only c10's CUDA headers are used (ATen/cuda pulls in the cuBLAS/cuSPARSE/cuSOLVER
// headers).
class TorchCudaDevice final : public host::Device {
 public:
  explicit TorchCudaDevice(const at::Device& dev) : dev_(dev), stream_(c10::cuda::getCurrentCUDAStream(dev.index())) {}

  void* alloc(size_t bytes) override {
    held_.push_back(at::empty({static_cast<int64_t>(bytes)}, at::TensorOptions().dtype(at::kByte).device(dev_)));
    return held_.back().data_ptr();
  }

  void free(void* p) override {
    for (auto it = held_.begin(); it != held_.end(); ++it) {
      if (it->data_ptr() == p) {
        held_.erase(it);
        return;
      }
    }
  }

  // Through a pinned staging buffer, which copy_ records against the stream so it is not reused
  // before the copy has run.
  void upload(void* dst, const void* src, size_t bytes) override {
    at::Tensor staging =
        at::empty({static_cast<int64_t>(bytes)}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
    std::memcpy(staging.data_ptr(), src, bytes);
    held(dst, bytes).copy_(staging, /*non_blocking=*/true);
  }

  void download(void* dst, const void* src, size_t bytes) override {
    C10_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_.stream()));
    C10_CUDA_CHECK(cudaStreamSynchronize(stream_.stream()));
  }

  int num_sms() override {
    int sms = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, static_cast<int>(dev_.index())));
    return sms;
  }

  cudaStream_t stream() override { return stream_.stream(); }

 private:
  // The bytes [p, p + bytes) of an allocation of this device, as a tensor.
  at::Tensor held(void* p, size_t bytes) {
    const auto* q = static_cast<const char*>(p);
    for (const at::Tensor& t : held_) {
      const auto* base = static_cast<const char*>(t.data_ptr());
      if (q >= base && q + bytes <= base + t.numel()) {
        return t.narrow(0, static_cast<int64_t>(q - base), static_cast<int64_t>(bytes));
      }
    }
    TORCH_INTERNAL_ASSERT(false, "sparseforce (cuda): upload to memory this device did not allocate");
    return {};
  }

  at::Device dev_;
  c10::cuda::CUDAStream stream_;
  std::vector<at::Tensor> held_;
};

// What every op raises the same way: failed launches and internal errors.
void check_result(const host::Result& r) {
  if (r.status == host::kLaunchFailed) C10_CUDA_CHECK(static_cast<cudaError_t>(r.cuda_error));
  TORCH_INTERNAL_ASSERT(r.status != host::kUnresolved, "sparseforce (cuda): the radix select ended unresolved (mode ",
                        r.mode, ")");
  TORCH_INTERNAL_ASSERT(r.status != host::kBadInput, "sparseforce (cuda): input ", r.index,
                        " cannot be ranked as asked");
  TORCH_INTERNAL_ASSERT(r.status != host::kBadK, "sparseforce (cuda): k outside [0, ", r.n, "] passed the checks");
}

// The device of a call: its first input's.
at::Device device_of(at::TensorList a, const char* name) {
  TORCH_CHECK(!a.empty(), "sparseforce (cuda): no ", name);
  return a[0].device();
}

std::vector<host::Input> inputs_of(const Operands& ops) {
  std::vector<host::Input> inputs;
  for (const Operand& o : ops.list) {
    inputs.push_back(host::Input{o.a, o.b, o.competing, o.out, o.n, dtype_code(o.type), static_cast<int32_t>(o.index)});
  }
  return inputs;
}

// After a select: the NaN index (kNaN) or -1 (kOk).
at::Tensor nan_result(const host::Result& r, const at::Device& dev) {
  TORCH_INTERNAL_ASSERT(r.status == host::kOk || r.status == host::kNaN,
                        "sparseforce (cuda): unexpected select status ", r.status);
  return index_tensor(r.status == host::kNaN ? r.nan_index : -1, dev);
}

// ---- topk_masks / kth_largest

host::Result select_scores(at::TensorList scores, int64_t k, const std::vector<at::Tensor>* out, void* value_out) {
  const at::Device dev = device_of(scores, "scores");
  const c10::cuda::CUDAGuard guard(dev);
  const Operands ops = gather(scores, {}, {}, out, dev);
  check_k(k, ops.n);
  TorchCudaDevice device(dev);
  const host::Result r = host::select(device, inputs_of(ops), k, dtype_code(promoted_dtype(scores)), false,
                                      out != nullptr, value_out);
  check_result(r);
  return r;
}

at::Tensor topk_masks(at::TensorList scores, int64_t k, at::TensorList out) {
  std::vector<at::Tensor> w = writable(out, scores);
  const host::Result r = select_scores(scores, k, &w, nullptr);
  if (r.status == host::kOk) finish_out(out, w);
  return nan_result(r, scores[0].device());
}

std::tuple<at::Tensor, at::Tensor> kth_largest(at::TensorList scores, int64_t k) {
  TORCH_CHECK_VALUE(k >= 1, "k=", k, " has no k-th largest value; k must be in [1, N]");
  const at::Device dev = device_of(scores, "scores");
  // The kernel writes the value's bits; the zero key comes back as +0.0.
  at::Tensor value = at::empty({}, scores[0].options().dtype(promoted_dtype(scores)));
  const host::Result r = select_scores(scores, k, nullptr, value.data_ptr());
  return {value, nan_result(r, dev)};
}

// ---- saliency_topk_masks (FORCE: competing empty; Iter SNIP: only `competing` compete)

at::Tensor saliency_topk_masks(at::TensorList weights, at::TensorList grads, int64_t k, at::TensorList competing,
                               at::TensorList out) {
  const at::Device dev = device_of(weights, "weights");
  const c10::cuda::CUDAGuard guard(dev);
  std::vector<at::Tensor> w = writable(out, weights);
  const Operands ops = gather(weights, grads, competing, &w, dev);
  check_k(k, ops.n);
  TorchCudaDevice device(dev);
  const host::Result r = host::select(device, inputs_of(ops), k, ops.any_double ? kF64 : kF32, true, true, nullptr);
  check_result(r);
  TORCH_CHECK_VALUE(r.status != host::kFewCompeting, "k=", k, " but prev_masks keep only ", r.competing,
                    " weights; with resurrect=False only weights kept in prev_masks compete, so k may not exceed that");
  if (r.status == host::kOk) finish_out(out, w);
  return nan_result(r, dev);
}

// ---- segmented_topk_masks / segmented_saliency_topk_masks: no host synchronisation (the NaN
// index is written by the kernels)

at::Tensor segmented(at::TensorList a, at::TensorList grads, at::TensorList ks, int64_t n, int64_t m,
                     at::TensorList competing, at::TensorList out) {
  const at::Device dev = device_of(a, grads.empty() ? "scores" : "weights");
  const c10::cuda::CUDAGuard guard(dev);
  TORCH_CHECK(m >= 0 && m <= kSegTinyMax && n >= 0 && n <= m, "sparseforce (cuda): N:M needs 0 <= n <= m <= ",
              kSegTinyMax, ", got n=", n, ", m=", m);
  TORCH_CHECK(m > 0 ? ks.empty() : ks.size() == a.size(), "sparseforce (cuda): ks has ", ks.size(),
              " tensors for ", a.size(), " inputs (none with N:M)");
  std::vector<at::Tensor> w = writable(out, a);
  const Operands ops = gather(a, grads, competing, &w, dev);
  std::vector<host::SegInput> inputs;
  for (const Operand& o : ops.list) {
    int64_t rows = o.n / (m > 0 ? m : 1);
    const int64_t* k = nullptr;
    if (m > 0) {
      TORCH_CHECK(o.n % m == 0, "sparseforce (cuda): input ", o.index, " holds ", o.n, " elements, not a multiple of m=", m);
    } else {
      const at::Tensor& kt = ks[o.index];
      TORCH_CHECK(kt.scalar_type() == at::kLong && kt.dim() == 1 && kt.is_contiguous() && kt.device() == dev,
                  "sparseforce (cuda): ks[", o.index, "] must be a contiguous 1-D int64 tensor on ", dev);
      rows = kt.numel();
      TORCH_CHECK(rows > 0 && o.n % rows == 0, "sparseforce (cuda): ks[", o.index, "] has ", rows,
                  " entries, which do not cut ", o.n, " elements into equal segments");
      k = kt.data_ptr<int64_t>();
    }
    inputs.push_back(host::SegInput{o.a, o.b, o.competing, o.out, k, n, o.n, rows, dtype_code(o.type),
                                    static_cast<int32_t>(o.index)});
  }
  at::Tensor nan = at::empty({}, at::TensorOptions().dtype(at::kLong).device(dev));
  TorchCudaDevice device(dev);
  check_result(host::segmented_select(device, inputs, !grads.empty(), nan.data_ptr<int64_t>()));
  finish_out(out, w);  // stream-ordered; on NaN the masks are unspecified anyway
  return nan;
}

at::Tensor segmented_topk_masks(at::TensorList scores, at::TensorList ks, int64_t n, int64_t m, at::TensorList out) {
  return segmented(scores, {}, ks, n, m, {}, out);
}

at::Tensor segmented_saliency_topk_masks(at::TensorList weights, at::TensorList grads, at::TensorList ks, int64_t n,
                                         int64_t m, at::TensorList competing, at::TensorList out) {
  TORCH_CHECK(!grads.empty() || weights.empty(), "sparseforce (cuda): no grads");
  return segmented(weights, grads, ks, n, m, competing, out);
}

// ---- drop_grow_masks: no host synchronisation (keeps, grows and the NaN code stay on the device)

at::Tensor drop_grow_masks(at::TensorList weights, at::TensorList scores, at::TensorList masks, const at::Tensor& keeps,
                           const at::Tensor& grows, at::TensorList out) {
  const at::Device dev = device_of(weights, "weights");
  const c10::cuda::CUDAGuard guard(dev);
  TORCH_CHECK(scores.size() == weights.size() && masks.size() == weights.size(), "sparseforce (cuda): weights has ",
              weights.size(), " tensors, scores ", scores.size(), ", masks ", masks.size());
  const int64_t segs = keeps.numel();
  for (const at::Tensor* t : {&keeps, &grows}) {
    TORCH_CHECK(t->scalar_type() == at::kLong && t->dim() == 1 && t->is_contiguous() && t->device() == dev &&
                    t->numel() == segs && (segs == static_cast<int64_t>(weights.size()) || segs == 1),
                "sparseforce (cuda): keeps and grows must be contiguous 1-D int64 tensors on ", dev,
                " with one entry per tensor or one in all");
  }
  for (size_t i = 0; i < weights.size(); ++i) {
    TORCH_CHECK(scores[i].sizes() == weights[i].sizes(), "sparseforce (cuda): scores[", i, "] and weights[", i,
                "] differ in shape");
  }
  std::vector<at::Tensor> w = writable(out, weights);
  // The active set competes in the drop phase; the scores gathered alike (same shapes, so the
  // same non-empty tensors in the same order).
  const Operands drop = gather(weights, {}, masks, &w, dev);
  const Operands grow = gather(scores, {}, {}, nullptr, dev);
  std::vector<host::DropGrowInput> inputs;
  for (size_t j = 0; j < drop.list.size(); ++j) {
    const Operand& a = drop.list[j];
    const Operand& b = grow.list[j];
    inputs.push_back(host::DropGrowInput{a.a, b.a, a.competing, a.out, a.n, dtype_code(a.type), dtype_code(b.type),
                                         static_cast<int32_t>(a.index)});
  }
  at::Tensor nan = at::empty({}, at::TensorOptions().dtype(at::kLong).device(dev));
  TorchCudaDevice device(dev);
  check_result(host::drop_grow(device, inputs, keeps.data_ptr<int64_t>(), grows.data_ptr<int64_t>(),
                               segs == 1 && weights.size() > 1, nan.data_ptr<int64_t>()));
  finish_out(out, w);  // stream-ordered; on NaN the masks are unspecified anyway
  return nan;
}

// ---- radix_histogram: no host synchronisation

std::tuple<at::Tensor, at::Tensor> radix_histogram(at::TensorList a, at::TensorList grads, at::TensorList competing,
                                                   at::ScalarType rank, int64_t shift, int64_t prefix) {
  const at::Device dev = device_of(a, "scores");
  const c10::cuda::CUDAGuard guard(dev);
  const Operands ops = histogram_inputs(a, grads, competing, rank, shift, kHistDigitBits, dev);
  at::Tensor out = at::empty({kHistBins + 1}, at::TensorOptions().dtype(at::kLong).device(dev));
  TorchCudaDevice device(dev);
  const host::Result r = host::radix_histogram(device, inputs_of(ops), dtype_code(rank), !grads.empty(),
                                               static_cast<int>(shift), static_cast<uint64_t>(prefix),
                                               out.data_ptr<int64_t>());
  check_result(r);
  // host.h's layout keeps the NaN index after the counts; the op returns it as its own tensor.
  return {out.narrow(0, 0, kHistBins), out.select(0, kHistBins).clone()};
}

// ---- masked_sgd_

void masked_sgd_(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                 const c10::List<std::optional<at::Tensor>>& masks, double lr, double momentum, double dampening,
                 double weight_decay, bool nesterov, const c10::List<bool>& fresh) {
  if (params.empty()) return;
  const at::Device dev = params[0].device();
  const c10::cuda::CUDAGuard guard(dev);
  SgdOperands ops = gather_sgd(params, grads, momentum_buffers, masks, momentum != 0, fresh, dev);
  std::vector<host::SgdInput> inputs;
  for (const SgdOperand& s : ops.list) {
    inputs.push_back(host::SgdInput{s.p, s.g, s.buf, s.mask, s.n, dtype_code(s.type), s.fresh ? 1 : 0});
  }
  TorchCudaDevice device(dev);
  const host::SgdHyper hyper{lr, momentum, dampening, weight_decay, nesterov};
  const host::Result r = host::masked_sgd(device, inputs, hyper);
  check_result(r);
  ops.finish();
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseforce, CUDA, m) {
  m.impl("topk_masks", &topk_masks);
  m.impl("kth_largest", &kth_largest);
  m.impl("saliency_topk_masks", &saliency_topk_masks);
  m.impl("segmented_topk_masks", &segmented_topk_masks);
  m.impl("segmented_saliency_topk_masks", &segmented_saliency_topk_masks);
  m.impl("radix_histogram", &radix_histogram);
  m.impl("masked_sgd_", &masked_sgd_);
  m.impl("drop_grow_masks", &drop_grow_masks);
}

}  // namespace cuda
}  // namespace sparseforce

#endif  // SPARSEFORCE_WITH_CUDA
