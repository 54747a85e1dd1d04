// CUDA kernels of the segmented exact selections (segmented_topk_masks,
// segmented_saliency_topk_masks): every input is cut into equal segments (the whole tensor, its
// rows, or N:M groups) and each segment keeps exactly its own k, ranked as the global ops rank
// (common.cuh's keys: greater key first, equal keys by lowest position in the segment).
//
// host.cpp sorts every tensor onto one of three paths by its segment length L, and each path runs
// over all of its tensors at once, so the number of launches never depends on the number of
// tensors:
//   tiny   (L <= kSegTinyMax = 32: N:M groups, short rows) one thread per segment keeps its keys
//          in registers and counts, for each element, the competing elements that beat it
//          (greater key, or equal key at a lower position): kept when that count < k. O(L^2).
//   row    (L <= the small-row limit, at most kSegMaxRow = 2048) one block per row, each thread
//          holding up to 8 of its keys in registers: a radix select, 8-bit digit by digit (a
//          256-bin shared histogram; a block scan over the bins, one per thread, picks the digit),
//          then the keys above the k-th and its ties up to the quota in position order (block
//          scans). O(L) per digit, no global memory but the row and its mask.
//   large  (longer rows, segment="tensor") the radix select of select.cu with one 256-bin
//          histogram per segment, 8-bit digits (2, 4 or 8 levels by key width). Each segment is
//          cut into chunks of kTile elements; a block takes one chunk at a time, blockIdx ->
//          (tensor, row, chunk) through the tensors' prefix table of chunk counts. Per level, one
//          launch histograms every chunk of every segment still undecided (shared counts flushed
//          into the segment's global histogram with atomics) and one launch, a thread per
//          segment, picks the digit holding that segment's k-th key. Once every key is known,
//          per-chunk tie counts and a per-segment scan of them give each chunk its quota of
//          ties, so the lowest positions win, and a last launch writes the masks.
// A tensor's SelectFlags (launch.h) make it rank |x| and compete where prev is false, writing true
// elsewhere: drop_grow.cu's two phases.
// NaN: every path folds the first (lowest) input index holding a competing NaN into *nan_out with
// atomicMin (it starts at ~0, which reads back as -1); the masks are then unspecified. Kernel
// boundaries order every pass, so no fence is needed. All element indices are 64-bit.
#include <cstdint>
#include <type_traits>

#include <cuda_runtime.h>

#include "common.cuh"
#include "launch.h"

namespace sparseforce {
namespace cuda {
namespace {

constexpr int kSegDigitBits = 8;
constexpr int kSegBins = 1 << kSegDigitBits;

enum SegMode : int32_t {
  kSegRadix = 0,  // digits still being chosen
  kSegDone = 1,   // prefix is the k-th key; need of its ties are kept
  kSegAll = 2,    // k >= the competing elements: keep every competing one
  kSegNone = 3,   // k <= 0
};

struct SegState {
  unsigned long long prefix;  // known high digits of the k-th key
  long long need;             // its rank among the keys sharing them (1-based)
  int32_t mode;
  int32_t pad_;
};

struct SegWork {
  SegState* st;                // per segment
  unsigned long long* hist;    // kSegBins per segment
  long long* tie_count;        // per chunk
  long long* tie_quota;        // per chunk
};

__host__ __device__ inline SegWork seg_carve(void* base, int64_t segs, int64_t chunks) {
  char* p = static_cast<char*>(base);
  SegWork w;
  size_t off = 0;
  w.st = reinterpret_cast<SegState*>(p + off);
  off = align_up(off + sizeof(SegState) * size_t(segs));
  w.hist = reinterpret_cast<unsigned long long*>(p + off);
  off = align_up(off + sizeof(unsigned long long) * kSegBins * size_t(segs));
  w.tie_count = reinterpret_cast<long long*>(p + off);
  off = align_up(off + sizeof(long long) * size_t(chunks));
  w.tie_quota = reinterpret_cast<long long*>(p + off);
  return w;
}

// The tensor of work item `x` (BY_SEG: of segment `x`): the last one beginning at or before it.
template <bool BY_SEG>
__device__ __forceinline__ int find_tensor(const SegTensor* ts, int count, int64_t x) {
  int lo = 0, hi = count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if ((BY_SEG ? ts[mid].seg_begin : ts[mid].item_begin) <= x) lo = mid; else hi = mid - 1;
  }
  return lo;
}

__device__ __forceinline__ int64_t k_of(const SegTensor& t, int64_t row) { return t.ks != nullptr ? t.ks[row] : t.k_all; }

__device__ __forceinline__ bool competes(const SegTensor& t, int64_t j) {
  return t.prev == nullptr || competes_under(t.flags, t.prev[j]);
}

// body(PT, DT) for the tensor's dtype: scores rank in their own dtype, saliencies in float32
// (float64 for float64 inputs).
template <bool SAL, class Body>
__device__ __forceinline__ void dispatch_dtype(int dtype, Body&& body) {
  using std::integral_constant;
  switch (dtype) {
    case kF16: body(integral_constant<int, SAL ? kF32 : kF16>{}, integral_constant<int, kF16>{}); break;
    case kBF16: body(integral_constant<int, SAL ? kF32 : kBF16>{}, integral_constant<int, kBF16>{}); break;
    case kF32: body(integral_constant<int, kF32>{}, integral_constant<int, kF32>{}); break;
    default: body(integral_constant<int, kF64>{}, integral_constant<int, kF64>{}); break;
  }
}

template <int PT, int DT, bool SAL>
__device__ __forceinline__ uint64_t key_at(const SegTensor& t, int64_t j) {
  const raw_t<DT>* a = static_cast<const raw_t<DT>*>(t.a);
  const raw_t<DT> x = !SAL && (t.flags & kFlagAbs) != 0 ? abs_raw<DT>(a[j]) : a[j];
  const raw_t<DT> y = SAL ? static_cast<const raw_t<DT>*>(t.b)[j] : x;
  return uint64_t(make_key<PT, DT, SAL>(x, y));
}

__device__ __forceinline__ void report_nan(unsigned long long* nan_out, int32_t index) {
  atomicMin(nan_out, static_cast<unsigned long long>(index));
}

// ---- setup: the NaN index, and every radix segment's state and histogram

__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm) seg_init_kernel(SegList large, SegWork w,
                                                                             unsigned long long* nan_out) {
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (first == 0) *nan_out = ~0ull;
  for (int64_t s = first; s < large.segs; s += static_cast<int64_t>(gridDim.x) * kThreads) {
    const SegTensor& t = large.t[find_tensor<true>(large.t, large.count, s)];
    SegState st{};
    st.need = k_of(t, s - t.seg_begin);
    st.mode = st.need <= 0 ? kSegNone : kSegRadix;
    w.st[s] = st;
    for (int i = 0; i < kSegBins; ++i) w.hist[s * kSegBins + i] = 0;
  }
}

// ---- tiny segments: one thread each

template <bool SAL>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm) seg_tiny_kernel(SegList list, unsigned long long* nan_out) {
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; g < list.items;
       g += static_cast<int64_t>(gridDim.x) * kThreads) {
    const SegTensor& t = list.t[find_tensor<false>(list.t, list.count, g)];
    const int64_t row = g - t.item_begin;
    const int len = static_cast<int>(t.len);
    const int64_t base = row * t.len;
    const int64_t k = k_of(t, row);
    dispatch_dtype<SAL>(t.dtype, [&](auto pt, auto dt) {
      constexpr int PT = decltype(pt)::value, DT = decltype(dt)::value;
      uint64_t key[kSegTinyMax];
      bool comp[kSegTinyMax];
      bool nan = false;
      for (int i = 0; i < len; ++i) {
        key[i] = key_at<PT, DT, SAL>(t, base + i);
        comp[i] = competes(t, base + i);
        nan |= comp[i] && is_nan_key<PT>(key_t<PT>(key[i]));
      }
      for (int i = 0; i < len; ++i) {
        int64_t beats = 0;
        for (int j = 0; j < len; ++j) beats += comp[j] && (key[j] > key[i] || (key[j] == key[i] && j < i));
        t.out[base + i] = comp[i] ? uint8_t(beats < k) : resting_byte(t.flags);
      }
      if (nan) report_nan(nan_out, t.index);
    });
  }
}

// ---- rows up to kSegMaxRow: one block each, a radix select over the row held in registers

static_assert(kThreads == kSegBins, "the row path's digit choice gives each thread one bin");
constexpr int kRowPerThread = static_cast<int>(kSegMaxRow / kThreads);  // element tid + v * kThreads is thread tid's

template <bool SAL>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm) seg_row_kernel(SegList list, unsigned long long* nan_out) {
  __shared__ uint32_t hist[kSegBins];
  __shared__ long long scratch[kWarps + 1];
  __shared__ unsigned long long chosen_prefix;
  __shared__ long long chosen_need;
  for (int64_t g = blockIdx.x; g < list.items; g += gridDim.x) {
    const SegTensor& t = list.t[find_tensor<false>(list.t, list.count, g)];
    const int64_t row = g - t.item_begin;
    const int len = static_cast<int>(t.len);
    const int64_t base = row * t.len;
    uint64_t key[kRowPerThread];
    bool comp[kRowPerThread];
    bool nan = false;
    int bits = 0;
    dispatch_dtype<SAL>(t.dtype, [&](auto pt, auto dt) {
      constexpr int PT = decltype(pt)::value, DT = decltype(dt)::value;
      bits = key_bits<PT>;
      #pragma unroll
      for (int v = 0; v < kRowPerThread; ++v) {
        const int i = int(threadIdx.x) + v * kThreads;
        comp[v] = i < len && competes(t, base + i);
        key[v] = comp[v] ? key_at<PT, DT, SAL>(t, base + i) : 0;
        nan |= comp[v] && is_nan_key<PT>(key_t<PT>(key[v]));
      }
    });
    if (nan) report_nan(nan_out, t.index);

    // Digit by digit, every thread holding the same prefix and need; thread b owns bin 255 - b.
    unsigned long long prefix = 0;
    long long need = k_of(t, row);
    bool all = false;
    for (int l = 0; l < bits / kSegDigitBits && need > 0 && !all; ++l) {
      const int shift = bits - kSegDigitBits * (l + 1);
      hist[threadIdx.x] = 0;
      __syncthreads();  // every bin is cleared before any is counted
      #pragma unroll
      for (int v = 0; v < kRowPerThread; ++v) {
        if (comp[v] && (l == 0 || (key[v] >> (shift + kSegDigitBits)) == prefix)) {
          atomicAdd(hist + (uint32_t(key[v] >> shift) & uint32_t(kSegBins - 1)), 1u);
        }
      }
      __syncthreads();
      const int bin = kSegBins - 1 - int(threadIdx.x);
      const long long h = hist[bin];
      long long total = 0;
      const long long above = block_inclusive_scan<long long>(h, scratch, &total) - h;
      if (above < need && need <= above + h) {
        chosen_prefix = (prefix << kSegDigitBits) | static_cast<unsigned long long>(bin);
        chosen_need = need - above;
      }
      __syncthreads();  // the digit is chosen before anyone reads it
      if (l == 0 && need >= total) {  // total: every competing element of the row
        all = true;
      } else {
        prefix = chosen_prefix;
        need = chosen_need;
      }
    }

    // Keys above the k-th, and its first `need` ties in position order (need <= 0: nothing).
    long long seen = 0;
    #pragma unroll
    for (int v = 0; v < kRowPerThread; ++v) {
      const int i = int(threadIdx.x) + v * kThreads;
      const bool tie = comp[v] && !all && key[v] == prefix;
      long long ties = 0;
      const long long rank = seen + block_inclusive_scan<long long>(tie ? 1 : 0, scratch, &ties) - (tie ? 1 : 0);
      seen += ties;
      if (i < len) {
        t.out[base + i] = comp[v] ? uint8_t(all || (need > 0 && (key[v] > prefix || (tie && rank < need))))
                                  : resting_byte(t.flags);
      }
    }
  }
}

// ---- long segments: the radix select, one histogram per segment

// Where chunk item g lies: its tensor, segment (global index) and element range.
struct Chunk {
  const SegTensor* t;
  int64_t seg, lo, hi;
};

__device__ __forceinline__ Chunk chunk_of(const SegList& list, int64_t g) {
  const SegTensor* t = list.t + find_tensor<false>(list.t, list.count, g);
  const int64_t local = g - t->item_begin;
  const int64_t row = local / t->chunks;
  const int64_t lo = row * t->len + (local - row * t->chunks) * kTile;
  const int64_t end = (row + 1) * t->len;
  return Chunk{t, t->seg_begin + row, lo, lo + kTile < end ? lo + kTile : end};
}

__device__ __forceinline__ int seg_key_bits(int dtype, bool sal) {
  if (dtype == kF64) return 64;
  return sal || dtype == kF32 ? 32 : 16;
}

// Level l: the digit [bits - 8(l+1), bits - 8l) of every competing key sharing the segment's
// known prefix, counted per chunk in shared memory and flushed into the segment's histogram.
template <bool SAL>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm) seg_hist_kernel(SegList list, SegWork w, int l,
                                                                             unsigned long long* nan_out) {
  __shared__ uint32_t sh[kSegBins];
  for (int64_t g = blockIdx.x; g < list.items; g += gridDim.x) {
    const Chunk c = chunk_of(list, g);
    const SegState st = w.st[c.seg];
    if (st.mode != kSegRadix) continue;  // uniform over the block
    for (int i = threadIdx.x; i < kSegBins; i += kThreads) sh[i] = 0;
    __syncthreads();
    bool nan = false;
    dispatch_dtype<SAL>(c.t->dtype, [&](auto pt, auto dt) {
      constexpr int PT = decltype(pt)::value, DT = decltype(dt)::value;
      const int shift = key_bits<PT> - kSegDigitBits * (l + 1);
      for (int64_t j = c.lo + threadIdx.x; j < c.hi; j += kThreads) {
        if (!competes(*c.t, j)) continue;
        const uint64_t key = key_at<PT, DT, SAL>(*c.t, j);
        if (l == 0) nan |= is_nan_key<PT>(key_t<PT>(key));
        if (l == 0 || (key >> (shift + kSegDigitBits)) == st.prefix) {
          atomicAdd(sh + (uint32_t(key >> shift) & uint32_t(kSegBins - 1)), 1u);
        }
      }
    });
    if (nan) report_nan(nan_out, c.t->index);
    __syncthreads();
    unsigned long long* hist = w.hist + c.seg * kSegBins;
    for (int i = threadIdx.x; i < kSegBins; i += kThreads) {
      const uint32_t n = sh[i];
      if (n != 0) atomicAdd(hist + i, static_cast<unsigned long long>(n));
    }
    __syncthreads();  // the next chunk clears sh
  }
}

// Level l's digit choice, one thread per segment; the histogram is left zeroed for level l + 1.
template <bool SAL>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm) seg_choose_kernel(SegList list, SegWork w, int l) {
  for (int64_t s = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; s < list.segs;
       s += static_cast<int64_t>(gridDim.x) * kThreads) {
    SegState st = w.st[s];
    if (st.mode != kSegRadix) continue;
    const SegTensor& t = list.t[find_tensor<true>(list.t, list.count, s)];
    const int shift = seg_key_bits(t.dtype, SAL) - kSegDigitBits * (l + 1);
    unsigned long long* hist = w.hist + s * kSegBins;
    long long above = 0, above_bin = 0;
    int bin = -1;
    for (int b = kSegBins - 1; b >= 0; --b) {
      const long long h = static_cast<long long>(hist[b]);
      hist[b] = 0;
      if (bin < 0 && above + h >= st.need) {
        bin = b;
        above_bin = above;
      }
      above += h;
    }
    if (l == 0 && st.need >= above) {  // above: every competing element of the segment
      st.mode = kSegAll;
    } else {
      st.prefix = (st.prefix << kSegDigitBits) | static_cast<unsigned long long>(bin);
      st.need -= above_bin;
      if (shift == 0) st.mode = kSegDone;
    }
    w.st[s] = st;
  }
}

// Once the k-th key is known: per chunk, the competing elements equal to it.
template <bool SAL>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm) seg_tie_count_kernel(SegList list, SegWork w) {
  __shared__ long long scratch[kWarps + 1];
  for (int64_t g = blockIdx.x; g < list.items; g += gridDim.x) {
    const Chunk c = chunk_of(list, g);
    const SegState st = w.st[c.seg];
    if (st.mode != kSegDone) continue;
    long long mine = 0;
    dispatch_dtype<SAL>(c.t->dtype, [&](auto pt, auto dt) {
      constexpr int PT = decltype(pt)::value, DT = decltype(dt)::value;
      for (int64_t j = c.lo + threadIdx.x; j < c.hi; j += kThreads) {
        mine += (competes(*c.t, j) && key_at<PT, DT, SAL>(*c.t, j) == st.prefix) ? 1 : 0;
      }
    });
    long long total = 0;
    block_inclusive_scan<long long>(mine, scratch, &total);
    if (threadIdx.x == 0) w.tie_count[g] = total;
  }
}

// Each chunk's quota of ties = clamp(need - ties in the segment's earlier chunks, 0, its ties):
// one block per segment.
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm) seg_tie_scan_kernel(SegList list, SegWork w) {
  __shared__ long long scratch[kWarps + 1];
  for (int64_t s = blockIdx.x; s < list.segs; s += gridDim.x) {
    const SegState st = w.st[s];
    if (st.mode != kSegDone) continue;
    const SegTensor& t = list.t[find_tensor<true>(list.t, list.count, s)];
    const int64_t first = t.item_begin + (s - t.seg_begin) * t.chunks;
    long long carry = 0;
    for (int64_t base = 0; base < t.chunks; base += kThreads) {
      const int64_t i = base + threadIdx.x;
      const long long c = i < t.chunks ? w.tie_count[first + i] : 0;
      long long total = 0;
      const long long before = carry + block_inclusive_scan<long long>(c, scratch, &total) - c;
      long long q = st.need - before;
      q = q < 0 ? 0 : (q > c ? c : q);
      if (i < t.chunks) w.tie_quota[first + i] = q;
      carry += total;
    }
  }
}

// The masks of every chunk: keys above the k-th, plus the chunk's quota of ties in position order.
template <bool SAL>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm) seg_mask_kernel(SegList list, SegWork w) {
  __shared__ long long scratch[kWarps + 1];
  for (int64_t g = blockIdx.x; g < list.items; g += gridDim.x) {
    const Chunk c = chunk_of(list, g);
    const SegState st = w.st[c.seg];
    uint8_t* out = c.t->out;
    if (st.mode != kSegDone) {
      for (int64_t j = c.lo + threadIdx.x; j < c.hi; j += kThreads) {
        out[j] = competes(*c.t, j) ? uint8_t(st.mode == kSegAll) : resting_byte(c.t->flags);
      }
      continue;
    }
    const long long quota = w.tie_quota[g];
    const bool partial = quota > 0 && quota < w.tie_count[g];  // uniform over the block
    long long seen = 0;  // ties before this stride of the chunk
    dispatch_dtype<SAL>(c.t->dtype, [&](auto pt, auto dt) {
      constexpr int PT = decltype(pt)::value, DT = decltype(dt)::value;
      for (int64_t base = c.lo; base < c.hi; base += kThreads) {
        const int64_t j = base + threadIdx.x;
        const bool live = j < c.hi && competes(*c.t, j);
        const uint64_t key = live ? key_at<PT, DT, SAL>(*c.t, j) : 0;
        const bool tie = live && key == st.prefix;
        bool keep = live ? key > st.prefix : resting_byte(c.t->flags) != 0;
        if (partial) {
          long long total = 0;
          const long long rank = seen + block_inclusive_scan<long long>(tie ? 1 : 0, scratch, &total) - (tie ? 1 : 0);
          keep |= tie && rank < quota;
          seen += total;
        } else {
          keep |= tie && quota > 0;
        }
        if (j < c.hi) out[j] = uint8_t(keep);
      }
    });
  }
}

template <bool SAL>
cudaError_t run_segmented(const SegmentedArgs& a) {
  cudaStream_t s = a.stream;
  const int sms = a.num_sms > 0 ? a.num_sms : 1;
  auto* nan = reinterpret_cast<unsigned long long*>(a.nan_out);
  const SegWork w = seg_carve(a.workspace, a.large.segs, a.large.items);
  static const int init_occ = blocks_per_sm(seg_init_kernel);
  static const int tiny_occ = blocks_per_sm(seg_tiny_kernel<SAL>);
  static const int row_occ = blocks_per_sm(seg_row_kernel<SAL>);
  static const int hist_occ = blocks_per_sm(seg_hist_kernel<SAL>);
  static const int choose_occ = blocks_per_sm(seg_choose_kernel<SAL>);
  static const int tie_occ = blocks_per_sm(seg_tie_count_kernel<SAL>);
  static const int scan_occ = blocks_per_sm(seg_tie_scan_kernel);
  static const int mask_occ = blocks_per_sm(seg_mask_kernel<SAL>);
  const int64_t seg_threads = (a.large.segs + kThreads - 1) / kThreads;

  SF_LAUNCH(seg_init_kernel, wave_grid(seg_threads, sms, init_occ), kThreads, 0, s, a.large, w, nan);
  if (a.tiny.items > 0) {
    SF_LAUNCH((seg_tiny_kernel<SAL>), wave_grid((a.tiny.items + kThreads - 1) / kThreads, sms, tiny_occ), kThreads, 0,
              s, a.tiny, nan);
  }
  if (a.rows.items > 0) {
    SF_LAUNCH((seg_row_kernel<SAL>), wave_grid(a.rows.items, sms, row_occ), kThreads, 0, s, a.rows, nan);
  }
  if (a.large.items > 0) {
    const int levels = a.large.key_bits / kSegDigitBits;
    for (int l = 0; l < levels; ++l) {
      SF_LAUNCH((seg_hist_kernel<SAL>), wave_grid(a.large.items, sms, hist_occ), kThreads, 0, s, a.large, w, l, nan);
      SF_LAUNCH((seg_choose_kernel<SAL>), wave_grid(seg_threads, sms, choose_occ), kThreads, 0, s, a.large, w, l);
    }
    SF_LAUNCH((seg_tie_count_kernel<SAL>), wave_grid(a.large.items, sms, tie_occ), kThreads, 0, s, a.large, w);
    SF_LAUNCH(seg_tie_scan_kernel, wave_grid(a.large.segs, sms, scan_occ), kThreads, 0, s, a.large, w);
    SF_LAUNCH((seg_mask_kernel<SAL>), wave_grid(a.large.items, sms, mask_occ), kThreads, 0, s, a.large, w);
  }
  return cudaGetLastError();
}

}  // namespace

size_t segmented_workspace_bytes(int64_t segs, int64_t chunks) {
  // seg_carve() on a null base gives the offset of the last array; add its size.
  const SegWork w = seg_carve(nullptr, segs, chunks);
  return reinterpret_cast<size_t>(w.tie_quota) + sizeof(long long) * size_t(chunks > 0 ? chunks : 1);
}

cudaError_t launch_segmented(const SegmentedArgs& a) {
  return a.saliency ? run_segmented<true>(a) : run_segmented<false>(a);
}

}  // namespace cuda
}  // namespace sparseforce
