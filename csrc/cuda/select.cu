// CUDA kernels of the exact global top-k: topk_masks, saliency_topk_masks (FORCE / Iter SNIP)
// and kth_largest, over every tensor in one launch per pass, without concatenation; and
// radix_histogram, one pass of a select whose scan runs elsewhere (at the end of this file).
//
// Radix select on order-preserving integer keys (common.cuh), 12-bit digits, driven entirely by
// the device: the host enqueues a fixed sequence of kernels and each one reads SelectState to
// learn whether it has work (kernels with nothing to do exit at once). The sequence:
//   init            state := (need k, mode radix), histogram := 0
//   hist level l    (l = 0 .. L-1) persistent blocks stream every tile, count the digit of each
//                   competing key in a shared-memory histogram and flush its nonzero bins into
//                   the global one with atomics; level 0 also counts competitors and records the
//                   first tensor holding a NaN. The last block to finish (threadfence + counter)
//                   scans the histogram for the bin holding the k-th key and decides: key fully
//                   known -> "known"; bin small (<= cap) -> "cand"; else another level runs.
//                   Levels after the decision exit at once.
//   tie count/scan  (known only) per-tile counts of the k-th key and their exclusive prefix sum
//                   give each tile its quota of ties, so the lowest global positions win.
//   mask            persistent blocks over contiguous tiles: known -> key > kth, plus the
//                   first `quota` ties of each tile (block scan); cand -> key's high digits >
//                   the bin, and the bin's elements are appended (warp-aggregated atomics) to a
//                   candidate buffer of (key, global position); k == 0 / k == N write constants.
//   cand levels     the remaining digits are selected among the candidates alone (same
//                   histogram + last-block choice), then, if only some of the elements equal to
//                   the k-th key may be kept, a radix select on their positions finds the
//                   position limit (ties by lowest global position without any ordering).
//   cand fix        sets the mask of candidates above the k-th key or tied at or below the limit.
// The fast path (bin small after the first digit) therefore reads the inputs twice and writes the
// masks once. Extra memory: one 4096-bin histogram, the state, two 8-byte counters per tile and
// the candidate buffer (16 bytes x cap). All index arithmetic is 64-bit. A segment's SelectFlags
// (launch.h) make it rank |x| and compete where prev is false, writing true elsewhere, and k may
// be read on the device (k_dev): drop_grow.cu's two phases over one global segment.
#include <cstdint>
#include <type_traits>

#include <cuda_runtime.h>

#include "common.cuh"
#include "launch.h"

namespace sparseforce {
namespace cuda {
namespace {

constexpr int64_t kMaxBlockElems = int64_t(1) << 31;  // a block's shared counts are 32-bit

struct Workspace {
  SelectState* st;
  unsigned long long* hist;  // kBins
  long long* tie_count;      // tiles
  long long* tie_quota;      // tiles
  unsigned long long* cand_key;  // cap
  long long* cand_pos;           // cap
};

__host__ __device__ inline Workspace carve(void* base, int64_t tiles, int64_t cap) {
  char* p = static_cast<char*>(base);
  Workspace w;
  size_t off = 0;
  w.st = reinterpret_cast<SelectState*>(p + off);
  off = align_up(off + sizeof(SelectState));
  w.hist = reinterpret_cast<unsigned long long*>(p + off);
  off = align_up(off + sizeof(unsigned long long) * kBins);
  w.tie_count = reinterpret_cast<long long*>(p + off);
  off = align_up(off + sizeof(long long) * size_t(tiles));
  w.tie_quota = reinterpret_cast<long long*>(p + off);
  off = align_up(off + sizeof(long long) * size_t(tiles));
  w.cand_key = reinterpret_cast<unsigned long long*>(p + off);
  off = align_up(off + sizeof(unsigned long long) * size_t(cap));
  w.cand_pos = reinterpret_cast<long long*>(p + off);
  return w;
}

// Level l of a `bits`-wide key: digit [shift, shift + width).
struct Level {
  int shift, width;
};
__host__ __device__ inline Level level_of(int bits, int l) {
  const int hi = bits - kDigitBits * l;
  const int lo = hi - kDigitBits > 0 ? hi - kDigitBits : 0;
  return Level{lo, hi - lo};
}
__host__ __device__ inline int num_levels(int bits) { return (bits + kDigitBits - 1) / kDigitBits; }

// ---- the tile loop

struct TileRef {
  Segment seg;
  int64_t lo, hi;  // local element range of the segment
  int64_t tile;
};

// The contiguous range of tiles [*b, *e) of this block in a persistent grid: contiguous, so the
// tensor changes rarely from one tile to the next and is found by walking forward.
__device__ __forceinline__ void block_tiles(long long tiles, long long* b, long long* e) {
  *b = static_cast<long long>(blockIdx.x) * tiles / gridDim.x;
  *e = static_cast<long long>(blockIdx.x + 1) * tiles / gridDim.x;
}

// Loads the segment of `tile` into shared memory (every thread must call, with increasing
// tiles). `cur` (used by thread 0 only, start at -1) remembers the segment of the last tile, so
// within a tensor no global load stands between two tiles.
__device__ __forceinline__ void load_tile(const Segment* segs, int nseg, int64_t tile, TileRef& ref, int& cur) {
  __syncthreads();  // everyone is done with the previous tile
  if (threadIdx.x == 0) {
    const int before = cur;
    if (cur < 0) {
      cur = find_tile_segment(segs, nseg, tile);
    } else {
      while (cur + 1 < nseg && segs[cur + 1].tile_begin <= tile) ++cur;
    }
    if (cur != before) ref.seg = segs[cur];
    ref.lo = (tile - ref.seg.tile_begin) * kTile;
    ref.hi = ref.lo + kTile < ref.seg.n ? ref.lo + kTile : ref.seg.n;
    ref.tile = tile;
  }
  __syncthreads();
}

// Calls f(j0, key, live, cnt) for consecutive groups of V elements [j0, j0 + cnt) of the tile,
// thread t taking group t of each stride, so groups are in global order across the block. All
// threads make the same number of calls (live[] is false past the end), so f may use block
// scans. live[v]: element v exists and competes.
template <int PT, int DT, bool SAL, class F>
__device__ __forceinline__ void for_groups(const TileRef& ref, bool use_prev, F&& f) {
  using Raw = raw_t<DT>;
  using Key = key_t<PT>;
  constexpr int V = 16 / int(sizeof(Raw));
  const Raw* a = static_cast<const Raw*>(ref.seg.a);
  const Raw* b = static_cast<const Raw*>(ref.seg.b);
  const uint8_t* prev = use_prev ? ref.seg.prev : nullptr;
  const bool vec = ref.seg.aligned != 0;
  const int32_t flags = ref.seg.flags;
  const bool abs = !SAL && (flags & kFlagAbs) != 0;
  for (int64_t base = ref.lo; base < ref.hi; base += int64_t(kThreads) * V) {
    const int64_t j0 = base + int64_t(threadIdx.x) * V;
    const int64_t left = ref.hi - j0;
    const int cnt = left <= 0 ? 0 : (left >= V ? V : int(left));
    Key key[V];
    bool live[V];
    if (vec && cnt == V) {
      Raw x[V], y[V];
      load_vec_cs<Raw, V>(a + j0, x);
      if constexpr (SAL) load_vec_cs<Raw, V>(b + j0, y);
      uint8_t pm[V];
      if (prev != nullptr) load_vec<uint8_t, V>(prev + j0, pm);
      #pragma unroll
      for (int v = 0; v < V; ++v) {
        const Raw xv = abs ? abs_raw<DT>(x[v]) : x[v];
        key[v] = make_key<PT, DT, SAL>(xv, SAL ? y[v] : xv);
        live[v] = prev == nullptr || competes_under(flags, pm[v]);
      }
    } else {
      #pragma unroll
      for (int v = 0; v < V; ++v) {
        if (v < cnt) {
          const Raw x = abs ? abs_raw<DT>(a[j0 + v]) : a[j0 + v];
          const Raw y = SAL ? b[j0 + v] : x;
          key[v] = make_key<PT, DT, SAL>(x, y);
          live[v] = prev == nullptr || competes_under(flags, prev[j0 + v]);
        } else {
          key[v] = 0;
          live[v] = false;
        }
      }
    }
    f(j0, key, live, cnt);
  }
}

// Dispatches on the tile's dtype to for_groups<PT, DT, SAL>, instantiating valid pairs only.
template <int PT, bool SAL, class Body>
__device__ __forceinline__ void dispatch_tile(const TileRef& ref, Body&& body) {
  switch (ref.seg.dtype) {
    case kF16:
      if constexpr (valid_pair<PT, kF16, SAL>) body(std::integral_constant<int, kF16>{});
      break;
    case kBF16:
      if constexpr (valid_pair<PT, kBF16, SAL>) body(std::integral_constant<int, kBF16>{});
      break;
    case kF32:
      if constexpr (valid_pair<PT, kF32, SAL>) body(std::integral_constant<int, kF32>{});
      break;
    default:
      if constexpr (valid_pair<PT, kF64, SAL>) body(std::integral_constant<int, kF64>{});
      break;
  }
}

// ---- the device-side digit choice (run by the last block of a histogram pass)

struct Choice {
  long long bin, above, count, total;
};

// The bin holding the need-th largest key of a (1 << width)-bin histogram, how many keys lie in
// higher bins, the bin's count and the histogram's total. Every thread must call; the result is
// valid in every thread.
__device__ Choice choose_digit(const unsigned long long* hist, int width, long long need) {
  __shared__ long long scratch[kWarps + 1];
  __shared__ Choice res;
  const int bins = 1 << width;
  const int per = bins >= kThreads ? bins / kThreads : 1;
  const int top = bins - 1 - int(threadIdx.x) * per;  // this thread's bins: top, top-1, ..., top-per+1
  long long sum = 0;
  if (top >= 0) {
    for (int i = 0; i < per; ++i) sum += static_cast<long long>(__ldcg(hist + (top - i)));
  }
  if (threadIdx.x == 0) res = Choice{0, 0, 0, 0};
  long long total = 0;
  const long long incl = block_inclusive_scan<long long>(sum, scratch, &total);
  const long long excl = incl - sum;
  if (top >= 0 && excl < need && need <= incl) {
    long long acc = excl;
    for (int i = 0; i < per; ++i) {
      const long long h = static_cast<long long>(__ldcg(hist + (top - i)));
      if (acc + h >= need) {
        res = Choice{top - i, acc, h, total};
        break;
      }
      acc += h;
    }
  }
  __syncthreads();
  Choice c = res;
  c.total = total;
  __syncthreads();
  return c;
}

__device__ __forceinline__ void flush_hist(const uint32_t* sh, unsigned long long* hist, int bins) {
  __syncthreads();
  for (int i = threadIdx.x; i < bins; i += kThreads) {
    const uint32_t c = sh[i];
    if (c != 0) atomicAdd(hist + i, static_cast<unsigned long long>(c));
  }
}

// ---- kernels

__global__ void init_kernel(Workspace w, long long k, const int64_t* k_dev) {
  if (threadIdx.x == 0) {
    SelectState s{};
    s.need = k_dev != nullptr ? *k_dev : k;
    s.nan_index = INT64_MAX;
    s.pos_limit = INT64_MAX;
    s.mode = kModeRadix;
    s.level = -1;
    s.pos_level = -1;
    *w.st = s;
  }
  for (int i = threadIdx.x; i < kBins; i += blockDim.x) w.hist[i] = 0;
}

struct SelParams {
  const Segment* segs;
  int nseg;
  int write_masks;
  long long tiles;
  long long cap;
};

// f(key, live) for the groups of keys of this block's tiles (for_groups); returns, when
// `find_nan`, the lowest index of a segment holding a competing NaN key (INT64_MAX: none).
template <int PT, bool SAL, class F>
__device__ __forceinline__ long long for_block_keys(const Segment* segs, int nseg, long long tiles, TileRef& ref,
                                                    bool find_nan, F&& f) {
  long long nan_index = INT64_MAX;
  long long t0, t1;
  block_tiles(tiles, &t0, &t1);
  int cur = -1;
  for (long long tile = t0; tile < t1; ++tile) {
    load_tile(segs, nseg, tile, ref, cur);
    dispatch_tile<PT, SAL>(ref, [&](auto dt) {
      constexpr int DT = decltype(dt)::value;
      bool seen = false;
      for_groups<PT, DT, SAL>(ref, ref.seg.prev != nullptr, [&](int64_t, const auto& key, const bool* live, int) {
        constexpr int V = sizeof(key) / sizeof(key[0]);
        if (find_nan) {
          #pragma unroll
          for (int v = 0; v < V; ++v) seen |= live[v] && is_nan_key<PT>(key[v]);
        }
        f(key, live);
      });
      if (seen) nan_index = ref.seg.index < nan_index ? ref.seg.index : nan_index;
    });
  }
  return nan_index;
}

// Full-data histogram of key level `l` (digit [shift, shift + width); keys must match the known
// prefix above shift + width), and the digit choice in the last block.
template <int PT, bool SAL>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm) hist_kernel(SelParams p, Workspace w, int l, int shift, int width) {
  __shared__ uint32_t sh[kBins];
  __shared__ TileRef ref;
  SelectState* st = w.st;
  if (l > 0 && st->mode != kModeRadix) return;  // uniform over the grid: decided by an earlier kernel
  const int bins = 1 << width;
  for (int i = threadIdx.x; i < bins; i += kThreads) sh[i] = 0;
  const int high = shift + width;
  const uint64_t prefix = l > 0 ? st->prefix : 0;
  const uint32_t mask = uint32_t(bins - 1);
  const long long nan_index = for_block_keys<PT, SAL>(p.segs, p.nseg, p.tiles, ref, l == 0, [&](const auto& key,
                                                                                                const bool* live) {
    constexpr int V = sizeof(key) / sizeof(key[0]);
    // Runs of equal digits (all-zero saliencies) become one shared atomic.
    uint32_t run_bin = 0, run = 0;
    #pragma unroll
    for (int v = 0; v < V; ++v) {
      const uint64_t kv = key[v];
      if (live[v] && (l == 0 || (kv >> high) == prefix)) {
        const uint32_t bin = uint32_t(kv >> shift) & mask;
        if (run != 0 && bin != run_bin) {
          atomicAdd(sh + run_bin, run);
          run = 0;
        }
        run_bin = bin;
        ++run;
      }
    }
    if (run != 0) atomicAdd(sh + run_bin, run);
  });
  if (nan_index != INT64_MAX) atomicMin(reinterpret_cast<long long*>(&st->nan_index), nan_index);
  flush_hist(sh, w.hist, bins);
  if (!last_block_done(&st->blocks_done)) return;

  const long long need = st->need;  // level 0: k
  const Choice c = choose_digit(w.hist, width, need);
  if (threadIdx.x == 0) {
    SelectState s = *st;
    s.nan_index = __ldcg(reinterpret_cast<const long long*>(&st->nan_index));
    bool decided = false;
    if (l == 0) {
      s.competing = c.total;
      if (s.nan_index != INT64_MAX) {
        s.mode = kModeErrNaN;
        decided = true;
      } else if (need > c.total) {
        s.mode = kModeErrK;
        decided = true;
      } else if (p.write_masks && need == 0) {
        s.mode = kModeNone;
        decided = true;
      } else if (p.write_masks && need == c.total) {
        s.mode = kModeAll;
        decided = true;
      }
    }
    if (!decided) {
      s.prefix = (l == 0 ? 0 : (s.prefix << width)) | uint64_t(c.bin);
      s.need = need - c.above;
      s.count = c.count;
      s.level = l;
      if (shift == 0) {
        s.kth = s.prefix;
        s.tie_need = s.need;
        s.tie_total = s.count;
        s.mode = kModeKnown;
      } else if (s.count <= p.cap) {
        s.mode = kModeCand;
      }
    }
    s.blocks_done = 0;
    *st = s;
  }
  for (int i = threadIdx.x; i < kBins; i += kThreads) w.hist[i] = 0;
}

// Known key: per-tile counts of competing elements equal to it (persistent blocks).
template <int PT, bool SAL>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm) tie_count_kernel(SelParams p, Workspace w) {
  __shared__ TileRef ref;
  __shared__ long long scratch[kWarps + 1];
  const SelectState* st = w.st;
  if (st->mode != kModeKnown) return;
  const uint64_t kth = st->kth;
  long long t0, t1;
  block_tiles(p.tiles, &t0, &t1);
  int cur = -1;
  for (long long tile = t0; tile < t1; ++tile) {
    load_tile(p.segs, p.nseg, tile, ref, cur);
    long long mine = 0;
    dispatch_tile<PT, SAL>(ref, [&](auto dt) {
      constexpr int DT = decltype(dt)::value;
      for_groups<PT, DT, SAL>(ref, ref.seg.prev != nullptr, [&](int64_t, const auto& key, const bool* live, int) {
        constexpr int V = sizeof(key) / sizeof(key[0]);
        #pragma unroll
        for (int v = 0; v < V; ++v) mine += (live[v] && uint64_t(key[v]) == kth) ? 1 : 0;
      });
    });
    long long total = 0;
    block_inclusive_scan<long long>(mine, scratch, &total);
    if (threadIdx.x == 0) w.tie_count[tile] = total;
  }
}

// Known key: each tile's quota of ties = clamp(need - ties in earlier tiles, 0, its ties).
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm) tie_scan_kernel(long long tiles, Workspace w) {
  __shared__ long long scratch[kWarps + 1];
  const SelectState* st = w.st;
  if (st->mode != kModeKnown) return;
  const long long need = st->tie_need;
  long long carry = 0;
  for (long long base = 0; base < tiles; base += kThreads) {
    const long long t = base + threadIdx.x;
    const long long c = t < tiles ? w.tie_count[t] : 0;
    long long total = 0;
    const long long incl = block_inclusive_scan<long long>(c, scratch, &total);
    const long long before = carry + incl - c;
    long long q = need - before;
    q = q < 0 ? 0 : (q > c ? c : q);
    if (t < tiles) w.tie_quota[t] = q;
    carry += total;
  }
}

// One tile of the mask pass (every thread of the block calls).
template <int PT, bool SAL>
__device__ __forceinline__ void mask_tile(const Workspace& w, const TileRef& ref, int mode,
                                          bool masks, long long* scratch) {
  const SelectState* st = w.st;
  const int64_t lo = ref.lo, hi = ref.hi;
  uint8_t* out = ref.seg.out;

  const int32_t flags = ref.seg.flags;
  const uint8_t rest = resting_byte(flags);  // what an element that does not compete gets
  if (mode == kModeNone || mode == kModeAll) {
    const uint8_t* prev = ref.seg.prev;
    for (int64_t j = lo + threadIdx.x; j < hi; j += kThreads) {
      const bool live = prev == nullptr || competes_under(flags, prev[j]);
      out[j] = live ? uint8_t(mode == kModeAll) : rest;
    }
    return;
  }

  const bool vec_out = ref.seg.aligned != 0;
  auto store = [&](int64_t j0, const auto& keep, int cnt) {
    constexpr int V = sizeof(keep) / sizeof(keep[0]);
    if (vec_out && cnt == V) {
      store_bytes<V>(out + j0, keep);
    } else {
      for (int v = 0; v < cnt; ++v) out[j0 + v] = keep[v];
    }
  };

  if (mode == kModeCand) {
    const Level lv = level_of(key_bits<PT>, st->level);
    const int shift = lv.shift;
    const uint64_t prefix = st->prefix;
    const int64_t gbase = ref.seg.offset;
    dispatch_tile<PT, SAL>(ref, [&](auto dt) {
      constexpr int DT = decltype(dt)::value;
      for_groups<PT, DT, SAL>(ref, ref.seg.prev != nullptr, [&](int64_t j0, const auto& key, const bool* live, int cnt) {
        constexpr int V = sizeof(key) / sizeof(key[0]);
        uint8_t keep[V];
        int mine = 0;
        #pragma unroll
        for (int v = 0; v < V; ++v) {
          const uint64_t h = uint64_t(key[v]) >> shift;
          keep[v] = live[v] ? uint8_t(h > prefix) : rest;
          mine += (live[v] && h == prefix) ? 1 : 0;
        }
        if (masks) store(j0, keep, cnt);
        // Warp-aggregated append: one atomic per warp.
        const unsigned any = __ballot_sync(0xffffffffu, mine != 0);
        if (any == 0) return;
        const int lane = threadIdx.x & 31;
        int incl = mine;
        #pragma unroll
        for (int d = 1; d < 32; d <<= 1) {
          const int y = __shfl_up_sync(0xffffffffu, incl, d);
          if (lane >= d) incl += y;
        }
        unsigned long long base = 0;
        if (lane == 31) base = atomicAdd(reinterpret_cast<unsigned long long*>(&w.st->cand_count),
                                         static_cast<unsigned long long>(incl));
        base = __shfl_sync(0xffffffffu, base, 31);
        long long at = static_cast<long long>(base) + (incl - mine);
        #pragma unroll
        for (int v = 0; v < V; ++v) {
          if (live[v] && (uint64_t(key[v]) >> shift) == prefix) {
            w.cand_key[at] = uint64_t(key[v]);
            w.cand_pos[at] = gbase + j0 + v;
            ++at;
          }
        }
      });
    });
    return;
  }

  // Known key: everything above it, plus the tile's quota of ties in position order.
  const uint64_t kth = st->kth;
  const long long quota = w.tie_quota[ref.tile];
  const long long ties = w.tie_count[ref.tile];
  const bool partial = quota > 0 && quota < ties;  // uniform over the block
  long long seen = 0;                              // ties in earlier groups of this tile
  dispatch_tile<PT, SAL>(ref, [&](auto dt) {
    constexpr int DT = decltype(dt)::value;
    for_groups<PT, DT, SAL>(ref, ref.seg.prev != nullptr, [&](int64_t j0, const auto& key, const bool* live, int cnt) {
      constexpr int V = sizeof(key) / sizeof(key[0]);
      uint8_t keep[V];
      long long mine = 0;
      #pragma unroll
      for (int v = 0; v < V; ++v) {
        const uint64_t kv = key[v];
        keep[v] = live[v] ? uint8_t(kv > kth) : rest;
        mine += (live[v] && kv == kth) ? 1 : 0;
      }
      if (partial) {
        long long total = 0;
        long long rank = seen + block_inclusive_scan<long long>(mine, scratch, &total) - mine;
        #pragma unroll
        for (int v = 0; v < V; ++v) {
          if (live[v] && uint64_t(key[v]) == kth) {
            keep[v] = uint8_t(rank < quota);
            ++rank;
          }
        }
        seen += total;
      } else if (quota > 0) {
        #pragma unroll
        for (int v = 0; v < V; ++v) keep[v] |= uint8_t(live[v] && uint64_t(key[v]) == kth);
      }
      store(j0, keep, cnt);
    });
  });
}

// Persistent blocks over contiguous tile ranges: write the masks (and gather candidates in
// "cand" mode).
template <int PT, bool SAL>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm) mask_kernel(SelParams p, Workspace w) {
  __shared__ TileRef ref;
  __shared__ long long scratch[kWarps + 1];
  const SelectState* st = w.st;
  const int mode = st->mode;
  const bool masks = p.write_masks != 0;
  if (!(mode == kModeCand || (masks && (mode == kModeKnown || mode == kModeAll || mode == kModeNone)))) return;
  long long t0, t1;
  block_tiles(p.tiles, &t0, &t1);
  int cur = -1;
  for (long long tile = t0; tile < t1; ++tile) {
    load_tile(p.segs, p.nseg, tile, ref, cur);
    mask_tile<PT, SAL>(w, ref, mode, masks, scratch);
  }
}

// One digit level over the candidates: of the key (pos == false) or, among the candidates equal
// to the k-th key, of (pos_mask - position) so that the largest is the lowest position.
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm) cand_hist_kernel(Workspace w, long long cap, int write_masks,
                                                              int bits, int l, bool pos, int pos_bits) {
  __shared__ uint32_t sh[kBins];
  SelectState* st = w.st;
  const int mode = st->mode;
  if (pos ? (mode != kModePos || st->pos_level != l - 1) : (mode != kModeCand || st->level != l - 1)) return;
  const Level lv = level_of(pos ? pos_bits : bits, l);
  const int bins = 1 << lv.width;
  for (int i = threadIdx.x; i < bins; i += kThreads) sh[i] = 0;
  __syncthreads();
  const int high = lv.shift + lv.width;
  const uint64_t prefix = pos ? st->pos_prefix : st->prefix;
  const uint64_t kth = st->kth;
  const uint64_t pmask = pos_bits >= 64 ? ~0ull : ((uint64_t(1) << pos_bits) - 1);
  const long long m = st->cand_count;
  const uint32_t dmask = uint32_t(bins - 1);
  for (long long i = blockIdx.x * (long long)kThreads + threadIdx.x; i < m; i += (long long)gridDim.x * kThreads) {
    const uint64_t key = w.cand_key[i];
    uint64_t x;
    bool take;
    if (pos) {
      x = pmask - uint64_t(w.cand_pos[i]);
      take = key == kth && (l == 0 || (x >> high) == prefix);
    } else {
      x = key;
      take = (x >> high) == prefix;
    }
    if (take) atomicAdd(sh + (uint32_t(x >> lv.shift) & dmask), 1u);
  }
  flush_hist(sh, w.hist, bins);
  if (!last_block_done(&st->blocks_done)) return;

  const long long need = pos ? st->pos_need : st->need;
  const Choice c = choose_digit(w.hist, lv.width, need);
  if (threadIdx.x == 0) {
    SelectState s = *st;
    if (pos) {
      s.pos_prefix = (l == 0 ? 0 : (s.pos_prefix << lv.width)) | uint64_t(c.bin);
      s.pos_need = need - c.above;
      s.pos_level = l;
      if (lv.shift == 0) {
        s.pos_limit = static_cast<long long>(pmask - s.pos_prefix);
        s.mode = kModeCandDone;
      }
    } else {
      s.prefix = (s.prefix << lv.width) | uint64_t(c.bin);
      s.need = need - c.above;
      s.count = c.count;
      s.level = l;
      if (lv.shift == 0) {
        s.kth = s.prefix;
        s.tie_need = s.need;
        s.tie_total = s.count;
        if (write_masks && s.need < s.count) {
          s.mode = kModePos;
          s.pos_need = s.need;
          s.pos_level = -1;
        } else {
          s.mode = kModeCandDone;
        }
      }
    }
    s.blocks_done = 0;
    *st = s;
  }
  for (int i = threadIdx.x; i < kBins; i += kThreads) w.hist[i] = 0;
}

// Sets the masks of the candidates that are kept.
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm) cand_fix_kernel(const Segment* segs, int nseg, Workspace w) {
  const SelectState* st = w.st;
  if (st->mode != kModeCandDone) return;
  const uint64_t kth = st->kth;
  const long long limit = st->pos_limit;
  const long long m = st->cand_count;
  for (long long i = blockIdx.x * (long long)kThreads + threadIdx.x; i < m; i += (long long)gridDim.x * kThreads) {
    const uint64_t key = w.cand_key[i];
    const long long pos = w.cand_pos[i];
    if (key > kth || (key == kth && pos <= limit)) {
      int lo = 0, hi = nseg - 1;
      while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (segs[mid].offset <= pos) lo = mid; else hi = mid - 1;
      }
      segs[lo].out[pos - segs[lo].offset] = 1;
    }
  }
}

// kth_largest: the value of the k-th key, as the bits of the ranking dtype.
__global__ void value_kernel(Workspace w, void* out, int bits) {
  const SelectState* st = w.st;
  if (st->mode != kModeKnown && st->mode != kModeCandDone) return;
  const uint64_t v = unorder_bits(st->kth, bits);
  if (bits == 16) {
    *static_cast<uint16_t*>(out) = static_cast<uint16_t>(v);
  } else if (bits == 32) {
    *static_cast<uint32_t*>(out) = static_cast<uint32_t>(v);
  } else {
    *static_cast<uint64_t*>(out) = v;
  }
}

template <int PT, bool SAL>
cudaError_t run(const SelectArgs& a) {
  constexpr int bits = key_bits<PT>;
  const Workspace w = carve(a.workspace, a.tiles, a.cap);
  const SelParams p{a.segs, a.nseg, a.write_masks, a.tiles, a.cap};
  cudaStream_t s = a.stream;
  const int sms = a.num_sms > 0 ? a.num_sms : 1;

  // Persistent grids sized to one full wave (cached per instantiation), but never so few blocks
  // that one block's 32-bit shared counts could overflow.
  static const int hist_occ = blocks_per_sm(hist_kernel<PT, SAL>);
  static const int tie_occ = blocks_per_sm(tie_count_kernel<PT, SAL>);
  static const int mask_occ = blocks_per_sm(mask_kernel<PT, SAL>);
  const long long min_blocks = (a.tiles * kTile + kMaxBlockElems - 1) / kMaxBlockElems;
  auto grid_for = [&](int occ) {
    long long g = static_cast<long long>(sms) * occ;
    g = g < min_blocks ? min_blocks : g;
    g = g > a.tiles ? a.tiles : g;
    return static_cast<unsigned>(g < 1 ? 1 : g);
  };
  const long long cand_blocks_needed = (a.cap + kThreads * 8 - 1) / (kThreads * 8);
  long long cg = static_cast<long long>(sms) * 4;
  cg = cg > cand_blocks_needed ? cand_blocks_needed : cg;
  const unsigned cand_grid = static_cast<unsigned>(cg < 1 ? 1 : cg);

  SF_LAUNCH(init_kernel, 1, kThreads, 0, s, w, a.k, a.k_dev);
  const int L = num_levels(bits);
  for (int l = 0; l < L; ++l) {
    const Level lv = level_of(bits, l);
    SF_LAUNCH((hist_kernel<PT, SAL>), grid_for(hist_occ), kThreads, 0, s, p, w, l, lv.shift, lv.width);
  }
  if (a.write_masks) {
    SF_LAUNCH((tie_count_kernel<PT, SAL>), grid_for(tie_occ), kThreads, 0, s, p, w);
    SF_LAUNCH(tie_scan_kernel, 1, kThreads, 0, s, a.tiles, w);
  }
  SF_LAUNCH((mask_kernel<PT, SAL>), grid_for(mask_occ), kThreads, 0, s, p, w);
  for (int l = 1; l < L; ++l) {
    SF_LAUNCH(cand_hist_kernel, cand_grid, kThreads, 0, s, w, a.cap, a.write_masks, bits, l, false, 0);
  }
  if (a.write_masks) {
    int pos_bits = 1;
    while (pos_bits < 63 && (int64_t(1) << pos_bits) < a.n) ++pos_bits;
    const int PL = num_levels(pos_bits);
    for (int l = 0; l < PL; ++l) {
      SF_LAUNCH(cand_hist_kernel, cand_grid, kThreads, 0, s, w, a.cap, a.write_masks, bits, l, true, pos_bits);
    }
    SF_LAUNCH(cand_fix_kernel, cand_grid, kThreads, 0, s, a.segs, a.nseg, w);
  } else {
    SF_LAUNCH(value_kernel, 1, 1, 0, s, w, a.value_out, bits);
  }
  return cudaGetLastError();
}

// ---- radix_histogram: one 16-bit digit pass, the scan left to the caller
//
// 65536 bins of counts do not fit in a block's static shared memory (48 KiB), and neither does a
// half or a quarter of them at 32 bits; covering them in slices would re-read the data once per
// slice. So the counts go straight into the output with 64-bit global atomics (no overflow, no
// flush), aggregated first: a thread's run of equal digits in its group of V elements is one
// atomic, and a warp whose competing elements all share one digit (zero saliencies, constant
// tensors: the cases that would otherwise serialise on one address) makes one atomic in all.
// Distinct digits spread over the L2's slices. The data is read once.

__global__ void hist_init_kernel(unsigned long long* out) {
  const long long i = static_cast<long long>(blockIdx.x) * kThreads + threadIdx.x;
  if (i < kHistBins) out[i] = 0;
  if (i == kHistBins) out[i] = ~0ull;  // -1: no NaN, and above every index for the atomicMin
}

struct HistParams {
  const Segment* segs;
  int nseg;
  long long tiles;
  int shift;
  unsigned long long prefix;
};

template <int PT, bool SAL>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm) digit_hist_kernel(HistParams p, unsigned long long* out) {
  __shared__ TileRef ref;
  const bool top = p.shift + kHistDigitBits == key_bits<PT>;
  const int high = p.shift + kHistDigitBits;  // < key bits unless top
  const int lane = threadIdx.x & 31;
  const long long nan_index = for_block_keys<PT, SAL>(p.segs, p.nseg, p.tiles, ref, top, [&](const auto& key,
                                                                                             const bool* live) {
    constexpr int V = sizeof(key) / sizeof(key[0]);
    uint32_t bin[V];
    bool take[V];
    uint32_t count = 0, first = 0;
    bool single = true;  // every element taken shares one digit
    #pragma unroll
    for (int v = 0; v < V; ++v) {
      const uint64_t kv = key[v];
      take[v] = live[v] && (top || (kv >> high) == p.prefix);
      bin[v] = uint32_t(kv >> p.shift) & uint32_t(kHistBins - 1);
      if (take[v]) {
        if (count == 0) first = bin[v];
        single = single && bin[v] == first;
        ++count;
      }
    }
    const unsigned has = __ballot_sync(0xffffffffu, count != 0);
    if (has == 0) return;
    const int leader = __ffs(has) - 1;
    const uint32_t b0 = __shfl_sync(0xffffffffu, first, leader);
    if (__all_sync(0xffffffffu, count == 0 || (single && first == b0))) {
      uint32_t sum = count;
      #pragma unroll
      for (int d = 16; d >= 1; d >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, d);
      if (lane == leader) atomicAdd(out + b0, static_cast<unsigned long long>(sum));
      return;
    }
    uint32_t run_bin = 0, run = 0;
    #pragma unroll
    for (int v = 0; v < V; ++v) {
      if (!take[v]) continue;
      if (run != 0 && bin[v] != run_bin) {
        atomicAdd(out + run_bin, static_cast<unsigned long long>(run));
        run = 0;
      }
      run_bin = bin[v];
      ++run;
    }
    if (run != 0) atomicAdd(out + run_bin, static_cast<unsigned long long>(run));
  });
  if (nan_index != INT64_MAX) atomicMin(out + kHistBins, static_cast<unsigned long long>(nan_index));
}

template <int PT, bool SAL>
void run_histogram(const HistArgs& a, unsigned long long* out) {
  static const int occ = blocks_per_sm(digit_hist_kernel<PT, SAL>);
  long long grid = static_cast<long long>(a.num_sms > 0 ? a.num_sms : 1) * occ;
  grid = grid > a.tiles ? a.tiles : grid;
  const HistParams p{a.segs, a.nseg, a.tiles, a.shift, a.prefix};
  SF_LAUNCH((digit_hist_kernel<PT, SAL>), static_cast<unsigned>(grid), kThreads, 0, a.stream, p, out);
}

}  // namespace

size_t select_workspace_bytes(int64_t tiles, int64_t cap) {
  // carve() on a null base gives the offset of the last array; add its size.
  const Workspace w = carve(nullptr, tiles, cap);
  return reinterpret_cast<size_t>(w.cand_pos) + sizeof(long long) * size_t(cap > 0 ? cap : 1);
}

cudaError_t launch_select(const SelectArgs& a) {
  if (a.n <= 0 || a.nseg <= 0) return cudaSuccess;
  if (a.saliency) {
    return a.rank_dtype == kF64 ? run<kF64, true>(a) : run<kF32, true>(a);
  }
  switch (a.rank_dtype) {
    case kF16: return run<kF16, false>(a);
    case kBF16: return run<kBF16, false>(a);
    case kF32: return run<kF32, false>(a);
    default: return run<kF64, false>(a);
  }
}

cudaError_t launch_radix_histogram(const HistArgs& a) {
  auto* out = reinterpret_cast<unsigned long long*>(a.out);
  SF_LAUNCH(hist_init_kernel, static_cast<unsigned>((kHistBins + kThreads) / kThreads), kThreads, 0, a.stream, out);
  if (a.tiles > 0 && a.nseg > 0) {
    if (a.saliency) {
      if (a.rank_dtype == kF64) run_histogram<kF64, true>(a, out); else run_histogram<kF32, true>(a, out);
    } else {
      switch (a.rank_dtype) {
        case kF16: run_histogram<kF16, false>(a, out); break;
        case kBF16: run_histogram<kBF16, false>(a, out); break;
        case kF32: run_histogram<kF32, false>(a, out); break;
        default: run_histogram<kF64, false>(a, out); break;
      }
    }
  }
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace sparseforce
