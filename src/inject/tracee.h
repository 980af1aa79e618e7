// One seized thread of another process, and remote calls on it. Private to src/inject.
//
// Lifecycle: seize() -> interrupt() [the thread is stopped; its state is saved] ->
// call()... -> restore_and_detach(). The destructor detaches after restoring if the
// caller returned early, so no path leaves the thread stopped or running our frame.
#pragma once

#include <sys/types.h>
#include <sys/user.h>

#include <chrono>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "base/error.h"

namespace hp::inject {

using Clock = std::chrono::steady_clock;

// The return address of every remote call: below vm.mmap_min_addr's default (64 KiB), so
// never mapped, and distinctive in a fault's si_addr.
inline constexpr std::uintptr_t kReturnTrap = 0xbad0;

class Tracee {
 public:
  Tracee(pid_t pid, pid_t tid, Clock::time_point deadline)
      : pid_(pid), tid_(tid), deadline_(deadline) {}
  Tracee(const Tracee&) = delete;
  Tracee& operator=(const Tracee&) = delete;
  ~Tracee();

  pid_t tid() const { return tid_; }
  // PTRACE_SEIZE; nothing stops yet.
  Result<void> seize();
  // PTRACE_INTERRUPT and wait for the stop; saves registers, vector state, signal mask.
  Result<void> interrupt();
  // Time since interrupt() was issued; and how long the thread took to stop.
  double stopped_ms() const;
  double stop_latency_ms() const { return stop_latency_ms_; }

  const user_regs_struct& saved() const { return saved_; }
  // The thread was stopped in a system call that the kernel will restart when it resumes
  // (rax holds -ERESTART*).
  bool in_restartable_syscall() const;

  // Calls fn(args...) (up to 6 integer arguments) on the thread's stack; `data` is copied
  // below the red zone first and its address replaces any argument equal to kDataArg.
  static constexpr std::uint64_t kDataArg = ~0ull - 0x5a;
  Result<std::uint64_t> call(std::uintptr_t fn, std::span<const std::uint64_t> args,
                             std::span<const char> data = {});

  // Up to `max` bytes of the NUL-terminated string at `addr` in the target.
  Result<std::string> read_string(std::uintptr_t addr, std::size_t max = 4096);
  Result<void> read_memory(std::uintptr_t addr, void* out, std::size_t len);
  Result<void> write_memory(std::uintptr_t addr, const void* in, std::size_t len);

  // Puts back registers, vector state and signal mask, and detaches: a thread that was
  // in a restartable system call restarts it.
  Result<void> restore_and_detach();
  // Detaches without touching anything (the thread was not redirected).
  Result<void> detach();

 private:
  enum class Stop { interrupt, trap };
  enum class Want { interrupt, trap, either };
  // Waits for the thread's next stop of the wanted kind until the deadline, passing on
  // signals that are not ours. trap: the fault at kReturnTrap; interrupt: a
  // PTRACE_EVENT_STOP (ours, or a group-stop).
  Result<Stop> wait_stop(Want want);
  Error gone_error(int status) const;
  Error ptrace_error(const char* what, int err) const;
  Result<void> set_regs(const user_regs_struct& regs);

  pid_t pid_;
  pid_t tid_;
  Clock::time_point deadline_;
  Clock::time_point interrupted_at_{};
  double stop_latency_ms_ = 0;
  bool seized_ = false;
  bool stopped_ = false;
  bool redirected_ = false;  // registers changed since interrupt(): restore before detach
  bool gone_ = false;
  user_regs_struct saved_{};
  std::vector<std::uint8_t> xstate_;  // NT_X86_XSTATE image (empty: fpregs_ used)
  user_fpregs_struct fpregs_{};
  std::uint64_t sigmask_ = 0;
  bool have_sigmask_ = false;
};

}  // namespace hp::inject
