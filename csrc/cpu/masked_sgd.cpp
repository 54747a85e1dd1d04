// CPU kernel of masked_sgd_: one pass over every (param, grad, momentum buffer, mask) element,
// all tensors in one parallel region, with torch.optim.SGD's arithmetic:
//   d_p = g + wd*p;  buf = momentum*buf + (1-dampening)*d_p  (buf = d_p on the first step);
//   d_p = nesterov ? d_p + momentum*buf : buf;  p = p - lr*d_p
// and, where the mask is false, p = buf = +0 (the reference masks d_p, buf and p in turn, which
// leaves exactly these zeros, and for kept entries masking d_p changes nothing).
// Each intermediate is rounded to the tensor's dtype where torch's op-by-op step rounds it, so
// fp16/bf16 agree with the reference too; the constants are cast to the compute type as torch
// casts its Python scalars.
#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "float_keys.h"

namespace sparseforce {
namespace cpu {
namespace {

constexpr int64_t kGrain = int64_t(1) << 15;

struct SgdSeg {
  void* p = nullptr;
  const void* g = nullptr;
  void* buf = nullptr;              // null when momentum == 0
  const uint8_t* mask = nullptr;    // null: unmasked
  bool fresh = false;               // buf holds no state yet: it becomes d_p
  at::ScalarType type = at::kFloat;
  int64_t n = 0, offset = 0;
};

struct Hyper {
  double lr, momentum, dampening, weight_decay;
  bool nesterov;
};

template <typename T> using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

// Rounds a compute-type value to T and back: where torch's step stores an intermediate tensor.
template <typename T, typename A>
inline A round_to(A x) {
  if constexpr (std::is_same_v<T, A>) {
    return x;
  } else {
    return static_cast<A>(static_cast<T>(x));
  }
}

// Mode: 0 no momentum, 1 fresh buffer, 2 existing buffer.
template <typename T, bool Masked, int Mode>
void sgd_range(const SgdSeg& s, int64_t lo, int64_t hi, const Hyper& h) {
  using A = acc_t<T>;
  T* __restrict p = static_cast<T*>(s.p);
  const T* __restrict g = static_cast<const T*>(s.g);
  T* __restrict buf = static_cast<T*>(s.buf);
  const uint8_t* __restrict mask = s.mask;
  const A neg_lr = -static_cast<A>(h.lr);
  const A mom = static_cast<A>(h.momentum);
  const A damp1 = static_cast<A>(1.0 - h.dampening);
  const A wd = static_cast<A>(h.weight_decay);
  const bool has_wd = h.weight_decay != 0;
  const bool nesterov = h.nesterov;
  for (int64_t i = lo; i < hi; ++i) {
    const A pi = static_cast<A>(widen(p[i]));
    A d = static_cast<A>(widen(g[i]));
    if (has_wd) d = round_to<T>(d + wd * pi);
    A b = A(0);
    if constexpr (Mode == 1) {
      b = d;
    } else if constexpr (Mode == 2) {
      b = round_to<T>(static_cast<A>(widen(buf[i])) * mom);
      b = round_to<T>(b + damp1 * d);
    }
    if constexpr (Mode != 0) d = nesterov ? round_to<T>(d + mom * b) : b;
    A np = pi + neg_lr * d;
    if constexpr (Masked) {
      const bool keep = mask[i] != 0;
      np = keep ? np : A(0);
      b = keep ? b : A(0);
    }
    p[i] = static_cast<T>(np);
    if constexpr (Mode != 0) buf[i] = static_cast<T>(b);
  }
}

template <typename T>
void sgd_piece(const SgdSeg& s, int64_t lo, int64_t hi, const Hyper& h) {
  const int mode = s.buf == nullptr ? 0 : (s.fresh ? 1 : 2);
  auto run = [&](auto masked) {
    constexpr bool M = decltype(masked)::value;
    if (mode == 0) sgd_range<T, M, 0>(s, lo, hi, h);
    else if (mode == 1) sgd_range<T, M, 1>(s, lo, hi, h);
    else sgd_range<T, M, 2>(s, lo, hi, h);
  };
  if (s.mask != nullptr) {
    run(std::true_type{});
  } else {
    run(std::false_type{});
  }
}

void masked_sgd_(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                 const c10::List<std::optional<at::Tensor>>& masks, double lr, double momentum, double dampening,
                 double weight_decay, bool nesterov, at::IntArrayRef fresh_buffers) {
  const size_t n = params.size();
  const bool use_buf = momentum != 0;
  TORCH_CHECK(grads.size() == n && masks.size() == n, "sparseforce: masked_sgd_ lists differ in length");
  TORCH_CHECK(!use_buf || (momentum_buffers.size() == n && fresh_buffers.size() == n),
              "sparseforce: masked_sgd_ with momentum needs one buffer and one fresh flag per param");
  std::vector<SgdSeg> segs;
  std::vector<at::Tensor> hold;
  // Non-contiguous params/buffers are updated through contiguous copies, written back after.
  std::vector<std::pair<at::Tensor, at::Tensor>> write_back;
  int64_t total = 0;
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    TORCH_CHECK(p.device().is_cpu() && grads[i].device().is_cpu(), "sparseforce (cpu): params[", i,
                "] is not on the CPU");
    TORCH_CHECK(grads[i].scalar_type() == p.scalar_type() && grads[i].sizes() == p.sizes(),
                "sparseforce: grads[", i, "] must match params[", i, "] in dtype and shape");
    if (p.numel() == 0) continue;
    SgdSeg s;
    s.type = p.scalar_type();
    TORCH_CHECK(s.type == at::kHalf || s.type == at::kBFloat16 || s.type == at::kFloat || s.type == at::kDouble,
                "sparseforce: params[", i, "] has dtype ", s.type);
    at::Tensor pc = p.contiguous();
    if (!pc.is_same(p)) write_back.emplace_back(p, pc);
    at::Tensor gc = grads[i].contiguous();
    s.p = pc.data_ptr();
    s.g = gc.data_ptr();
    hold.push_back(pc);
    hold.push_back(gc);
    if (use_buf) {
      const at::Tensor& b = momentum_buffers[i];
      TORCH_CHECK(b.scalar_type() == p.scalar_type() && b.sizes() == p.sizes() && b.device().is_cpu(),
                  "sparseforce: momentum_buffers[", i, "] must match params[", i, "]");
      at::Tensor bc = b.contiguous();
      if (!bc.is_same(b)) write_back.emplace_back(b, bc);
      s.buf = bc.data_ptr();
      s.fresh = fresh_buffers[i] != 0;
      hold.push_back(bc);
    }
    const std::optional<at::Tensor> m = masks.get(i);
    if (m.has_value() && m->defined()) {
      TORCH_CHECK(m->scalar_type() == at::kBool && m->sizes() == p.sizes(), "sparseforce: masks[", i,
                  "] must be a bool tensor of the param's shape");
      at::Tensor mc = m->contiguous();
      s.mask = reinterpret_cast<const uint8_t*>(mc.data_ptr<bool>());
      hold.push_back(mc);
    }
    s.n = p.numel();
    s.offset = total;
    total += s.n;
    segs.push_back(s);
  }
  if (total == 0) return;
  std::vector<int64_t> starts(segs.size());
  for (size_t j = 0; j < segs.size(); ++j) starts[j] = segs[j].offset;
  const Hyper h{lr, momentum, dampening, weight_decay, nesterov};
  // One parallel region over the global element range, not one per tensor.
  at::parallel_for(0, total, kGrain, [&](int64_t lo, int64_t hi) {
    size_t j = static_cast<size_t>(std::upper_bound(starts.begin(), starts.end(), lo) - starts.begin()) - 1;
    for (; j < segs.size() && segs[j].offset < hi; ++j) {
      const SgdSeg& s = segs[j];
      const int64_t a = std::max(lo, s.offset) - s.offset;
      const int64_t b = std::min(hi, s.offset + s.n) - s.offset;
      if (a >= b) continue;
      switch (s.type) {
        case at::kHalf: sgd_piece<c10::Half>(s, a, b, h); break;
        case at::kBFloat16: sgd_piece<c10::BFloat16>(s, a, b, h); break;
        case at::kFloat: sgd_piece<float>(s, a, b, h); break;
        default: sgd_piece<double>(s, a, b, h); break;
      }
    }
  });
  for (auto& [orig, copy] : write_back) orig.copy_(copy);
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseforce, CPU, m) {
  m.impl("masked_sgd_", &masked_sgd_);
}

}  // namespace cpu
}  // namespace sparseforce
