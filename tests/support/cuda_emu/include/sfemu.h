// sfemu: the CUDA execution model on the CPU, for testing csrc/cuda without a GPU.
//
// The project's .cu files are compiled unchanged as host C++ (g++ -x c++
// -DSPARSEFORCE_CUDA_EMULATION, this folder first on the include path, so <cuda_runtime.h> and
// friends resolve to the shims beside this file). Every CUDA thread runs as a fiber; only one
// fiber runs at a time, chosen by a seeded scheduler, so a run is reproducible from its seed.
// Each resident block gets its own OS thread that hosts its fibers: `__shared__` becomes
// `static thread_local`, which makes shared memory per block without touching the kernels, and
// the runtime fills it with garbage when the block starts.
//
// Every intrinsic that synchronises or can race is a scheduling point: __syncthreads and the
// warp collectives block until their participants arrive (and check they all arrived at the same
// call site, with no lane exited), atomics, fences and the __ld* loads may hand the baton to
// another fiber (of this or another resident block), so inter-block protocols run in many
// orders. Problems are reported with the kernel's file and line and fail the launch
// (cudaErrorLaunchFailure from cudaGetLastError); sfemu_diagnostic() returns the text.
//
// Global memory is sequentially consistent unless a schedule asks for weak memory: then a
// block's writes to device allocations (plain stores and atomics alike) stay invisible to other
// blocks until it executes __threadfence() or the kernel ends (runtime.cpp; the default build
// instruments the kernels' stores for it). Device allocations carry guard bytes checked after
// every launch.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

// ---- qualifiers

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __shared__ static thread_local
#define __constant__ static
#define __managed__

// ---- vector and index types

struct uint3 { unsigned int x, y, z; };
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(8) uint2 { unsigned int x, y; };
struct alignas(16) uint4 { unsigned int x, y, z, w; };
struct alignas(8) int2 { int x, y; };
struct alignas(16) int4 { int x, y, z, w; };
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(16) double2 { double x, y; };
struct alignas(16) ulonglong2 { unsigned long long x, y; };
struct alignas(16) longlong2 { long long x, y; };

// ---- runtime API types

enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDeviceFunction = 98,
  cudaErrorLaunchOutOfResources = 701,
  cudaErrorLaunchFailure = 719,
};
using cudaError = cudaError_t;
struct CUstream_st;
using cudaStream_t = CUstream_st*;
enum cudaDeviceAttr : int {
  cudaDevAttrMaxThreadsPerBlock = 1,
  cudaDevAttrMaxSharedMemoryPerBlock = 8,
  cudaDevAttrWarpSize = 10,
  cudaDevAttrMultiProcessorCount = 16,
};
enum cudaMemcpyKind : int {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};

namespace sfemu {

constexpr int kWarpSize = 32;
constexpr unsigned kMaxThreadsPerBlock = 1024;
constexpr size_t kMaxSharedPerBlock = 48 * 1024;  // without a cudaFuncSetAttribute opt-in (sm_90)

// The CUDA thread running now (only one runs at any moment).
struct ThreadCtx {
  uint3 tid, bid, bdim, gdim;
};
extern ThreadCtx* current;

// Scheduling points. `file`/`line` name the kernel's call site, for reports.
void sync_block(const char* file, int line, int kind, int pred, int* result);  // kind: 0 plain, 1 count, 2 and, 3 or
void preempt(const char* file, int line, int what);                             // what: 0 atomic, 1 fence, 2 load
void fence(const char* file, int line);  // __threadfence: publishes the block's writes (weak memory), then preempt
void atomic_access(const void* p, size_t bytes);  // before an atomic's read-modify-write (weak memory)
void store_access(const void* p, size_t bytes);   // before a plain store (from the instrumentation)
// A warp collective: every lane of `mask` arrives with 8 bytes of value; `op` says what each
// lane gets back (see runtime.cpp). Returns the lane's result bits.
uint64_t warp_op(const char* file, int line, int op, unsigned mask, uint64_t value, int arg, int width);
enum WarpOpKind { kShfl = 0, kShflUp = 1, kShflDown = 2, kShflXor = 3, kBallot = 4, kAny = 5, kAll = 6, kSyncWarp = 7 };
void set_error(cudaError_t e);
cudaError_t occupancy_result(int* blocks);  // the configured answer of the occupancy query

// The launch: runs the whole grid before returning (stream order is trivially kept).
using Body = void (*)(void* closure);
void launch_grid(const char* file, int line, dim3 grid, dim3 block, size_t smem, Body body, void* closure);

template <class... P>
void launch(const char* file, int line, void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t,
            P... args) {
  struct Closure {
    void (*kernel)(P...);
    std::tuple<P...> args;
  } c{kernel, std::tuple<P...>(args...)};
  // Each CUDA thread gets its own copy of the parameters, as on a GPU.
  launch_grid(file, line, grid, block, smem,
              [](void* p) {
                auto* cl = static_cast<Closure*>(p);
                std::tuple<P...> mine = cl->args;
                std::apply(cl->kernel, mine);
              },
              &c);
}

template <class T>
uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8, "warp collectives move at most 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <class T>
T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}

}  // namespace sfemu

#define threadIdx (::sfemu::current->tid)
#define blockIdx (::sfemu::current->bid)
#define blockDim (::sfemu::current->bdim)
#define gridDim (::sfemu::current->gdim)
#define warpSize 32

// ---- barriers and warp collectives (macros, so reports name the kernel's line)

#define __syncthreads() ::sfemu::sync_block(__FILE__, __LINE__, 0, 0, nullptr)
#define __syncthreads_count(p) ::sfemu::detail::sync_pred(__FILE__, __LINE__, 1, (p))
#define __syncthreads_and(p) ::sfemu::detail::sync_pred(__FILE__, __LINE__, 2, (p))
#define __syncthreads_or(p) ::sfemu::detail::sync_pred(__FILE__, __LINE__, 3, (p))
#define __syncwarp(...) ::sfemu::detail::SyncWarp{__FILE__, __LINE__}(__VA_ARGS__)
#define __shfl_sync(m, v, ...) ::sfemu::detail::shfl(__FILE__, __LINE__, ::sfemu::kShfl, (m), (v), __VA_ARGS__)
#define __shfl_up_sync(m, v, ...) ::sfemu::detail::shfl(__FILE__, __LINE__, ::sfemu::kShflUp, (m), (v), __VA_ARGS__)
#define __shfl_down_sync(m, v, ...) ::sfemu::detail::shfl(__FILE__, __LINE__, ::sfemu::kShflDown, (m), (v), __VA_ARGS__)
#define __shfl_xor_sync(m, v, ...) ::sfemu::detail::shfl(__FILE__, __LINE__, ::sfemu::kShflXor, (m), (v), __VA_ARGS__)
#define __ballot_sync(m, p) \
  static_cast<unsigned>(::sfemu::warp_op(__FILE__, __LINE__, ::sfemu::kBallot, (m), uint64_t((p) != 0), 0, 32))
#define __any_sync(m, p) \
  static_cast<int>(::sfemu::warp_op(__FILE__, __LINE__, ::sfemu::kAny, (m), uint64_t((p) != 0), 0, 32))
#define __all_sync(m, p) \
  static_cast<int>(::sfemu::warp_op(__FILE__, __LINE__, ::sfemu::kAll, (m), uint64_t((p) != 0), 0, 32))

// ---- atomics, fences and cache-hinted loads (scheduling points)

#define atomicAdd(...) ::sfemu::detail::atomic_add(__FILE__, __LINE__, __VA_ARGS__)
#define atomicSub(...) ::sfemu::detail::atomic_sub(__FILE__, __LINE__, __VA_ARGS__)
#define atomicMin(...) ::sfemu::detail::atomic_min(__FILE__, __LINE__, __VA_ARGS__)
#define atomicMax(...) ::sfemu::detail::atomic_max(__FILE__, __LINE__, __VA_ARGS__)
#define atomicExch(...) ::sfemu::detail::atomic_exch(__FILE__, __LINE__, __VA_ARGS__)
#define atomicCAS(...) ::sfemu::detail::atomic_cas(__FILE__, __LINE__, __VA_ARGS__)
#define atomicOr(...) ::sfemu::detail::atomic_or(__FILE__, __LINE__, __VA_ARGS__)
#define atomicAnd(...) ::sfemu::detail::atomic_and(__FILE__, __LINE__, __VA_ARGS__)
#define __threadfence() ::sfemu::fence(__FILE__, __LINE__)
#define __threadfence_block() ::sfemu::preempt(__FILE__, __LINE__, 1)  // orders nothing across blocks
#define __threadfence_system() ::sfemu::fence(__FILE__, __LINE__)
#define __ldg(p) ::sfemu::detail::load(__FILE__, __LINE__, (p))
#define __ldcs(p) ::sfemu::detail::load(__FILE__, __LINE__, (p))
#define __ldcg(p) ::sfemu::detail::load(__FILE__, __LINE__, (p))
#define __ldca(p) ::sfemu::detail::load(__FILE__, __LINE__, (p))
#define __ldcv(p) ::sfemu::detail::load(__FILE__, __LINE__, (p))
#define __ldlu(p) ::sfemu::detail::load(__FILE__, __LINE__, (p))

namespace sfemu {
namespace detail {

inline int sync_pred(const char* f, int l, int kind, int p) {
  int r = 0;
  sync_block(f, l, kind, p != 0, &r);
  return r;
}
struct SyncWarp {  // __syncwarp() and __syncwarp(mask) through one macro
  const char* file;
  int line;
  void operator()(unsigned mask = 0xffffffffu) const { warp_op(file, line, kSyncWarp, mask, 0, 0, 32); }
};

template <class T>
T shfl(const char* f, int l, int op, unsigned mask, T v, int arg, int width = 32) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8, "shuffle of an 8-byte-or-smaller value");
  return from_bits<T>(warp_op(f, l, op, mask, to_bits(v), arg, width));
}

template <class T>
T load(const char* f, int l, const T* p) {
  preempt(f, l, 2);
  return *p;
}

// CUDA defines these atomics for 32- and 64-bit integers (and float/double add); only one fiber
// runs at a time, so the read-modify-write after the scheduling point is atomic.
template <class T> using IsAtomicInt = std::enable_if_t<std::is_integral<T>::value && (sizeof(T) == 4 || sizeof(T) == 8)>;

// The one read-modify-write every atomic is: a scheduling point, then op(old) stored; returns old.
template <class T, class Op>
T rmw(const char* f, int l, T* p, Op op) {
  preempt(f, l, 0);
  atomic_access(p, sizeof(T));
  const T old = *p;
  *p = op(old);
  return old;
}

template <class T, class U>
T atomic_add(const char* f, int l, T* p, U v) {
  static_assert((std::is_integral<T>::value && (sizeof(T) == 4 || sizeof(T) == 8)) || std::is_floating_point<T>::value,
                "atomicAdd on a type CUDA does not support");
  return rmw(f, l, p, [&](T o) { return T(o + T(v)); });
}
template <class T, class U, class = IsAtomicInt<T>>
T atomic_sub(const char* f, int l, T* p, U v) { return rmw(f, l, p, [&](T o) { return T(o - T(v)); }); }
template <class T, class U, class = IsAtomicInt<T>>
T atomic_min(const char* f, int l, T* p, U v) { return rmw(f, l, p, [&](T o) { return T(v) < o ? T(v) : o; }); }
template <class T, class U, class = IsAtomicInt<T>>
T atomic_max(const char* f, int l, T* p, U v) { return rmw(f, l, p, [&](T o) { return T(v) > o ? T(v) : o; }); }
template <class T, class U>
T atomic_exch(const char* f, int l, T* p, U v) { return rmw(f, l, p, [&](T) { return T(v); }); }
template <class T, class U, class V, class = IsAtomicInt<T>>
T atomic_cas(const char* f, int l, T* p, U cmp, V v) {
  return rmw(f, l, p, [&](T o) { return o == T(cmp) ? T(v) : o; });
}
template <class T, class U, class = IsAtomicInt<T>>
T atomic_or(const char* f, int l, T* p, U v) { return rmw(f, l, p, [&](T o) { return T(o | T(v)); }); }
template <class T, class U, class = IsAtomicInt<T>>
T atomic_and(const char* f, int l, T* p, U v) { return rmw(f, l, p, [&](T o) { return T(o & T(v)); }); }

}  // namespace detail
}  // namespace sfemu

// ---- bit manipulation and reinterpretation

inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x)); }
inline unsigned __brev(unsigned x) {
  x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
  x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
  x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
  x = ((x >> 8) & 0x00ff00ffu) | ((x & 0x00ff00ffu) << 8);
  return (x >> 16) | (x << 16);
}
inline unsigned __float_as_uint(float v) { return sfemu::from_bits<unsigned>(sfemu::to_bits(v)); }
inline int __float_as_int(float v) { return sfemu::from_bits<int>(sfemu::to_bits(v)); }
inline float __uint_as_float(unsigned v) { return sfemu::from_bits<float>(sfemu::to_bits(v)); }
inline float __int_as_float(int v) { return sfemu::from_bits<float>(sfemu::to_bits(v)); }
inline long long __double_as_longlong(double v) { return sfemu::from_bits<long long>(sfemu::to_bits(v)); }
inline double __longlong_as_double(long long v) { return sfemu::from_bits<double>(sfemu::to_bits(v)); }

// ---- explicitly rounded arithmetic. The build uses -ffp-contract=off, so these are never fused.

inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline float __fmaf_rn(float a, float b, float c) { return std::fmaf(a, b, c); }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }

// ---- fp16 / bf16 storage types and exact conversions (round to nearest even, as the GPU does)

struct __half { unsigned short __x; };
struct __nv_bfloat16 { unsigned short __x; };
using half = __half;
using nv_bfloat16 = __nv_bfloat16;

namespace sfemu {
float half_bits_to_float(unsigned short h);
unsigned short float_to_half_bits_rn(float f);
unsigned short float_to_bf16_bits_rn(float f);
}  // namespace sfemu

inline __half __ushort_as_half(unsigned short x) { return __half{x}; }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline float __half2float(__half h) { return sfemu::half_bits_to_float(h.__x); }
inline __half __float2half_rn(float f) { return __half{sfemu::float_to_half_bits_rn(f)}; }
inline __half __float2half(float f) { return __float2half_rn(f); }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short x) { return __nv_bfloat16{x}; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }
inline float __bfloat162float(__nv_bfloat16 h) { return __uint_as_float(unsigned(h.__x) << 16); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16{sfemu::float_to_bf16_bits_rn(f)}; }
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }

// ---- the runtime calls the launchers make

cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorString(cudaError_t e);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t s = nullptr);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t s = nullptr);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaDeviceSynchronize();

template <class K>
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, K, int block_size, size_t smem) {
  if (blocks == nullptr || block_size <= 0 || block_size > int(sfemu::kMaxThreadsPerBlock) ||
      smem > sfemu::kMaxSharedPerBlock) {
    sfemu::set_error(cudaErrorInvalidValue);
    return cudaErrorInvalidValue;
  }
  return sfemu::occupancy_result(blocks);
}

// The C interface the Python side configures and queries the emulator with (runtime.cpp).
extern "C" {
// order: 0 = CUDA threads in order at every switch, 1 = random; block_order: 0 in order,
// 1 reversed, 2 shuffled; resident: blocks interleaved at once; preempt_permille: chance that
// an atomic / fence / load hands the baton on; occupancy: blocks per SM the occupancy query
// answers, or <= 0 to make it fail; weak: 1 for weak global memory across blocks.
void sfemu_configure(unsigned long long seed, int order, int block_order, int resident, int preempt_permille,
                     int occupancy, int weak);
int sfemu_weak_supported();  // whether this build instruments the kernels' stores (weak memory)
// Guard bytes: [p - guard, p) and [p + bytes, p + bytes + guard) get a pattern, checked after
// every launch (a changed byte fails it, naming `name`); remove returns a report, "" if intact.
void sfemu_guard_add(void* p, unsigned long long bytes, unsigned long long guard, const char* name);
const char* sfemu_guard_remove(void* p);
const char* sfemu_diagnostic();      // the last launch problem, "" if none
void sfemu_clear_diagnostic();
unsigned long long sfemu_launches();  // launches so far, for tests
unsigned long long sfemu_switches();  // fiber switches so far
}
