// The run pass's clock, behind `nsecs` and `elapsed` (docs/design/script-runtime.md, "The
// clock"): CLOCK_MONOTONIC, read through a TSC calibrated once per process where the TSC is
// invariant (HOTPROBE_SCRIPT_CLOCK=vdso forces clock_gettime). eval.h's monotonic_ns() is
// clock::now(); node functions call now() here, inlined.
#pragma once

#include <x86intrin.h>

#include <cstdint>
#include <ctime>

namespace hotprobe::script::clock {

struct TscClock {
  bool use_tsc = false;
  std::uint64_t tsc0 = 0;
  std::int64_t ns0 = 0;
  std::uint64_t mult = 0;  // ns per tick, fixed point 32.32
};
// Hidden: read with one RIP-relative load, not through the GOT, in the agent's shared object.
extern TscClock g_clock __attribute__((visibility("hidden")));

inline std::int64_t clock_gettime_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

inline std::int64_t now() {
  if (g_clock.use_tsc) [[likely]] {
    const std::uint64_t d = __rdtsc() - g_clock.tsc0;
    return g_clock.ns0 +
           static_cast<std::int64_t>((static_cast<unsigned __int128>(d) * g_clock.mult) >> 32);
  }
  return clock_gettime_ns();
}

// Calibrates the TSC against clock_gettime, once per process (5 ms).
void calibrate_once();

}  // namespace hotprobe::script::clock
