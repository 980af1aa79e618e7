// The patcher's primitives (text_patch.cc and its parts): raw system calls, clocks, code
// bytes read and written with single instructions, and a signal context's ip. None calls
// libc or allocates: all of them run inside the window, while sites spin.
#pragma once

#include <signal.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include <cstdint>

namespace hp::core::patching {

inline constexpr std::uint8_t kInt3 = 0xCC;
inline constexpr std::uintptr_t kPage = 4096;

// System calls made while a transaction is in flight go through `syscall` directly: the
// libc wrappers (and malloc, and every libc function) may be sites of the batch, and a
// patcher that runs into one of its own spinning sites would spin forever.
inline long raw_syscall(long nr, long a = 0, long b = 0, long c = 0, long d = 0) {
  long ret;
  register long r10 __asm__("r10") = d;
  __asm__ volatile("syscall"
                   : "=a"(ret)
                   : "a"(nr), "D"(a), "S"(b), "d"(c), "r"(r10)
                   : "rcx", "r11", "memory");
  return ret;
}

inline pid_t raw_gettid() {
  return static_cast<pid_t>(raw_syscall(SYS_gettid));
}
inline pid_t raw_getpid() {
  return static_cast<pid_t>(raw_syscall(SYS_getpid));
}

inline std::int64_t now_ns() {
  timespec t{};
  raw_syscall(SYS_clock_gettime, CLOCK_MONOTONIC, reinterpret_cast<long>(&t));
  return std::int64_t{t.tv_sec} * 1000000000 + t.tv_nsec;
}

inline void pause_ns(long ns) {
  timespec t{0, ns};
  raw_syscall(SYS_nanosleep, reinterpret_cast<long>(&t), 0);
}

// CPU time another thread of this process has used, in ns (its CPUCLOCK_SCHED clock,
// exact to the moment: it includes the slice it is running now); -1 once it is gone.
inline std::int64_t thread_cpu_ns(pid_t tid) {
  const auto clock = static_cast<long>((~static_cast<unsigned long>(tid) << 3) | 6);
  timespec t{};
  if (raw_syscall(SYS_clock_gettime, clock, reinterpret_cast<long>(&t)) != 0) return -1;
  return std::int64_t{t.tv_sec} * 1000000000 + t.tv_nsec;
}

// Code bytes are written and read with plain instructions in asm: sanitizers have no
// shadow for another module's text (ThreadSanitizer faults on it), and no thread of
// this process reads code as data, so there is nothing for them to check.
inline void write_byte(std::uintptr_t addr, std::uint8_t b) {
  // A single byte store is atomic: a thread fetching the instruction sees the old or the
  // new byte.
  __asm__ volatile("movb %1, %0"
                   : "=m"(*reinterpret_cast<std::uint8_t*>(addr))
                   : "q"(b)
                   : "memory");
}

inline std::uint8_t read_code_byte(std::uintptr_t addr) {
  std::uint8_t b;
  __asm__ volatile("movb %1, %0" : "=q"(b) : "m"(*reinterpret_cast<const std::uint8_t*>(addr)));
  return b;
}

// The interrupted thread's rip in a signal context (greg_t is a signed 64-bit integer).
struct CtxRip {
  greg_t& g;
  operator std::uintptr_t() const { return static_cast<std::uintptr_t>(g); }  // NOLINT
  CtxRip& operator=(std::uintptr_t v) {
    g = static_cast<greg_t>(v);
    return *this;
  }
};
inline CtxRip ctx_rip(void* uc) {
  return {static_cast<ucontext_t*>(uc)->uc_mcontext.gregs[REG_RIP]};
}

}  // namespace hp::core::patching
