// The move signal takes the thread's alternate signal stack: a thread that runs on a small
// stack with a sigaltstack of its own (a goroutine: Go gives every thread a 32 KiB signal
// stack and keeps goroutine stacks of 2 KiB and up next to each other in its heap) must
// not find the kernel's signal frame (about 3 KiB with the AVX-512 state) below its stack
// pointer, where it would write over the goroutine below.
//
// A thread with a sigaltstack fills 8 KiB of its stack below its frame with a pattern and
// spins without a call while a site is patched: the patcher signals it (it runs), and
// the pattern below its stack pointer must be intact, the alternate stack's touched.
#include <signal.h>
#include <sys/mman.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <thread>

#include <gtest/gtest.h>

#include "race_code.h"

namespace {

constexpr std::uint64_t kPattern = 0x5a5a1234a5a54321;
constexpr std::size_t kAltSize = 64 * 1024;

// 8 KiB of the stack below the caller's frame, filled with the pattern.
__attribute__((noinline, no_sanitize_address)) void fill_below() {
  volatile std::uint64_t a[1024];
  for (auto& w : a)
    w = kPattern;
}

// Spins until `stop` (no call, no stack use), then returns the offset below its stack
// pointer of the first word of the pattern that changed, or 0.
__attribute__((noinline, no_sanitize_address)) std::uintptr_t spin_then_check(
    std::atomic<bool>& spinning, std::atomic<bool>& stop) {
  std::uintptr_t sp;
  __asm__ volatile("mov %%rsp, %0" : "=r"(sp));
  spinning.store(true, std::memory_order_release);
  while (!stop.load(std::memory_order_acquire)) {
  }
  // Below the red zone, down to 6 KiB.
  for (std::uintptr_t off = 256; off < 6 * 1024; off += 8) {
    if (*reinterpret_cast<volatile std::uint64_t*>(sp - off) != kPattern) return off;
  }
  return 0;
}

TEST(SignalStack, MoveSignalTakesTheThreadsAlternateStack) {
#if defined(HOTPROBE_TSAN)
  // TSan runs handlers late, from its own interceptor, not from the kernel's frame.
  GTEST_SKIP() << "signal frames are ThreadSanitizer's own";
#endif
#if defined(__SANITIZE_ADDRESS__)
  // ASan may put fill_below's array on a fake stack, and its redzones are not the pattern.
  GTEST_SKIP() << "the stack below a frame is AddressSanitizer's";
#endif
  auto* alt = static_cast<std::uint64_t*>(
      mmap(nullptr, kAltSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(alt, MAP_FAILED);
  for (std::size_t i = 0; i < kAltSize / 8; i++)
    alt[i] = kPattern;
  std::atomic<bool> spinning{false}, stop{false};
  std::uintptr_t written = 1;
  std::thread spinner([&] {
    stack_t ss{};
    ss.ss_sp = alt;
    ss.ss_size = kAltSize;
    if (sigaltstack(&ss, nullptr) != 0) return;
    fill_below();
    written = spin_then_check(spinning, stop);
    ss.ss_flags = SS_DISABLE;
    sigaltstack(&ss, nullptr);
  });
  while (!spinning.load(std::memory_order_acquire))
    std::this_thread::yield();
  // A site with an instruction boundary inside: the patcher looks at every thread, and
  // signals the ones it finds running (the spinner never leaves the CPU's run queue).
  hp_test::RaceCode code(hp_test::two_byte_first(), 0);
  unsigned signalled = 0;
  for (int round = 0; round < 20 && signalled == 0; round++) {
    hp::core::PatchSite on = code.attach();
    auto a = hp::core::apply_patches({&on, 1});
    ASSERT_TRUE(a.ok()) << a.error().message();
    signalled += a->threads_signalled;
    hp::core::PatchSite off = code.detach();
    auto d = hp::core::apply_patches({&off, 1});
    ASSERT_TRUE(d.ok()) << d.error().message();
  }
  stop.store(true, std::memory_order_release);
  spinner.join();
  EXPECT_GT(signalled, 0u) << "the spinner was never signalled";
  EXPECT_EQ(written, 0u) << "a signal frame was written " << written
                         << " bytes below the spinner's stack pointer";
  std::size_t touched = 0;
  for (std::size_t i = 0; i < kAltSize / 8; i++)
    touched += alt[i] != kPattern;
  EXPECT_GT(touched, 0u) << "the move signal did not run on the alternate stack";
  munmap(alt, kAltSize);
}

}  // namespace
