// The CPU segmented selections (segmented_select.h): every segment of every input keeps exactly
// its k largest keys (the global ops' keys, float_keys.h: -0.0 == +0.0, ±inf ordinary, NaN
// reported), ties by position inside the segment. Each input takes one of three paths, by its
// segment length L (every segment of an input has the same length):
//
//   tiny   (L <= 32: N:M groups, short rows)  blocks of whole segments, one thread each: an
//          element is kept when fewer than k elements of its segment beat it (a larger key, or an
//          equal key at a lower position). The keys of a block are transposed so that each
//          segment is one vector lane, and each pair of positions costs one compare across all
//          the block's segments (of two elements exactly one beats the other). L = 4 with 32-bit
//          keys runs in SSE2 registers, four groups per step (six compares per step); fp32
//          values (scores, or |w*g| of fp32 inputs) are compared as floats straight from memory,
//          with no key buffer.
//   rows   (32 < L <= SPARSEFORCE_CPU_SEG_SMALL, default 2^20)  one segment at a time by one
//          thread, in memory: the segment's keys into a per-thread buffer, an MSD radix select
//          on them with digits of up to 11 bits (one histogram pass over the segment, then
//          passes over the ever fewer keys sharing the known high bits, gathered with their
//          positions from vectorised flags), then one vectorised mask pass (key above the known
//          bits) and the ties kept from the remaining candidates in position order. Measured on
//          fp32 at 50 %, this beats the radix path up to rows of about 2^20 (the radix path's
//          256 KiB histogram per segment costs more than a short row; past 2^20 the key buffer
//          leaves the caches and the radix path's two streaming passes win).
//   radix  (longer segments: segment="tensor", long rows)  the radix select of the global ops
//          (radix_passes.h: 16-bit digits, the same passes) run for all these segments
//          together: each segment is cut into pieces (one per segment on one thread; pieces of
//          about total / (4 * threads) elements otherwise), every pass is one parallel region
//          over the pieces of all segments still selecting (one histogram per piece, handed out
//          dynamically), and after each pass each segment picks its k-th key's bin from the sum
//          of its pieces' histograms. The first pass histograms only the band of top digits
//          that a sample of the segment puts its k-th key in (a miss: that segment's first pass
//          again over every key); the last pass is the global ops' mask pass (a quota of ties
//          per piece, or a candidate list resolved in memory). The segments are taken in batches
//          of at most kMaxPieces pieces to bound the histograms' memory (256 KiB per piece).
// The tiny and rows paths run as one parallel region over work items of whole segments of all
// their inputs. Inputs arrive contiguous (ops_cpu.cpp copies strided ones, as for the global
// ops); positions and counts are 64-bit, a piece's histogram counts 32-bit (pieces < 2^31).
// Non-competing elements take key 0, below every competing saliency or magnitude (|x| >= +0.0,
// whose key is the sign bit), so they are never kept. SPARSEFORCE_CPU_SEG_SMALL=0 sends every row
// to the radix path, a large value every segment (but N:M groups) to the rows path: the tests run
// both. drop_grow_masks' magnitude selections have their own limit, SPARSEFORCE_CPU_DG_SMALL
// (default 2^16), and sample a 64th of a long segment rather than a 16th: their competing sets
// are sparse (the drop: the active weights) or their k small (the grow), where the rows path's
// in-memory passes and the radix path's sampled random reads cost more than a wider band; both
// measured on ResNet50's 54 layers (drop_grow.cpp).
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include "../common/env.h"
#include "float_keys.h"
#include "radix_passes.h"
#include "segmented_select.h"

namespace sparseforce {
namespace cpu {
namespace {

constexpr int64_t kTiny = 32;
constexpr int kRowDigit = 11;
constexpr size_t kRowHistograms = 4;
constexpr int64_t kItem = int64_t(1) << 16;  // elements per work item of the tiny and rows paths
constexpr int64_t kMaxPieces = 64;

int64_t small_limit(Keys kind) {
  const bool magnitude = kind == Keys::Magnitude;
  const int64_t limit = magnitude ? env_int("SPARSEFORCE_CPU_DG_SMALL", int64_t(1) << 16)
                                  : env_int("SPARSEFORCE_CPU_SEG_SMALL", int64_t(1) << 20);
  return std::clamp<int64_t>(limit, 0, int64_t(1) << 30);
}

// f(src) with the key source of `o`: its scores ranked in their own dtype, or |a*b| or |a|
// (competing elements only when it has a mask), as the global ops form them.
template <typename F>
void visit_keys(const Operand& o, Keys kind, F&& f) {
  dispatch_float(o.type, [&](auto tag) {
    using In = decltype(tag);
    const In* a = static_cast<const In*>(o.a);
    if (kind == Keys::Scores) {
      f(ScoreSrc<In, In, false>{a, nullptr});
      return;
    }
    if (kind == Keys::Magnitude) {
      if (o.competing != nullptr) {
        f(MagnitudeSrc<In, In, true>{a, o.competing});
      } else {
        f(MagnitudeSrc<In, In, false>{a, nullptr});
      }
      return;
    }
    using P = std::conditional_t<std::is_same_v<In, double>, double, float>;
    const In* b = static_cast<const In*>(o.b);
    if (o.competing != nullptr) {
      f(SaliencySrc<P, In, true>{a, b, o.competing});
    } else {
      f(SaliencySrc<P, In, false>{a, b, nullptr});
    }
  });
}

// The keys of elements [i0, i0 + m) into kb, key 0 for the non-competing ones; true if a
// competing key is NaN.
template <typename Src>
bool live_keys(const Src& src, int64_t i0, int64_t m, typename Src::Key* __restrict kb) {
  using Key = typename Src::Key;
  src.keys(i0, m, kb);
  unsigned bad = 0;
  if constexpr (Src::kPrev) {
    const uint8_t* __restrict live = src.prev + i0;
    for (int64_t j = 0; j < m; ++j) {
      const bool l = live[j] != 0;
      bad |= unsigned(l || Src::kNanAll) & unsigned(is_nan_key<typename Src::Rank>(kb[j]));
      kb[j] = l ? kb[j] : Key(0);
    }
  } else {
    for (int64_t j = 0; j < m; ++j) bad |= unsigned(is_nan_key<typename Src::Rank>(kb[j]));
  }
  return bad != 0;
}

void note_nan(std::atomic<int64_t>& lowest, int64_t index) {
  int64_t cur = lowest.load();
  while (index < cur && !lowest.compare_exchange_weak(cur, index)) {
  }
}

// work(i, state) for i in [0, count), handed out one at a time to the threads; each thread has
// its own State (scratch memory reused from item to item).
template <typename State, typename F>
void for_each_item_with(int64_t count, F&& work) {
  const int64_t workers = std::min<int64_t>(count, at::get_num_threads());
  if (workers <= 1) {
    State state;
    for (int64_t i = 0; i < count; ++i) work(i, state);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    State state;
    for (int64_t i = next.fetch_add(1); i < count; i = next.fetch_add(1)) work(i, state);
  });
}

struct NoState {};

template <typename F>
void for_each_item(int64_t count, F&& work) {
  for_each_item_with<NoState>(count, [&](int64_t i, NoState&) { work(i); });
}

int64_t k_of(const Segmented& s, int64_t r) { return s.ks != nullptr ? s.ks[r] : s.keep; }

// ---- tiny segments (L <= kTiny): pairwise ranks

// Segments g0 .. g0 + g - 1 of `s`, their keys in kb: the keys transposed (t[j * g + q]: element
// j of segment q) so that the loops over q vectorise.
template <typename Key>
void rank_block(const Key* kb, int64_t g, const Segmented& s, int64_t g0, uint8_t* __restrict o) {
  const int64_t len = s.len;
  alignas(64) Key t[kBlock];
  alignas(64) uint8_t rank[kBlock];
  for (int64_t j = 0; j < len; ++j) {
    for (int64_t q = 0; q < g; ++q) t[j * g + q] = kb[q * len + j];
  }
  std::fill(rank, rank + kBlock, uint8_t(0));
  for (int64_t j = 1; j < len; ++j) {
    const Key* __restrict tj = t + j * g;
    uint8_t* __restrict rj = rank + j * g;
    for (int64_t i = 0; i < j; ++i) {
      const Key* __restrict ti = t + i * g;
      uint8_t* __restrict ri = rank + i * g;
      for (int64_t q = 0; q < g; ++q) {
        const uint8_t c = uint8_t(ti[q] >= tj[q]);  // i (the lower position) beats j, else j beats i
        rj[q] += c;
        ri[q] += c ^ uint8_t(1);
      }
    }
  }
  for (int64_t q = 0; q < g; ++q) {
    const int64_t k = k_of(s, g0 + q);
    for (int64_t j = 0; j < len; ++j) o[q * len + j] = uint8_t(rank[j * g + q] < k);
  }
}

#if defined(__SSE2__) && defined(__GNUC__)
// Segments of four 32-bit keys (2:4 and the other N:4 patterns), four segments per step in SSE2
// registers: load(q) gives the four values of segment q, as fp32 (Floats: compared as floats,
// which order every non-NaN value as its key does, -0.0 == +0.0 included) or as signed integers
// (key ^ 0x80000000: signed compares order them as keys). The 4x4 block is transposed, six
// compares rank it, and the keep flags are transposed back and packed into 16 mask bytes. Returns
// the segments done (a multiple of 4) of the g from segment g0 on.
template <bool Floats, typename Load>
int64_t keep_by4(int64_t g, const Segmented& s, int64_t g0, uint8_t* o, Load&& load) {
  auto transpose = [](__m128i& a, __m128i& b, __m128i& c, __m128i& d) {
    const __m128i ab0 = _mm_unpacklo_epi32(a, b), cd0 = _mm_unpacklo_epi32(c, d);
    const __m128i ab1 = _mm_unpackhi_epi32(a, b), cd1 = _mm_unpackhi_epi32(c, d);
    a = _mm_unpacklo_epi64(ab0, cd0);
    b = _mm_unpackhi_epi64(ab0, cd0);
    c = _mm_unpacklo_epi64(ab1, cd1);
    d = _mm_unpackhi_epi64(ab1, cd1);
  };
  auto greater = [](__m128i a, __m128i b) {
    if constexpr (Floats) {
      return _mm_castps_si128(_mm_cmpgt_ps(_mm_castsi128_ps(a), _mm_castsi128_ps(b)));
    } else {
      return _mm_cmpgt_epi32(a, b);
    }
  };
  int64_t q = 0;
  for (; q + 4 <= g; q += 4) {
    __m128i v[4], r[4];
    for (int j = 0; j < 4; ++j) {
      v[j] = load(g0 + q + j);
      r[j] = _mm_set1_epi32(j);  // the j lower positions beat element j, unless it beats them
    }
    transpose(v[0], v[1], v[2], v[3]);  // v[j]: element j of the four segments
    for (int j = 1; j < 4; ++j) {
      for (int i = 0; i < j; ++i) {
        const __m128i j_beats_i = greater(v[j], v[i]);  // -1 where it does
        r[i] = _mm_sub_epi32(r[i], j_beats_i);
        r[j] = _mm_add_epi32(r[j], j_beats_i);
      }
    }
    const int64_t s0 = g0 + q;
    const __m128i k = s.ks == nullptr ? _mm_set1_epi32(static_cast<int32_t>(s.keep))
                                      : _mm_set_epi32(static_cast<int32_t>(s.ks[s0 + 3]), static_cast<int32_t>(s.ks[s0 + 2]),
                                                      static_cast<int32_t>(s.ks[s0 + 1]), static_cast<int32_t>(s.ks[s0]));
    for (int j = 0; j < 4; ++j) r[j] = _mm_cmpgt_epi32(k, r[j]);  // rank < k: kept
    transpose(r[0], r[1], r[2], r[3]);  // r[q]: the flags of segment q
    const __m128i bytes = _mm_packs_epi16(_mm_packs_epi32(r[0], r[1]), _mm_packs_epi32(r[2], r[3]));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(o + 4 * q), _mm_and_si128(bytes, _mm_set1_epi8(1)));
  }
  return q;
}

// keep_by4 straight from fp32 values (scores, or |w*g| of fp32 weights and grads): no key
// buffer, NaN found by an unordered compare, and a non-competing element made -inf, below every
// competing saliency (>= +0.0).
template <typename Src>
int64_t keep_by4_f32(const Src& src, const Segmented& s, int64_t s0, int64_t s1, bool& bad) {
  __m128 nan = _mm_setzero_ps();
  const int64_t done = keep_by4<true>(s1 - s0, s, s0, s.op.out + s0 * 4, [&](int64_t q) {
    __m128 x = F32<Src>::load(src, 4 * q);
    __m128 isnan = _mm_cmpunord_ps(x, x);
    if constexpr (Src::kPrev) {
      int32_t p4;
      std::memcpy(&p4, src.prev + 4 * q, sizeof p4);
      const __m128i zero = _mm_setzero_si128();
      const __m128i live = _mm_unpacklo_epi16(_mm_unpacklo_epi8(_mm_cvtsi32_si128(p4), zero), zero);
      const __m128 dead = _mm_castsi128_ps(_mm_cmpeq_epi32(live, zero));
      x = _mm_or_ps(_mm_andnot_ps(dead, x), _mm_and_ps(dead, _mm_set1_ps(-std::numeric_limits<float>::infinity())));
      if constexpr (!Src::kNanAll) isnan = _mm_andnot_ps(dead, isnan);
    }
    nan = _mm_or_ps(nan, isnan);
    return _mm_castps_si128(x);
  });
  bad |= _mm_movemask_ps(nan) != 0;
  return done;
}
#endif

// Segments s0 .. s1 - 1 of a tiny-segment input, in blocks of whole segments.
template <typename Src>
bool select_tiny(const Src& src, const Segmented& s, int64_t s0, int64_t s1) {
  using Key = typename Src::Key;
  const int64_t len = s.len;
  bool bad = false;
#if defined(__SSE2__) && defined(__GNUC__)
  if constexpr (F32<Src>::ok) {
    if (len == 4) s0 += keep_by4_f32(src, s, s0, s1, bad);
  }
#endif
  const int64_t per = std::max<int64_t>(1, kBlock / len);  // segments per block
  alignas(64) Key kb[kBlock];
  for (int64_t g0 = s0; g0 < s1; g0 += per) {
    const int64_t g = std::min(per, s1 - g0);
    bad |= live_keys(src, g0 * len, g * len, kb);
    uint8_t* o = s.op.out + g0 * len;
    int64_t done = 0;
#if defined(__SSE2__) && defined(__GNUC__)
    if constexpr (std::is_same_v<Key, uint32_t>) {
      if (len == 4) {
        const __m128i flip = _mm_set1_epi32(signed_key(0));
        done = keep_by4<false>(g, s, g0, o, [&](int64_t q) {
          return _mm_xor_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kb + 4 * (q - g0))), flip);
        });
      }
    }
#endif
    if (done < g) rank_block(kb + done * len, g - done, s, g0 + done, o + done * len);
  }
  return bad;
}

// ---- rows (kTiny < L <= small_limit(kind)): one segment at a time, in memory

// The bin (from the top of `bins`) holding the need-th largest key; need becomes its rank there.
inline int64_t top_bin(const uint32_t* h, int64_t bins, int64_t& need) {
  int64_t bin = bins - 1;
  for (; bin > 0 && h[bin] < need; --bin) need -= h[bin];
  return bin;
}

// Bits of a radix digit over `count` keys: about one bin per key, from 4 to kRowDigit bits.
int row_digit(int64_t count) {
  int bits = 4;
  while (bits < kRowDigit && (int64_t(1) << bits) < count) ++bits;
  return bits;
}

// A thread's buffers for its rows, grown as needed: the keys of a row (8 bytes a key at most),
// the flags, the candidates' keys and positions (as many as the k-th key's first bin holds).
struct RowScratch {
  std::vector<uint64_t> keys, cand;
  std::vector<int32_t> pos;
  std::vector<uint8_t> flags;  // padded to whole 8-byte words
  std::vector<uint32_t> hist = std::vector<uint32_t>(kRowHistograms << kRowDigit);

  template <typename T>
  static T* at_least(std::vector<T>& v, int64_t n) {
    if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
    return v.data();
  }
};

// h[bin] = how many of the len keys have `bin` as their top digit (above `shift`). Equal keys in a
// row (the non-competing ones' 0, a layer's many similar magnitudes) would chain each increment
// on the store of the one before: kRowHistograms interleaved copies break the chain, summed after.
template <typename Key>
void count_top_digit(const Key* __restrict kb, int64_t len, int shift, int64_t bins, uint32_t* __restrict h) {
  constexpr int64_t r = kRowHistograms;
  std::fill(h, h + r * bins, 0u);
  int64_t j = 0;
  for (; j + r <= len; j += r) {
    for (int64_t q = 0; q < r; ++q) ++h[q * bins + (kb[j + q] >> shift)];
  }
  for (; j < len; ++j) ++h[kb[j] >> shift];
  for (int64_t q = 1; q < r; ++q) {
    for (int64_t b = 0; b < bins; ++b) h[b] += h[q * bins + b];
  }
}

// The flagged keys and their positions, in position order, as candidates: the flags are formed
// by a loop that vectorises and read eight at a time, as most are 0.
template <typename Key>
int64_t gather_flagged(const Key* kb, const uint8_t* flags, int64_t len, Key* ck, int32_t* cp) {
  int64_t c = 0;
  for (int64_t j = 0; j < len; j += 8) {
    uint64_t f;
    std::memcpy(&f, flags + j, sizeof f);
    if (f == 0) continue;
    for (int64_t t = j; t < std::min(j + 8, len); ++t) {
      if (flags[t]) {
        ck[c] = kb[t];
        cp[c] = static_cast<int32_t>(t);
        ++c;
      }
    }
  }
  return c;
}

// Segment r (elements [i0, i0 + len)) keeping k.
template <typename Src>
bool select_row(const Src& src, int64_t i0, int64_t len, int64_t k, uint8_t* __restrict out, RowScratch& w) {
  using Key = typename Src::Key;
  constexpr int kBits = static_cast<int>(sizeof(Key) * 8);
  Key* __restrict kb = reinterpret_cast<Key*>(RowScratch::at_least(w.keys, len));
  uint32_t* __restrict h = w.hist.data();
  bool bad = false;
  for (int64_t b = 0; b < len; b += kBlock) bad |= live_keys(src, i0 + b, std::min(kBlock, len - b), kb + b);
  if (k == 0 || k == len) {
    std::fill(out, out + len, uint8_t(k != 0));
    return bad;
  }
  // Candidates: the keys whose bits above `shift` equal `prefix` (all of them, at first), in
  // position order; the k-th key is the need-th largest of them.
  int digit = row_digit(len);
  int shift = kBits - digit;
  count_top_digit(kb, len, shift, int64_t(1) << digit, h);
  int64_t need = k;
  Key prefix = static_cast<Key>(top_bin(h, int64_t(1) << digit, need));
  uint8_t* __restrict fl = RowScratch::at_least(w.flags, (len + 7) & ~int64_t(7));
  for (int64_t j = 0; j < len; ++j) fl[j] = uint8_t(static_cast<Key>(kb[j] >> shift) == prefix);
  std::fill(fl + len, fl + ((len + 7) & ~int64_t(7)), uint8_t(0));
  const int64_t bucket = h[prefix];
  Key* __restrict ck = reinterpret_cast<Key*>(RowScratch::at_least(w.cand, bucket));
  int32_t* __restrict cp = RowScratch::at_least(w.pos, bucket);
  int64_t c = gather_flagged(kb, fl, len, ck, cp);
  while (c > need && shift > 0) {
    digit = std::min(row_digit(c), shift);
    shift -= digit;
    const Key mask = static_cast<Key>((Key(1) << digit) - 1);
    std::fill(h, h + (int64_t(1) << digit), 0u);
    for (int64_t t = 0; t < c; ++t) ++h[(ck[t] >> shift) & mask];
    const Key bin = static_cast<Key>(top_bin(h, int64_t(1) << digit, need));
    int64_t kept = 0;
    for (int64_t t = 0; t < c; ++t) {
      ck[kept] = ck[t];
      cp[kept] = cp[t];
      kept += static_cast<Key>((ck[t] >> shift) & mask) == bin;
    }
    c = kept;
    prefix = static_cast<Key>((prefix << digit) | bin);
  }
  // Kept: the keys above the candidates' bits, then the first `need` candidates (all of them,
  // or equal keys when every bit is known).
  for (int64_t j = 0; j < len; ++j) out[j] = uint8_t(static_cast<Key>(kb[j] >> shift) > prefix);
  for (int64_t t = 0; t < need; ++t) out[cp[t]] = 1;
  return bad;
}

// ---- long segments: the radix select of all of them together

struct Long {
  Operand view;  // the segment: pointers advanced to its first element, n = its length
  int64_t k = 0;
  int64_t first = 0, pieces = 0;  // its pieces in the batch's piece list
  int shift = 0;                  // the digit the last histogram counted
  uint64_t prefix = 0;            // the k-th key's known high bits (those above shift + kDigit)
  int64_t need = 0;               // its rank among the keys sharing them
  // The first pass's band of top digits (the whole range: no band) and the keys above it.
  int64_t lo_bin = 0, hi_bin = kBins - 1, above = 0;
  enum class Step { Histogram, Fill, Exact, Candidates } step = Step::Histogram;
  bool fill_ones = false;
  std::vector<uint64_t> cand_keys;  // the candidates' keys (as the segment's key type)
  std::vector<uint8_t*> cand_dst;

  bool banded() const { return lo_bin != 0 || hi_bin != kBins - 1; }
};

struct Piece {
  int64_t seg, a, b;
  int64_t above = 0, live = 0;  // the first pass over a band: keys above it, competing keys
  int64_t base = 0;             // Exact: its quota of ties; Candidates: its first slot
  int64_t count = 0;            // Candidates: its number of candidates
};

int key_bits(const Operand& o, Keys kind) {
  if (kind == Keys::Saliency) return o.type == at::kDouble ? 64 : 32;
  return static_cast<int>(c10::elementSize(o.type) * 8);
}

// sample_band's view of a segment: its key source, which ranks as P.
template <typename P, Keys Kind>
struct RankedAs {
  template <typename F>
  static void visit(const Operand& o, F&& f) {
    visit_keys(o, Kind, [&](const auto& src) {
      if constexpr (std::is_same_v<typename std::decay_t<decltype(src)>::Rank, P>) f(src);
    });
  }
};

// The band of top digits that a sample of the segment's keys puts its k-th key in (as the
// global select places its first pass; a sample of a sixteenth of the segment (a 64th for
// magnitudes), at least 4096 keys and at most the global sample). `scratch`: 2^16 counts.
void place_band(Long& s, Keys kind, uint32_t* scratch) {
  const int64_t fraction = kind == Keys::Magnitude ? 64 : 16;
  const int64_t want = std::min(sample_size(), std::max<int64_t>(s.view.n / fraction, 4096));
  const std::vector<Operand> one{s.view};
  const bool wide = s.view.type == at::kDouble;
  const at::ScalarType rank = kind == Keys::Saliency ? (wide ? at::kDouble : at::kFloat) : s.view.type;
  dispatch_float(rank, [&](auto tag) {
    using P = decltype(tag);
    auto sample = [&](auto policy) {
      sample_band<P, decltype(policy)>(one, s.view.n, s.k, s.shift, want, s.lo_bin, s.hi_bin, scratch);
    };
    switch (kind) {
      case Keys::Scores: sample(RankedAs<P, Keys::Scores>{}); return;
      case Keys::Saliency: sample(RankedAs<P, Keys::Saliency>{}); return;
      case Keys::Magnitude: sample(RankedAs<P, Keys::Magnitude>{}); return;
    }
  });
}

// One batch of long segments, every pass over all of them together.
void select_long(std::vector<Long>& segs, std::vector<Piece>& pieces, Keys kind, std::atomic<int64_t>& nan) {
  const int64_t np = static_cast<int64_t>(pieces.size());
  const int64_t ns = static_cast<int64_t>(segs.size());
  std::vector<uint32_t> hist(static_cast<size_t>(np * kBins));
  auto count = [&](const Long& s, int64_t bin) {
    int64_t t = 0;
    for (int64_t p = s.first; p < s.first + s.pieces; ++p) t += hist[p * kBins + bin];
    return t;
  };
  auto pieces_of = [&](auto&& want) {
    std::vector<int64_t> ps;
    for (int64_t p = 0; p < np; ++p) {
      if (want(segs[pieces[p].seg])) ps.push_back(p);
    }
    return ps;
  };

  // The first pass: the top digit of every key, or of those in the segment's band.
  for_each_item(ns, [&](int64_t i) {
    Long& s = segs[i];
    if (s.k >= 1 && (s.view.competing != nullptr || s.k < s.view.n)) place_band(s, kind, hist.data() + s.first * kBins);
  });
  auto top_pass = [&](const std::vector<int64_t>& ps) {
    for_each_item(static_cast<int64_t>(ps.size()), [&](int64_t t) {
      Piece& pc = pieces[ps[t]];
      const Long& s = segs[pc.seg];
      uint32_t* h = hist.data() + ps[t] * kBins;
      std::fill(h, h + kBins, 0u);
      pc.above = pc.live = 0;
      bool bad = false;
      visit_keys(s.view, kind, [&](const auto& src) {
        using Key = typename std::decay_t<decltype(src)>::Key;
        if (!s.banded()) {
          bad = pass_histogram_top(src, pc.a, pc.b, s.shift, h);
          return;
        }
        const Key lo = static_cast<Key>(static_cast<Key>(s.lo_bin) << s.shift);
        const Key width = static_cast<Key>((static_cast<Key>(s.hi_bin - s.lo_bin) << s.shift) | ((Key(1) << s.shift) - 1));
        bad = pass_histogram_band(src, pc.a, pc.b, s.shift, lo, width, h, pc.above, pc.live);
      });
      if (bad) note_nan(nan, s.view.index);
    });
  };
  top_pass(pieces_of([](const Long&) { return true; }));
  // A segment's competing keys, and whether the sample missed: then its band is dropped and its
  // first pass runs again over every key.
  std::vector<int64_t> live(static_cast<size_t>(ns));
  std::vector<uint8_t> missed(static_cast<size_t>(ns), 0);
  for_each_item(ns, [&](int64_t i) {
    Long& s = segs[i];
    if (!s.banded()) {
      live[i] = s.view.n;
      if (s.view.competing != nullptr) {
        live[i] = 0;
        for (int64_t bin = 0; bin < kBins; ++bin) live[i] += count(s, bin);
      }
      return;
    }
    live[i] = 0;
    s.above = 0;
    for (int64_t p = s.first; p < s.first + s.pieces; ++p) {
      live[i] += pieces[p].live;
      s.above += pieces[p].above;
    }
    int64_t in_band = 0;
    for (int64_t bin = s.lo_bin; bin <= s.hi_bin; ++bin) in_band += count(s, bin);
    if (s.k != live[i] && (s.above >= s.k || s.above + in_band < s.k)) {
      s.lo_bin = s.above = 0;
      s.hi_bin = kBins - 1;
      missed[i] = 1;
    }
  });
  const std::vector<int64_t> again = pieces_of([&](const Long& s) { return missed[&s - segs.data()] != 0; });
  if (!again.empty()) top_pass(again);

  // After each histogram pass: the k-th key's bin and the segment's next step.
  auto resolve = [&](Long& s) {
    int64_t bin = s.hi_bin, above = s.above;
    s.hi_bin = kBins - 1;
    s.above = 0;
    for (; bin > 0; --bin) {
      const int64_t c = count(s, bin);
      if (above + c >= s.need) break;
      above += c;
    }
    s.need -= above;
    s.prefix = (s.prefix << kDigit) | static_cast<uint64_t>(bin);
    const int64_t bucket = count(s, bin);
    if (s.shift != 0 && bucket > candidate_cap(s.view.n)) {
      s.shift -= kDigit;
      return;
    }
    int64_t before = 0;
    for (int64_t p = s.first; p < s.first + s.pieces; ++p) {
      const int64_t here = hist[p * kBins + bin];
      pieces[p].base = s.shift == 0 ? std::clamp<int64_t>(s.need - before, 0, here) : before;
      pieces[p].count = here;
      before += here;
    }
    if (s.shift == 0) {
      s.step = Long::Step::Exact;
    } else {
      s.step = Long::Step::Candidates;
      s.cand_keys.resize(static_cast<size_t>(bucket));
      s.cand_dst.resize(static_cast<size_t>(bucket));
    }
  };
  for_each_item(ns, [&](int64_t i) {
    Long& s = segs[i];
    if (s.k == 0 || s.k == live[i]) {
      s.step = Long::Step::Fill;
      s.fill_ones = s.k != 0;
    } else {
      resolve(s);
    }
  });
  while (true) {
    const std::vector<int64_t> todo = pieces_of([](const Long& s) { return s.step == Long::Step::Histogram; });
    if (todo.empty()) break;
    for_each_item(static_cast<int64_t>(todo.size()), [&](int64_t t) {
      const Piece& pc = pieces[todo[t]];
      const Long& s = segs[pc.seg];
      uint32_t* h = hist.data() + todo[t] * kBins;
      std::fill(h, h + kBins, 0u);
      visit_keys(s.view, kind, [&](const auto& src) {
        using Key = typename std::decay_t<decltype(src)>::Key;
        pass_histogram(src, pc.a, pc.b, s.shift, static_cast<Key>(s.prefix), h);
      });
    });
    for_each_item(ns, [&](int64_t i) {
      if (segs[i].step == Long::Step::Histogram) resolve(segs[i]);
    });
  }
  // The mask pass.
  for_each_item(np, [&](int64_t p) {
    const Piece& pc = pieces[p];
    Long& s = segs[pc.seg];
    uint8_t* out = s.view.out;
    if (s.step == Long::Step::Fill) {
      if (s.fill_ones && s.view.competing != nullptr) {
        std::copy(s.view.competing + pc.a, s.view.competing + pc.b, out + pc.a);
      } else {
        std::fill(out + pc.a, out + pc.b, uint8_t(s.fill_ones));
      }
      return;
    }
    visit_keys(s.view, kind, [&](const auto& src) {
      using Key = typename std::decay_t<decltype(src)>::Key;
      if (s.step == Long::Step::Exact) {
        int64_t quota = pc.base;
        pass_mask_exact(src, pc.a, pc.b, static_cast<Key>(s.prefix), out, quota);
      } else {
        Key* keys = reinterpret_cast<Key*>(s.cand_keys.data());
        const int64_t end = pass_mask_candidates(src, pc.a, pc.b, s.shift, static_cast<Key>(s.prefix), out, keys,
                                                 s.cand_dst.data(), pc.base);
        TORCH_INTERNAL_ASSERT(end == pc.base + pc.count, "sparseforce: candidate count changed between passes");
      }
    });
  });
  for_each_item(ns, [&](int64_t i) {
    Long& s = segs[i];
    if (s.step != Long::Step::Candidates) return;
    visit_keys(s.view, kind, [&](const auto& src) {
      using Key = typename std::decay_t<decltype(src)>::Key;
      keep_candidates(reinterpret_cast<const Key*>(s.cand_keys.data()), s.cand_dst.data(),
                      static_cast<int64_t>(s.cand_dst.size()), s.need);
    });
  });
}

// Rows longer than `limit` (N:M groups are always tiny).
bool is_long(const Segmented& in, int64_t limit) { return in.ks != nullptr && in.len > limit; }

// The long segments of `inputs`, batch by batch.
void select_all_long(const std::vector<Segmented>& inputs, int64_t limit, Keys kind, std::atomic<int64_t>& nan) {
  int64_t total = 0;
  for (const Segmented& s : inputs) {
    if (is_long(s, limit)) total += s.op.n;
  }
  if (total == 0) return;
  const int64_t threads = at::get_num_threads();
  const int64_t piece_len = std::min(
      kMaxChunk, threads == 1 ? kMaxChunk : std::max(kMinChunk, total / (kChunksPerThread * threads)));
  std::vector<Long> segs;
  std::vector<Piece> pieces;
  auto flush = [&]() {
    if (!segs.empty()) select_long(segs, pieces, kind, nan);
    segs.clear();
    pieces.clear();
  };
  for (const Segmented& in : inputs) {
    if (!is_long(in, limit)) continue;
    const int64_t bytes = static_cast<int64_t>(c10::elementSize(in.op.type));
    for (int64_t r = 0; r < in.op.n / in.len; ++r) {
      const int64_t n_pieces = (in.len + piece_len - 1) / piece_len;
      if (static_cast<int64_t>(pieces.size()) + n_pieces > kMaxPieces) flush();
      Long s;
      s.view = in.op;
      const int64_t at = r * in.len;
      s.view.a = static_cast<const char*>(in.op.a) + at * bytes;
      if (in.op.b != nullptr) s.view.b = static_cast<const char*>(in.op.b) + at * bytes;
      if (in.op.competing != nullptr) s.view.competing = in.op.competing + at;
      s.view.out = in.op.out + at;
      s.view.n = in.len;
      s.view.offset = 0;
      s.k = k_of(in, r);
      s.need = s.k;
      s.shift = key_bits(in.op, kind) - kDigit;
      s.first = static_cast<int64_t>(pieces.size());
      s.pieces = n_pieces;
      for (int64_t q = 0; q < n_pieces; ++q) {
        pieces.push_back({static_cast<int64_t>(segs.size()), q * in.len / n_pieces, (q + 1) * in.len / n_pieces});
      }
      segs.push_back(std::move(s));
    }
  }
  flush();
}

}  // namespace

int64_t segmented_select(const std::vector<Segmented>& inputs, Keys kind) {
  std::atomic<int64_t> nan{std::numeric_limits<int64_t>::max()};
  const int64_t limit = small_limit(kind);
  // Work items of the tiny and rows paths: runs of whole segments of one input.
  struct Item {
    size_t input;
    int64_t s0, s1;
  };
  std::vector<Item> items;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const Segmented& in = inputs[i];
    if (is_long(in, limit)) continue;
    const int64_t rows = in.op.n / in.len;
    const int64_t per = std::max<int64_t>(1, kItem / in.len);
    for (int64_t s0 = 0; s0 < rows; s0 += per) items.push_back({i, s0, std::min(rows, s0 + per)});
  }
  for_each_item_with<RowScratch>(static_cast<int64_t>(items.size()), [&](int64_t t, RowScratch& w) {
    const Item& it = items[t];
    const Segmented& in = inputs[it.input];
    bool bad = false;
    visit_keys(in.op, kind, [&](const auto& src) {
      if (in.len <= kTiny) {
        bad = select_tiny(src, in, it.s0, it.s1);
        return;
      }
      for (int64_t r = it.s0; r < it.s1; ++r) {
        bad |= select_row(src, r * in.len, in.len, k_of(in, r), in.op.out + r * in.len, w);
      }
    });
    if (bad) note_nan(nan, in.op.index);
  });
  select_all_long(inputs, limit, kind, nan);
  const int64_t lowest = nan.load();
  return lowest == std::numeric_limits<int64_t>::max() ? -1 : lowest;
}

}  // namespace cpu
}  // namespace sparseforce
