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

// The return stub (docs/design/inject.md, "The call puts the thread back itself"): a
// position-independent piece of code written once into the zero padding after the end of
// an executable segment of the target (libc's, usually). The thread is sent there with
// the call's registers; the stub saves the vector state (xsave), calls the function, calls
// the error function when the result is 0, then sends its own thread the marker signal
// (tgkill) with the results in r13 and r15, restores the vector state and every register
// and flag from a block on the thread's stack and returns to where the thread was
// (re-entering an interrupted system call). The marker signal is one whose action in the
// target is to do nothing (SIGURG, SIGWINCH or SIGCHLD, not caught and not blocked): a
// tracer sees it as a signal-delivery-stop and discards it, and without a tracer the
// kernel drops it at once. When each is caught or blocked, the signal is 0 (tgkill only
// checks the thread exists) and the injector stops the thread at that system call with
// PTRACE_SYSCALL instead, at the cost of a stop for each system call of the call. So the
// thread never depends on hotprobe to be put back: whenever hotprobe dies, the kernel
// detaches it and the stub finishes.
struct ReturnStub {
  static std::span<const std::uint8_t> code();
  static constexpr std::size_t kMarkerOffset = 0x5d;  // just after the tgkill
  static constexpr long kMarkerSyscall = 234;         // tgkill
};

// The return address of the legacy variant (Options::test_sentinel_return, tests only):
// the stub's block returns there and hotprobe restores the thread from the fault, as the
// injector did before the stub; a hotprobe that dies during the call kills the process.
inline constexpr std::uintptr_t kReturnTrap = 0xbad0;

// What a remote call returned: the function's value, and when it was 0 and an error
// function was given, that function's (a pointer, e.g. dlerror()'s text).
struct CallResult {
  std::uint64_t value = 0;
  std::uint64_t error_value = 0;
};

class Tracee {
 public:
  Tracee(pid_t pid, pid_t tid, Clock::time_point deadline)
      : pid_(pid), tid_(tid), deadline_(deadline) {}
  Tracee(const Tracee&) = delete;
  Tracee& operator=(const Tracee&) = delete;
  ~Tracee();

  pid_t tid() const { return tid_; }
  // The thread exited while we waited for it (its exit was reported to us, its tracer).
  bool gone() const { return gone_; }
  // The thread's process ended while we waited: its waitpid status (-1: not seen here).
  int end_status() const { return end_status_; }
  // PTRACE_SEIZE; nothing stops yet.
  Result<void> seize();
  // A thread this process seized itself (a child it started, seized before its exec):
  // from here on this object detaches it.
  void adopt_seized() { seized_ = true; }
  // The thread exec'd: a thread other than the leader takes the leader's id in the exec.
  void exec_took_leader_id() { tid_ = pid_; }
  // The thread is in a ptrace stop the caller waited for (a breakpoint's SIGTRAP): saves
  // its state as interrupt() does, so that call() and restore_and_detach() work from it.
  Result<void> adopt_stop();
  // PTRACE_INTERRUPT and wait for the stop; saves registers, vector state, signal mask.
  Result<void> interrupt();
  // Time since interrupt() was issued; and how long the thread took to stop.
  double stopped_ms() const;
  double stop_latency_ms() const { return stop_latency_ms_; }

  const user_regs_struct& saved() const { return saved_; }
  // The thread was stopped in a system call that the kernel will restart when it resumes
  // (rax holds -ERESTART*).
  bool in_restartable_syscall() const;

  // Calls fn(args...) (up to 6 integer arguments) through the return stub at `stub` on
  // the thread's stack; `data` is copied below the red zone first and its address
  // replaces any argument equal to kDataArg. When fn returns 0 and `error_fn` is not 0,
  // error_fn() is called too (dlerror). One call per stop: once the thread ran into the
  // stub, the stub puts it back, and the only thing left to do is detach().
  // `sentinel_return` selects the legacy variant (tests only, see kReturnTrap).
  static constexpr std::uint64_t kDataArg = ~0ull - 0x5a;  // = kDataArgument (inject.h)
  Result<CallResult> call(std::uintptr_t stub, std::uintptr_t fn,
                          std::span<const std::uint64_t> args, std::span<const char> data = {},
                          std::uintptr_t error_fn = 0, bool sentinel_return = false);

  // Up to `max` bytes of the NUL-terminated string at `addr` in the target.
  Result<std::string> read_string(std::uintptr_t addr, std::size_t max = 4096);
  Result<void> read_memory(std::uintptr_t addr, void* out, std::size_t len);
  Result<void> write_memory(std::uintptr_t addr, const void* in, std::size_t len);

  // Puts back the registers if they were changed and the thread did not enter the stub
  // (the stub restores by itself once it runs), and detaches.
  Result<void> restore_and_detach();
  // Detaches without touching anything (the thread was not redirected).
  Result<void> detach();

 private:
  enum class Stop { interrupt, trap };
  enum class Want { interrupt, trap, fault, either };
  // The marker signal for this thread (see ReturnStub), 0 when none is free.
  int choose_marker_signal() const;
  // Waits for the thread's next stop of the wanted kind until the deadline, passing on
  // signals that are not ours. trap: the marker system call of the stub (or, in the
  // legacy variant, the fault at kReturnTrap); interrupt: a PTRACE_EVENT_STOP (ours, or a
  // group-stop).
  Result<Stop> wait_stop(Want want);
  Error gone_error(int status) const;
  Error ptrace_error(const char* what, int err) const;
  Result<void> set_regs(const user_regs_struct& regs);
  // Saves registers, vector state and signal mask of the stopped thread.
  Result<void> save_state();

  pid_t pid_;
  pid_t tid_;
  Clock::time_point deadline_;
  Clock::time_point interrupted_at_{};
  double stop_latency_ms_ = 0;
  bool seized_ = false;
  bool stopped_ = false;
  bool redirected_ = false;  // registers changed since interrupt(): restore before detach
  bool in_stub_ = false;     // the thread runs (or ran) the stub: it restores itself
  bool sentinel_ = false;    // legacy variant: wait for the fault at kReturnTrap
  std::uintptr_t marker_rip_ = 0;
  int marker_signal_ = 0;  // 0: the marker is the tgkill system call (PTRACE_SYSCALL)
  bool gone_ = false;
  int end_status_ = -1;
  user_regs_struct saved_{};
  std::vector<std::uint8_t> xstate_;  // NT_X86_XSTATE image (empty: fpregs_ used)
  user_fpregs_struct fpregs_{};
  std::uint64_t sigmask_ = 0;
  bool have_sigmask_ = false;
};

}  // namespace hp::inject
