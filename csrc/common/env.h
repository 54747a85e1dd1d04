// Tuning and testing knobs read from the environment per call (plain C++: the CUDA emulator
// compiles csrc/cuda/host.cpp without torch).
#pragma once

#include <cstdint>
#include <cstdlib>

namespace sparseforce {

// The integer in the environment variable `name`, or `fallback` when it is unset, empty or not
// an integer.
inline int64_t env_int(const char* name, int64_t fallback) {
  const char* s = std::getenv(name);
  if (s == nullptr || *s == '\0') return fallback;
  char* end = nullptr;
  const long long v = std::strtoll(s, &end, 10);
  return *end == '\0' ? static_cast<int64_t>(v) : fallback;
}

}  // namespace sparseforce
