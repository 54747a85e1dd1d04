// CUDA side of drop_grow_masks, the selection step of one dynamic-sparse-training update (RigL,
// SET, gradual magnitude pruning) over every layer in one call. Per segment s (a tensor, or all
// tensors together in global position order):
//   drop   K = the keeps[s] largest |w| among the active elements (masks true), ties to the lowest
//          position;
//   grow   G = the grows[s] largest |score| among the elements NOT in K (the just-dropped ones
//          included), ties to the lowest position;
//   out    K OR G.
// Both phases are the existing competing selections (Iter SNIP's), told two things by the
// SelectFlags of their inputs (launch.h): kFlagAbs ranks |x| (the sign bit cleared on the raw
// bits before the key is formed, so -0.0 == +0.0 and |-inf| = +inf exactly, in every dtype and
// promoted exactly in a mixed-dtype global segment), and kFlagUnion makes the elements whose prev
// byte is FALSE compete and writes TRUE for the others. host.cpp (drop_grow) runs:
//   1. this file's NaN scan: every element of weights[i] (code 2i) and scores[i] (code 2i+1),
//      active or not, folded with atomicMin into the op's result (-1: none). The selections only
//      see competing elements, hence a pass of its own.
//   2. drop: weights, prev = masks, kFlagAbs, k = keeps[s], out = a scratch byte per element (K).
//   3. grow: scores, prev = K, kFlagAbs | kFlagUnion, k = grows[s], out = the op's out, which so
//      receives K OR G with no pass of its own.
// One segment per tensor: steps 2 and 3 are segmented.cu's select (each tensor a one-row segment,
// k read on the device from keeps + i / grows + i; tiny, row or radix path by its length). One
// segment over all tensors: select.cu's global radix select, k read on the device (k_dev). Either
// way the launches do not depend on the number of tensors and the host never waits for the device.
// On NaN the masks are unspecified (a selection may stop early, leaving its masks unwritten).
#include <cstdint>

#include <cuda_runtime.h>

#include "common.cuh"
#include "launch.h"

namespace sparseforce {
namespace cuda {
namespace {

__global__ void nan_init_kernel(unsigned long long* nan_out) { *nan_out = ~0ull; }  // reads back as -1

template <int DT>
__device__ __forceinline__ bool tile_has_nan(const Segment& seg, int64_t lo, int64_t hi) {
  const raw_t<DT>* a = static_cast<const raw_t<DT>*>(seg.a);
  bool nan = false;
  for (int64_t j = lo + threadIdx.x; j < hi; j += kThreads) nan |= is_nan_key<DT>(make_key<DT, DT, false>(a[j], a[j]));
  return nan;
}

// Persistent blocks over the tiles of every segment; a block that saw a NaN in a tile folds the
// segment's index in with one atomic.
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm) nan_scan_kernel(const Segment* segs, int nseg,
                                                                             long long tiles,
                                                                             unsigned long long* nan_out) {
  for (long long tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const Segment& seg = segs[find_tile_segment(segs, nseg, tile)];
    const int64_t lo = (tile - seg.tile_begin) * kTile;
    const int64_t hi = lo + kTile < seg.n ? lo + kTile : seg.n;
    bool nan;
    switch (seg.dtype) {
      case kF16: nan = tile_has_nan<kF16>(seg, lo, hi); break;
      case kBF16: nan = tile_has_nan<kBF16>(seg, lo, hi); break;
      case kF32: nan = tile_has_nan<kF32>(seg, lo, hi); break;
      default: nan = tile_has_nan<kF64>(seg, lo, hi); break;
    }
    if (__syncthreads_or(nan) && threadIdx.x == 0) atomicMin(nan_out, static_cast<unsigned long long>(seg.index));
  }
}

}  // namespace

cudaError_t launch_nan_scan(const NanScanArgs& a) {
  auto* nan = reinterpret_cast<unsigned long long*>(a.nan_out);
  SF_LAUNCH(nan_init_kernel, 1, 1, 0, a.stream, nan);
  if (a.tiles > 0 && a.nseg > 0) {
    static const int occ = blocks_per_sm(nan_scan_kernel);
    SF_LAUNCH(nan_scan_kernel, wave_grid(a.tiles, a.num_sms, occ), kThreads, 0, a.stream, a.segs, a.nseg, a.tiles, nan);
  }
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace sparseforce
