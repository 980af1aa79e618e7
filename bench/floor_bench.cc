// floor_bench: what no probe implementation on this machine can go below, measured with no
// probe at all, for the figures the README and the closing notes compare against.
//  - a hijacked return: a function that swaps its return address for a landing pad that
//    jumps back (what every return probe does: the ret then mispredicts), against a plain
//    call and return;
//  - a timestamp: rdtsc, rdtscp and clock_gettime(CLOCK_MONOTONIC), what a script's
//    `nsecs` costs at the least.
// Pinned to one CPU when it can be; min over 7 repetitions of 10,000,000 calls; prints,
// never asserts.
#include <sched.h>
#include <time.h>
#include <x86intrin.h>

#include <chrono>
#include <cstdint>
#include <cstdio>

extern "C" void hp_floor_plain();
extern "C" void hp_floor_hijacked();
extern "C" void hp_floor_balanced();

// clang-format off
asm(R"(
  .text
  .p2align 4
hp_floor_plain:
  ret
  .p2align 4
hp_floor_hijacked:              # keep the return address, return to the pad instead
  movq    (%rsp), %rax
  movq    %rax, hp_floor_saved(%rip)
  leaq    hp_floor_pad(%rip), %rax
  movq    %rax, (%rsp)
  ret                           # the return stack buffer says: the caller
hp_floor_pad:
  jmp     *hp_floor_saved(%rip)
  .p2align 4
hp_floor_balanced:              # the same, but a call pushes the pad on the return stack
  movq    (%rsp), %rax          # buffer too (what hotprobe's entry trampolines do), and
  movq    %rax, hp_floor_saved(%rip)  # the pad leaves by ret, popping the caller's entry
  leaq    hp_floor_bpad(%rip), %rax
  movq    %rax, (%rsp)
  call    1f
hp_floor_bpad:
  pushq   hp_floor_saved(%rip)
  ret
1:
  leaq    8(%rsp), %rsp
  ret                           # predicted: the pad
  .data
  .p2align 3
hp_floor_saved:
  .quad 0
  .text
)");
// clang-format on

namespace {

constexpr int kCalls = 10'000'000;
volatile std::uint64_t g_sink;

template <class F>
double min_ns(F f) {
  double best = 1e30;
  for (int r = 0; r < 7; r++) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < kCalls; i++)
      f();
    const auto t1 = std::chrono::steady_clock::now();
    const double ns = std::chrono::duration<double, std::nano>(t1 - t0).count() / kCalls;
    if (ns < best) best = ns;
  }
  return best;
}

}  // namespace

int main() {
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(0, &one);
  const bool pinned = sched_setaffinity(0, sizeof one, &one) == 0;
  const double plain = min_ns([] { hp_floor_plain(); });
  const double hijacked = min_ns([] { hp_floor_hijacked(); });
  const double balanced = min_ns([] { hp_floor_balanced(); });
  const double tsc = min_ns([] { g_sink = g_sink + __rdtsc(); });
  const double tscp = min_ns([] {
    unsigned aux;
    g_sink = g_sink + __rdtscp(&aux);
  });
  const double cgt = min_ns([] {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    g_sink = g_sink + static_cast<std::uint64_t>(ts.tv_nsec);
  });
  std::printf("floor_bench (min of 7 x %d, %s)\n", kCalls,
              pinned ? "pinned to CPU 0" : "not pinned");
  std::printf("  call + ret                 %6.2f ns\n", plain);
  std::printf("  call + hijacked ret        %6.2f ns  (+%.2f ns: the return-probe floor)\n",
              hijacked, hijacked - plain);
  std::printf(
      "  ... with the pad pushed    %6.2f ns  (+%.2f ns: a call puts the pad on the return\n"
      "                                        stack buffer, the pad leaves by ret)\n",
      balanced, balanced - plain);
  std::printf("  rdtsc                      %6.2f ns\n", tsc);
  std::printf("  rdtscp                     %6.2f ns\n", tscp);
  std::printf("  clock_gettime(MONOTONIC)   %6.2f ns\n", cgt);
}
