// The torch side of the CUDA kernels: argument checks, contiguous inputs, the segment tables,
// the current stream, and the registration of the same ops as csrc/cpu under the CUDA key.
// The kernels themselves sit behind the plain launcher API of launch.h (select.cu,
// masked_sgd.cu). Error messages are the CPU kernels' word for word, so the Python layer turns
// them into the same exceptions whichever device ran.
#ifdef SPARSEFORCE_WITH_CUDA

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include "launch.h"

namespace sparseforce {
namespace cuda {
namespace {

// Tuning/testing knob, read per call: SPARSEFORCE_CUDA_CANDIDATE_CAP, the largest bin resolved
// from a candidate list (0: always run the radix passes over the full data to the whole key,
// the path ties by per-tile quotas take).
int64_t env_int(const char* name, int64_t fallback) {
  const char* s = std::getenv(name);
  if (s == nullptr || *s == '\0') return fallback;
  char* end = nullptr;
  const long long v = std::strtoll(s, &end, 10);
  return *end == '\0' ? static_cast<int64_t>(v) : fallback;
}

int64_t candidate_cap(int64_t n) {
  // Candidates cost 16 bytes each: n/16 of them cost as much memory as the masks.
  const int64_t dflt = std::min<int64_t>(int64_t(1) << 24, std::max<int64_t>(int64_t(1) << 16, n / 16));
  const int64_t cap = env_int("SPARSEFORCE_CUDA_CANDIDATE_CAP", dflt);
  return cap < 0 ? 0 : cap;
}

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

// Only c10's CUDA headers are used (ATen/cuda pulls in the cuBLAS/cuSPARSE/cuSOLVER headers).
int num_sms(c10::DeviceIndex index) {
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, static_cast<int>(index)));
  return sms;
}

c10::cuda::CUDAStream current_stream(const at::Device& dev) { return c10::cuda::getCurrentCUDAStream(dev.index()); }

bool aligned16(const void* p) { return p == nullptr || (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

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

void check_k(int64_t k, int64_t n) {
  TORCH_CHECK_VALUE(k >= 0 && k <= n, "k=", k, " is outside [0, ", n, "]: the inputs hold ", n, " elements in all");
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

// A host table copied to the device on the current stream. The pinned staging buffer is
// recorded against the stream by copy_, so it is not reused before the copy has run.
at::Tensor upload(const void* data, size_t bytes, const at::Device& dev) {
  at::Tensor host = at::empty({static_cast<int64_t>(bytes)}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  std::memcpy(host.data_ptr(), data, bytes);
  at::Tensor table = at::empty({static_cast<int64_t>(bytes)}, at::TensorOptions().dtype(at::kByte).device(dev));
  table.copy_(host, /*non_blocking=*/true);
  return table;
}

struct Prepared {
  std::vector<Segment> segs;
  std::vector<at::Tensor> hold;  // contiguous copies the segments point into
  int64_t n = 0;
  int64_t tiles = 0;
};

void add_segment(Prepared& p, const void* a, const void* b, const uint8_t* prev, uint8_t* out, at::ScalarType type,
                 int64_t n, size_t index) {
  Segment s{};
  s.a = a;
  s.b = b;
  s.prev = prev;
  s.out = out;
  s.n = n;
  s.offset = p.n;
  s.tile_begin = p.tiles;
  s.dtype = dtype_code(type);
  s.index = static_cast<int32_t>(index);
  s.aligned = aligned16(a) && aligned16(b) && aligned16(prev) && aligned16(out);
  p.n += n;
  p.tiles += (n + kTile - 1) / kTile;
  p.segs.push_back(s);
}

// Enqueues the select and waits for its state: the one synchronisation of the call, needed to
// report NaN (found during the first pass) as an exception.
SelectState run_select(const Prepared& p, int64_t k, at::ScalarType rank, bool saliency, bool write_masks,
                       void* value_out, const at::Device& dev) {
  const int64_t cap = candidate_cap(p.n);
  at::Tensor table = upload(p.segs.data(), sizeof(Segment) * p.segs.size(), dev);
  const size_t ws_bytes = select_workspace_bytes(p.tiles, cap);
  at::Tensor ws = at::empty({static_cast<int64_t>(ws_bytes)}, at::TensorOptions().dtype(at::kByte).device(dev));
  SelectArgs a{};
  a.segs = reinterpret_cast<const Segment*>(table.data_ptr());
  a.nseg = static_cast<int32_t>(p.segs.size());
  a.rank_dtype = dtype_code(rank);
  a.saliency = saliency ? 1 : 0;
  a.write_masks = write_masks ? 1 : 0;
  a.n = p.n;
  a.tiles = p.tiles;
  a.k = k;
  a.cap = cap;
  a.workspace = ws.data_ptr();
  a.value_out = value_out;
  a.num_sms = num_sms(dev.index());
  a.stream = current_stream(dev).stream();
  C10_CUDA_CHECK(launch_select(a));
  const at::Tensor head = ws.narrow(0, 0, static_cast<int64_t>(sizeof(SelectState))).cpu();
  SelectState st;
  std::memcpy(&st, head.data_ptr(), sizeof st);
  TORCH_INTERNAL_ASSERT(st.mode != kModeRadix && st.mode != kModeCand && st.mode != kModePos,
                        "sparseforce (cuda): the radix select ended unresolved (mode ", st.mode, ")");
  return st;
}

// ---- topk_masks / kth_largest

SelectState run_scores(at::TensorList scores, int64_t k, const std::vector<at::Tensor>* out, void* value_out) {
  TORCH_CHECK(!scores.empty(), "sparseforce (cuda): no scores");
  const at::Device dev = scores[0].device();
  const c10::cuda::CUDAGuard guard(dev);
  Prepared p;
  for (size_t i = 0; i < scores.size(); ++i) {
    check_float(scores[i], "scores", i, dev);
    if (scores[i].numel() == 0) continue;
    at::Tensor c = scores[i].contiguous();
    uint8_t* o = out != nullptr ? reinterpret_cast<uint8_t*>((*out)[i].data_ptr<bool>()) : nullptr;
    add_segment(p, c.data_ptr(), nullptr, nullptr, o, c.scalar_type(), c.numel(), i);
    p.hold.push_back(std::move(c));
  }
  check_k(k, p.n);
  SelectState st{};
  st.mode = kModeNone;
  if (p.n == 0) return st;
  st = run_select(p, k, promoted_dtype(scores), false, out != nullptr, value_out, dev);
  TORCH_CHECK_VALUE(st.mode != kModeErrNaN, "scores[", st.nan_index, "] contains NaN; NaN scores cannot be ranked");
  TORCH_INTERNAL_ASSERT(st.mode != kModeErrK);
  return st;
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
  Prepared p;
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
      p.hold.push_back(std::move(m));
    }
    add_segment(p, w.data_ptr(), g.data_ptr(), prev, reinterpret_cast<uint8_t*>(out[i].data_ptr<bool>()), st,
                w.numel(), i);
    p.hold.push_back(std::move(w));
    p.hold.push_back(std::move(g));
  }
  check_k(k, p.n);
  if (p.n == 0) return;
  const SelectState st = run_select(p, k, any_double ? at::kDouble : at::kFloat, true, true, nullptr, dev);
  TORCH_CHECK_VALUE(st.mode != kModeErrNaN, "the saliency |w*g| of weights[", st.nan_index,
                    "] is NaN (NaN, or inf times 0, in weights[", st.nan_index, "] or grads[", st.nan_index, "])");
  TORCH_CHECK_VALUE(st.mode != kModeErrK, "k=", k, " but prev_masks keep only ", st.competing,
                    " weights; with resurrect=False only weights kept in prev_masks compete, so k may not exceed that");
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
  std::vector<SgdSegment> segs;
  std::vector<at::Tensor> hold;
  // Non-contiguous params/buffers are updated through contiguous copies, written back after.
  std::vector<std::pair<at::Tensor, at::Tensor>> write_back;
  int64_t tiles = 0;
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    TORCH_CHECK(p.is_cuda() && p.device() == dev && grads[i].device() == dev, "sparseforce (cuda): params[", i,
                "] and grads[", i, "] must be on ", dev);
    TORCH_CHECK(grads[i].scalar_type() == p.scalar_type() && grads[i].sizes() == p.sizes(),
                "sparseforce: grads[", i, "] must match params[", i, "] in dtype and shape");
    if (p.numel() == 0) continue;
    SgdSegment s{};
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
    s.tile_begin = tiles;
    s.aligned = aligned16(s.p) && aligned16(s.g) && aligned16(s.buf) && aligned16(s.mask);
    tiles += (s.n + kTile - 1) / kTile;
    segs.push_back(s);
  }
  if (tiles == 0) return;
  at::Tensor table = upload(segs.data(), sizeof(SgdSegment) * segs.size(), dev);
  SgdArgs a{};
  a.segs = reinterpret_cast<const SgdSegment*>(table.data_ptr());
  a.nseg = static_cast<int32_t>(segs.size());
  a.nesterov = nesterov ? 1 : 0;
  a.tiles = tiles;
  a.lr = lr;
  a.momentum = momentum;
  a.dampening = dampening;
  a.weight_decay = weight_decay;
  a.num_sms = num_sms(dev.index());
  a.stream = current_stream(dev).stream();
  C10_CUDA_CHECK(launch_masked_sgd(a));
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
  m.impl("masked_sgd_", &masked_sgd_);
}

}  // namespace cuda
}  // namespace sparseforce

#endif  // SPARSEFORCE_WITH_CUDA
