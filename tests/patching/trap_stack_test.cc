// The int3 path runs on hotprobe's handler stack: the SIGTRAP handler moves there before
// it does anything, so a trap takes only a fixed, small amount of the program's stack
// beside the kernel's signal frame. Measured on an 8 KiB sigaltstack filled with a
// pattern, inside a signal handler that calls an int3-mode probe (the case of a program
// that handles a signal on a small alternate stack): the lowest byte the trap touched,
// against the kernel's frame for a signal delivered at the same place.
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>

#include <gtest/gtest.h>

#include "hotprobe/probe.h"

// hp_ts_leaf: lea rax, [rdi + 1]; ret
asm(R"(
  .pushsection .text
  .p2align 4
  .globl hp_ts_leaf
  .type hp_ts_leaf, @function
hp_ts_leaf:
  .cfi_startproc
  leaq 1(%rdi), %rax
  ret
  .cfi_endproc
  .size hp_ts_leaf, .-hp_ts_leaf
  .popsection
)");

extern "C" long hp_ts_leaf(long x);

namespace {

constexpr std::size_t kPage = 4096;
constexpr std::size_t kAltSize = 8 * 1024;
constexpr std::uint8_t kPattern = 0xA5;

std::uint8_t* g_alt = nullptr;            // the sigaltstack's lowest byte
std::atomic<std::uintptr_t> g_before{0};  // an address in the handler's frame, before the call
std::atomic<std::uintptr_t> g_inner{0};   // a local of the SIGUSR1 handler (the kernel's frame)
std::atomic<long> g_calls{0}, g_bad{0};
bool g_raise_inner = false;

__attribute__((no_sanitize("address"))) void inner_handler(int) {
  volatile char here = 0;
  g_inner = reinterpret_cast<std::uintptr_t>(&here);
}

// On the sigaltstack: records where it is, then calls the probed function (a trap) or
// raises SIGUSR1 (the kernel's frame at the same depth, for comparison).
__attribute__((noinline, no_sanitize("address"))) void outer_handler(int) {
  volatile char here = 0;
  g_before = reinterpret_cast<std::uintptr_t>(&here);
  if (g_raise_inner) {
    pthread_kill(pthread_self(), SIGUSR1);
    return;
  }
  const long x = g_calls.fetch_add(1);
  if (hp_ts_leaf(x) != x + 1) g_bad++;
}

// The lowest byte of the sigaltstack that is not the pattern any more.
std::uintptr_t lowest_touched() {
  for (std::size_t i = 0; i < kAltSize; i++) {
    if (g_alt[i] != kPattern) return reinterpret_cast<std::uintptr_t>(g_alt + i);
  }
  return reinterpret_cast<std::uintptr_t>(g_alt + kAltSize);
}

// Delivers SIGUSR2 on the sigaltstack once, the stack filled with the pattern first; the
// bytes below the handler's frame that the delivery touched.
std::size_t depth_of_one_delivery() {
  std::memset(g_alt, kPattern, kAltSize);
  pthread_kill(pthread_self(), SIGUSR2);  // delivered before pthread_kill returns
  return g_before.load() - lowest_touched();
}

void on_entry(hotprobe::Hit&) {
  volatile char big[4096];  // a handler with a frame larger than what is left
  for (std::size_t i = 0; i < sizeof big; i += 256)
    big[i] = 1;
}

TEST(TrapStack, TheTrapPathUsesAFixedSmallPartOfTheProgramsStack) {
#if defined(HOTPROBE_TSAN)
  // TSan runs signal handlers it deferred with every signal blocked, and the kernel kills
  // a thread whose int3 traps while SIGTRAP is blocked.
  GTEST_SKIP() << "int3 probes cannot fire inside TSan-deferred signal handlers";
#endif
  void* map =
      mmap(nullptr, kAltSize + kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(map, MAP_FAILED);
  ASSERT_EQ(mprotect(map, kPage, PROT_NONE), 0);  // a frame below the stack faults
  g_alt = static_cast<std::uint8_t*>(map) + kPage;
  stack_t ss{}, old_ss{};
  ss.ss_sp = g_alt;
  ss.ss_size = kAltSize;
  ASSERT_EQ(sigaltstack(&ss, &old_ss), 0);
  struct sigaction sa {};
  struct sigaction old_usr1 {};
  struct sigaction old_usr2 {};
  sa.sa_handler = inner_handler;
  sa.sa_flags = SA_ONSTACK | SA_RESTART;
  sigemptyset(&sa.sa_mask);
  ASSERT_EQ(sigaction(SIGUSR1, &sa, &old_usr1), 0);
  sa.sa_handler = outer_handler;
  ASSERT_EQ(sigaction(SIGUSR2, &sa, &old_usr2), 0);

  // The kernel's frame of a signal delivered inside the handler.
  g_raise_inner = true;
  const std::size_t signal_only = depth_of_one_delivery();
  g_raise_inner = false;

  auto e = hotprobe::Engine::create().value();
  hotprobe::ProbeSpec s;
  s.target = ":hp_ts_leaf";
  s.on_entry = &on_entry;
  s.patch = hotprobe::PatchMode::int3;
  auto h = e->attach(s);
  ASSERT_TRUE(h.ok()) << h.error().message();
  // The first hit allocates the thread's handler stack (on the program's stack: there is
  // no other yet); the others switch to it at once.
  const std::size_t first = depth_of_one_delivery();
  std::size_t trap = 0;
  for (int i = 1; i < 50; i++)
    trap = std::max(trap, depth_of_one_delivery());
  ASSERT_TRUE(e->detach(*h).ok());
  sigaction(SIGUSR2, &old_usr2, nullptr);
  sigaction(SIGUSR1, &old_usr1, nullptr);
  sigaltstack(&old_ss, nullptr);
  munmap(map, kAltSize + kPage);

  EXPECT_EQ(g_calls.load(), 50);
  EXPECT_EQ(g_bad.load(), 0);
  const long hotprobe_part = static_cast<long>(trap) - static_cast<long>(signal_only);
  const long first_part = static_cast<long>(first) - static_cast<long>(signal_only);
  std::printf(
      "program stack below the handler: a plain signal %zu bytes, an int3 probe's trap "
      "%zu bytes: hotprobe's part %ld bytes (the thread's first hit: %ld)\n",
      signal_only, trap, hotprobe_part, first_part);
  EXPECT_LE(hotprobe_part, 256) << "the trap path runs on the program's stack";
  EXPECT_LE(first_part, 1024) << "the first hit's allocation runs on the program's stack";
}

}  // namespace
