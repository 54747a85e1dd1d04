// The torch side of the CUDA kernels: argument checks, contiguous inputs and dtype promotion,
// output allocation, the device guard and current stream, torch's allocator behind host.h's
// Device, the errors raised, and the registration of the same ops as csrc/cpu under the CUDA
// key. Everything device-agnostic (segment tables, workspace, launches, reading the select's
// state) is host.cpp's, which the CPU emulation of the kernels (tests/cuda_emu) runs too. Error
// messages are the CPU kernels' word for word, so the Python layer turns them into the same
// exceptions whichever device ran.
#ifdef SPARSEFORCE_WITH_CUDA

#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

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

void check_float(const at::Tensor& t, const char* name, size_t i, const at::Device& dev) {
  TORCH_CHECK(t.is_cuda(), "sparseforce (cuda): ", name, "[", i, "] is on ", t.device());
  TORCH_CHECK(t.device() == dev, "sparseforce (cuda): ", name, "[", i, "] is on ", t.device(), " but the first input is on ",
              dev, "; all tensors of one call must share a device");
  const auto st = t.scalar_type();
  TORCH_CHECK(st == at::kHalf || st == at::kBFloat16 || st == at::kFloat || st == at::kDouble,
              "sparseforce: ", name, "[", i, "] has dtype ", st, "; expected fp16, bf16, fp32 or fp64");
}

at::ScalarType promoted_dtype(at::TensorList ts) {
  at::ScalarType d = ts.empty() ? at::kFloat : ts[0].scalar_type();
  for (const auto& t : ts) d = at::promote_types(d, t.scalar_type());
  return d;
}

// What every op raises the same way: failed launches and internal errors.
void check_result(const host::Result& r) {
  if (r.status == host::kLaunchFailed) C10_CUDA_CHECK(static_cast<cudaError_t>(r.cuda_error));
  TORCH_INTERNAL_ASSERT(r.status != host::kUnresolved, "sparseforce (cuda): the radix select ended unresolved (mode ",
                        r.mode, ")");
  TORCH_INTERNAL_ASSERT(r.status != host::kBadInput, "sparseforce (cuda): input ", r.index,
                        " cannot be ranked as asked");
}

void check_k(const host::Result& r, int64_t k) {
  TORCH_CHECK_VALUE(r.status != host::kBadK, "k=", k, " is outside [0, ", r.n, "]: the inputs hold ", r.n,
                    " elements in all");
}

std::vector<at::Tensor> empty_masks(at::TensorList like) {
  std::vector<at::Tensor> out;
  out.reserve(like.size());
  for (const auto& t : like) out.push_back(at::empty(t.sizes(), t.options().dtype(at::kBool)));
  return out;
}

// The contiguous tensors the kernels write; those of `out` that are not contiguous get a
// stand-in, copied back by finish_out.
std::vector<at::Tensor> writable(at::TensorList out, at::TensorList like) {
  TORCH_CHECK(out.size() == like.size(), "sparseforce: out has ", out.size(), " tensors but there are ",
              like.size(), " inputs");
  std::vector<at::Tensor> w;
  for (size_t i = 0; i < out.size(); ++i) {
    TORCH_CHECK(out[i].scalar_type() == at::kBool && out[i].sizes() == like[i].sizes() &&
                    out[i].device() == like[i].device(),
                "sparseforce: out[", i, "] must be a bool tensor of the input's shape on its device");
    w.push_back(out[i].is_contiguous() ? out[i] : at::empty(out[i].sizes(), out[i].options()));
  }
  return w;
}

void finish_out(at::TensorList out, const std::vector<at::Tensor>& w) {
  for (size_t i = 0; i < out.size(); ++i) {
    if (!w[i].is_same(out[i])) out[i].copy_(w[i]);
  }
}

host::Input input(const void* a, const void* b, const uint8_t* prev, uint8_t* out, const at::Tensor& like,
                  size_t index) {
  return host::Input{a, b, prev, out, like.numel(), dtype_code(like.scalar_type()), static_cast<int32_t>(index)};
}

// ---- topk_masks / kth_largest

void run_scores(at::TensorList scores, int64_t k, const std::vector<at::Tensor>* out, void* value_out) {
  TORCH_CHECK(!scores.empty(), "sparseforce (cuda): no scores");
  const at::Device dev = scores[0].device();
  const c10::cuda::CUDAGuard guard(dev);
  std::vector<at::Tensor> hold;  // the contiguous copies the inputs point into
  std::vector<host::Input> inputs;
  for (size_t i = 0; i < scores.size(); ++i) {
    check_float(scores[i], "scores", i, dev);
    if (scores[i].numel() == 0) continue;
    at::Tensor c = scores[i].contiguous();
    uint8_t* o = out != nullptr ? reinterpret_cast<uint8_t*>((*out)[i].data_ptr<bool>()) : nullptr;
    inputs.push_back(input(c.data_ptr(), nullptr, nullptr, o, c, i));
    hold.push_back(std::move(c));
  }
  TorchCudaDevice device(dev);
  const host::Result r = host::select(device, inputs, k, dtype_code(promoted_dtype(scores)), false, out != nullptr,
                                      value_out);
  check_k(r, k);
  check_result(r);
  TORCH_CHECK_VALUE(r.status != host::kNaN, "scores[", r.nan_index, "] contains NaN; NaN scores cannot be ranked");
  TORCH_INTERNAL_ASSERT(r.status == host::kOk, "sparseforce (cuda): unexpected select status ", r.status);
}

void topk_masks_out(at::TensorList scores, int64_t k, at::TensorList out) {
  std::vector<at::Tensor> w = writable(out, scores);
  run_scores(scores, k, &w, nullptr);
  finish_out(out, w);
}

std::vector<at::Tensor> topk_masks(at::TensorList scores, int64_t k) {
  std::vector<at::Tensor> out = empty_masks(scores);
  run_scores(scores, k, &out, nullptr);
  return out;
}

at::Tensor kth_largest(at::TensorList scores, int64_t k) {
  TORCH_CHECK_VALUE(k >= 1, "k=", k, " has no k-th largest value; k must be in [1, N]");
  TORCH_CHECK(!scores.empty(), "sparseforce (cuda): no scores");
  // The kernel writes the value's bits; the zero key comes back as +0.0.
  at::Tensor value = at::empty({}, scores[0].options().dtype(promoted_dtype(scores)));
  run_scores(scores, k, nullptr, value.data_ptr());
  return value;
}

// ---- saliency_topk_masks (FORCE: resurrect; Iter SNIP: only prev_masks compete)

void saliency_run(at::TensorList weights, at::TensorList grads, int64_t k, at::TensorList prev_masks, bool resurrect,
                  std::vector<at::Tensor>& out) {
  TORCH_CHECK(weights.size() == grads.size(), "sparseforce: weights has ", weights.size(), " tensors but grads has ",
              grads.size());
  TORCH_CHECK(prev_masks.empty() || prev_masks.size() == weights.size(), "sparseforce: prev_masks has ",
              prev_masks.size(), " tensors but weights has ", weights.size());
  TORCH_CHECK(!weights.empty(), "sparseforce (cuda): no weights");
  const bool use_prev = !resurrect && !prev_masks.empty();
  const at::Device dev = weights[0].device();
  const c10::cuda::CUDAGuard guard(dev);
  std::vector<at::Tensor> hold;
  std::vector<host::Input> inputs;
  bool any_double = false;
  for (size_t i = 0; i < weights.size(); ++i) {
    check_float(weights[i], "weights", i, dev);
    check_float(grads[i], "grads", i, dev);
    TORCH_CHECK(weights[i].sizes() == grads[i].sizes(), "sparseforce: weights[", i, "] and grads[", i,
                "] differ in shape");
    // Promoting w and g to one dtype is exact, and |w*g| is then formed in the same precision.
    const at::ScalarType st = at::promote_types(weights[i].scalar_type(), grads[i].scalar_type());
    any_double |= st == at::kDouble;
    if (weights[i].numel() == 0) continue;
    at::Tensor w = weights[i].to(st).contiguous();
    at::Tensor g = grads[i].to(st).contiguous();
    const uint8_t* prev = nullptr;
    if (use_prev) {
      TORCH_CHECK(prev_masks[i].scalar_type() == at::kBool && prev_masks[i].sizes() == weights[i].sizes() &&
                      prev_masks[i].device() == dev,
                  "sparseforce: prev_masks[", i, "] must be a bool tensor of the weight's shape on its device");
      at::Tensor m = prev_masks[i].contiguous();
      prev = reinterpret_cast<const uint8_t*>(m.data_ptr<bool>());
      hold.push_back(std::move(m));
    }
    inputs.push_back(input(w.data_ptr(), g.data_ptr(), prev, reinterpret_cast<uint8_t*>(out[i].data_ptr<bool>()), w, i));
    hold.push_back(std::move(w));
    hold.push_back(std::move(g));
  }
  TorchCudaDevice device(dev);
  const host::Result r = host::select(device, inputs, k, any_double ? kF64 : kF32, true, true, nullptr);
  check_k(r, k);
  check_result(r);
  TORCH_CHECK_VALUE(r.status != host::kNaN, "the saliency |w*g| of weights[", r.nan_index,
                    "] is NaN (NaN, or inf times 0, in weights[", r.nan_index, "] or grads[", r.nan_index, "])");
  TORCH_CHECK_VALUE(r.status != host::kFewCompeting, "k=", k, " but prev_masks keep only ", r.competing,
                    " weights; with resurrect=False only weights kept in prev_masks compete, so k may not exceed that");
  TORCH_INTERNAL_ASSERT(r.status == host::kOk, "sparseforce (cuda): unexpected select status ", r.status);
}

std::vector<at::Tensor> saliency_topk_masks(at::TensorList weights, at::TensorList grads, int64_t k,
                                            at::TensorList prev_masks, bool resurrect) {
  std::vector<at::Tensor> out = empty_masks(weights);
  saliency_run(weights, grads, k, prev_masks, resurrect, out);
  return out;
}

void saliency_topk_masks_out(at::TensorList weights, at::TensorList grads, int64_t k, at::TensorList prev_masks,
                             bool resurrect, at::TensorList out) {
  std::vector<at::Tensor> w = writable(out, weights);
  saliency_run(weights, grads, k, prev_masks, resurrect, w);
  finish_out(out, w);
}

// ---- radix_histogram (the CPU kernel's checks and messages, csrc/cpu/select.cpp)

// Scores mode (b empty): the keys of a; saliency mode: of |a*b| formed as saliency_topk_masks
// forms it. Returns int64[2^16 + 1] on the inputs' device: the histogram, then the NaN tensor's
// index or -1. No host synchronisation.
at::Tensor radix_histogram(at::TensorList a, at::TensorList b, at::TensorList prev_masks, at::ScalarType rank,
                           int64_t shift, int64_t prefix) {
  const bool saliency = !b.empty();
  check_radix_histogram_args(a, b, prev_masks, rank, shift, kHistDigitBits);
  TORCH_CHECK(!a.empty(), "sparseforce (cuda): no scores");
  const at::Device dev = a[0].device();
  const c10::cuda::CUDAGuard guard(dev);
  const char* name = saliency ? "weights" : "scores";
  std::vector<at::Tensor> hold;
  std::vector<host::Input> inputs;
  for (size_t i = 0; i < a.size(); ++i) {
    check_float(a[i], name, i, dev);
    at::ScalarType st = a[i].scalar_type();
    if (saliency) {
      check_float(b[i], "grads", i, dev);
      TORCH_CHECK(a[i].sizes() == b[i].sizes(), "sparseforce: weights[", i, "] and grads[", i, "] differ in shape");
      st = at::promote_types(st, b[i].scalar_type());
      if (st != at::kDouble) st = at::kFloat;  // |w*g| is formed in float32 unless an input is float64
    }
    // The rank dtype must hold every value exactly (the caller promotes over all ranks).
    TORCH_CHECK_VALUE(at::promote_types(st, rank) == rank, "sparseforce: ", name, "[", i, "] ranks as ", st, ", which ",
                      rank, " does not hold exactly");
    if (a[i].numel() == 0) continue;
    at::Tensor x = (saliency ? a[i].to(st) : a[i]).contiguous();
    at::Tensor g;
    if (saliency) g = b[i].to(st).contiguous();
    const uint8_t* prev = nullptr;
    if (!prev_masks.empty()) {
      TORCH_CHECK(prev_masks[i].scalar_type() == at::kBool && prev_masks[i].sizes() == a[i].sizes() &&
                      prev_masks[i].device() == dev,
                  "sparseforce: prev_masks[", i, "] must be a bool tensor of the input's shape on its device");
      at::Tensor m = prev_masks[i].contiguous();
      prev = reinterpret_cast<const uint8_t*>(m.data_ptr<bool>());
      hold.push_back(std::move(m));
    }
    inputs.push_back(input(x.data_ptr(), saliency ? g.data_ptr() : nullptr, prev, nullptr, x, i));
    hold.push_back(std::move(x));
    if (saliency) hold.push_back(std::move(g));
  }
  TORCH_CHECK_VALUE(!saliency || rank == at::kFloat || rank == at::kDouble,
                    "sparseforce: saliencies rank as float32 or float64, not ", rank);
  at::Tensor out = at::empty({kHistBins + 1}, at::TensorOptions().dtype(at::kLong).device(dev));
  TorchCudaDevice device(dev);
  const host::Result r = host::radix_histogram(device, inputs, dtype_code(rank), saliency, static_cast<int>(shift),
                                               static_cast<uint64_t>(prefix), out.data_ptr<int64_t>());
  check_result(r);
  return out;
}

// ---- masked_sgd_

void masked_sgd_(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                 const c10::List<std::optional<at::Tensor>>& masks, double lr, double momentum, double dampening,
                 double weight_decay, bool nesterov, at::IntArrayRef fresh_buffers) {
  const size_t n = params.size();
  const bool use_buf = momentum != 0;
  TORCH_CHECK(grads.size() == n && masks.size() == n, "sparseforce: masked_sgd_ lists differ in length");
  TORCH_CHECK(!use_buf || (momentum_buffers.size() == n && fresh_buffers.size() == n),
              "sparseforce: masked_sgd_ with momentum needs one buffer and one fresh flag per param");
  if (n == 0) return;
  const at::Device dev = params[0].device();
  const c10::cuda::CUDAGuard guard(dev);
  std::vector<host::SgdInput> inputs;
  std::vector<at::Tensor> hold;
  // Non-contiguous params/buffers are updated through contiguous copies, written back after.
  std::vector<std::pair<at::Tensor, at::Tensor>> write_back;
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    TORCH_CHECK(p.is_cuda() && p.device() == dev && grads[i].device() == dev, "sparseforce (cuda): params[", i,
                "] and grads[", i, "] must be on ", dev);
    TORCH_CHECK(grads[i].scalar_type() == p.scalar_type() && grads[i].sizes() == p.sizes(),
                "sparseforce: grads[", i, "] must match params[", i, "] in dtype and shape");
    if (p.numel() == 0) continue;
    host::SgdInput s{};
    const at::ScalarType type = p.scalar_type();
    TORCH_CHECK(type == at::kHalf || type == at::kBFloat16 || type == at::kFloat || type == at::kDouble,
                "sparseforce: params[", i, "] has dtype ", type);
    s.dtype = dtype_code(type);
    at::Tensor pc = p.contiguous();
    if (!pc.is_same(p)) write_back.emplace_back(p, pc);
    at::Tensor gc = grads[i].contiguous();
    s.p = pc.data_ptr();
    s.g = gc.data_ptr();
    hold.push_back(pc);
    hold.push_back(gc);
    if (use_buf) {
      const at::Tensor& b = momentum_buffers[i];
      TORCH_CHECK(b.scalar_type() == type && b.sizes() == p.sizes() && b.device() == dev,
                  "sparseforce: momentum_buffers[", i, "] must match params[", i, "]");
      at::Tensor bc = b.contiguous();
      if (!bc.is_same(b)) write_back.emplace_back(b, bc);
      s.buf = bc.data_ptr();
      s.fresh = fresh_buffers[i] != 0 ? 1 : 0;
      hold.push_back(bc);
    }
    const std::optional<at::Tensor> m = masks.get(i);
    if (m.has_value() && m->defined()) {
      TORCH_CHECK(m->scalar_type() == at::kBool && m->sizes() == p.sizes() && m->device() == dev,
                  "sparseforce: masks[", i, "] must be a bool tensor of the param's shape on its device");
      at::Tensor mc = m->contiguous();
      s.mask = reinterpret_cast<const uint8_t*>(mc.data_ptr<bool>());
      hold.push_back(mc);
    }
    s.n = p.numel();
    inputs.push_back(s);
  }
  TorchCudaDevice device(dev);
  const host::Result r = host::masked_sgd(device, inputs, host::SgdHyper{lr, momentum, dampening, weight_decay, nesterov});
  check_result(r);
  // Stream-ordered after the kernel; the temporaries above are released to the caching
  // allocator, which reuses them only for later work on this stream.
  for (auto& [orig, copy] : write_back) orig.copy_(copy);
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseforce, CUDA, m) {
  m.impl("topk_masks", &topk_masks);
  m.impl("topk_masks_out", &topk_masks_out);
  m.impl("kth_largest", &kth_largest);
  m.impl("saliency_topk_masks", &saliency_topk_masks);
  m.impl("saliency_topk_masks_out", &saliency_topk_masks_out);
  m.impl("radix_histogram", &radix_histogram);
  m.impl("masked_sgd_", &masked_sgd_);
}

}  // namespace cuda
}  // namespace sparseforce

#endif  // SPARSEFORCE_WITH_CUDA
