// The device-agnostic orchestration of the CUDA ops (host.h). Compiled into CUDA builds of the
// extension and into the CPU emulation of the kernels; a CPU-only build that picks it up by a
// stray glob compiles it to nothing.
#if defined(SPARSEFORCE_WITH_CUDA) || defined(SPARSEFORCE_CUDA_EMULATION)

#include "host.h"

#include <algorithm>
#include <climits>
#include <cstdint>
#include <vector>

#include "../common/env.h"
#include "launch.h"

namespace sparseforce {
namespace cuda {
namespace host {
namespace {

// Device memory released when the call ends, whichever way it returns.
class Buffer {
 public:
  Buffer(Device& dev, size_t bytes) : dev_(dev), p_(dev.alloc(bytes)) {}
  ~Buffer() {
    if (p_ != nullptr) dev_.free(p_);
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  void* get() const { return p_; }

 private:
  Device& dev_;
  void* p_;
};

bool aligned16(const void* p) { return p == nullptr || (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

int key_bits(int32_t dtype) { return dtype == kF16 || dtype == kBF16 ? 16 : (dtype == kF32 ? 32 : 64); }

bool known_dtype(int32_t dtype) { return dtype == kF16 || dtype == kBF16 || dtype == kF32 || dtype == kF64; }

// The (ranking dtype, input dtype) pairs the kernels instantiate (common.cuh's valid_pair): the
// ranking dtype holds every input value, and |a*b| is formed in float32, or float64 for float64.
bool ranks_as(int32_t rank, int32_t dtype, bool saliency) {
  if (!known_dtype(rank) || !known_dtype(dtype)) return false;
  if (saliency) return rank == kF64 || (rank == kF32 && dtype != kF64);
  return rank == dtype || rank == kF64 || (rank == kF32 && (dtype == kF16 || dtype == kBF16));
}

Result bad_input(int32_t index) {
  Result r;
  r.status = kBadInput;
  r.index = index;
  return r;
}

struct Table {
  std::vector<Segment> segs;
  int64_t n = 0;
  int64_t tiles = 0;
  int32_t bad = INT32_MIN;  // index of the first input the kernels cannot take
};

// Global order is input order; empty inputs get no segment (segments must have n > 0).
Table segment_table(const std::vector<Input>& inputs, int32_t rank, bool saliency, bool write_masks) {
  Table t;
  if (!known_dtype(rank) || (saliency && rank != kF32 && rank != kF64)) {
    t.bad = -1;
    return t;
  }
  for (const Input& in : inputs) {
    const bool missing = in.n > 0 && (in.a == nullptr || (saliency && in.b == nullptr) || (write_masks && in.out == nullptr));
    if (in.n < 0 || !ranks_as(rank, in.dtype, saliency) || missing) {
      t.bad = in.index;
      return t;
    }
    if (in.n == 0) continue;
    Segment s{};
    s.a = in.a;
    s.b = saliency ? in.b : nullptr;
    s.prev = in.prev;
    s.out = write_masks ? in.out : nullptr;
    s.n = in.n;
    s.offset = t.n;
    s.tile_begin = t.tiles;
    s.dtype = in.dtype;
    s.index = in.index;
    s.aligned = aligned16(s.a) && aligned16(s.b) && aligned16(s.prev) && aligned16(s.out);
    s.flags = in.flags;
    t.n += in.n;
    t.tiles += (in.n + kTile - 1) / kTile;
    t.segs.push_back(s);
  }
  if (t.segs.size() > static_cast<size_t>(INT32_MAX)) t.bad = -1;
  return t;
}

Result launch_failed(cudaError_t e) {
  Result r;
  r.status = kLaunchFailed;
  r.cuda_error = static_cast<int32_t>(e);
  return r;
}

}  // namespace

int64_t candidate_cap(int64_t n) {
  // Candidates cost 16 bytes each: n/16 of them cost as much memory as the masks. 0: always run
  // the radix passes over the full data to the whole key (the path ties by per-tile quotas take).
  const int64_t dflt = std::min<int64_t>(int64_t(1) << 24, std::max<int64_t>(int64_t(1) << 16, n / 16));
  const int64_t cap = env_int("SPARSEFORCE_CUDA_CANDIDATE_CAP", dflt);
  return cap < 0 ? 0 : cap;
}

namespace {

// Enqueues the select over a non-empty table (k, or *k_dev on the device); the workspace `ws`
// (select_workspace_bytes(t.tiles, cap)) holds its state at offset 0. The table's memory is
// freed on return, before the kernels have run, as masked_sgd's.
cudaError_t enqueue_select(Device& dev, const Table& t, int64_t k, const int64_t* k_dev, int64_t cap,
                           int32_t rank_dtype, bool saliency, bool write_masks, void* value_out, void* ws) {
  const size_t table_bytes = sizeof(Segment) * t.segs.size();
  Buffer table(dev, table_bytes);
  dev.upload(table.get(), t.segs.data(), table_bytes);
  SelectArgs a{};
  a.segs = static_cast<const Segment*>(table.get());
  a.nseg = static_cast<int32_t>(t.segs.size());
  a.rank_dtype = rank_dtype;
  a.saliency = saliency ? 1 : 0;
  a.write_masks = write_masks ? 1 : 0;
  a.n = t.n;
  a.tiles = t.tiles;
  a.k = k;
  a.k_dev = k_dev;
  a.cap = cap;
  a.workspace = ws;
  a.value_out = write_masks ? nullptr : value_out;
  a.num_sms = dev.num_sms();
  a.stream = dev.stream();
  return launch_select(a);
}

}  // namespace

Result select(Device& dev, const std::vector<Input>& inputs, int64_t k, int32_t rank_dtype, bool saliency,
              bool write_masks, void* value_out) {
  const Table t = segment_table(inputs, rank_dtype, saliency, write_masks);
  if (t.bad != INT32_MIN) return bad_input(t.bad);
  Result r;
  r.n = t.n;
  if (k < (write_masks ? 0 : 1) || k > t.n) {  // kth_largest needs 1 <= k
    r.status = kBadK;
    return r;
  }
  r.mode = kModeNone;
  if (t.n == 0) return r;
  if (!write_masks && value_out == nullptr) return bad_input(-1);

  const int64_t cap = candidate_cap(t.n);
  Buffer ws(dev, select_workspace_bytes(t.tiles, cap));
  const cudaError_t e = enqueue_select(dev, t, k, nullptr, cap, rank_dtype, saliency, write_masks, value_out, ws.get());
  if (e != cudaSuccess) return launch_failed(e);

  // The state sits at offset 0 of the workspace; reading it is the call's one synchronisation,
  // needed to report NaN (found during the first pass) and an unsatisfiable k as errors.
  SelectState st;
  dev.download(&st, ws.get(), sizeof st);
  r.mode = st.mode;
  r.competing = st.competing;
  switch (st.mode) {
    case kModeErrNaN:
      r.status = kNaN;
      r.nan_index = st.nan_index;
      break;
    case kModeErrK:
      r.status = kFewCompeting;
      break;
    case kModeCandDone:
    case kModeKnown:
    case kModeAll:
    case kModeNone:
      break;
    default:  // radix / cand / pos: a pass sequence that stopped short of the answer
      r.status = kUnresolved;
  }
  return r;
}

Result radix_histogram(Device& dev, const std::vector<Input>& inputs, int32_t rank_dtype, bool saliency, int shift,
                       uint64_t prefix, int64_t* out) {
  if (out == nullptr || !known_dtype(rank_dtype)) return bad_input(-1);
  const int bits = key_bits(rank_dtype);
  const int above = bits - shift - kHistDigitBits;  // key bits above the digit
  if (shift < 0 || shift % kHistDigitBits != 0 || above < 0 || (above < 64 && (prefix >> above) != 0)) {
    return bad_input(-1);
  }
  const Table t = segment_table(inputs, rank_dtype, saliency, false);
  if (t.bad != INT32_MIN) return bad_input(t.bad);
  Result r;
  r.n = t.n;
  const size_t table_bytes = sizeof(Segment) * t.segs.size();
  // Freed before the kernel has run, as masked_sgd's table.
  Buffer table(dev, table_bytes);
  if (table_bytes != 0) dev.upload(table.get(), t.segs.data(), table_bytes);
  HistArgs a{};
  a.segs = static_cast<const Segment*>(table.get());
  a.nseg = static_cast<int32_t>(t.segs.size());
  a.rank_dtype = rank_dtype;
  a.saliency = saliency ? 1 : 0;
  a.shift = shift;
  a.prefix = prefix;
  a.tiles = t.tiles;
  a.out = out;
  a.num_sms = dev.num_sms();
  a.stream = dev.stream();
  const cudaError_t e = launch_radix_histogram(a);
  if (e != cudaSuccess) return launch_failed(e);
  return r;
}

int64_t segment_small_limit() {
  const int64_t limit = env_int("SPARSEFORCE_CUDA_SEGMENT_SMALL", kSegMaxRow);
  return std::min<int64_t>(std::max<int64_t>(limit, 0), kSegMaxRow);
}

namespace {

// The tensors of one path of a segmented select, and their device table once uploaded.
struct SegPath {
  std::vector<SegTensor> list;
  int64_t items = 0;
  int64_t segs = 0;
  int32_t key_bits = 0;

  void add(SegTensor t, int64_t items_of_t, int32_t bits) {
    t.item_begin = items;
    t.seg_begin = segs;
    items += items_of_t;
    segs += t.rows;
    key_bits = std::max(key_bits, bits);
    list.push_back(t);
  }
  SegList upload(Device& dev, Buffer& table, size_t at) const {
    SegList l{};
    l.t = reinterpret_cast<const SegTensor*>(static_cast<char*>(table.get()) + at);
    if (!list.empty()) dev.upload(static_cast<char*>(table.get()) + at, list.data(), sizeof(SegTensor) * list.size());
    l.count = static_cast<int32_t>(list.size());
    l.key_bits = key_bits;
    l.items = items;
    l.segs = segs;
    return l;
  }
};

}  // namespace

Result segmented_select(Device& dev, const std::vector<SegInput>& inputs, bool saliency, int64_t* nan_out) {
  if (nan_out == nullptr) return bad_input(-1);
  const int64_t small = segment_small_limit();
  SegPath tiny, rows, large;
  for (const SegInput& in : inputs) {
    const bool missing = in.n > 0 && (in.a == nullptr || (saliency && in.b == nullptr) || in.out == nullptr);
    const bool uneven = in.n > 0 && (in.rows <= 0 || in.n % in.rows != 0);
    if (in.n < 0 || !known_dtype(in.dtype) || missing || uneven) return bad_input(in.index);
    if (in.n == 0) continue;
    // item_begin, seg_begin: SegPath::add; chunks: the radix path's.
    SegTensor t{in.a, saliency ? in.b : nullptr, in.prev, in.out, in.ks, in.k_all, in.rows, in.n / in.rows, 0, 0, 0,
                in.dtype, in.index, in.flags, 0};
    const int32_t bits = saliency ? std::max(32, key_bits(in.dtype)) : key_bits(in.dtype);
    if (t.len <= std::min(small, kSegTinyMax)) {
      tiny.add(t, t.rows, bits);
    } else if (t.len <= small) {
      rows.add(t, t.rows, bits);
    } else {
      t.chunks = (t.len + kTile - 1) / kTile;
      large.add(t, t.rows * t.chunks, bits);
    }
  }
  const size_t counts[3] = {tiny.list.size(), rows.list.size(), large.list.size()};
  if (std::max({counts[0], counts[1], counts[2]}) > static_cast<size_t>(INT32_MAX)) return bad_input(-1);
  // Freed before the kernels have run, as masked_sgd's table.
  Buffer table(dev, sizeof(SegTensor) * std::max<size_t>(1, counts[0] + counts[1] + counts[2]));
  Buffer ws(dev, segmented_workspace_bytes(large.segs, large.items));
  SegmentedArgs a{};
  a.tiny = tiny.upload(dev, table, 0);
  a.rows = rows.upload(dev, table, sizeof(SegTensor) * counts[0]);
  a.large = large.upload(dev, table, sizeof(SegTensor) * (counts[0] + counts[1]));
  a.saliency = saliency ? 1 : 0;
  a.num_sms = dev.num_sms();
  a.workspace = ws.get();
  a.nan_out = nan_out;
  a.stream = dev.stream();
  const cudaError_t e = launch_segmented(a);
  if (e != cudaSuccess) return launch_failed(e);
  Result r;
  r.mode = (tiny.items > 0 ? kSegPathTiny : 0) | (rows.items > 0 ? kSegPathRow : 0) | (large.items > 0 ? kSegPathRadix : 0);
  return r;
}

namespace {

// The dtype both rank in exactly (torch's promotion of two float dtypes).
int32_t promote(int32_t x, int32_t y) {
  if (x == y) return x;
  return x == kF64 || y == kF64 ? kF64 : kF32;
}

}  // namespace

Result drop_grow(Device& dev, const std::vector<DropGrowInput>& inputs, const int64_t* keeps, const int64_t* grows,
                 bool global, int64_t* nan_out) {
  if (nan_out == nullptr || keeps == nullptr || grows == nullptr) return bad_input(-1);
  // NaN codes 2i and 2i+1 must fit the Segment's int32 index.
  if (inputs.size() > static_cast<size_t>(INT32_MAX / 2)) return bad_input(-1);
  // drops: weights, the active ones competing, into K; grows: scores, those outside K competing.
  std::vector<Input> drops, grows_in, all;
  int64_t n = 0;
  for (const DropGrowInput& in : inputs) {
    const bool missing = in.n > 0 && (in.w == nullptr || in.s == nullptr || in.mask == nullptr || in.out == nullptr);
    if (in.n < 0 || !known_dtype(in.w_dtype) || !known_dtype(in.s_dtype) || missing) return bad_input(in.index);
    if (in.n == 0) continue;
    all.push_back(Input{in.w, nullptr, nullptr, nullptr, in.n, in.w_dtype, 2 * in.index});
    all.push_back(Input{in.s, nullptr, nullptr, nullptr, in.n, in.s_dtype, 2 * in.index + 1});
    n += in.n;
  }
  Buffer kept(dev, static_cast<size_t>(std::max<int64_t>(n, 1)));  // K, a byte per element
  int64_t at = 0;
  for (const DropGrowInput& in : inputs) {
    if (in.n == 0) continue;
    uint8_t* k = static_cast<uint8_t*>(kept.get()) + at;
    at += in.n;
    drops.push_back(Input{in.w, nullptr, in.mask, k, in.n, in.w_dtype, 2 * in.index, kFlagAbs});
    grows_in.push_back(Input{in.s, nullptr, k, in.out, in.n, in.s_dtype, 2 * in.index + 1, kFlagAbs | kFlagUnion});
  }

  // Every element of both lists, one tile list: the NaN code (written even when all are empty).
  const Table scan = segment_table(all, kF64, false, false);  // any dtype ranks as float64
  if (scan.bad != INT32_MIN) return bad_input(scan.bad);
  {
    const size_t table_bytes = sizeof(Segment) * scan.segs.size();
    Buffer table(dev, std::max<size_t>(table_bytes, 1));
    if (table_bytes != 0) dev.upload(table.get(), scan.segs.data(), table_bytes);
    NanScanArgs a{};
    a.segs = static_cast<const Segment*>(table.get());
    a.nseg = static_cast<int32_t>(scan.segs.size());
    a.num_sms = dev.num_sms();
    a.tiles = scan.tiles;
    a.nan_out = nan_out;
    a.stream = dev.stream();
    const cudaError_t e = launch_nan_scan(a);
    if (e != cudaSuccess) return launch_failed(e);
  }
  Result r;
  if (n == 0) return r;

  if (!global) {
    // Each tensor one segment (a row of its whole length), k on the device at keeps + index; the
    // selections' own NaN reports (competing elements only) go to a scratch scalar.
    Buffer scratch(dev, sizeof(int64_t));
    std::vector<SegInput> seg[2];
    for (int phase = 0; phase < 2; ++phase) {
      for (const Input& in : phase == 0 ? drops : grows_in) {
        const int64_t* k = (phase == 0 ? keeps : grows) + in.index / 2;
        seg[phase].push_back(SegInput{in.a, nullptr, in.prev, in.out, k, 0, in.n, 1, in.dtype, in.index, in.flags});
      }
      const Result p = segmented_select(dev, seg[phase], false, static_cast<int64_t*>(scratch.get()));
      if (p.status != kOk) return p;
      r.mode |= p.mode;
    }
    return r;
  }

  // One segment over all tensors: the global select, each phase ranking in its list's promoted dtype.
  for (int phase = 0; phase < 2; ++phase) {
    const std::vector<Input>& list = phase == 0 ? drops : grows_in;
    int32_t rank = list[0].dtype;
    for (const Input& in : list) rank = promote(rank, in.dtype);
    const Table t = segment_table(list, rank, false, true);
    if (t.bad != INT32_MIN) return bad_input(t.bad);
    const int64_t cap = candidate_cap(t.n);
    Buffer ws(dev, select_workspace_bytes(t.tiles, cap));
    const cudaError_t e = enqueue_select(dev, t, 0, phase == 0 ? keeps : grows, cap, rank, false, true, nullptr, ws.get());
    if (e != cudaSuccess) return launch_failed(e);
  }
  return r;
}

Result masked_sgd(Device& dev, const std::vector<SgdInput>& inputs, const SgdHyper& h) {
  const bool use_buf = h.momentum != 0;
  std::vector<SgdSegment> segs;
  int64_t tiles = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const SgdInput& in = inputs[i];
    const bool missing = in.n > 0 && (in.p == nullptr || in.g == nullptr || (use_buf && in.buf == nullptr));
    if (in.n < 0 || !known_dtype(in.dtype) || missing) {
      return bad_input(static_cast<int32_t>(i));
    }
    if (in.n == 0) continue;
    SgdSegment s{};
    s.p = in.p;
    s.g = in.g;
    s.buf = use_buf ? in.buf : nullptr;
    s.mask = in.mask;
    s.n = in.n;
    s.tile_begin = tiles;
    s.dtype = in.dtype;
    s.fresh = use_buf && in.fresh != 0 ? 1 : 0;
    s.aligned = aligned16(s.p) && aligned16(s.g) && aligned16(s.buf) && aligned16(s.mask);
    tiles += (in.n + kTile - 1) / kTile;
    segs.push_back(s);
  }
  Result r;
  if (tiles == 0) return r;
  if (segs.size() > static_cast<size_t>(INT32_MAX)) return bad_input(-1);
  const size_t table_bytes = sizeof(SgdSegment) * segs.size();
  // Freed when this returns, before the kernel has run: a stream-ordered allocator (torch's
  // caching allocator) reuses the memory only for later work on the same stream.
  Buffer table(dev, table_bytes);
  dev.upload(table.get(), segs.data(), table_bytes);
  SgdArgs a{};
  a.segs = static_cast<const SgdSegment*>(table.get());
  a.nseg = static_cast<int32_t>(segs.size());
  a.nesterov = h.nesterov ? 1 : 0;
  a.tiles = tiles;
  a.lr = h.lr;
  a.momentum = h.momentum;
  a.dampening = h.dampening;
  a.weight_decay = h.weight_decay;
  a.num_sms = dev.num_sms();
  a.stream = dev.stream();
  const cudaError_t e = launch_masked_sgd(a);
  if (e != cudaSuccess) return launch_failed(e);
  return r;
}

}  // namespace host
}  // namespace cuda
}  // namespace sparseforce

#endif  // SPARSEFORCE_WITH_CUDA || SPARSEFORCE_CUDA_EMULATION
