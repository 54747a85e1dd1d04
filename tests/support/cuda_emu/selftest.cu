// Kernels that exercise the emulator itself (tests/cuda_emu/test_emulator.py): the intrinsics'
// results, inter-block protocols under many schedules, and the misuse it must report. Written as
// ordinary CUDA, compiled only into the emulator's test library.
#include <cstdint>

#include <cuda_runtime.h>

#define SF_LAUNCH_EMU(kernel, grid, block, ...) ::sfemu::launch(__FILE__, __LINE__, kernel, dim3(grid), dim3(block), 0, nullptr, __VA_ARGS__)

namespace {

// Block-wide inclusive scan through warp shuffles and shared memory, as csrc/cuda does it.
__global__ void scan_kernel(const int* in, int* out, int n) {
  __shared__ int warp_sums[32];
  const int t = threadIdx.x;
  const int lane = t & 31, warp = t >> 5;
  int x = t < n ? in[blockIdx.x * blockDim.x + t] : 0;
  for (int d = 1; d < 32; d <<= 1) {
    const int y = __shfl_up_sync(0xffffffffu, x, d);
    if (lane >= d) x += y;
  }
  if (lane == 31) warp_sums[warp] = x;
  __syncthreads();
  if (t == 0) {
    int run = 0;
    for (int w = 0; w < int(blockDim.x / 32); ++w) {
      const int s = warp_sums[w];
      warp_sums[w] = run;
      run += s;
    }
  }
  __syncthreads();
  out[blockIdx.x * blockDim.x + t] = x + warp_sums[warp];
}

// One result row per thread: ballot, any, all, shfl (broadcast), shfl_down, shfl_xor, popc,
// ffs, clz, syncthreads_count.
__global__ void intrinsics_kernel(const int* pred, unsigned* out) {
  const int t = threadIdx.x;
  const int p = pred[t];
  unsigned* row = out + 10 * t;
  row[0] = __ballot_sync(0xffffffffu, p);
  row[1] = unsigned(__any_sync(0xffffffffu, p));
  row[2] = unsigned(__all_sync(0xffffffffu, p));
  row[3] = unsigned(__shfl_sync(0xffffffffu, t * 7, 5));
  row[4] = unsigned(__shfl_down_sync(0xffffffffu, t * 3, 4));
  row[5] = unsigned(__shfl_xor_sync(0xffffffffu, t, 9));
  row[6] = unsigned(__popc(unsigned(p * 0x01010101u + t)));
  row[7] = unsigned(__ffs(t));
  row[8] = unsigned(__clz(t));
  __syncwarp();
  row[9] = unsigned(__syncthreads_count(p));
}

// The last-block-done protocol of csrc/cuda/common.cuh: every block adds its part, the last one
// to finish reads every part and writes the total.
__global__ void last_block_kernel(const unsigned long long* parts_in, unsigned long long* total, unsigned* counter,
                                  unsigned long long* acc, int* lasts) {
  __shared__ bool last;
  if (threadIdx.x == 0) atomicAdd(acc, parts_in[blockIdx.x]);
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(counter, 1u) == gridDim.x - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  if (threadIdx.x == 0) {
    *total = __ldcg(acc);
    atomicAdd(lasts, 1);
    *counter = 0;
  }
}

// Each block stores its part (and one byte of a shared word) with plain stores, then the
// last-block-done handshake; with `fence` 0 the __threadfence() of the protocol is missing, and
// under weak memory the last block must read the other blocks' parts stale (still 0).
__global__ void weak_parts_kernel(unsigned* parts, unsigned char* bytes, unsigned* counter, unsigned* total, int fence) {
  __shared__ bool last;
  if (threadIdx.x == 0) {
    parts[blockIdx.x] = blockIdx.x + 1;
    bytes[blockIdx.x] = static_cast<unsigned char>(0x10 + blockIdx.x);
  }
  if (fence) __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(counter, 1u) == gridDim.x - 1;
  __syncthreads();
  if (!last) return;
  if (fence) __threadfence();
  if (threadIdx.x == 0) {
    unsigned sum = 0;
    for (unsigned b = 0; b < gridDim.x; ++b) sum += __ldcg(parts + b);
    *total = sum;
    *counter = 0;
  }
}

// Thread t writes p[t + shift] for t < n: shift 1 writes one element past the end, -1 one before.
__global__ void shifted_write_kernel(int* p, int n, int shift) {
  if (int(threadIdx.x) < n) p[int(threadIdx.x) + shift] = 7;
}

// Reads shared memory nobody wrote: the emulator fills it with garbage, so this must not be 0.
__global__ void unwritten_shared_kernel(unsigned* out) {
  __shared__ unsigned never_written[4];
  // A store the compiler cannot rule out, or it folds the loads of a never-written static to 0.
  if (out == nullptr) never_written[0] = 0;
  if (threadIdx.x == 0) out[blockIdx.x] = never_written[blockIdx.x % 4];
}

// ---- misuse the emulator must report

__global__ void divergent_barrier_kernel(int* out) {
  if (threadIdx.x < 128) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

__global__ void barrier_after_exit_kernel(int* out) {
  if (threadIdx.x == 7) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}

__global__ void missing_lanes_kernel(int* out) {
  if (threadIdx.x == 3) return;
  out[threadIdx.x] = __shfl_sync(0xffffffffu, int(threadIdx.x), 0);
}

__global__ void deadlock_kernel(int* out) {
  if (threadIdx.x == 0) {
    out[0] = __shfl_sync(0xffffffffu, 1, 0);
  } else {
    __syncthreads();
  }
}

__global__ void noop_kernel(int*) {}

}  // namespace

extern "C" {

int sfemu_test_scan(const int* in, int* out, int blocks, int threads) {
  SF_LAUNCH_EMU(scan_kernel, blocks, threads, in, out, threads);
  return cudaGetLastError();
}

int sfemu_test_intrinsics(const int* pred, unsigned* out, int threads) {
  SF_LAUNCH_EMU(intrinsics_kernel, 1, threads, pred, out);
  return cudaGetLastError();
}

int sfemu_test_last_block(const unsigned long long* parts, int blocks, unsigned long long* total, int* lasts) {
  unsigned counter = 0;
  unsigned long long acc = 0;
  SF_LAUNCH_EMU(last_block_kernel, blocks, 64, parts, total, &counter, &acc, lasts);
  const int e = cudaGetLastError();
  return e != 0 ? e : (counter == 0 ? 0 : -1);
}

int sfemu_test_weak_parts(unsigned* parts, unsigned char* bytes, int blocks, int fence, unsigned* total) {
  unsigned counter = 0;
  SF_LAUNCH_EMU(weak_parts_kernel, blocks, 64, parts, bytes, &counter, total, fence);
  const int e = cudaGetLastError();
  return e != 0 ? e : (counter == 0 ? 0 : -1);
}

int sfemu_test_shifted_write(int* p, int n, int shift) {
  SF_LAUNCH_EMU(shifted_write_kernel, 1, n, p, n, shift);
  return cudaGetLastError();
}

int sfemu_test_unwritten_shared(unsigned* out, int blocks) {
  SF_LAUNCH_EMU(unwritten_shared_kernel, blocks, 32, out);
  return cudaGetLastError();
}

// Runs misuse case `which`; returns the launch's error code (the text is sfemu_diagnostic()).
int sfemu_test_misuse(int which, int* scratch) {
  switch (which) {
    case 0: SF_LAUNCH_EMU(divergent_barrier_kernel, 1, 256, scratch); break;
    case 1: SF_LAUNCH_EMU(barrier_after_exit_kernel, 1, 256, scratch); break;
    case 2: SF_LAUNCH_EMU(missing_lanes_kernel, 1, 32, scratch); break;
    case 3: SF_LAUNCH_EMU(deadlock_kernel, 1, 64, scratch); break;
    case 4: SF_LAUNCH_EMU(noop_kernel, 1, 2048, scratch); break;      // too many threads per block
    case 5: ::sfemu::launch(__FILE__, __LINE__, noop_kernel, dim3(1), dim3(32), size_t(64) << 10, nullptr, scratch); break;
    case 6: SF_LAUNCH_EMU(noop_kernel, 0, 32, scratch); break;        // empty grid
    default: return -1;
  }
  return cudaGetLastError();
}

int sfemu_test_occupancy(int* blocks) {
  const cudaError_t e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(blocks, noop_kernel, 256, 0);
  return e;
}

int sfemu_test_last_error() { return cudaGetLastError(); }
}
