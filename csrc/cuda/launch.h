// The plain C++ boundary between the torch glue (ops_cuda.cpp) and the CUDA kernels (*.cu).
// Only fixed-width types, raw pointers and cudaStream_t cross it, so the .cu files build with
// nvcc and the CUDA headers alone (no torch headers in device code), and both compilers agree on
// every struct layout (checked by the static_asserts below).
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

namespace sparseforce {
namespace cuda {

enum DType : int32_t { kF16 = 0, kBF16 = 1, kF32 = 2, kF64 = 3 };

// Elements per tile. Every tensor is cut into tiles that never straddle two tensors, so a tile's
// elements share one dtype and one alignment; per-tile tie counts are counts in global order.
constexpr int64_t kTile = 4096;
// Widest radix digit: a 4096-bin histogram (16 KiB of 32-bit counts) fits in shared memory
// several times per SM. The first digit of an fp32 key is sign + exponent + 3 mantissa bits.
constexpr int kDigitBits = 12;
constexpr int kBins = 1 << kDigitBits;

// How an input of a selection ranks and competes beyond the defaults (the fused drop/grow's two
// phases, drop_grow.cu): bits of Segment::flags and SegTensor::flags.
enum SelectFlag : int32_t {
  kFlagAbs = 1,    // rank |a| (the sign bit cleared; not with saliency, which is |a*b| already)
  kFlagUnion = 2,  // the elements with prev FALSE compete, and those with prev true are written
                   // true: out = prev OR (the selected ones)
};

// One input tensor (a contiguous run of global positions [offset, offset + n)).
struct Segment {
  const void* a;         // scores, or weights
  const void* b;         // grads (saliency) or null
  const uint8_t* prev;   // Iter SNIP: only these elements compete; null: all do
  uint8_t* out;          // the bool mask; null for kth_largest
  int64_t n;
  int64_t offset;        // global position of element 0
  int64_t tile_begin;    // index of the segment's first tile
  int32_t dtype;         // DType of a (and b)
  int32_t index;         // position in the caller's list, for NaN reports
  int32_t aligned;       // a, b are 16-byte and prev, out 16-byte aligned: vector loads/stores
  int32_t flags;         // SelectFlag bits
};
static_assert(sizeof(Segment) == 72, "Segment layout must agree between nvcc and the host compiler");

// Where the device-side radix select stands; read back by the glue after the last kernel to
// report NaN or an unsatisfiable k (the only host synchronisation of a call).
enum SelectMode : int32_t {
  kModeRadix = 0,     // histogramming the full data, digit by digit
  kModeCand = 1,      // the k-th key's bin is small: resolving it among gathered candidates
  kModePos = 2,       // the k-th key is known; choosing which tied candidates win, by position
  kModeCandDone = 3,  // candidates resolved: pos_limit says which ties are kept
  kModeKnown = 4,     // the k-th key is known from full-data passes: ties by per-tile quotas
  kModeAll = 5,       // k == number competing: keep every competing element
  kModeNone = 6,      // k == 0
  kModeErrNaN = 7,    // a competing score is NaN: nan_index names the first tensor holding one
  kModeErrK = 8,      // k exceeds the number competing (Iter SNIP)
};

struct SelectState {
  uint64_t prefix;       // known high bits of the k-th key
  int64_t need;          // its rank among the keys sharing those bits (1-based)
  int64_t count;         // competing elements sharing those bits
  int64_t competing;     // competing elements in all
  int64_t nan_index;     // first tensor holding a competing NaN, INT64_MAX if none
  uint64_t kth;          // the k-th largest key, once known
  int64_t tie_need;      // how many elements equal to kth are kept
  int64_t tie_total;     // how many elements equal to kth compete
  uint64_t pos_prefix;   // position select: known high bits of (pos_mask - position)
  int64_t pos_need;
  int64_t pos_limit;     // ties at positions <= pos_limit are kept
  int64_t cand_count;    // candidates gathered
  int32_t mode;          // SelectMode
  int32_t level;         // last key digit level chosen
  int32_t pos_level;     // last position digit level chosen
  uint32_t blocks_done;  // last-block-done counter, back to 0 after every pass
};
static_assert(sizeof(SelectState) == 112, "SelectState layout must agree between nvcc and the host compiler");

struct SelectArgs {
  const Segment* segs;   // device copy of the segment table (global order)
  int32_t nseg;
  int32_t rank_dtype;    // DType the keys are formed in (the promoted dtype)
  int32_t saliency;      // rank |a*b| instead of a
  int32_t write_masks;   // topk / saliency (1) or kth_largest (0)
  int64_t n;             // elements in all (> 0)
  int64_t tiles;         // tiles in all
  int64_t k;             // 0 <= k <= n (k >= 1 for kth_largest)
  const int64_t* k_dev;  // non-null: k is read on the device from here instead (no host round trip)
  int64_t cap;           // largest bin resolved from a candidate list
  void* workspace;       // select_workspace_bytes(tiles, cap), any contents
  void* value_out;       // kth_largest: a device scalar of rank_dtype; else null
  int32_t num_sms;
  cudaStream_t stream;
};

// Device memory a select needs: the state, one histogram, per-tile tie counts and the
// candidate buffer (16 bytes per candidate). The state is at offset 0.
size_t select_workspace_bytes(int64_t tiles, int64_t cap);

// Enqueues the whole select on args.stream: no host synchronisation, no host round trip.
cudaError_t launch_select(const SelectArgs& args);

// radix_histogram: one pass of a radix select whose scan runs elsewhere (sparseforce.distributed
// sums these over the ranks): counts of the 16-bit digit at `shift` of the competing keys.
constexpr int kHistDigitBits = 16;
constexpr int64_t kHistBins = int64_t(1) << kHistDigitBits;

struct HistArgs {
  const Segment* segs;   // device copy of the segment table (out unused); may be null if nseg == 0
  int32_t nseg;
  int32_t rank_dtype;    // DType the keys are formed in
  int32_t saliency;      // keys of |a*b| instead of a
  int32_t shift;         // the digit: a multiple of 16, shift + 16 <= key bits
  uint64_t prefix;       // the key bits above the digit (all keys compete on the top pass)
  int64_t tiles;
  int64_t* out;          // device int64[kHistBins + 1], any contents: the counts, then the first
                         // tensor index holding a competing NaN (top pass only), else -1
  int32_t num_sms;
  cudaStream_t stream;
};

// Enqueues the pass on args.stream (no host synchronisation).
cudaError_t launch_radix_histogram(const HistArgs& args);

// ---- segmented selection (segmented.cu): every input cut into equal segments, each keeping its
// own k. Which of three paths a tensor takes is host.cpp's choice, by its segment length.

// Longest segment selected by one thread (N:M groups have m <= 32), and longest row selected by
// one block, its keys in registers (8 per thread).
constexpr int64_t kSegTinyMax = 32;
constexpr int64_t kSegMaxRow = 2048;

// One non-empty input of a segmented select: `rows` segments of `len` consecutive elements.
struct SegTensor {
  const void* a;         // scores, or weights
  const void* b;         // grads (saliency) or null
  const uint8_t* prev;   // only these elements compete; null: all do
  uint8_t* out;          // the bool mask
  const int64_t* ks;     // device int64[rows]: segment r keeps ks[r]; null: every one keeps k_all
  int64_t k_all;
  int64_t rows;
  int64_t len;
  int64_t item_begin;    // the tensor's first work item in its path's list (thread, block or chunk)
  int64_t seg_begin;     // radix path: the index of its first segment's state
  int64_t chunks;        // radix path: chunks of kTile elements per segment
  int32_t dtype;         // DType of a and b (saliency ranks in float32, float64 for float64)
  int32_t index;         // position in the caller's list, for NaN reports
  int32_t flags;         // SelectFlag bits
  int32_t pad_;
};
static_assert(sizeof(SegTensor) == 104, "SegTensor layout must agree between nvcc and the host compiler");

// The tensors of one path, ordered by item_begin (each has at least one item).
struct SegList {
  const SegTensor* t;    // device copy
  int32_t count;
  int32_t key_bits;      // radix path: the widest key among them
  int64_t items;         // work items in all
  int64_t segs;          // segments in all
};
static_assert(sizeof(SegList) == 32, "SegList layout must agree between nvcc and the host compiler");

struct SegmentedArgs {
  SegList tiny;          // segments of <= kSegTinyMax elements: one thread each
  SegList rows;          // segments of <= kSegMaxRow elements: one block each
  SegList large;         // longer segments: radix select, one histogram per segment
  int32_t saliency;      // rank |a*b| instead of a
  int32_t num_sms;
  void* workspace;       // segmented_workspace_bytes(large.segs, large.items), any contents
  int64_t* nan_out;      // device int64 scalar: the first index holding a competing NaN, else -1
  cudaStream_t stream;
};

size_t segmented_workspace_bytes(int64_t segs, int64_t chunks);

// Enqueues every path on args.stream: no host synchronisation.
cudaError_t launch_segmented(const SegmentedArgs& args);

// ---- drop_grow_masks (drop_grow.cu): its selections are the two above, with SelectFlags; its own
// kernel is the NaN scan over every element (not only the competing ones).

struct NanScanArgs {
  const Segment* segs;   // device copy: every weights and scores tensor, index = its NaN code
  int32_t nseg;
  int32_t num_sms;
  int64_t tiles;
  int64_t* nan_out;      // device int64 scalar: the lowest index of a segment holding a NaN, else -1
  cudaStream_t stream;
};

// Enqueues the scan on args.stream (no host synchronisation); nan_out is written even if nseg == 0.
cudaError_t launch_nan_scan(const NanScanArgs& args);

struct SgdSegment {
  void* p;
  const void* g;
  void* buf;             // null when momentum == 0
  const uint8_t* mask;   // null: unmasked
  int64_t n;
  int64_t tile_begin;
  int32_t dtype;
  int32_t fresh;         // buf holds no state yet: it becomes d_p
  int32_t aligned;       // p, g, buf 16-byte aligned and mask 16-byte aligned
  int32_t pad_;
};
static_assert(sizeof(SgdSegment) == 64, "SgdSegment layout must agree between nvcc and the host compiler");

struct SgdArgs {
  const SgdSegment* segs;  // device copy
  int32_t nseg;
  int32_t nesterov;
  int64_t tiles;
  double lr, momentum, dampening, weight_decay;
  int32_t num_sms;
  cudaStream_t stream;
};

cudaError_t launch_masked_sgd(const SgdArgs& args);

}  // namespace cuda
}  // namespace sparseforce
