// The device-agnostic half of the CUDA ops: everything between "these raw buffers, these dtypes"
// and the launchers of launch.h (segment tables, alignment flags, tile counts, the candidate cap,
// workspace sizing, reading SelectState back and interpreting it). Plain C++17 over raw pointers
// and a small Device interface, so it is compiled both into the torch glue (ops_cuda.cpp, with a
// device backed by torch's CUDA allocator and stream) and into the CPU emulation of the kernels
// (tests/cuda_emu), where it is tested. User errors come back as a Status, never as exceptions:
// the caller raises them in its own terms.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "launch.h"

namespace sparseforce {
namespace cuda {
namespace host {

// What the orchestration needs from a device. Memory from alloc() has any contents.
struct Device {
  virtual ~Device() = default;
  virtual void* alloc(size_t bytes) = 0;
  virtual void free(void* p) = 0;
  virtual void upload(void* dst, const void* src, size_t bytes) = 0;    // host -> device, stream-ordered
  virtual void download(void* dst, const void* src, size_t bytes) = 0;  // device -> host, waits for the stream
  virtual int num_sms() = 0;
  virtual cudaStream_t stream() = 0;
};

enum Status : int32_t {
  kOk = 0,
  kBadK = 1,         // k outside [0, n] ([1, n] for kth_largest); n says how many elements there are
  kNaN = 2,          // a competing score is NaN; nan_index names the first tensor holding one
  kFewCompeting = 3, // k exceeds the competing elements (Iter SNIP); competing says how many
  kLaunchFailed = 4, // cuda_error says why
  kUnresolved = 5,   // internal: the select ended in mode `mode`
  kBadInput = 6,     // internal: input `index` cannot be ranked as asked (dtype, shift, ...)
};

struct Result {
  int32_t status = kOk;
  int32_t cuda_error = 0;  // cudaError_t of a failed launch
  int32_t mode = 0;        // the select's final SelectMode; segmented_select: the SegPathBit of each path taken
  int32_t index = -1;      // kBadInput: the input's index, -1 when it is the call's arguments
  int64_t n = 0;           // elements in all
  int64_t competing = 0;   // elements that competed (select)
  int64_t nan_index = -1;  // kNaN: the first tensor holding a competing NaN
};
static_assert(sizeof(Result) == 40, "Result crosses a C ABI (tests/cuda_emu): keep its layout fixed");

// One input tensor, contiguous. Inputs with n == 0 are skipped; index is what NaN reports name.
struct Input {
  const void* a;        // scores, or weights
  const void* b;        // grads (saliency) or null
  const uint8_t* prev;  // only these elements compete; null: all do
  uint8_t* out;         // the bool mask (write_masks), else null
  int64_t n;
  int32_t dtype;        // DType of a and b
  int32_t index;
  int32_t flags = 0;    // SelectFlag bits (launch.h)
};

// SPARSEFORCE_CUDA_CANDIDATE_CAP, read per call, or the default for n elements.
int64_t candidate_cap(int64_t n);

// topk_masks (write_masks, value_out null), kth_largest (!write_masks; value_out: device scalar
// of rank_dtype receiving the k-th largest value) and saliency_topk_masks (saliency: rank |a*b|).
// rank_dtype must hold every input value exactly. The one host synchronisation reads the state.
Result select(Device& dev, const std::vector<Input>& inputs, int64_t k, int32_t rank_dtype, bool saliency,
              bool write_masks, void* value_out);

// One radix_histogram pass (launch.h): into `out`, device int64[kHistBins + 1], the counts of the
// 16-bit digit at `shift` of the competing keys whose bits above it equal `prefix`, then the
// first input index holding a competing NaN (top pass only) or -1. Enqueued, no synchronisation.
Result radix_histogram(Device& dev, const std::vector<Input>& inputs, int32_t rank_dtype, bool saliency, int shift,
                       uint64_t prefix, int64_t* out);

// The paths of a segmented select (segmented.cu), as Result.mode reports those taken.
enum SegPathBit : int32_t { kSegPathTiny = 1, kSegPathRow = 2, kSegPathRadix = 4 };

// One input of a segmented select, contiguous: n elements in `rows` segments of n / rows each.
// Inputs with n == 0 are skipped; index is what NaN reports name.
struct SegInput {
  const void* a;        // scores, or weights
  const void* b;        // grads (saliency, same dtype as a) or null
  const uint8_t* prev;  // only these elements compete; null: all do
  uint8_t* out;         // the bool mask
  const int64_t* ks;    // device int64[rows], one k per segment; null: every segment keeps k_all
  int64_t k_all;
  int64_t n;
  int64_t rows;
  int32_t dtype;        // DType of a and b
  int32_t index;
  int32_t flags = 0;    // SelectFlag bits (launch.h)
};

// SPARSEFORCE_CUDA_SEGMENT_SMALL, read per call: the longest segment selected without histograms
// (one thread or one block per segment), clamped to [0, kSegMaxRow]; longer ones take the radix path.
int64_t segment_small_limit();

// segmented_topk_masks / segmented_saliency_topk_masks (saliency: rank |a*b|, in float32, float64
// for float64 inputs). `nan_out`: device int64 scalar receiving the first index holding a
// competing NaN, else -1. Enqueued, no synchronisation.
Result segmented_select(Device& dev, const std::vector<SegInput>& inputs, bool saliency, int64_t* nan_out);

// One tensor of drop_grow_masks, contiguous; the weights and scores may differ in dtype. Inputs
// with n == 0 are skipped; index is the tensor's position in the caller's list.
struct DropGrowInput {
  const void* w;
  const void* s;
  const uint8_t* mask;  // the active set
  uint8_t* out;         // the new mask
  int64_t n;
  int32_t w_dtype, s_dtype;
  int32_t index;
};

// drop_grow_masks (drop_grow.cu). keeps, grows: device int64[S], S = the number of tensors
// (`global` false: tensor i is segment i, at keeps + index) or 1 (`global`: one segment over all
// tensors, positions in input order). nan_out: device int64 scalar receiving min(2i for a NaN in
// weights[i], 2i+1 in scores[i]), else -1. Enqueued, no synchronisation. Result.mode: the
// SegPathBits the per-tensor selections took (0 for the global select).
Result drop_grow(Device& dev, const std::vector<DropGrowInput>& inputs, const int64_t* keeps, const int64_t* grows,
                 bool global, int64_t* nan_out);

struct SgdInput {
  void* p;
  const void* g;          // same dtype as p
  void* buf;              // null when momentum == 0
  const uint8_t* mask;    // null: unmasked
  int64_t n;
  int32_t dtype;
  int32_t fresh;          // buf holds no state yet
};

struct SgdHyper {
  double lr, momentum, dampening, weight_decay;
  bool nesterov;
};

// Enqueued, no synchronisation.
Result masked_sgd(Device& dev, const std::vector<SgdInput>& inputs, const SgdHyper& hyper);

}  // namespace host
}  // namespace cuda
}  // namespace sparseforce
