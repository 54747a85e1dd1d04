// Order-preserving unsigned keys of floats: a > b as floats <=> key(a) > key(b) as integers, for
// every non-NaN value (±inf included), with -0.0 and +0.0 mapped to the same key. Radix select
// then works on plain integer digits. Written branch-free so key loops vectorise.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

namespace sparseforce {

template <typename U>
constexpr U sign_bit() {
  return U(U(1) << (sizeof(U) * 8 - 1));
}

// Positive: set the sign bit so they sort above every negative. Negative: flip every bit so a
// larger magnitude sorts lower.
template <typename U>
inline U order_bits(U bits) {
  using S = std::make_signed_t<U>;
  const U neg = static_cast<U>(static_cast<S>(bits) >> (sizeof(U) * 8 - 1));  // all ones if negative
  return static_cast<U>(bits ^ (neg | sign_bit<U>()));
}

template <typename U>
inline U unorder_bits(U key) {
  return (key & sign_bit<U>()) ? U(key ^ sign_bit<U>()) : U(~key);
}

// Key type of each ranking dtype; fp16/bf16 rank on their own 16 bits.
template <typename P> struct KeyOf;
template <> struct KeyOf<float> { using type = uint32_t; static constexpr uint32_t inf_bits = 0x7f800000u; };
template <> struct KeyOf<double> { using type = uint64_t; static constexpr uint64_t inf_bits = 0x7ff0000000000000ull; };
template <> struct KeyOf<c10::Half> { using type = uint16_t; static constexpr uint16_t inf_bits = 0x7c00u; };
template <> struct KeyOf<c10::BFloat16> { using type = uint16_t; static constexpr uint16_t inf_bits = 0x7f80u; };
template <typename P> using key_t = typename KeyOf<P>::type;

// NaN keys lie above +inf's key or below -inf's, so NaN is found on the keys alone.
template <typename P>
inline bool is_nan_key(key_t<P> key) {
  using U = key_t<P>;
  constexpr U pos_inf = U(KeyOf<P>::inf_bits | sign_bit<U>());
  constexpr U neg_inf = U(~pos_inf);
  return key > pos_inf || key < neg_inf;
}

inline uint32_t float_key(float v) {
  v += 0.0f;  // -0.0 + 0.0 == +0.0 under round-to-nearest: canonicalises the zero
  uint32_t b;
  std::memcpy(&b, &v, sizeof b);
  return order_bits(b);
}

inline uint64_t float_key(double v) {
  v += 0.0;
  uint64_t b;
  std::memcpy(&b, &v, sizeof b);
  return order_bits(b);
}

inline uint16_t half_bits_key(uint16_t bits) {
  bits = bits == 0x8000u ? uint16_t(0) : bits;
  return order_bits(bits);
}

inline uint16_t float_key(c10::Half v) { return half_bits_key(v.x); }
inline uint16_t float_key(c10::BFloat16 v) { return half_bits_key(v.x); }

// The key of |v| (drop_grow_masks ranks magnitudes): the key of v with its sign bit cleared, so
// -0.0 and +0.0 share one and every key is a non-negative float's. fp32/fp64 go through
// float_key (v + 0, as the fp32 SSE2 passes form keys) so that a signalling NaN keys alike on
// both.
inline uint32_t magnitude_key(float v) { return float_key(std::abs(v)); }
inline uint64_t magnitude_key(double v) { return float_key(std::abs(v)); }
inline uint16_t magnitude_key(c10::Half v) { return order_bits(uint16_t(v.x & 0x7fffu)); }
inline uint16_t magnitude_key(c10::BFloat16 v) { return order_bits(uint16_t(v.x & 0x7fffu)); }

// The exact float/double value of an fp16/bf16/fp32/fp64 element (widening is exact).
inline float widen(c10::Half v) { return static_cast<float>(v); }
inline float widen(c10::BFloat16 v) { return static_cast<float>(v); }
inline float widen(float v) { return v; }
inline double widen(double v) { return v; }

}  // namespace sparseforce
