// The CPU masked_sgd_ step (masked_sgd.h; the torch layer is ops_cpu.cpp): one pass over every
// (param, grad, momentum buffer, mask) element, all tensors in one parallel region, with
// torch.optim.SGD's arithmetic:
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

#include <ATen/Parallel.h>

#include "float_keys.h"
#include "masked_sgd.h"

namespace sparseforce {
namespace cpu {
namespace {

constexpr int64_t kGrain = int64_t(1) << 15;

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
void sgd_range(const SgdOperand& s, int64_t lo, int64_t hi, const SgdHyper& h) {
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
void sgd_piece(const SgdOperand& s, int64_t lo, int64_t hi, const SgdHyper& h) {
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

}  // namespace

void masked_sgd(const std::vector<SgdOperand>& segs, int64_t total, const SgdHyper& h) {
  if (total == 0) return;
  std::vector<int64_t> starts(segs.size());
  for (size_t j = 0; j < segs.size(); ++j) starts[j] = segs[j].offset;
  // One parallel region over the global element range, not one per tensor.
  at::parallel_for(0, total, kGrain, [&](int64_t lo, int64_t hi) {
    size_t j = static_cast<size_t>(std::upper_bound(starts.begin(), starts.end(), lo) - starts.begin()) - 1;
    for (; j < segs.size() && segs[j].offset < hi; ++j) {
      const SgdOperand& s = segs[j];
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
}

}  // namespace cpu
}  // namespace sparseforce
