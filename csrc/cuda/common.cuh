// Device helpers shared by the CUDA kernels: order-preserving keys (the same mapping as
// csrc/cpu/float_keys.h, so every backend ranks identically), raw vector loads, block scans and
// the tile -> tensor lookup. CUDA headers only.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "launch.h"

namespace sparseforce {
namespace cuda {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// __launch_bounds__(kThreads) alone lets ptxas aim for 5+ resident blocks (48 registers), and the
// per-element kernels then spill; 3 blocks per SM (768 threads, up to 80 registers) is the most
// that keeps every kernel spill-free on sm_90 (tests/test_cuda_compile.py checks it).
constexpr int kMinBlocksPerSm = 3;

// A workspace carved into pieces that each start on a 256-byte boundary (the alignment of a
// cudaMalloc, which the vector loads and the 64-bit atomics rely on).
__host__ __device__ inline size_t align_up(size_t x) { return (x + 255) & ~size_t(255); }

// ---- the one place a kernel is launched. Under SPARSEFORCE_CUDA_EMULATION (the CPU emulator of
// tests/cuda_emu, which compiles these sources as host C++) the emulator runs the grid; otherwise
// it is the ordinary launch. The arguments are converted to the kernel's parameter types here, as
// a launch would, so both paths see the same values.
template <class... P, class... A>
inline void launch_kernel(const char* file, int line, void (*kernel)(P...), dim3 grid, dim3 block,
                          size_t smem, cudaStream_t stream, A&&... args) {
#if defined(SPARSEFORCE_CUDA_EMULATION)
  ::sfemu::launch(file, line, kernel, grid, block, smem, stream, static_cast<P>(args)...);
#else
  (void)file;
  (void)line;
  kernel<<<grid, block, smem, stream>>>(static_cast<P>(args)...);
#endif
}

// SF_LAUNCH(kernel, grid, block, smem, stream, args...); a template kernel goes in parentheses:
// SF_LAUNCH((hist_kernel<PT, SAL>), ...).
#define SF_LAUNCH(kernel, grid, block, smem, stream, ...) \
  ::sparseforce::cuda::launch_kernel(__FILE__, __LINE__, kernel, grid, block, smem, stream, __VA_ARGS__)

// Resident blocks of kThreads threads per SM for `kernel`, at least 1 (1 if the query fails: the
// runtime keeps that error, which the launcher's final cudaGetLastError() must not see).
template <class K>
inline int blocks_per_sm(K kernel) {
  int n = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, kThreads, 0) != cudaSuccess) {
    (void)cudaGetLastError();
    n = 1;
  }
  return n < 1 ? 1 : n;
}

// A persistent grid: one full wave of `occ` blocks per SM, but at most `items` blocks (at least 1).
inline unsigned wave_grid(int64_t items, int sms, int occ) {
  int64_t g = static_cast<int64_t>(sms > 0 ? sms : 1) * occ;
  g = g > items ? items : g;
  return static_cast<unsigned>(g < 1 ? 1 : g);
}

// ---- dtypes: raw storage and key width of each DType

template <int DT> struct RawOf;
template <> struct RawOf<kF16> { using type = uint16_t; };
template <> struct RawOf<kBF16> { using type = uint16_t; };
template <> struct RawOf<kF32> { using type = float; };
template <> struct RawOf<kF64> { using type = double; };
template <int DT> using raw_t = typename RawOf<DT>::type;

template <int PT> struct KeyOf;
template <> struct KeyOf<kF16> { using type = uint16_t; static constexpr uint64_t inf_bits = 0x7c00u; };
template <> struct KeyOf<kBF16> { using type = uint16_t; static constexpr uint64_t inf_bits = 0x7f80u; };
template <> struct KeyOf<kF32> { using type = uint32_t; static constexpr uint64_t inf_bits = 0x7f800000u; };
template <> struct KeyOf<kF64> { using type = uint64_t; static constexpr uint64_t inf_bits = 0x7ff0000000000000ull; };
template <int PT> using key_t = typename KeyOf<PT>::type;

template <int PT> inline constexpr int key_bits = static_cast<int>(sizeof(key_t<PT>) * 8);

// ---- order-preserving keys. Zero is canonicalised on the bits (not by adding +0.0, which a
// compiler could fold away), so -0.0 and +0.0 share +0.0's key.

__device__ __forceinline__ uint16_t key16(uint16_t b) {
  b = (b & 0x7fffu) == 0 ? uint16_t(0) : b;
  const uint16_t neg = (b & 0x8000u) ? uint16_t(0xffffu) : uint16_t(0);
  return uint16_t(b ^ (neg | 0x8000u));
}

__device__ __forceinline__ uint32_t key32(float v) {
  uint32_t b = __float_as_uint(v);
  b = (b << 1) == 0 ? 0u : b;
  return b ^ (uint32_t(int32_t(b) >> 31) | 0x80000000u);
}

__device__ __forceinline__ uint64_t key64(double v) {
  uint64_t b = static_cast<uint64_t>(__double_as_longlong(v));
  b = (b << 1) == 0 ? 0ull : b;
  return b ^ (uint64_t(int64_t(b) >> 63) | 0x8000000000000000ull);
}

// |x| on the bits (the sign bit cleared): exact in every dtype, -0.0 becomes +0.0, NaN stays NaN.
template <int DT>
__device__ __forceinline__ raw_t<DT> abs_raw(raw_t<DT> x) {
  if constexpr (DT == kF16 || DT == kBF16) {
    return raw_t<DT>(x & 0x7fffu);
  } else if constexpr (DT == kF32) {
    return __uint_as_float(__float_as_uint(x) & 0x7fffffffu);
  } else {
    return __longlong_as_double(__double_as_longlong(x) & 0x7fffffffffffffffll);
  }
}

// Whether an element with mask byte `p` competes under SelectFlags `flags` (kFlagUnion: the
// unset ones do), and the byte written for one that does not (kFlagUnion: true, it is in prev).
__device__ __forceinline__ bool competes_under(int32_t flags, uint8_t p) {
  return (p != 0) != ((flags & kFlagUnion) != 0);
}
__device__ __forceinline__ uint8_t resting_byte(int32_t flags) { return uint8_t((flags & kFlagUnion) != 0); }

// Inverse of the mapping (the zero key comes back as +0.0).
__device__ __forceinline__ uint64_t unorder_bits(uint64_t key, int bits) {
  const uint64_t sign = uint64_t(1) << (bits - 1);
  const uint64_t all = bits == 64 ? ~0ull : ((uint64_t(1) << bits) - 1);
  return (key & sign) ? (key ^ sign) : (~key & all);
}

// NaN keys lie above +inf's key or below -inf's.
template <int PT>
__device__ __forceinline__ bool is_nan_key(key_t<PT> key) {
  using K = key_t<PT>;
  constexpr K sign = K(K(1) << (sizeof(K) * 8 - 1));
  constexpr K pos_inf = K(K(KeyOf<PT>::inf_bits) | sign);
  constexpr K neg_inf = K(~pos_inf);
  return key > pos_inf || key < neg_inf;
}

// Exact widening of fp16/bf16 to float.
template <int DT>
__device__ __forceinline__ float to_f32(raw_t<DT> x) {
  if constexpr (DT == kF16) {
    return __half2float(__ushort_as_half(x));
  } else if constexpr (DT == kBF16) {
    return __uint_as_float(uint32_t(x) << 16);
  } else {
    return static_cast<float>(x);
  }
}

// The key, in ranking dtype PT, of a score of dtype DT (promotion is exact: PT holds every DT
// value), or of the saliency |a*b| formed in float32 (float64 for float64 inputs) as the
// reference does. The multiply is explicitly rounded so it can never be contracted.
template <int PT, int DT, bool SAL>
__device__ __forceinline__ key_t<PT> make_key(raw_t<DT> a, raw_t<DT> b) {
  if constexpr (SAL) {
    if constexpr (DT == kF64) {
      static_assert(PT == kF64, "float64 saliency ranks in float64");
      return key64(fabs(__dmul_rn(a, b)));
    } else {
      const float s = fabsf(__fmul_rn(to_f32<DT>(a), to_f32<DT>(b)));
      if constexpr (PT == kF64) {
        return key64(static_cast<double>(s));
      } else {
        static_assert(PT == kF32, "fp16/bf16/fp32 saliency ranks in float32 or float64");
        return key32(s);
      }
    }
  } else {
    if constexpr (PT == DT) {
      if constexpr (PT == kF16 || PT == kBF16) {
        return key16(a);
      } else if constexpr (PT == kF32) {
        return key32(a);
      } else {
        return key64(a);
      }
    } else if constexpr (PT == kF32) {
      static_assert(DT == kF16 || DT == kBF16, "only fp16/bf16 promote exactly to float32");
      return key32(to_f32<DT>(a));
    } else {
      static_assert(PT == kF64, "scores promote exactly to float64 only");
      return key64(static_cast<double>(to_f32<DT>(a)));
    }
  }
}

// Which (ranking dtype, input dtype) pairs the glue can produce; only these are instantiated.
template <int PT, int DT, bool SAL>
inline constexpr bool valid_pair =
    SAL ? (PT == kF64 || (PT == kF32 && DT != kF64))
        : (PT == DT || PT == kF64 || (PT == kF32 && (DT == kF16 || DT == kBF16)));

// ---- raw loads/stores of N bytes (N a power of two, the address N-aligned)

template <int N> struct Bytes;
template <> struct Bytes<1> { using type = uint8_t; };
template <> struct Bytes<2> { using type = uint16_t; };
template <> struct Bytes<4> { using type = uint32_t; };
template <> struct Bytes<8> { using type = uint2; };
template <> struct Bytes<16> { using type = uint4; };

// How a vector load goes through the caches.
enum class Load {
  ReadOnly,   // __ldg: data no kernel writes during the launch
  Coherent,   // plain load: data the same kernel writes back
  Streaming,  // __ldcs: data read once per pass (keeps the L2 for the histograms)
};

template <Load L, class T, int V>
__device__ __forceinline__ void load_vec_as(const T* p, T (&out)[V]) {
  using W = typename Bytes<sizeof(T) * V>::type;
  union {
    W w;
    T t[V];
  } u;
  const W* q = reinterpret_cast<const W*>(p);
  if constexpr (L == Load::ReadOnly) {
    u.w = __ldg(q);
  } else if constexpr (L == Load::Coherent) {
    u.w = *q;
  } else {
    u.w = __ldcs(q);
  }
  #pragma unroll
  for (int v = 0; v < V; ++v) out[v] = u.t[v];
}

template <class T, int V>
__device__ __forceinline__ void load_vec(const T* p, T (&out)[V]) { load_vec_as<Load::ReadOnly>(p, out); }
template <class T, int V>
__device__ __forceinline__ void load_vec_rw(const T* p, T (&out)[V]) { load_vec_as<Load::Coherent>(p, out); }
template <class T, int V>
__device__ __forceinline__ void load_vec_cs(const T* p, T (&out)[V]) { load_vec_as<Load::Streaming>(p, out); }

template <int V>
__device__ __forceinline__ void store_bytes(uint8_t* p, const uint8_t (&in)[V]) {
  using W = typename Bytes<V>::type;
  union {
    W w;
    uint8_t b[V];
  } u;
  #pragma unroll
  for (int v = 0; v < V; ++v) u.b[v] = in[v];
  *reinterpret_cast<W*>(p) = u.w;
}

// ---- block-wide scans over kThreads threads (every thread must call)

// Inclusive scan of x in thread order; *total gets the block's sum. scratch: kWarps + 1 entries.
template <class T>
__device__ __forceinline__ T block_inclusive_scan(T x, T* scratch, T* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  #pragma unroll
  for (int d = 1; d < 32; d <<= 1) {
    const T y = __shfl_up_sync(0xffffffffu, x, d);
    if (lane >= d) x += y;
  }
  if (lane == 31) scratch[warp] = x;
  __syncthreads();
  if (threadIdx.x == 0) {
    T run = 0;
    for (int w = 0; w < kWarps; ++w) {
      const T s = scratch[w];
      scratch[w] = run;
      run += s;
    }
    scratch[kWarps] = run;
  }
  __syncthreads();
  x += scratch[warp];
  if (total != nullptr) *total = scratch[kWarps];
  __syncthreads();  // scratch is reused by the next call
  return x;
}

// ---- the segment holding global tile `tile` (segments have n > 0, so tile_begin increases)

__device__ __forceinline__ int find_tile_segment(const Segment* segs, int nseg, int64_t tile) {
  int lo = 0, hi = nseg - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (segs[mid].tile_begin <= tile) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// The last block of a grid to finish its flush returns true (in every thread of that block),
// after a fence, so it sees every other block's atomics; it must reset the counter.
__device__ __forceinline__ bool last_block_done(uint32_t* counter) {
  __shared__ bool last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(counter, 1u) == gridDim.x - 1;
  __syncthreads();
  if (last) __threadfence();
  return last;
}

}  // namespace cuda
}  // namespace sparseforce
