#include "inject/tracee.h"

#include <elf.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

namespace hp::inject {

namespace {

// Kernel-internal return values a syscall interrupted by a signal (or a ptrace stop)
// leaves in rax until the restart fixup on the way back to user mode
// (arch/x86/kernel/signal.c, arch_do_signal_or_restart).
constexpr long kErestartSys = 512;
constexpr long kErestartNoIntr = 513;
constexpr long kErestartNoHand = 514;
constexpr long kErestartRestartBlock = 516;

constexpr std::size_t kXstateMax = 32 * 1024;  // AMX tiles included, with room to spare
constexpr unsigned long long kSigsegvBit = 1ull << (SIGSEGV - 1);

std::string signal_name(int sig) {
  const char* abbrev = ::sigabbrev_np(sig);
  return abbrev ? std::string("SIG") + abbrev : "signal " + std::to_string(sig);
}

// Polling backs off to 100 us: the stop is seen within that, and a wait of a few ms
// (a thread that must first be scheduled) costs a few dozen wake-ups.
void pause_briefly(long& ns) {
  timespec ts{0, ns};
  ::nanosleep(&ts, nullptr);
  if (ns < 100'000) ns *= 2;
}

}  // namespace

Tracee::~Tracee() {
  if (!seized_ || gone_) return;
  if (!stopped_ && redirected_) {
    // Returning early while our call runs: stop it and put the thread back.
    deadline_ = Clock::now() + std::chrono::milliseconds(500);
    if (::ptrace(PTRACE_INTERRUPT, tid_, 0, 0) == 0) {
      if (wait_stop(Want::either).ok()) stopped_ = true;
    }
  }
  if (stopped_) {
    (void)restore_and_detach();
  } else if (!gone_) {
    ::ptrace(PTRACE_DETACH, tid_, 0, 0);
  }
}

Error Tracee::gone_error(int status) const {
  std::string how = WIFEXITED(status)     ? "exit status " + std::to_string(WEXITSTATUS(status))
                    : WIFSIGNALED(status) ? "killed by " + signal_name(WTERMSIG(status))
                                          : "status " + std::to_string(status);
  return Error(Errc::not_found, "process " + std::to_string(pid_) + " (thread " +
                                    std::to_string(tid_) + ") exited during the injection (" + how +
                                    ")");
}

Error Tracee::ptrace_error(const char* what, int err) const {
  if (err == ESRCH) {
    return Error(Errc::not_found, "thread " + std::to_string(tid_) + " of process " +
                                      std::to_string(pid_) + " went away during the injection (" +
                                      what + ")");
  }
  return sys_error(std::string(what) + " on thread " + std::to_string(tid_) + " of process " +
                       std::to_string(pid_),
                   err);
}

namespace {

// Whether thread `tid` is exiting or gone within a few milliseconds: the kernel also
// answers PTRACE_SEIZE with EPERM for a task that is exiting.
bool exiting_soon(pid_t tid) {
  const std::string path = "/proc/" + std::to_string(tid) + "/status";
  for (int i = 0; i < 20; ++i) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return true;
    char buf[512];
    const ssize_t n = ::read(fd, buf, sizeof buf - 1);
    ::close(fd);
    if (n <= 0) return true;
    buf[n] = 0;
    const char* st = std::strstr(buf, "State:");
    if (st) {
      st += 6;
      while (*st == ' ' || *st == '\t')
        ++st;
      if (*st == 'Z' || *st == 'X') return true;
    }
    timespec ms{0, 1'000'000};
    ::nanosleep(&ms, nullptr);
  }
  return false;
}

}  // namespace

Result<void> Tracee::seize() {
  if (::ptrace(PTRACE_SEIZE, tid_, 0, 0) != 0) {
    const int err = errno;
    if (err == EPERM && exiting_soon(tid_)) {
      return Error(Errc::not_found, "process " + std::to_string(pid_) +
                                        " exited during the injection (it was exiting when "
                                        "hotprobe tried to stop it)");
    }
    if (err == EPERM) {
      return Error(Errc::permission_denied,
                   "the kernel refused to trace process " + std::to_string(pid_) +
                       " (PTRACE_SEIZE: EPERM): run as the process's user or as root "
                       "(CAP_SYS_PTRACE), and check kernel.yama.ptrace_scope and that the "
                       "process is dumpable");
    }
    if (err == ESRCH) {
      return Error(Errc::not_found, "no process with PID " + std::to_string(pid_) + " (thread " +
                                        std::to_string(tid_) + " is gone)");
    }
    return ptrace_error("PTRACE_SEIZE", err);
  }
  seized_ = true;
  return {};
}

double Tracee::stopped_ms() const {
  return std::chrono::duration<double, std::milli>(Clock::now() - interrupted_at_).count();
}

bool Tracee::in_restartable_syscall() const {
  if (static_cast<long>(saved_.orig_rax) < 0) return false;
  const long rax = static_cast<long>(saved_.rax);
  return rax == -kErestartSys || rax == -kErestartNoIntr || rax == -kErestartNoHand ||
         rax == -kErestartRestartBlock;
}

Result<Tracee::Stop> Tracee::wait_stop(Want want) {
  const bool expect_trap = want != Want::interrupt;
  long backoff_ns = 5'000;
  for (;;) {
    int status = 0;
    const pid_t r = ::waitpid(tid_, &status, __WALL | WNOHANG);
    if (r < 0) {
      if (errno == EINTR) continue;
      gone_ = true;
      return ptrace_error("waitpid", errno);
    }
    if (r == 0) {
      if (Clock::now() >= deadline_) {
        return Error(Errc::timed_out, "thread " + std::to_string(tid_) + " of process " +
                                          std::to_string(pid_) + " did not " +
                                          (want == Want::trap ? "return from the call" : "stop") +
                                          " in time");
      }
      pause_briefly(backoff_ns);
      continue;
    }
    if (WIFEXITED(status) || WIFSIGNALED(status)) {
      gone_ = true;
      return gone_error(status);
    }
    if (!WIFSTOPPED(status)) continue;
    const int sig = WSTOPSIG(status);
    const int event = status >> 16;
    if (event == PTRACE_EVENT_STOP) {
      // Our interrupt, or a group-stop (SIGSTOP and friends) that reached the thread.
      if (want != Want::trap) return Stop::interrupt;
      // During a call the thread finishes it first; the stop is not lost for the other
      // threads, and this one stops again at its next signal check after the detach.
      if (::ptrace(PTRACE_CONT, tid_, 0, 0) != 0) return ptrace_error("PTRACE_CONT", errno);
      continue;
    }
    if (event == 0 && sig == SIGSEGV && expect_trap) {
      siginfo_t si{};
      if (::ptrace(PTRACE_GETSIGINFO, tid_, 0, &si) != 0) {
        return ptrace_error("PTRACE_GETSIGINFO", errno);
      }
      if (reinterpret_cast<std::uintptr_t>(si.si_addr) == kReturnTrap) return Stop::trap;
    }
    // A signal for the program (or a fault in the called code): deliver it, as it would
    // have been without us.
    if (::ptrace(PTRACE_CONT, tid_, 0, event == 0 ? sig : 0) != 0) {
      return ptrace_error("PTRACE_CONT", errno);
    }
  }
}

Result<void> Tracee::interrupt() {
  interrupted_at_ = Clock::now();
  if (::ptrace(PTRACE_INTERRUPT, tid_, 0, 0) != 0) return ptrace_error("PTRACE_INTERRUPT", errno);
  auto st = wait_stop(Want::interrupt);
  stop_latency_ms_ = stopped_ms();
  if (!st.ok()) return st.error();
  stopped_ = true;
  if (::ptrace(PTRACE_GETREGS, tid_, 0, &saved_) != 0) return ptrace_error("PTRACE_GETREGS", errno);
  xstate_.resize(kXstateMax);
  iovec iov{xstate_.data(), xstate_.size()};
  if (::ptrace(PTRACE_GETREGSET, tid_, NT_X86_XSTATE, &iov) == 0) {
    xstate_.resize(iov.iov_len);
  } else {
    xstate_.clear();
    if (::ptrace(PTRACE_GETFPREGS, tid_, 0, &fpregs_) != 0) {
      return ptrace_error("PTRACE_GETFPREGS", errno);
    }
  }
  if (::ptrace(PTRACE_GETSIGMASK, tid_, sizeof sigmask_, &sigmask_) == 0) have_sigmask_ = true;
  return {};
}

Result<void> Tracee::set_regs(const user_regs_struct& regs) {
  if (::ptrace(PTRACE_SETREGS, tid_, 0, &regs) != 0) return ptrace_error("PTRACE_SETREGS", errno);
  return {};
}

Result<void> Tracee::write_memory(std::uintptr_t addr, const void* in, std::size_t len) {
  iovec local{const_cast<void*>(in), len};
  iovec remote{reinterpret_cast<void*>(addr), len};
  if (::process_vm_writev(tid_, &local, 1, &remote, 1, 0) == static_cast<ssize_t>(len)) return {};
  // Some security modules refuse process_vm_writev; a tracer may always poke.
  const auto* bytes = static_cast<const std::uint8_t*>(in);
  for (std::size_t i = 0; i < len; i += sizeof(long)) {
    long word = 0;
    const std::size_t n = std::min(sizeof word, len - i);
    if (n < sizeof word) {
      errno = 0;
      word = ::ptrace(PTRACE_PEEKDATA, tid_, addr + i, 0);
      if (errno != 0) return ptrace_error("PTRACE_PEEKDATA", errno);
    }
    std::memcpy(&word, bytes + i, n);
    if (::ptrace(PTRACE_POKEDATA, tid_, addr + i, word) != 0) {
      return ptrace_error("PTRACE_POKEDATA", errno);
    }
  }
  return {};
}

Result<void> Tracee::read_memory(std::uintptr_t addr, void* out, std::size_t len) {
  iovec local{out, len};
  iovec remote{reinterpret_cast<void*>(addr), len};
  if (::process_vm_readv(tid_, &local, 1, &remote, 1, 0) == static_cast<ssize_t>(len)) return {};
  auto* bytes = static_cast<std::uint8_t*>(out);
  for (std::size_t i = 0; i < len; i += sizeof(long)) {
    errno = 0;
    const long word = ::ptrace(PTRACE_PEEKDATA, tid_, addr + i, 0);
    if (errno != 0) return ptrace_error("PTRACE_PEEKDATA", errno);
    std::memcpy(bytes + i, &word, std::min(sizeof word, len - i));
  }
  return {};
}

Result<std::string> Tracee::read_string(std::uintptr_t addr, std::size_t max) {
  std::string out;
  while (out.size() < max) {
    // Read up to the end of the page, so a string ending before an unmapped page works.
    const std::size_t page_left = 4096 - ((addr + out.size()) & 4095);
    char buf[4096];
    const std::size_t n = std::min(page_left, max - out.size());
    HP_TRY(read_memory(addr + out.size(), buf, n));
    const void* nul = std::memchr(buf, 0, n);
    if (nul) {
      out.append(buf, static_cast<const char*>(nul) - buf);
      return out;
    }
    out.append(buf, n);
  }
  return out;
}

Result<std::uint64_t> Tracee::call(std::uintptr_t fn, std::span<const std::uint64_t> args,
                                   std::span<const char> data) {
  if (!stopped_) return Error(Errc::internal, "remote call on a thread that is not stopped");
  if (args.size() > 6) return Error(Errc::internal, "remote call with more than 6 arguments");
  user_regs_struct regs = saved_;
  // Below the interrupted code's red zone: nothing the thread may still use is touched.
  std::uintptr_t sp = saved_.rsp - 128;
  std::uintptr_t data_addr = 0;
  if (!data.empty()) {
    sp = (sp - data.size()) & ~std::uintptr_t{15};
    data_addr = sp;
    HP_TRY(write_memory(data_addr, data.data(), data.size()));
  }
  // The ABI's entry state: (rsp + 8) % 16 == 0, the return address at rsp.
  sp = (sp & ~std::uintptr_t{15}) - 8;
  const std::uint64_t ret = kReturnTrap;
  HP_TRY(write_memory(sp, &ret, sizeof ret));
  unsigned long long* const arg_regs[] = {&regs.rdi, &regs.rsi, &regs.rdx,
                                          &regs.rcx, &regs.r8,  &regs.r9};
  for (std::size_t i = 0; i < args.size(); ++i) {
    *arg_regs[i] = args[i] == kDataArg ? data_addr : args[i];
  }
  regs.rsp = sp;
  regs.rip = fn;
  regs.rax = 0;  // no vector arguments, should the callee be variadic
  // No syscall restart on the way out of this stop: with orig_rax >= 0 and rax = -ERESTART*
  // the kernel would move rip back 2 bytes from `fn` and redo the interrupted syscall.
  regs.orig_rax = ~0ull;
  regs.eflags &= ~0x400ull;  // DF clear at function entry (ABI)
  HP_TRY(set_regs(regs));
  redirected_ = true;
  // The return faults with SIGSEGV; a blocked SIGSEGV would make the kernel reset the
  // handler to SIG_DFL as it forces the fault, so it is unblocked for the call.
  if (have_sigmask_ && (sigmask_ & kSigsegvBit)) {
    std::uint64_t mask = sigmask_ & ~kSigsegvBit;
    if (::ptrace(PTRACE_SETSIGMASK, tid_, sizeof mask, &mask) != 0) {
      return ptrace_error("PTRACE_SETSIGMASK", errno);
    }
  }
  if (::ptrace(PTRACE_CONT, tid_, 0, 0) != 0) return ptrace_error("PTRACE_CONT", errno);
  stopped_ = false;
  auto st = wait_stop(Want::trap);
  if (!st.ok()) {
    if (gone_) return st.error();
    // Abandon the call: stop the thread where it is, so the caller can restore it.
    deadline_ = Clock::now() + std::chrono::milliseconds(500);
    if (::ptrace(PTRACE_INTERRUPT, tid_, 0, 0) == 0 && wait_stop(Want::either).ok()) {
      stopped_ = true;
    }
    return Error(st.error().code(), st.error().message() +
                                        "; the call was abandoned and the thread restored, but "
                                        "the code it called may have left a lock held");
  }
  stopped_ = true;
  user_regs_struct after{};
  if (::ptrace(PTRACE_GETREGS, tid_, 0, &after) != 0) return ptrace_error("PTRACE_GETREGS", errno);
  if (after.rip != kReturnTrap) {
    return Error(Errc::internal, "the remote call stopped at an unexpected address");
  }
  return static_cast<std::uint64_t>(after.rax);
}

Result<void> Tracee::restore_and_detach() {
  if (redirected_) {
    // Registers first (orig_rax and rax included: the kernel's restart fixup runs on
    // them when the thread leaves this stop), then vector state and signal mask.
    HP_TRY(set_regs(saved_));
    if (!xstate_.empty()) {
      iovec iov{xstate_.data(), xstate_.size()};
      if (::ptrace(PTRACE_SETREGSET, tid_, NT_X86_XSTATE, &iov) != 0) {
        return ptrace_error("PTRACE_SETREGSET(NT_X86_XSTATE)", errno);
      }
    } else if (::ptrace(PTRACE_SETFPREGS, tid_, 0, &fpregs_) != 0) {
      return ptrace_error("PTRACE_SETFPREGS", errno);
    }
    if (have_sigmask_ && ::ptrace(PTRACE_SETSIGMASK, tid_, sizeof sigmask_, &sigmask_) != 0) {
      return ptrace_error("PTRACE_SETSIGMASK", errno);
    }
    redirected_ = false;
  }
  return detach();
}

Result<void> Tracee::detach() {
  if (!seized_) return {};
  // From the trap's signal-delivery-stop, data 0 discards the SIGSEGV.
  const long rc = ::ptrace(PTRACE_DETACH, tid_, 0, 0);
  const int err = errno;
  seized_ = false;
  stopped_ = false;
  if (rc != 0) return ptrace_error("PTRACE_DETACH", err);
  return {};
}

}  // namespace hp::inject
