#include "script/run_clock.h"

#include <cpuid.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <string>

#include "script/eval.h"

namespace hotprobe::script {
namespace clock {

TscClock g_clock;

namespace {

std::once_flag g_clock_once;

bool tsc_invariant() {
  unsigned a, b, c, d;
  if (__get_cpuid(0x80000007, &a, &b, &c, &d) && (d & (1u << 8))) return true;
  // Hypervisors often hide the CPUID bit; the kernel's flags say what it found.
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("flags", 0) == 0) {
      return line.find(" constant_tsc") != std::string::npos &&
             line.find(" nonstop_tsc") != std::string::npos;
    }
  }
  return false;
}

// A (tsc, ns) pair taken as close together as possible: the ns read bracketed by two TSC
// reads, the tightest of a few tries.
void sample(std::uint64_t& tsc, std::int64_t& ns) {
  std::uint64_t best = ~0ull;
  for (int i = 0; i < 5; ++i) {
    const std::uint64_t t0 = __rdtsc();
    const std::int64_t n = clock_gettime_ns();
    const std::uint64_t t1 = __rdtsc();
    if (t1 - t0 < best) {
      best = t1 - t0;
      tsc = t0 + (t1 - t0) / 2;
      ns = n;
    }
  }
}

void calibrate() {
  const char* env = std::getenv("HOTPROBE_SCRIPT_CLOCK");
  if ((env && std::strcmp(env, "vdso") == 0) || !tsc_invariant()) return;
  std::uint64_t t0, t1;
  std::int64_t n0, n1;
  sample(t0, n0);
  // 5 ms of calibration once per process: a ratio error near 1e-5.
  do {
    sample(t1, n1);
  } while (n1 - n0 < 5'000'000);
  if (t1 <= t0) return;
  g_clock.mult =
      static_cast<std::uint64_t>((static_cast<unsigned __int128>(n1 - n0) << 32) / (t1 - t0));
  g_clock.tsc0 = t1;
  g_clock.ns0 = n1;
  g_clock.use_tsc = true;
}

}  // namespace

void calibrate_once() {
  std::call_once(g_clock_once, calibrate);
}

}  // namespace clock

std::int64_t monotonic_ns() {
  return clock::now();
}

bool clock_uses_tsc() {
  return clock::g_clock.use_tsc;
}

}  // namespace hotprobe::script
