// CUDA kernel of masked_sgd_: one launch over every (param, grad, momentum buffer, mask)
// element of every tensor, with torch.optim.SGD's arithmetic exactly as csrc/cpu/masked_sgd.cpp
// does it:
//   d_p = g + wd*p;  buf = momentum*buf + (1-dampening)*d_p  (buf = d_p on a fresh buffer);
//   d_p = nesterov ? d_p + momentum*buf : buf;  p = p - lr*d_p
// and, where the mask is false, p = buf = +0. Intermediates are rounded to the tensor's dtype
// where torch's op-by-op step stores them, and every product and sum is rounded separately
// (never fused into an FMA), so the result is the CPU kernel's, bit for bit, in every dtype.
// Tiles of kTile elements never straddle two tensors; each block takes one tile and reads the
// tensor's dtype, buffer state and mask presence from the segment table (uniform branches).
#include <cstdint>
#include <type_traits>

#include <cuda_runtime.h>

#include "common.cuh"
#include "launch.h"

namespace sparseforce {
namespace cuda {
namespace {

struct Hyper {
  double lr, momentum, dampening, weight_decay;
  int nesterov;
};

template <int DT> using acc_t = std::conditional_t<DT == kF64, double, float>;

__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }

template <int DT>
__device__ __forceinline__ acc_t<DT> widen(raw_t<DT> x) {
  if constexpr (DT == kF16 || DT == kBF16) {
    return to_f32<DT>(x);
  } else {
    return x;
  }
}

// To the storage dtype, round to nearest even (as c10::Half / c10::BFloat16 convert).
template <int DT>
__device__ __forceinline__ raw_t<DT> narrow(acc_t<DT> x) {
  if constexpr (DT == kF16) {
    return __half_as_ushort(__float2half_rn(x));
  } else if constexpr (DT == kBF16) {
    return __bfloat16_as_ushort(__float2bfloat16_rn(x));
  } else {
    return x;
  }
}

// Where torch's step stores an intermediate tensor.
template <int DT>
__device__ __forceinline__ acc_t<DT> round_to(acc_t<DT> x) {
  if constexpr (DT == kF16 || DT == kBF16) {
    return widen<DT>(narrow<DT>(x));
  } else {
    return x;
  }
}

// Mode: 0 no momentum, 1 fresh buffer, 2 existing buffer.
template <int DT, bool Masked, int Mode>
__device__ __forceinline__ void sgd_tile(const SgdSegment& s, int64_t lo, int64_t hi, const Hyper& h) {
  using T = raw_t<DT>;
  using A = acc_t<DT>;
  constexpr int V = 16 / int(sizeof(T));
  T* p = static_cast<T*>(s.p);
  const T* g = static_cast<const T*>(s.g);
  T* buf = static_cast<T*>(s.buf);
  const uint8_t* mask = s.mask;
  const A neg_lr = -static_cast<A>(h.lr);
  const A mom = static_cast<A>(h.momentum);
  const A damp1 = static_cast<A>(1.0 - h.dampening);
  const A wd = static_cast<A>(h.weight_decay);
  const bool has_wd = h.weight_decay != 0;
  const bool nesterov = h.nesterov != 0;
  const bool vec = s.aligned != 0;

  auto step = [&](T& pv, T gv, T& bv, bool keep) {
    const A pi = widen<DT>(pv);
    A d = widen<DT>(gv);
    if (has_wd) d = round_to<DT>(add_rn(d, mul_rn(wd, pi)));
    A b = A(0);
    if constexpr (Mode == 1) {
      b = d;
    } else if constexpr (Mode == 2) {
      b = round_to<DT>(mul_rn(widen<DT>(bv), mom));
      b = round_to<DT>(add_rn(b, mul_rn(damp1, d)));
    }
    if constexpr (Mode != 0) d = nesterov ? round_to<DT>(add_rn(d, mul_rn(mom, b))) : b;
    A np = add_rn(pi, mul_rn(neg_lr, d));
    if constexpr (Masked) {
      np = keep ? np : A(0);
      b = keep ? b : A(0);
    }
    pv = narrow<DT>(np);
    if constexpr (Mode != 0) bv = narrow<DT>(b);
  };

  for (int64_t j0 = lo + int64_t(threadIdx.x) * V; j0 < hi; j0 += int64_t(kThreads) * V) {
    if (vec && j0 + V <= hi) {
      T pv[V], gv[V], bv[V];
      uint8_t mv[V];
      load_vec_rw<T, V>(p + j0, pv);
      load_vec_cs<T, V>(g + j0, gv);
      if constexpr (Mode == 2) load_vec_rw<T, V>(buf + j0, bv);
      if constexpr (Masked) load_vec<uint8_t, V>(mask + j0, mv);
      #pragma unroll
      for (int v = 0; v < V; ++v) step(pv[v], gv[v], bv[v], Masked ? mv[v] != 0 : true);
      using W = typename Bytes<16>::type;
      union {
        W w;
        T t[V];
      } u;
      #pragma unroll
      for (int v = 0; v < V; ++v) u.t[v] = pv[v];
      *reinterpret_cast<W*>(p + j0) = u.w;
      if constexpr (Mode != 0) {
        #pragma unroll
        for (int v = 0; v < V; ++v) u.t[v] = bv[v];
        *reinterpret_cast<W*>(buf + j0) = u.w;
      }
    } else {
      const int cnt = hi - j0 < V ? int(hi - j0) : V;
      for (int v = 0; v < cnt; ++v) {
        const int64_t j = j0 + v;
        T pv = p[j];
        T bv = Mode == 2 ? buf[j] : T(0);
        step(pv, g[j], bv, Masked ? mask[j] != 0 : true);
        p[j] = pv;
        if constexpr (Mode != 0) buf[j] = bv;
      }
    }
  }
}

template <int DT>
__device__ __forceinline__ void sgd_dispatch(const SgdSegment& s, int64_t lo, int64_t hi, const Hyper& h) {
  const int mode = s.buf == nullptr ? 0 : (s.fresh ? 1 : 2);
  if (s.mask != nullptr) {
    if (mode == 0) sgd_tile<DT, true, 0>(s, lo, hi, h);
    else if (mode == 1) sgd_tile<DT, true, 1>(s, lo, hi, h);
    else sgd_tile<DT, true, 2>(s, lo, hi, h);
  } else {
    if (mode == 0) sgd_tile<DT, false, 0>(s, lo, hi, h);
    else if (mode == 1) sgd_tile<DT, false, 1>(s, lo, hi, h);
    else sgd_tile<DT, false, 2>(s, lo, hi, h);
  }
}

// Persistent blocks, each over a contiguous range of tiles, so the tensor of the next tile is
// usually the current one (no lookup stands between two tiles).
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm) masked_sgd_kernel(const SgdSegment* segs, int nseg, long long tiles, Hyper h) {
  __shared__ SgdSegment seg;
  const long long t0 = static_cast<long long>(blockIdx.x) * tiles / gridDim.x;
  const long long t1 = static_cast<long long>(blockIdx.x + 1) * tiles / gridDim.x;
  int cur = -1;  // thread 0's segment of the last tile
  for (long long tile = t0; tile < t1; ++tile) {
    __syncthreads();
    if (threadIdx.x == 0) {
      const int before = cur;
      if (cur < 0) {
        int lo = 0, hi = nseg - 1;
        while (lo < hi) {
          const int mid = (lo + hi + 1) >> 1;
          if (segs[mid].tile_begin <= tile) lo = mid; else hi = mid - 1;
        }
        cur = lo;
      } else {
        while (cur + 1 < nseg && segs[cur + 1].tile_begin <= tile) ++cur;
      }
      if (cur != before) seg = segs[cur];
    }
    __syncthreads();
    const int64_t a = (tile - seg.tile_begin) * kTile;
    const int64_t b = a + kTile < seg.n ? a + kTile : seg.n;
    switch (seg.dtype) {
      case kF16: sgd_dispatch<kF16>(seg, a, b, h); break;
      case kBF16: sgd_dispatch<kBF16>(seg, a, b, h); break;
      case kF32: sgd_dispatch<kF32>(seg, a, b, h); break;
      default: sgd_dispatch<kF64>(seg, a, b, h); break;
    }
  }
}

}  // namespace

cudaError_t launch_masked_sgd(const SgdArgs& a) {
  if (a.tiles <= 0 || a.nseg <= 0) return cudaSuccess;
  const Hyper h{a.lr, a.momentum, a.dampening, a.weight_decay, a.nesterov};
  static const int occ = blocks_per_sm(masked_sgd_kernel);
  SF_LAUNCH(masked_sgd_kernel, wave_grid(a.tiles, a.num_sms, occ), kThreads, 0, a.stream, a.segs, a.nseg, a.tiles, h);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace sparseforce
