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
#include <cstdlib>
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
    // Returning early while our call runs: stop the thread to detach it (the stub puts it
    // back by itself; the legacy variant restores it here).
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
  // While the stub runs, the thread goes on with PTRACE_SYSCALL so that the marker system
  // call stops it (the loader's own system calls are let through).
  const auto resume = want == Want::trap && marker_signal_ == 0 ? PTRACE_SYSCALL : PTRACE_CONT;
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
        return Error(Errc::timed_out,
                     "thread " + std::to_string(tid_) + " of process " + std::to_string(pid_) +
                         " did not " + (want == Want::interrupt ? "stop" : "return from the call") +
                         " in time");
      }
      pause_briefly(backoff_ns);
      continue;
    }
    if (WIFEXITED(status) || WIFSIGNALED(status)) {
      gone_ = true;
      end_status_ = status;
      return gone_error(status);
    }
    if (!WIFSTOPPED(status)) continue;
    const int sig = WSTOPSIG(status);
    const int event = status >> 16;
    if (event == PTRACE_EVENT_STOP) {
      // Our interrupt, or a group-stop (SIGSTOP and friends) that reached the thread.
      if (want == Want::interrupt || want == Want::either) return Stop::interrupt;
      // During a call the thread finishes it first; the stop is not lost for the other
      // threads, and this one stops again at its next signal check after the detach.
      if (::ptrace(resume, tid_, 0, 0) != 0) return ptrace_error("PTRACE_CONT", errno);
      continue;
    }
    if (sig == (SIGTRAP | 0x80)) {  // a system-call stop (PTRACE_O_TRACESYSGOOD)
      if (want == Want::either) return Stop::interrupt;
      if (want == Want::trap) {
        user_regs_struct regs{};
        if (::ptrace(PTRACE_GETREGS, tid_, 0, &regs) != 0) {
          return ptrace_error("PTRACE_GETREGS", errno);
        }
        if (regs.rip == marker_rip_ &&
            static_cast<long>(regs.orig_rax) == ReturnStub::kMarkerSyscall) {
          return Stop::trap;
        }
      }
      if (::ptrace(resume, tid_, 0, 0) != 0) return ptrace_error("PTRACE_SYSCALL", errno);
      continue;
    }
    if (event == 0 && want == Want::trap && sig == marker_signal_) {
      user_regs_struct regs{};
      if (::ptrace(PTRACE_GETREGS, tid_, 0, &regs) != 0) {
        return ptrace_error("PTRACE_GETREGS", errno);
      }
      if (regs.rip == marker_rip_) return Stop::trap;  // else the program's own signal
    }
    if (event == 0 && sig == SIGSEGV && want == Want::fault) {
      siginfo_t si{};
      if (::ptrace(PTRACE_GETSIGINFO, tid_, 0, &si) != 0) {
        return ptrace_error("PTRACE_GETSIGINFO", errno);
      }
      if (reinterpret_cast<std::uintptr_t>(si.si_addr) == kReturnTrap) return Stop::trap;
    }
    // A signal for the program (or a fault in the called code): deliver it, as it would
    // have been without us.
    if (::ptrace(resume, tid_, 0, event == 0 ? sig : 0) != 0) {
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
  return save_state();
}

Result<void> Tracee::adopt_stop() {
  interrupted_at_ = Clock::now();
  return save_state();
}

Result<void> Tracee::save_state() {
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
  redirected_ = in_stub_ = false;
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

namespace {

// tests/inject/fixture/return_stub.S is the source of these bytes (assembled with
// `gcc -c` and dumped with objdump); the offsets in ReturnStub follow from it.
constexpr std::uint8_t kStubCode[] = {
    0x48, 0x85, 0xed,                          // test rbp,rbp  (1: xsave, 0: fxsave)
    0x74, 0x16,                                // je fx
    0x49, 0x89, 0xd5,                          // mov r13,rdx
    0xb8, 0xff, 0xff, 0xf9, 0xff,              // mov eax,0xfff9ffff  (all but AMX)
    0xba, 0xff, 0xff, 0xff, 0xff,              // mov edx,0xffffffff
    0x48, 0x0f, 0xae, 0x23,                    // xsave64 [rbx]
    0x4c, 0x89, 0xea,                          // mov rdx,r13
    0xeb, 0x04,                                // jmp call
    0x48, 0x0f, 0xae, 0x03,                    // fx: fxsave64 [rbx]
    0x31, 0xc0,                                // call: xor eax,eax
    0x41, 0xff, 0xd4,                          // call r12
    0x49, 0x89, 0xc5,                          // mov r13,rax
    0x4d, 0x85, 0xff,                          // test r15,r15
    0x74, 0x0f,                                // je noerr
    0x48, 0x85, 0xc0,                          // test rax,rax
    0x75, 0x0a,                                // jne noerr
    0x31, 0xc0,                                // xor eax,eax
    0x41, 0xff, 0xd7,                          // call r15
    0x49, 0x89, 0xc7,                          // mov r15,rax
    0xeb, 0x03,                                // jmp marker
    0x45, 0x31, 0xff,                          // noerr: xor r15d,r15d
    0xb8, 0x27, 0x00, 0x00, 0x00,              // mov eax,39 (getpid)
    0x0f, 0x05,                                // syscall
    0x48, 0x89, 0xc7,                          // mov rdi,rax
    0xb8, 0xba, 0x00, 0x00, 0x00,              // mov eax,186 (gettid)
    0x0f, 0x05,                                // syscall
    0x48, 0x89, 0xc6,                          // mov rsi,rax
    0x49, 0x8b, 0x56, 0xf8,                    // mov rdx,[r14-8]  (the marker signal)
    0xb8, 0xea, 0x00, 0x00, 0x00,              // mov eax,234 (tgkill)
    0x0f, 0x05,                                // syscall
    0x48, 0x85, 0xed,                          // (kMarkerOffset) test rbp,rbp
    0x74, 0x10,                                // je fxr
    0xb8, 0xff, 0xff, 0xf9, 0xff,              // mov eax,0xfff9ffff
    0xba, 0xff, 0xff, 0xff, 0xff,              // mov edx,0xffffffff
    0x48, 0x0f, 0xae, 0x2b,                    // xrstor64 [rbx]
    0xeb, 0x04,                                // jmp regs
    0x48, 0x0f, 0xae, 0x0b,                    // fxr: fxrstor64 [rbx]
    0x4c, 0x89, 0xf4,                          // regs: mov rsp,r14
    0x41, 0x5f, 0x41, 0x5e, 0x41, 0x5d, 0x41,  // pop r15 r14 r13 r12
    0x5c, 0x5d, 0x5b, 0x41, 0x5b, 0x41, 0x5a,  // pop rbp rbx r11 r10
    0x41, 0x59, 0x41, 0x58, 0x58, 0x59, 0x5a,  // pop r9 r8 rax rcx rdx
    0x5e, 0x5f,                                // pop rsi rdi
    0x9d,                                      // popfq
    0xc2, 0x80, 0x00,                          // ret 128: rip, then rsp = the original
};

// The stub's register block lies just below the interrupted code's red zone: 15 general
// registers (in the stub's pop order), the flags, then the resume address at rsp - 136,
// so that `ret 128` leaves rsp exactly as it was. Nothing at or above rsp - 128 is written.
constexpr std::size_t kRedZone = 128;
constexpr std::size_t kBlockWords = 17;
constexpr long kSysRestartSyscall = 219;

}  // namespace

std::span<const std::uint8_t> ReturnStub::code() {
  return kStubCode;
}

int Tracee::choose_marker_signal() const {
  auto text_of = [](const std::string& path) {
    std::string text;
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return text;
    char buf[4096];
    ssize_t n;
    while ((n = ::read(fd, buf, sizeof buf)) > 0)
      text.append(buf, static_cast<std::size_t>(n));
    ::close(fd);
    return text;
  };
  const std::string status = text_of("/proc/" + std::to_string(pid_) + "/status");
  const std::size_t at = status.find("SigCgt:");
  if (at == std::string::npos || !have_sigmask_) return 0;
  const unsigned long long caught = std::strtoull(status.c_str() + at + 7, nullptr, 16);
  for (int sig : {SIGURG, SIGWINCH, SIGCHLD}) {
    const unsigned long long bit = 1ull << (sig - 1);
    if (!(caught & bit) && !(sigmask_ & bit)) return sig;
  }
  return 0;
}

Result<CallResult> Tracee::call(std::uintptr_t stub, std::uintptr_t fn,
                                std::span<const std::uint64_t> args, std::span<const char> data,
                                std::uintptr_t error_fn, bool sentinel_return) {
  if (!stopped_) return Error(Errc::internal, "remote call on a thread that is not stopped");
  if (in_stub_) return Error(Errc::internal, "a second remote call in one stop");
  if (args.size() > 6) return Error(Errc::internal, "remote call with more than 6 arguments");
  // Where the thread goes on afterwards: where it was, or, stopped in an interrupted
  // system call, back on its `syscall` instruction with the call number (the kernel's own
  // restart rule, arch_do_signal_or_restart; restart_syscall continues a sleep with its
  // original expiry).
  std::uint64_t resume_rip = saved_.rip, resume_rax = saved_.rax;
  if (in_restartable_syscall()) {
    resume_rip -= 2;
    resume_rax = static_cast<long>(saved_.rax) == -kErestartRestartBlock
                     ? static_cast<std::uint64_t>(kSysRestartSyscall)
                     : saved_.orig_rax;
  }
  const std::uint64_t block[kBlockWords] = {saved_.r15,
                                            saved_.r14,
                                            saved_.r13,
                                            saved_.r12,
                                            saved_.rbp,
                                            saved_.rbx,
                                            saved_.r11,
                                            saved_.r10,
                                            saved_.r9,
                                            saved_.r8,
                                            resume_rax,
                                            saved_.rcx,
                                            saved_.rdx,
                                            saved_.rsi,
                                            saved_.rdi,
                                            saved_.eflags,
                                            sentinel_return ? kReturnTrap : resume_rip};
  const std::uintptr_t block_addr = saved_.rsp - kRedZone - sizeof block;
  HP_TRY(write_memory(block_addr, block, sizeof block));
  marker_signal_ = choose_marker_signal();
  const std::uint64_t signal_word = static_cast<std::uint64_t>(marker_signal_);
  HP_TRY(write_memory(block_addr - 8, &signal_word, sizeof signal_word));
  std::uintptr_t sp = block_addr - 16;
  std::uintptr_t data_addr = 0;
  if (!data.empty()) {
    sp = (sp - data.size()) & ~std::uintptr_t{15};
    data_addr = sp;
    HP_TRY(write_memory(data_addr, data.data(), data.size()));
  }
  // The vector state's save area: xsave's (non-compacted) layout needs a zeroed header.
  const bool use_xsave = !xstate_.empty();
  const std::size_t area_size = use_xsave ? std::max<std::size_t>(xstate_.size(), 576) : 512;
  const std::uintptr_t area = (sp - area_size) & ~std::uintptr_t{63};
  const std::vector<std::uint8_t> zeros(area_size, 0);
  HP_TRY(write_memory(area, zeros.data(), zeros.size()));
  // The call's frame below everything, aligned as the ABI wants it before `call`.
  const std::uintptr_t call_sp = (area - 64) & ~std::uintptr_t{15};

  user_regs_struct regs = saved_;
  unsigned long long* const arg_regs[] = {&regs.rdi, &regs.rsi, &regs.rdx,
                                          &regs.rcx, &regs.r8,  &regs.r9};
  for (std::size_t i = 0; i < args.size(); ++i) {
    *arg_regs[i] = args[i] == kDataArg ? data_addr : args[i];
  }
  regs.rip = stub;
  regs.rsp = call_sp;
  regs.r12 = fn;
  regs.r15 = error_fn;
  regs.rbx = area;
  regs.rbp = use_xsave ? 1 : 0;
  regs.r14 = block_addr;
  regs.rax = 0;
  // No "restart" of the system call the thread was stopped in: the kernel would move rip
  // back by two bytes into the stub (the stub re-enters the call itself when it is done).
  regs.orig_rax = ~0ull;
  regs.eflags &= ~0x500ull;  // DF (the ABI wants it clear) and TF
  marker_rip_ = stub + ReturnStub::kMarkerOffset;
  sentinel_ = sentinel_return;
  HP_TRY(set_regs(regs));
  redirected_ = true;
  if (::ptrace(PTRACE_SETOPTIONS, tid_, 0, PTRACE_O_TRACESYSGOOD) != 0) {
    return ptrace_error("PTRACE_SETOPTIONS", errno);
  }
  // From here on the stub owns the thread's return: if hotprobe dies, the kernel detaches
  // the thread and the stub completes the call and puts everything back.
  if (::ptrace(marker_signal_ ? PTRACE_CONT : PTRACE_SYSCALL, tid_, 0, 0) != 0) {
    return ptrace_error("PTRACE_CONT", errno);
  }
  in_stub_ = true;
  stopped_ = false;
  auto st = wait_stop(Want::trap);
  if (!st.ok()) {
    if (gone_) return st.error();
    // Give up waiting: stop the thread wherever it is and let it go; the stub finishes
    // the call and restores the thread without us.
    deadline_ = Clock::now() + std::chrono::milliseconds(500);
    if (::ptrace(PTRACE_INTERRUPT, tid_, 0, 0) == 0 && wait_stop(Want::either).ok()) {
      stopped_ = true;
    }
    return Error(st.error().code(),
                 st.error().message() +
                     "; hotprobe stopped waiting, and the thread will be put back as it was "
                     "when the call returns");
  }
  stopped_ = true;
  user_regs_struct after{};
  if (::ptrace(PTRACE_GETREGS, tid_, 0, &after) != 0) return ptrace_error("PTRACE_GETREGS", errno);
  CallResult result{after.r13, after.r15};
  if (sentinel_) {
    // Legacy variant: let the stub return into the trap and restore from the fault (the
    // marker signal is discarded).
    if (::ptrace(PTRACE_CONT, tid_, 0, 0) != 0) return ptrace_error("PTRACE_CONT", errno);
    stopped_ = false;
    auto f = wait_stop(Want::fault);
    if (!f.ok()) return f.error();
    stopped_ = true;
  }
  return result;
}

Result<void> Tracee::restore_and_detach() {
  if (redirected_ && (!in_stub_ || sentinel_)) {
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
