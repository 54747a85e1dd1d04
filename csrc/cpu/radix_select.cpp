// The CPU radix select behind topk_masks, saliency_topk_masks (FORCE / Iter SNIP), kth_largest,
// radix_histogram and drop_grow_masks' global segment, over a list of inputs that is never
// concatenated (radix_select.h; the torch layer is ops_cpu.cpp; the key sources and the passes
// are radix_passes.h's).
//
// Radix select on order-preserving integer keys (float_keys.h), 16-bit digits:
//   pass 1      every chunk of the global index space histograms the top digit of every key
//               (fp16/bf16 keys are then fully known) and notes NaNs;
//   then        the bins are summed and scanned from the top for the bin holding the k-th key;
//   next passes when that bin holds more elements than the candidate cap, histogram the next
//               digit of the keys in it (prefix filter), until the key is known or the bin is
//               small;
//   mask pass   writes key > prefix as kept and, when the bin was small, records its elements
//               (mask address + key, in global order) as candidates, which are then resolved
//               exactly in memory; when the key is fully known instead, ties are kept by a
//               per-chunk quota from the last histogram (a prefix sum of the per-chunk counts of
//               the k-th key), so the lowest global positions win without a serial pass.
// A chunk is one contiguous range of global positions (tensor order, then row-major of the
// logical tensor: non-contiguous inputs are made contiguous first), processed by one thread, so
// per-chunk counts in chunk order are counts in global order. Extra memory: one 2^16-bin
// histogram per chunk plus the candidates (bounded by the cap; above it the radix passes go on).
// Indices and counts are 64-bit; the per-chunk histograms are 32-bit because a chunk never
// exceeds 2^31 elements.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <cstdint>
#include <functional>
#include <type_traits>
#include <vector>

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include "../common/env.h"
#include "float_keys.h"
#include "radix_passes.h"
#include "radix_select.h"

namespace sparseforce {
namespace cpu {
namespace {

// The k-th largest key over `segs` (n elements in all) and, when write_masks, the masks keeping
// exactly the k largest. Returns early with nan_index set, or with competing < k (the caller
// reports both).
template <typename P, typename Policy>
Result radix_select(const std::vector<Operand>& segs, int64_t n, int64_t k, bool write_masks) {
  using Key = key_t<P>;
  constexpr int kKeyBits = static_cast<int>(sizeof(Key) * 8);
  Result res;
  if (n == 0) return res;

  const int64_t chunks = num_chunks(n);
  std::vector<int64_t> bounds(chunks + 1);
  for (int64_t c = 0; c <= chunks; ++c) bounds[c] = (n / chunks) * c + std::min(c, n % chunks);
  std::vector<int64_t> seg_start(segs.size());
  for (size_t j = 0; j < segs.size(); ++j) seg_start[j] = segs[j].offset;

  // f(seg, lo, hi) for every piece of a segment inside chunk c, in global order.
  auto for_each_piece = [&](int64_t c, auto&& f) {
    const int64_t lo = bounds[c], hi = bounds[c + 1];
    if (lo >= hi) return;
    size_t j = static_cast<size_t>(std::upper_bound(seg_start.begin(), seg_start.end(), lo) - seg_start.begin()) - 1;
    for (; j < segs.size() && segs[j].offset < hi; ++j) {
      const Operand& s = segs[j];
      const int64_t a = std::max(lo, s.offset) - s.offset;
      const int64_t b = std::min(hi, s.offset + s.n) - s.offset;
      if (a < b) f(s, a, b);
    }
  };
  // The chunks are handed out one at a time, so a thread slowed down (a core shared with other
  // work) takes fewer of them. Each chunk has its own histogram and counts, whichever thread ran
  // it: the result does not depend on the scheduling.
  const int64_t workers = std::min<int64_t>(chunks, at::get_num_threads());
  auto for_each_chunk = [&](auto&& work) {
    std::atomic<int64_t> next{0};
    at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
      for (int64_t c = next.fetch_add(1); c < chunks; c = next.fetch_add(1)) work(c);
    });
  };

  std::vector<uint32_t> hist(static_cast<size_t>(chunks * kBins));
  std::vector<int64_t> total(kBins);
  std::vector<int64_t> nan_at(chunks, -1);

  auto sum_histograms = [&]() {
    at::parallel_for(0, kBins, 4096, [&](int64_t b, int64_t e) {
      for (int64_t bin = b; bin < e; ++bin) {
        int64_t t = 0;
        for (int64_t c = 0; c < chunks; ++c) t += hist[c * kBins + bin];
        total[bin] = t;
      }
    });
  };

  int shift = kKeyBits - kDigit;
  int64_t start_bin = kBins - 1, start_above = 0;  // where the first scan starts
  // The top pass: over the whole key range, or over the band [band_lo, band_hi] of top digits
  // that a sample puts the k-th key in (then the first scan starts at the band's top, with the
  // keys above it counted).
  auto top_pass = [&](int64_t band_lo, int64_t band_hi) {
    const bool whole = band_lo == 0 && band_hi == kBins - 1;
    const Key lo = static_cast<Key>(static_cast<Key>(band_lo) << shift);
    const Key width = static_cast<Key>((static_cast<Key>(band_hi - band_lo) << shift) | ((Key(1) << shift) - 1));
    std::vector<int64_t> above(chunks, 0), live(chunks, 0);
    for_each_chunk([&](int64_t c) {
      uint32_t* h = hist.data() + c * kBins;
      std::fill(h, h + kBins, 0u);
      nan_at[c] = -1;
      for_each_piece(c, [&](const Operand& s, int64_t a, int64_t b) {
        Policy::visit(s, [&](const auto& src) {
          const bool bad = whole ? pass_histogram_top(src, a, b, shift, h)
                                 : pass_histogram_band(src, a, b, shift, lo, width, h, above[c], live[c]);
          if (bad && nan_at[c] < 0) nan_at[c] = s.index;
        });
      });
    });
    res.nan_index = -1;
    for (int64_t c = 0; c < chunks; ++c) {
      if (nan_at[c] >= 0 && (res.nan_index < 0 || nan_at[c] < res.nan_index)) res.nan_index = nan_at[c];
    }
    if (res.nan_index >= 0) return;
    sum_histograms();
    start_bin = band_hi;
    start_above = 0;
    res.competing = 0;
    if (whole) {
      for (int64_t bin = 0; bin < kBins; ++bin) res.competing += total[bin];
    } else {
      for (int64_t c = 0; c < chunks; ++c) {
        start_above += above[c];
        res.competing += live[c];
      }
    }
  };
  int64_t lo_bin = 0, hi_bin = kBins - 1;
  if (k >= 1) sample_band<P, Policy>(segs, n, k, shift, sample_size(), lo_bin, hi_bin, hist.data());
  const bool banded = lo_bin != 0 || hi_bin != kBins - 1;
  top_pass(lo_bin, hi_bin);
  if (res.nan_index >= 0) return res;
  if (k > res.competing) return res;

  if (write_masks && (k == 0 || k == res.competing)) {
    for_each_chunk([&](int64_t c) {
      for_each_piece(c, [&](const Operand& s, int64_t a, int64_t b) {
        if (k == 0) {
          std::fill(s.out + a, s.out + b, uint8_t(0));
        } else if (s.competing != nullptr) {
          if (s.out != s.competing) std::copy(s.competing + a, s.competing + b, s.out + a);  // in place: already so
        } else {
          std::fill(s.out + a, s.out + b, uint8_t(1));
        }
      });
    });
    return res;
  }
  TORCH_INTERNAL_ASSERT(k >= 1);

  if (banded) {
    // The sample was off: the k-th key lies outside the band. Histogram the whole range.
    int64_t in_band = 0;
    for (int64_t bin = lo_bin; bin <= hi_bin; ++bin) in_band += total[bin];
    if (start_above >= k || start_above + in_band < k) {
      top_pass(0, kBins - 1);
      TORCH_INTERNAL_ASSERT(res.nan_index < 0, "sparseforce: a NaN the band pass missed");
    }
  }

  const int64_t cap = candidate_cap(n);
  uint64_t prefix = 0;  // the known high bits of the k-th key
  int64_t need = k;     // its rank among the keys sharing those bits
  while (true) {
    int64_t bin = start_bin, above = start_above;
    start_bin = kBins - 1;
    start_above = 0;
    for (; bin > 0; --bin) {
      if (above + total[bin] >= need) break;
      above += total[bin];
    }
    need -= above;
    prefix = (prefix << kDigit) | static_cast<uint64_t>(bin);
    const int64_t bucket = total[bin];

    if (shift == 0) {
      // The k-th key is known: keep everything above it and the first `need` equal to it, split
      // into per-chunk quotas by the chunks' counts of it (in global order).
      const Key kth = static_cast<Key>(prefix);
      res.key = kth;
      if (!write_masks) return res;
      std::vector<int64_t> quota(chunks);
      int64_t before = 0;
      for (int64_t c = 0; c < chunks; ++c) {
        const int64_t ties = hist[c * kBins + bin];
        quota[c] = std::clamp<int64_t>(need - before, 0, ties);
        before += ties;
      }
      for_each_chunk([&](int64_t c) {
        int64_t q = quota[c];
        for_each_piece(c, [&](const Operand& s, int64_t a, int64_t b) {
          Policy::visit(s, [&](const auto& src) { pass_mask_exact(src, a, b, kth, s.out, q); });
        });
      });
      return res;
    }

    if (bucket <= cap) {
      // Few keys share the prefix: gather them (in global order) and finish in memory.
      std::vector<int64_t> off(chunks + 1, 0);
      for (int64_t c = 0; c < chunks; ++c) off[c + 1] = off[c] + hist[c * kBins + bin];
      const Key high = static_cast<Key>(prefix);
      std::vector<Key> keys(static_cast<size_t>(bucket));
      std::vector<uint8_t*> dst(write_masks ? static_cast<size_t>(bucket) : 0);
      for_each_chunk([&](int64_t c) {
        int64_t m = off[c];
        for_each_piece(c, [&](const Operand& s, int64_t a, int64_t b) {
          Policy::visit(s, [&](const auto& src) {
            m = write_masks ? pass_mask_candidates(src, a, b, shift, high, s.out, keys.data(), dst.data(), m)
                            : pass_collect(src, a, b, shift, high, keys.data(), m);
          });
        });
        TORCH_INTERNAL_ASSERT(m == off[c + 1], "sparseforce: candidate count changed between passes");
      });
      res.key = keep_candidates(keys.data(), write_masks ? dst.data() : nullptr, bucket, need);
      return res;
    }

    shift -= kDigit;
    const Key known = static_cast<Key>(prefix);
    for_each_chunk([&](int64_t c) {
      uint32_t* h = hist.data() + c * kBins;
      std::fill(h, h + kBins, 0u);
      for_each_piece(c, [&](const Operand& s, int64_t a, int64_t b) {
        Policy::visit(s, [&](const auto& src) { pass_histogram(src, a, b, shift, known, h); });
      });
    });
    sum_histograms();
  }
}

// ---- radix_histogram: one pass of a selection whose other passes run elsewhere (the ranks of a
// distributed selection sum these histograms with all_reduce)

// Counts of the 16-bit digit at `shift` of the competing keys (ranking dtype P) whose bits above
// it equal `prefix`, and the first tensor holding a competing NaN (top pass only).
template <typename P, typename Policy>
DigitCounts histogram_pass(const std::vector<Operand>& segs, int shift, uint64_t prefix) {
  using Key = key_t<P>;
  constexpr int kKeyBits = static_cast<int>(sizeof(Key) * 8);
  const bool top = shift == kKeyBits - kDigit;
  // One histogram per segment keeps the parallel loop free of shared writes; segments are
  // split no further, which is fine for the per-layer tensors this serves.
  std::vector<uint32_t> hist(segs.size() * kBins, 0u);
  std::vector<uint8_t> nan(segs.size(), 0);
  at::parallel_for(0, static_cast<int64_t>(segs.size()), 1, [&](int64_t b, int64_t e) {
    for (int64_t j = b; j < e; ++j) {
      const Operand& s = segs[j];
      uint32_t* h = hist.data() + j * kBins;
      Policy::visit(s, [&](const auto& src) {
        if (top) {
          nan[j] = pass_histogram_top(src, 0, s.n, shift, h);
        } else {
          pass_histogram(src, 0, s.n, shift, static_cast<Key>(prefix), h);
        }
      });
    }
  });
  std::vector<int64_t> total(kBins, 0);
  int64_t nan_index = -1;
  for (size_t j = 0; j < segs.size(); ++j) {
    const uint32_t* h = hist.data() + j * kBins;
    for (int64_t bin = 0; bin < kBins; ++bin) total[bin] += h[bin];
    if (nan[j] && nan_index < 0) nan_index = segs[j].index;
  }
  return {std::move(total), nan_index};
}

}  // namespace

Result select_scores(const std::vector<Operand>& inputs, int64_t n, int64_t k, at::ScalarType rank,
                     bool write_masks) {
  Result res;
  dispatch_float(rank, [&](auto tag) {
    using P = decltype(tag);
    res = radix_select<P, KeySource<P, false>>(inputs, n, k, write_masks);
  });
  return res;
}

Result select_saliency(const std::vector<Operand>& inputs, int64_t n, int64_t k, bool wide) {
  return wide ? radix_select<double, KeySource<double, true>>(inputs, n, k, true)
              : radix_select<float, KeySource<float, true>>(inputs, n, k, true);
}

Result select_magnitude(const std::vector<Operand>& inputs, int64_t n, int64_t k, at::ScalarType rank) {
  Result res;
  dispatch_float(rank, [&](auto tag) {
    using P = decltype(tag);
    res = radix_select<P, KeySource<P, false, true>>(inputs, n, k, true);
  });
  return res;
}

void store_value(uint64_t key, at::ScalarType rank, void* dst) {
  dispatch_float(rank, [&](auto tag) {
    using Key = key_t<decltype(tag)>;
    const Key bits = unorder_bits(static_cast<Key>(key));
    std::memcpy(dst, &bits, sizeof bits);
  });
}

DigitCounts digit_histogram(const std::vector<Operand>& inputs, at::ScalarType rank, bool saliency, int shift,
                            uint64_t prefix) {
  DigitCounts res;
  dispatch_float(rank, [&](auto tag) {
    using P = decltype(tag);
    if constexpr (std::is_same_v<P, float> || std::is_same_v<P, double>) {
      if (saliency) {
        res = histogram_pass<P, KeySource<P, true>>(inputs, shift, prefix);
        return;
      }
    }
    TORCH_INTERNAL_ASSERT(!saliency, "sparseforce: saliencies rank as float32 or float64, not ", rank);
    res = histogram_pass<P, KeySource<P, false>>(inputs, shift, prefix);
  });
  return res;
}

}  // namespace cpu
}  // namespace sparseforce
