// The building blocks of the CPU radix selects (radix_select.cpp: one selection over a list of
// inputs; segmented_select.cpp: many independent selections at once): the key sources of an
// input (its scores, or |a*b|, ranked as P; only the competing elements when it has a mask) and
// the passes over one piece [a, b) of an input: digit histograms and the mask passes.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <type_traits>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include "../common/env.h"
#include "../common/operand.h"
#include "float_keys.h"
#include "radix_select.h"

namespace sparseforce {
namespace cpu {

constexpr int64_t kMaxChunk = int64_t(1) << 31;
// Below this many elements per chunk, zeroing and summing a 256 KiB histogram costs more than
// the extra thread saves.
constexpr int64_t kMinChunk = int64_t(1) << 16;
constexpr int64_t kChunksPerThread = 4;

// Tuning/testing knobs, read per call: SPARSEFORCE_CPU_CHUNKS forces the number of chunks,
// SPARSEFORCE_CPU_CANDIDATE_CAP the largest bin resolved from a candidate list (0: always run
// the radix passes to the full key).
inline int64_t num_chunks(int64_t n) {
  const int64_t needed = (n + kMaxChunk - 1) / kMaxChunk;
  int64_t p = env_int("SPARSEFORCE_CPU_CHUNKS", 0);
  if (p <= 0) {
    // A few chunks per thread (handed out dynamically) balance the load when a core is busy.
    const int64_t threads = at::get_num_threads();
    p = std::min<int64_t>(threads == 1 ? 1 : kChunksPerThread * threads, (n + kMinChunk - 1) / kMinChunk);
  }
  return std::max<int64_t>({p, needed, int64_t(1)});
}

inline int64_t candidate_cap(int64_t n) {
  // Candidates cost 16 bytes each: n/16 of them cost as much memory as the masks.
  const int64_t dflt = std::min<int64_t>(int64_t(1) << 24, std::max<int64_t>(int64_t(1) << 16, n / 16));
  return env_int("SPARSEFORCE_CPU_CANDIDATE_CAP", dflt);
}

// ---- key sources: the keys (ranking dtype P) of a block of one segment's elements

constexpr int64_t kBlock = 256;  // keys computed per block, in a buffer that stays in L1

// The keys of the values x, or of |x| when Magnitude (drop_grow_masks: drop by |w|, grow by
// |score|), x widened to P. kNanAll: a NaN counts in every element, competing or not
// (drop_grow_masks reports any NaN of its inputs); otherwise only in the competing ones.
template <typename P, typename In, bool Prev, bool Magnitude = false>
struct ScoreSrc {
  using Key = key_t<P>;
  using Rank = P;
  static constexpr bool kPrev = Prev;
  static constexpr bool kNanAll = Magnitude;
  const In* x;
  const uint8_t* prev;
  void keys(int64_t i0, int64_t m, Key* __restrict out) const {
    const In* __restrict v = x + i0;
    for (int64_t j = 0; j < m; ++j) {
      P p;
      if constexpr (std::is_same_v<P, In>) {
        p = v[j];
      } else {
        p = static_cast<P>(widen(v[j]));  // exact: P holds every In value
      }
      if constexpr (Magnitude) {
        out[j] = magnitude_key(p);
      } else {
        out[j] = float_key(p);
      }
    }
  }
};

template <typename P, typename In, bool Prev>
using MagnitudeSrc = ScoreSrc<P, In, Prev, true>;

template <typename P, typename W, bool Prev>
struct SaliencySrc {
  using Key = key_t<P>;
  using Rank = P;
  // As the reference: |w*g| in float32, float64 when the inputs are float64, then promoted.
  using C = std::conditional_t<std::is_same_v<W, double>, double, float>;
  static constexpr bool kPrev = Prev;
  static constexpr bool kNanAll = false;
  const W* w;
  const W* g;
  const uint8_t* prev;
  void keys(int64_t i0, int64_t m, Key* __restrict out) const {
    const W* __restrict a = w + i0;
    const W* __restrict b = g + i0;
    for (int64_t j = 0; j < m; ++j) {
      const C s = std::abs(static_cast<C>(widen(a[j])) * static_cast<C>(widen(b[j])));
      out[j] = float_key(static_cast<P>(s));
    }
  }
};

template <typename P, typename In>
constexpr bool promotes_exactly() {
  return std::is_same_v<P, In> || std::is_same_v<P, double> ||
         (std::is_same_v<P, float> && !std::is_same_v<In, double>);
}

template <typename F>
void dispatch_float(at::ScalarType t, F&& f) {
  switch (t) {
    case at::kHalf: f(c10::Half{}); return;
    case at::kBFloat16: f(c10::BFloat16{}); return;
    case at::kFloat: f(float{}); return;
    case at::kDouble: f(double{}); return;
    default: TORCH_INTERNAL_ASSERT(false, "sparseforce: unexpected dtype ", t);
  }
}

// The key source of one input: its scores (Saliency false; their magnitudes when Magnitude) or
// |a*b|, ranked as P; those of the competing elements only when it has a competing mask.
template <typename P, bool Saliency, bool Magnitude = false>
struct KeySource {
  template <typename F>
  static void visit(const Operand& s, F&& f) {
    dispatch_float(s.type, [&](auto tag) {
      using In = decltype(tag);
      if constexpr (promotes_exactly<P, In>()) {
        const In* a = static_cast<const In*>(s.a);
        auto with = [&](auto live) {
          constexpr bool Prev = decltype(live)::value;
          if constexpr (Saliency) {
            f(SaliencySrc<P, In, Prev>{a, static_cast<const In*>(s.b), s.competing});
          } else {
            f(ScoreSrc<P, In, Prev, Magnitude>{a, s.competing});
          }
        };
        if (s.competing != nullptr) {
          with(std::true_type{});
        } else {
          with(std::false_type{});
        }
      }
    });
  }
};

// ---- fp32 sources read four values at a time (SSE2, part of every x86-64 CPU): the band pass
// and the mask passes then compare keys in registers and turn the compares into bit masks
// (movemask), where the portable loops would store, reload and pack them. Each fp32 value comes
// out exactly as Src::keys forms it: the same float ops (w*g, then |.|), then the same key.

template <typename Src>
struct F32 {
  static constexpr bool ok = false;
};

#if defined(__SSE2__) && defined(__GNUC__)
template <bool Prev>
struct F32<ScoreSrc<float, float, Prev>> {
  static constexpr bool ok = true;
  static __m128 load(const ScoreSrc<float, float, Prev>& s, int64_t i) { return _mm_loadu_ps(s.x + i); }
  static float at(const ScoreSrc<float, float, Prev>& s, int64_t i) { return s.x[i]; }
};

template <bool Prev>
struct F32<SaliencySrc<float, float, Prev>> {
  static constexpr bool ok = true;
  static __m128 load(const SaliencySrc<float, float, Prev>& s, int64_t i) {
    const __m128 prod = _mm_mul_ps(_mm_loadu_ps(s.w + i), _mm_loadu_ps(s.g + i));
    return _mm_andnot_ps(_mm_set1_ps(-0.0f), prod);  // |w*g|: clear the sign bit, as std::abs
  }
  static float at(const SaliencySrc<float, float, Prev>& s, int64_t i) { return std::abs(s.w[i] * s.g[i]); }
};

template <bool Prev>
struct F32<MagnitudeSrc<float, float, Prev>> {
  static constexpr bool ok = true;
  static __m128 load(const MagnitudeSrc<float, float, Prev>& s, int64_t i) {
    return _mm_andnot_ps(_mm_set1_ps(-0.0f), _mm_loadu_ps(s.x + i));
  }
  static float at(const MagnitudeSrc<float, float, Prev>& s, int64_t i) { return std::abs(s.x[i]); }
};

// The keys of four floats as signed integers (key ^ 0x80000000, so SSE2's signed compares order
// them as the keys): v + 0 (as float_key: -0 becomes +0), then the positive bit patterns as they
// are and the negative ones with all but the sign bit flipped.
inline __m128i signed_keys(__m128 v) {
  const __m128i b = _mm_castps_si128(_mm_add_ps(v, _mm_setzero_ps()));
  return _mm_xor_si128(b, _mm_srli_epi32(_mm_srai_epi32(b, 31), 1));
}

inline int32_t signed_key(uint32_t key) { return static_cast<int32_t>(key ^ 0x80000000u); }

// Keys outside [lo, lo + width] are those whose signed key minus lo (wrapping) exceeds
// width ^ 0x80000000, signed: one subtract and one compare. (sk - lo = (key - lo) ^ 0x80000000.)
struct Range {
  __m128i lo, top;
  Range(uint32_t lo_key, uint32_t width)
      : lo(_mm_set1_epi32(static_cast<int32_t>(lo_key))), top(_mm_set1_epi32(signed_key(width))) {}
  __m128i outside(__m128i sk) const { return _mm_cmpgt_epi32(_mm_sub_epi32(sk, lo), top); }
};

// 16 compares (four groups of four lanes, -1 or 0) as 16 bits / as 16 bytes of 0 or 1.
inline unsigned bits16(__m128i c0, __m128i c1, __m128i c2, __m128i c3) {
  return static_cast<unsigned>(_mm_movemask_epi8(_mm_packs_epi16(_mm_packs_epi32(c0, c1), _mm_packs_epi32(c2, c3))));
}
inline __m128i bytes16(__m128i c0, __m128i c1, __m128i c2, __m128i c3) {
  return _mm_and_si128(_mm_packs_epi16(_mm_packs_epi32(c0, c1), _mm_packs_epi32(c2, c3)), _mm_set1_epi8(1));
}

// The prev bytes of 16 elements that are zero (pruned), 0xff each.
inline __m128i dead16(const uint8_t* p) {
  return _mm_cmpeq_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)), _mm_setzero_si128());
}

inline int popcount16(unsigned x) {
  x = x - ((x >> 1) & 0x5555u);
  x = (x & 0x3333u) + ((x >> 2) & 0x3333u);
  x = (x + (x >> 4)) & 0x0f0fu;
  return static_cast<int>((x + (x >> 8)) & 0x1fu);
}

// pass_histogram_band for fp32 sources, 16 elements per step.
template <typename Src>
bool band_f32(const Src& src, int64_t a, int64_t b, int shift, uint32_t lo, uint32_t width,
              uint32_t* __restrict h, int64_t& above, int64_t& live) {
  using L = F32<Src>;
  const uint32_t hi = lo + width;
  const Range band(lo, width);
  const __m128i vhi = _mm_set1_epi32(signed_key(hi));
  int64_t up = 0, lv = 0;
  unsigned bad = 0;
  int64_t i = a;
  __m128i up_acc = _mm_setzero_si128();  // lanes count down (a true compare is -1): 4 per 16 elements
  __m128 nan_acc = _mm_setzero_ps();
  uint32_t sink = 0;
  for (; i + 16 <= b; i += 16) {
    __m128i gt[4], off[4];
    __m128 nan[4];
    for (int q = 0; q < 4; ++q) {
      const __m128 v = L::load(src, i + 4 * q);
      const __m128i sk = signed_keys(v);
      gt[q] = _mm_cmpgt_epi32(sk, vhi);
      off[q] = band.outside(sk);
      nan[q] = _mm_cmpunord_ps(v, v);
    }
    unsigned in = ~bits16(off[0], off[1], off[2], off[3]) & 0xffffu;
    if constexpr (Src::kPrev) {
      const unsigned l = ~static_cast<unsigned>(_mm_movemask_epi8(dead16(src.prev + i))) & 0xffffu;
      in &= l;
      bad |= (Src::kNanAll ? 0xffffu : l) & bits16(_mm_castps_si128(nan[0]), _mm_castps_si128(nan[1]),
                                                   _mm_castps_si128(nan[2]), _mm_castps_si128(nan[3]));
      up += popcount16(l & bits16(gt[0], gt[1], gt[2], gt[3]));
      lv += popcount16(l);
    } else {
      nan_acc = _mm_or_ps(_mm_or_ps(nan_acc, _mm_or_ps(nan[0], nan[1])), _mm_or_ps(nan[2], nan[3]));
      up_acc = _mm_add_epi32(up_acc, _mm_add_epi32(_mm_add_epi32(gt[0], gt[1]), _mm_add_epi32(gt[2], gt[3])));
    }
    // The first key in the band without a branch (a step without one counts into `sink`): the
    // band holds a few percent of the keys, so a branch per step would mispredict often, while
    // two in one step are rare.
    const int t = __builtin_ctz(in | 0x8000u);
    uint32_t* const slot = in != 0 ? &h[float_key(L::at(src, i + t)) >> shift] : &sink;
    ++*slot;
    for (in &= in - 1; in != 0; in &= in - 1) ++h[float_key(L::at(src, i + __builtin_ctz(in))) >> shift];
  }
  if constexpr (!Src::kPrev) {
    alignas(16) int32_t lanes[4];
    _mm_store_si128(reinterpret_cast<__m128i*>(lanes), up_acc);
    up -= int64_t(lanes[0]) + lanes[1] + lanes[2] + lanes[3];
    bad |= static_cast<unsigned>(_mm_movemask_ps(nan_acc));
    lv += i - a;
  }
  for (; i < b; ++i) {
    const float v = L::at(src, i);
    const bool l = !Src::kPrev || src.prev[i];
    bad |= unsigned(v != v) & unsigned(l || Src::kNanAll);
    if (!l) continue;
    const uint32_t key = float_key(v);
    up += key > hi;
    if (static_cast<uint32_t>(key - lo) <= width) ++h[key >> shift];
    ++lv;
  }
  above += up;
  live += lv;
  return bad != 0;
}

// A 16-element step of the fp32 mask passes: stores the mask bytes of elements i..i+15 (kept:
// key above `above`) and returns the bits of the elements whose keys `pick` selects (the pass
// looks at them further), both without the pruned elements. The prev bytes are read before the
// mask bytes are written.
template <typename Src, typename Pick>
inline unsigned mask_step16(const Src& src, int64_t i, __m128i above, Pick&& pick, uint8_t* out) {
  __m128i gt[4], sel[4];
  for (int q = 0; q < 4; ++q) {
    const __m128i sk = signed_keys(F32<Src>::load(src, i + 4 * q));
    gt[q] = _mm_cmpgt_epi32(sk, above);
    sel[q] = pick(sk);
  }
  __m128i o = bytes16(gt[0], gt[1], gt[2], gt[3]);
  unsigned picked = bits16(sel[0], sel[1], sel[2], sel[3]);
  if constexpr (Src::kPrev) {
    const __m128i dead = dead16(src.prev + i);
    o = _mm_andnot_si128(dead, o);
    picked &= ~static_cast<unsigned>(_mm_movemask_epi8(dead));
  }
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), o);
  return picked;
}

// pass_mask_candidates for fp32 sources: keys in [blo, blo + bw] (the k-th key's bin) are the
// candidates. Each step reads its 16 prev bytes before it writes the same 16 mask bytes, and then
// only the copy in a register: `out` may be `prev` (the in-place Iter SNIP update).
template <typename Src>
int64_t mask_candidates_f32(const Src& src, int64_t a, int64_t b, uint32_t blo, uint32_t bw, uint8_t* out,
                            uint32_t* __restrict keys, uint8_t** __restrict dst, int64_t m) {
  using L = F32<Src>;
  const uint32_t bhi = blo + bw;
  const Range bin(blo, bw);
  const __m128i vhi = _mm_set1_epi32(signed_key(bhi));
  const __m128i ones = _mm_set1_epi32(-1);
  int64_t i = a;
  for (; i + 16 <= b; i += 16) {
    unsigned cand = mask_step16(src, i, vhi, [&](__m128i sk) { return _mm_xor_si128(bin.outside(sk), ones); }, out);
    while (cand != 0) {
      const int t = __builtin_ctz(cand);
      keys[m] = float_key(L::at(src, i + t));
      dst[m] = out + i + t;
      ++m;
      cand &= cand - 1;
    }
  }
  for (; i < b; ++i) {
    const bool l = !Src::kPrev || src.prev[i];
    const uint32_t key = float_key(L::at(src, i));
    out[i] = uint8_t(l && key > bhi);
    if (l && static_cast<uint32_t>(key - blo) <= bw) {
      keys[m] = key;
      dst[m] = out + i;
      ++m;
    }
  }
  return m;
}

// pass_mask_exact for fp32 sources (the same in-place care as mask_candidates_f32).
template <typename Src>
void mask_exact_f32(const Src& src, int64_t a, int64_t b, uint32_t kth, uint8_t* out, int64_t& quota) {
  using L = F32<Src>;
  const __m128i vk = _mm_set1_epi32(signed_key(kth));
  int64_t q = quota;
  int64_t i = a;
  for (; i + 16 <= b; i += 16) {
    unsigned ties = mask_step16(src, i, vk, [&](__m128i sk) { return _mm_cmpeq_epi32(sk, vk); }, out);
    for (; ties != 0 && q > 0; ties &= ties - 1) {
      out[i + __builtin_ctz(ties)] = 1;
      --q;
    }
  }
  for (; i < b; ++i) {
    const bool l = !Src::kPrev || src.prev[i];
    const uint32_t key = float_key(L::at(src, i));
    out[i] = uint8_t(l && key > kth);
    if (l && key == kth && q > 0) {
      out[i] = 1;
      --q;
    }
  }
  quota = q;
}
#endif

// ---- the passes over one piece [a, b) of a segment. Loop-invariant values arrive as locals and
// the outputs through restrict pointers: the mask stores are bytes, which may alias anything, and
// would otherwise force reloads that stop the compare loops from vectorising.
//
// The mask passes may write the very bytes they read prev from: `out` is allowed to be
// `competing` (the in-place Iter SNIP update; the op front refuses every other overlap). So they
// copy a block's prev bytes into a local buffer (L1, like the keys) before writing that block, and
// use only the copy afterwards: no block reads prev bytes that another block (or thread: chunks
// are disjoint) writes, and nothing costs a copy of the whole mask.

// First pass: histogram of the top digit; true if a competing key is NaN.
template <typename Src>
bool pass_histogram_top(const Src& src, int64_t a, int64_t b, int shift, uint32_t* __restrict h) {
  using Key = typename Src::Key;
  alignas(64) Key kb[kBlock];
  unsigned bad = 0;
  for (int64_t i0 = a; i0 < b; i0 += kBlock) {
    const int64_t m = std::min(kBlock, b - i0);
    src.keys(i0, m, kb);
    if constexpr (Src::kPrev) {
      const uint8_t* __restrict live = src.prev + i0;
      for (int64_t j = 0; j < m; ++j) {
        bad |= unsigned(Src::kNanAll || live[j] != 0) & unsigned(is_nan_key<typename Src::Rank>(kb[j]));
      }
      // Adding 0 for a pruned weight costs a store but no branch: a random prev mask would
      // mispredict half the time.
      for (int64_t j = 0; j < m; ++j) h[kb[j] >> shift] += uint32_t(live[j] != 0);
    } else {
      for (int64_t j = 0; j < m; ++j) bad |= unsigned(is_nan_key<typename Src::Rank>(kb[j]));
      for (int64_t j = 0; j < m; ++j) ++h[kb[j] >> shift];
    }
  }
  return bad != 0;
}

// First pass restricted to a band of top digits that a sample says holds the k-th largest key:
// keys in [lo, lo + width] are histogrammed (their top digits), those above are only counted
// (`above`), those below only checked for NaN. The compare loops vectorise; only the few keys in
// the band are scattered into the histogram, found eight at a time from their flag bytes, so the
// pass streams its input instead of waiting on a histogram increment per element. `live` counts
// the competing elements.
template <typename Src>
bool pass_histogram_band(const Src& src, int64_t a, int64_t b, int shift, typename Src::Key lo,
                         typename Src::Key width, uint32_t* __restrict h, int64_t& above, int64_t& live) {
  using Key = typename Src::Key;
  using Rank = typename Src::Rank;
#if defined(__SSE2__) && defined(__GNUC__)
  if constexpr (F32<Src>::ok) return band_f32(src, a, b, shift, lo, width, h, above, live);
#endif
  alignas(64) Key kb[kBlock];
  alignas(64) uint8_t fl[kBlock];
  const Key hi = static_cast<Key>(lo + width);
  unsigned bad = 0;
  int64_t up_all = 0, live_all = 0;
  for (int64_t i0 = a; i0 < b; i0 += kBlock) {
    const int64_t m = std::min(kBlock, b - i0);
    src.keys(i0, m, kb);
    uint32_t up = 0;
    if constexpr (Src::kPrev) {
      const uint8_t* __restrict p = src.prev + i0;
      uint32_t lv = 0;
      for (int64_t j = 0; j < m; ++j) {
        const Key key = kb[j];
        const unsigned l = unsigned(p[j] != 0);
        bad |= (l | unsigned(Src::kNanAll)) & unsigned(is_nan_key<Rank>(key));
        up += l & unsigned(key > hi);
        fl[j] = uint8_t(l & unsigned(static_cast<Key>(key - lo) <= width));
        lv += l;
      }
      live_all += lv;
    } else {
      for (int64_t j = 0; j < m; ++j) {
        const Key key = kb[j];
        bad |= unsigned(is_nan_key<Rank>(key));
        up += unsigned(key > hi);
        fl[j] = uint8_t(static_cast<Key>(key - lo) <= width);
      }
      live_all += m;
    }
    up_all += up;
    const int64_t m8 = (m + 7) & ~int64_t(7);
    for (int64_t j = m; j < m8; ++j) fl[j] = 0;
    for (int64_t j = 0; j < m8; j += 8) {
      uint64_t f;
      std::memcpy(&f, fl + j, sizeof f);
#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
      while (f != 0) {
        // Flag bytes are 0 or 1, byte t in bits 8t..8t+7: the lowest set bit is bit 0 of the
        // first flagged byte.
        ++h[kb[j + (__builtin_ctzll(f) >> 3)] >> shift];
        f &= f - 1;
      }
#else
      if (f != 0) {
        for (int64_t t = 0; t < 8; ++t) {
          if (fl[j + t]) ++h[kb[j + t] >> shift];
        }
      }
#endif
    }
  }
  above += up_all;
  live += live_all;
  return bad != 0;
}

// Later passes: histogram of the digit at `shift` of the keys whose higher bits are `prefix`.
template <typename Src>
void pass_histogram(const Src& src, int64_t a, int64_t b, int shift, typename Src::Key prefix,
                    uint32_t* __restrict h) {
  using Key = typename Src::Key;
  alignas(64) Key kb[kBlock];
  const int high_shift = shift + kDigit;
  for (int64_t i0 = a; i0 < b; i0 += kBlock) {
    const int64_t m = std::min(kBlock, b - i0);
    src.keys(i0, m, kb);
    for (int64_t j = 0; j < m; ++j) {
      const Key key = kb[j];
      if (static_cast<Key>(key >> high_shift) == prefix) {
        h[(key >> shift) & (kBins - 1)] += Src::kPrev ? uint32_t(src.prev[i0 + j] != 0) : 1u;
      }
    }
  }
}

// Mask pass when the k-th key's bin is small: keep keys whose bits above `shift` exceed `high`,
// and gather those equal to it (key + mask address) from position `m` of the candidate lists.
template <typename Src>
int64_t pass_mask_candidates(const Src& src, int64_t a, int64_t b, int shift, typename Src::Key high,
                             uint8_t* out, typename Src::Key* __restrict keys,
                             uint8_t** __restrict dst, int64_t m) {
  using Key = typename Src::Key;
#if defined(__SSE2__) && defined(__GNUC__)
  if constexpr (F32<Src>::ok) {
    return mask_candidates_f32(src, a, b, static_cast<Key>(high << shift), static_cast<Key>((Key(1) << shift) - 1),
                               out, keys, dst, m);
  }
#endif
  alignas(64) Key kb[kBlock];
  alignas(64) uint8_t live[Src::kPrev ? kBlock : 1];
  for (int64_t i0 = a; i0 < b; i0 += kBlock) {
    const int64_t n = std::min(kBlock, b - i0);
    src.keys(i0, n, kb);
    if constexpr (Src::kPrev) std::memcpy(live, src.prev + i0, static_cast<size_t>(n));
    {  // from here on the block's prev bytes are read from `live` only, so `o` may be restrict
      uint8_t* __restrict o = out + i0;
      unsigned any = 0;
      if constexpr (Src::kPrev) {
        for (int64_t j = 0; j < n; ++j) {
          const Key h = static_cast<Key>(kb[j] >> shift);
          o[j] = uint8_t(live[j] != 0) & uint8_t(h > high);
          any |= unsigned(h == high);
        }
      } else {
        for (int64_t j = 0; j < n; ++j) {
          const Key h = static_cast<Key>(kb[j] >> shift);
          o[j] = uint8_t(h > high);
          any |= unsigned(h == high);
        }
      }
      if (any) {
        for (int64_t j = 0; j < n; ++j) {
          if (static_cast<Key>(kb[j] >> shift) == high && (!Src::kPrev || live[j])) {
            keys[m] = kb[j];
            dst[m] = o + j;
            ++m;
          }
        }
      }
    }
  }
  return m;
}

// kth_largest's pass when the bin is small: gather the keys in it.
template <typename Src>
int64_t pass_collect(const Src& src, int64_t a, int64_t b, int shift, typename Src::Key high,
                     typename Src::Key* __restrict keys, int64_t m) {
  using Key = typename Src::Key;
  alignas(64) Key kb[kBlock];
  for (int64_t i0 = a; i0 < b; i0 += kBlock) {
    const int64_t n = std::min(kBlock, b - i0);
    src.keys(i0, n, kb);
    unsigned any = 0;
    for (int64_t j = 0; j < n; ++j) any |= unsigned(static_cast<Key>(kb[j] >> shift) == high);
    if (!any) continue;
    for (int64_t j = 0; j < n; ++j) {
      if (static_cast<Key>(kb[j] >> shift) == high && (!Src::kPrev || src.prev[i0 + j])) keys[m++] = kb[j];
    }
  }
  return m;
}

// Mask pass when the k-th key is known: keep keys above it and the first `quota` equal to it.
template <typename Src>
void pass_mask_exact(const Src& src, int64_t a, int64_t b, typename Src::Key kth, uint8_t* out,
                     int64_t& quota) {
  using Key = typename Src::Key;
#if defined(__SSE2__) && defined(__GNUC__)
  if constexpr (F32<Src>::ok) return mask_exact_f32(src, a, b, kth, out, quota);
#endif
  alignas(64) Key kb[kBlock];
  alignas(64) uint8_t live[Src::kPrev ? kBlock : 1];
  int64_t q = quota;
  for (int64_t i0 = a; i0 < b; i0 += kBlock) {
    const int64_t n = std::min(kBlock, b - i0);
    src.keys(i0, n, kb);
    if constexpr (Src::kPrev) std::memcpy(live, src.prev + i0, static_cast<size_t>(n));
    {  // from here on the block's prev bytes are read from `live` only, so `o` may be restrict
      uint8_t* __restrict o = out + i0;
      if constexpr (Src::kPrev) {
        for (int64_t j = 0; j < n; ++j) o[j] = uint8_t(live[j] != 0) & uint8_t(kb[j] > kth);
      } else {
        for (int64_t j = 0; j < n; ++j) o[j] = uint8_t(kb[j] > kth);
      }
      for (int64_t j = 0; j < n && q > 0; ++j) {
        if (kb[j] == kth && (!Src::kPrev || live[j])) {
          o[j] = 1;
          --q;
        }
      }
    }
  }
  quota = q;
}
// ---- the band of the first pass, from a sample

constexpr int64_t kRun = 16;  // consecutive elements per sampled run: a cache line of fp32

inline void prefetch_line(const void* p) {
#if defined(__GNUC__)
  __builtin_prefetch(p);
#else
  (void)p;
#endif
}

// Elements sampled to place the first pass's band (0: no band, every pass histograms all keys).
inline int64_t sample_size() { return env_int("SPARSEFORCE_CPU_SAMPLE", 65536); }

// Narrows [lo_bin, hi_bin] (top digits at `shift`) to a band that holds the k-th largest
// competing key but for a sampling miss of more than six standard deviations, judged from the
// keys of about `want` elements: runs of kRun consecutive ones spread evenly over the
// global positions (every element when there are no more than that). A miss costs speed, not
// exactness: radix_select then histograms the whole range.
template <typename P, typename Policy>
void sample_band(const std::vector<Operand>& segs, int64_t n, int64_t k, int shift, int64_t want, int64_t& lo_bin,
                 int64_t& hi_bin, uint32_t* __restrict counts) {
  using Key = key_t<P>;
  if (want <= 0 || segs.empty()) return;
  const int64_t run_len = n <= want ? n : kRun;
  const int64_t runs = n <= want ? 1 : std::max<int64_t>(1, want / kRun);
  const int64_t span = n - run_len;  // the last run starts here
  auto run_start = [&](int64_t r) {
    return runs == 1 ? int64_t(0) : (span / (runs - 1)) * r + (span % (runs - 1)) * r / (runs - 1);
  };
  // The runs are far apart: fetch the lines of a run a few runs ahead, so the misses overlap.
  constexpr int64_t kAhead = 8;
  size_t jp = 0;
  auto prefetch = [&](int64_t r) {
    const int64_t pos = run_start(r);
    while (segs[jp].offset + segs[jp].n <= pos) ++jp;
    const Operand& s = segs[jp];
    const int64_t a = pos - s.offset;
    const int64_t bytes = static_cast<int64_t>(c10::elementSize(s.type));
    prefetch_line(static_cast<const char*>(s.a) + a * bytes);
    if (s.b != nullptr) prefetch_line(static_cast<const char*>(s.b) + a * bytes);
    if (s.competing != nullptr) prefetch_line(s.competing + a);
  };
  // The sampled keys' top digits, counted (only the competing ones), in `counts` (2^16 bins).
  std::fill(counts, counts + kBins, 0u);
  alignas(64) Key kb[kBlock];
  int64_t drawn = 0, sc = 0;  // positions sampled, competing or not; competing keys among them
  size_t j = 0;
  for (int64_t r = 0; r < std::min(kAhead, runs); ++r) prefetch(r);
  for (int64_t r = 0; r < runs; ++r) {
    if (r + kAhead < runs) prefetch(r + kAhead);
    int64_t pos = run_start(r);
    const int64_t end = pos + run_len;
    while (pos < end) {
      while (segs[j].offset + segs[j].n <= pos) ++j;
      const Operand& s = segs[j];
      const int64_t a = pos - s.offset;
      const int64_t m = std::min({end - pos, s.n - a, kBlock});
      Policy::visit(s, [&](const auto& src) {
        using Src = std::decay_t<decltype(src)>;
        src.keys(a, m, kb);
        for (int64_t t = 0; t < m; ++t) {
          const uint32_t l = Src::kPrev ? uint32_t(src.prev[a + t] != 0) : 1u;
          counts[kb[t] >> shift] += l;
          sc += l;
        }
      });
      drawn += m;
      pos += m;
    }
  }
  // The k-th largest key ranks about e-th among the sampled keys (1-based, from the top).
  const double p = static_cast<double>(k) / static_cast<double>(n);
  const double e = p * static_cast<double>(drawn);
  const double margin = 6.0 * std::sqrt(e * (1.0 - p)) + 16.0;
  const int64_t r_lo = static_cast<int64_t>(std::ceil(e + margin));   // surely at or below the k-th key
  const int64_t r_hi = static_cast<int64_t>(std::floor(e - margin));  // surely above it
  // The bins of the sampled keys ranked r_hi and r_lo: the band's top and bottom.
  int64_t seen = 0, bin = kBins - 1;
  if (r_hi >= 1 && r_hi <= sc) {
    for (; seen + counts[bin] < r_hi; --bin) seen += counts[bin];
    hi_bin = bin;
  }
  if (r_lo <= sc) {
    for (; seen + counts[bin] < r_lo; --bin) seen += counts[bin];
    lo_bin = bin;
  }
}

// The need-th largest of the `count` candidate keys (1 <= need <= count) and, when `dst` is given,
// the candidates kept (their mask bytes set): those above it, then those equal to it in the
// candidates' order (global position order) until `need` are kept.
template <typename Key>
Key keep_candidates(const Key* keys, uint8_t* const* dst, int64_t count, int64_t need) {
  std::vector<Key> order(keys, keys + count);
  std::nth_element(order.begin(), order.begin() + (need - 1), order.end(), std::greater<Key>());
  const Key kth = order[need - 1];
  if (dst == nullptr) return kth;
  int64_t above_kth = 0;
  for (int64_t m = 0; m < count; ++m) above_kth += keys[m] > kth;
  int64_t ties = need - above_kth;
  for (int64_t m = 0; m < count; ++m) {
    if (keys[m] > kth) {
      *dst[m] = 1;
    } else if (keys[m] == kth && ties > 0) {
      *dst[m] = 1;
      --ties;
    }
  }
  return kth;
}

}  // namespace cpu
}  // namespace sparseforce
