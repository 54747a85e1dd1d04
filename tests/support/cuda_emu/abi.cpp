// The emulated CUDA backend's C ABI: csrc/cuda/host.cpp's orchestration on a Device whose memory
// is host memory, so the same launchers and kernels (compiled as host C++ against the emulator's
// runtime) run on CPU tensors. backend.py calls these through ctypes.
//
// Device memory is filled with garbage when allocated, so bytes a kernel should have written but
// did not show up; every call checks that it gave back all it allocated. Each allocation sits
// between guard bytes the runtime checks after every launch (and here when it is freed), so a
// kernel writing past it fails in the plain build too, naming the allocation. Exceptions (from the
// emulator or an allocation) never cross into ctypes: the call returns -1 and
// sfemu_last_error() says what happened.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <new>
#include <string>
#include <vector>

#include "cuda/host.h"  // csrc/ is on the include path (build.py, test_cuda_compile.py)

// The emulator's guard registry (include/sfemu.h), declared here rather than included so that
// this file also compiles against the real CUDA headers (tests/test_cuda_compile.py).
extern "C" void sfemu_guard_add(void* p, unsigned long long bytes, unsigned long long guard, const char* name);
extern "C" const char* sfemu_guard_remove(void* p);

namespace {

using sparseforce::cuda::host::Device;
using sparseforce::cuda::host::DropGrowInput;
using sparseforce::cuda::host::Input;
using sparseforce::cuda::host::Result;
using sparseforce::cuda::host::SegInput;
using sparseforce::cuda::host::SgdHyper;
using sparseforce::cuda::host::SgdInput;

constexpr std::align_val_t kAlign{256};  // cudaMalloc's alignment
constexpr size_t kGuard = 256;            // guard bytes each side; a multiple of kAlign keeps it

uint64_t initial_seed() {
  const char* s = std::getenv("SFEMU_GARBAGE_SEED");
  return s != nullptr && *s != '\0' ? std::strtoull(s, nullptr, 0) : 0xa5a5a5a5a5a5a5a5ull;
}

uint64_t g_seed = initial_seed();
uint64_t g_fills = 0;  // every fill draws a fresh stream of the seeded generator
thread_local std::string g_error;

uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

void fill_garbage(void* p, size_t bytes) {
  uint64_t state = g_seed ^ (0x632be59bd9b4e019ull * ++g_fills);
  auto* b = static_cast<unsigned char*>(p);
  for (size_t i = 0; i < bytes; i += 8) {
    const uint64_t r = splitmix64(state);
    const size_t m = bytes - i < 8 ? bytes - i : 8;
    std::memcpy(b + i, &r, m);
  }
}

class EmuDevice final : public Device {
 public:
  // Exactly the bytes asked for (no rounding up to cudaMalloc's granule) between guards, so a
  // kernel writing one byte past its workspace is caught (reads too, in the AddressSanitizer
  // build, which poisons the guards).
  void* alloc(size_t bytes) override {
    char* p = static_cast<char*>(::operator new(bytes + 2 * kGuard, kAlign)) + kGuard;
    fill_garbage(p, bytes);
    ++live_;
    const std::string name = "device allocation #" + std::to_string(++count_) + " of this call (cudaMalloc)";
    sfemu_guard_add(p, bytes, kGuard, name.c_str());
    return p;
  }
  void free(void* p) override {
    const std::string report = sfemu_guard_remove(p);
    if (!report.empty() && corrupt_.empty()) corrupt_ = "out-of-bounds write to device memory: " + report;
    ::operator delete(static_cast<char*>(p) - kGuard, kAlign);
    --live_;
  }
  void upload(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void download(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  int num_sms() override {
    const char* s = std::getenv("SFEMU_SMS");
    const long v = s != nullptr && *s != '\0' ? std::strtol(s, nullptr, 10) : 4;
    return v >= 1 ? static_cast<int>(v) : 1;
  }
  cudaStream_t stream() override { return nullptr; }
  long live() const { return live_; }
  const std::string& corrupt() const { return corrupt_; }

 private:
  long live_ = 0;
  long count_ = 0;
  std::string corrupt_;  // a guard found changed when its allocation was freed
};

std::vector<Input> inputs_of(int32_t count, const void* const* a, const void* const* b, const uint8_t* const* prev,
                             uint8_t* const* out, const int64_t* n, const int32_t* dtype) {
  std::vector<Input> v;
  for (int32_t i = 0; i < count; ++i) {
    v.push_back(Input{a[i], b != nullptr ? b[i] : nullptr, prev != nullptr ? prev[i] : nullptr,
                      out != nullptr ? out[i] : nullptr, n[i], dtype[i], i});
  }
  return v;
}

// Runs f(device) -> Result into *res; -1 (and sfemu_last_error) on an exception or a leak.
template <class F>
int32_t guarded(Result* res, F&& f) {
  g_error.clear();
  try {
    EmuDevice dev;
    *res = f(dev);
    if (dev.live() != 0) {
      g_error = "sfemu: the call left " + std::to_string(dev.live()) + " device allocation(s) unfreed";
      return -1;
    }
    if (!dev.corrupt().empty()) {
      g_error = "sfemu: " + dev.corrupt();
      return -1;
    }
    return res->status;
  } catch (const std::exception& e) {
    g_error = std::string("sfemu: ") + e.what();
  } catch (...) {
    g_error = "sfemu: unknown exception";
  }
  return -1;
}

}  // namespace

extern "C" {

const char* sfemu_last_error() { return g_error.c_str(); }

void sfemu_set_garbage_seed(uint64_t seed) {
  g_seed = seed;
  g_fills = 0;
}

// The same garbage as fresh device memory, for outputs the caller allocates.
void sfemu_fill_garbage(void* p, uint64_t bytes) { fill_garbage(p, static_cast<size_t>(bytes)); }

int32_t sfemu_result_size() { return static_cast<int32_t>(sizeof(Result)); }

// topk_masks / kth_largest / saliency_topk_masks over `count` inputs (arrays of that length; b,
// prev, out may be null arrays). Returns the Status (host.h), filled into *res too.
int32_t sfemu_select(int32_t count, const void* const* a, const void* const* b, const uint8_t* const* prev,
                     uint8_t* const* out, const int64_t* n, const int32_t* dtype, int64_t k, int32_t rank_dtype,
                     int32_t saliency, int32_t write_masks, void* value_out, Result* res) {
  return guarded(res, [&](Device& dev) {
    return sparseforce::cuda::host::select(dev, inputs_of(count, a, b, prev, out, n, dtype), k, rank_dtype,
                                           saliency != 0, write_masks != 0, value_out);
  });
}

// One radix_histogram pass; out: int64[65536 + 1] (host memory is device memory here).
int32_t sfemu_radix_histogram(int32_t count, const void* const* a, const void* const* b, const uint8_t* const* prev,
                              const int64_t* n, const int32_t* dtype, int32_t rank_dtype, int32_t saliency,
                              int32_t shift, uint64_t prefix, int64_t* out, Result* res) {
  return guarded(res, [&](Device& dev) {
    return sparseforce::cuda::host::radix_histogram(dev, inputs_of(count, a, b, prev, nullptr, n, dtype), rank_dtype,
                                                    saliency != 0, shift, prefix, out);
  });
}

// segmented_topk_masks / segmented_saliency_topk_masks over `count` inputs: input i has rows[i]
// segments, keeping ks[i][r] each (ks null, or ks[i] null: k_all[i]). nan_out: int64 scalar.
int32_t sfemu_segmented(int32_t count, const void* const* a, const void* const* b, const uint8_t* const* prev,
                        uint8_t* const* out, const int64_t* const* ks, const int64_t* k_all, const int64_t* n,
                        const int64_t* rows, const int32_t* dtype, int32_t saliency, int64_t* nan_out, Result* res) {
  return guarded(res, [&](Device& dev) {
    std::vector<SegInput> v;
    for (int32_t i = 0; i < count; ++i) {
      v.push_back(SegInput{a[i], b != nullptr ? b[i] : nullptr, prev != nullptr ? prev[i] : nullptr, out[i],
                           ks != nullptr ? ks[i] : nullptr, k_all[i], n[i], rows[i], dtype[i], i});
    }
    return sparseforce::cuda::host::segmented_select(dev, v, saliency != 0, nan_out);
  });
}

// drop_grow_masks over `count` tensors; keeps, grows: int64[S] (S == count, or S == 1 and
// global); nan_out: int64 scalar.
int32_t sfemu_drop_grow(int32_t count, const void* const* w, const void* const* s, const uint8_t* const* mask,
                        uint8_t* const* out, const int64_t* n, const int32_t* w_dtype, const int32_t* s_dtype,
                        const int64_t* keeps, const int64_t* grows, int32_t global, int64_t* nan_out, Result* res) {
  return guarded(res, [&](Device& dev) {
    std::vector<DropGrowInput> v;
    for (int32_t i = 0; i < count; ++i) v.push_back(DropGrowInput{w[i], s[i], mask[i], out[i], n[i], w_dtype[i], s_dtype[i], i});
    return sparseforce::cuda::host::drop_grow(dev, v, keeps, grows, global != 0, nan_out);
  });
}

int32_t sfemu_masked_sgd(int32_t count, void* const* p, const void* const* g, void* const* buf,
                         const uint8_t* const* mask, const int64_t* n, const int32_t* dtype, const int32_t* fresh,
                         double lr, double momentum, double dampening, double weight_decay, int32_t nesterov,
                         Result* res) {
  return guarded(res, [&](Device& dev) {
    std::vector<SgdInput> v;
    for (int32_t i = 0; i < count; ++i) {
      v.push_back(SgdInput{p[i], g[i], buf != nullptr ? buf[i] : nullptr, mask != nullptr ? mask[i] : nullptr, n[i],
                           dtype[i], fresh != nullptr ? fresh[i] : 0});
    }
    return sparseforce::cuda::host::masked_sgd(dev, v, SgdHyper{lr, momentum, dampening, weight_decay, nesterov != 0});
  });
}

}  // extern "C"
