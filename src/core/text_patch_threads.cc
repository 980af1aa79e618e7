// Thread moves and verdicts (step 2 of text_patch.cc's protocol): the move signal and its
// handler, the listing of the process's threads, and the verdict on each of them.
#include "core/text_patch_threads.h"

#include <fcntl.h>
#include <signal.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/text_patch_raw.h"

namespace hp::core {

namespace patching {

std::atomic<std::uint64_t> g_threads_moved{0};
std::atomic<int> g_verdict_fd{-1};  // $HOTPROBE_PATCH_VERDICT_LOG (VerdictLog), or -1
std::atomic<unsigned> g_sample_inside{0};
std::atomic<const MoveTable*> g_moves{nullptr};
std::atomic<int> g_move_handlers_active{0};
std::atomic<unsigned> g_move_acks{0};

// The move signal: installed (g_move_signal, under g_patch_mutex, read by others after
// init) or, before that, the one that will be (g_move_signal_choice).
std::atomic<int> g_move_signal{0};
std::atomic<int> g_move_signal_choice{0};
// EngineOptions::move_signal (request_move_signal), or empty: the patcher reads no
// variable (options_from_environment reads $HOTPROBE_SIGNAL for the agent).
std::atomic<int> g_move_signal_requested{0};
std::string requested_move_signal() {
  if (int s = g_move_signal_requested.load(std::memory_order_acquire)) return std::to_string(s);
  return "";
}
std::atomic<bool> g_partial_listing_for_testing{false};

// Thread moves: the sites of the transaction in flight, for the move-signal handler.

namespace {

void move_handler(int, siginfo_t*, void*);

// Whether the program has a use for `sig`: a handler that is not ours, or SIG_IGN.
bool signal_in_use(int sig) {
  struct sigaction cur {};
  if (sigaction(sig, nullptr, &cur) != 0) return true;
  if (cur.sa_flags & SA_SIGINFO) return cur.sa_sigaction != move_handler;
  return cur.sa_handler != SIG_DFL;
}

std::string rt_name(int sig) {
  const int lo = SIGRTMIN, hi = SIGRTMAX;
  if (sig - lo <= hi - sig) return "SIGRTMIN+" + std::to_string(sig - lo);
  return "SIGRTMAX-" + std::to_string(hi - sig);
}

std::string signal_range() {
  return std::to_string(SIGRTMIN) + " to " + std::to_string(SIGRTMAX) + " (SIGRTMIN..SIGRTMAX)";
}

// Moves the interrupted ip out of the middle of a site being patched. Async-signal-safe,
// and calls nothing that can be a site (no libc): it runs while sites spin.
void move_handler(int, siginfo_t* info, void* uc) {
  // Ours come from tgkill in this process; anything else is ignored, as the signal's
  // default disposition in a program that never sends it would not matter.
  if (info->si_code != SI_TKILL || info->si_pid != raw_getpid()) return;
  int saved_errno = errno;
  g_move_handlers_active.fetch_add(1, std::memory_order_acq_rel);  // M1: matches M2
  if (const MoveTable* mt = g_moves.load(std::memory_order_acquire)) {
    CtxRip rip = ctx_rip(uc);
    for (std::size_t i = 0; i < mt->n_sample; i++) {
      if (rip >= mt->sample[i].first && rip < mt->sample[i].second) {
        g_sample_inside.fetch_add(1, std::memory_order_relaxed);
        break;
      }
    }
    for (std::size_t i = 0; i < mt->n; i++) {
      const Range& r = mt->ranges[i];
      if (rip > r.start && rip < r.end) {
        auto off = static_cast<std::uint32_t>(rip - r.site->addr);
        for (const auto& [o, to] : r.site->ip_map) {
          if (o == off) {
            rip = to;
            g_threads_moved.fetch_add(1, std::memory_order_relaxed);
            break;
          }
        }
        break;
      }
    }
    if (mt->n_tids) {
      const pid_t me = raw_gettid();
      for (std::size_t i = 0; i < mt->n_tids; i++) {
        if (mt->tids[i] == me) {
          mt->answered[i].store(1, std::memory_order_release);  // A1: matches A2
          break;
        }
      }
    }
  }
  g_move_acks.fetch_add(1, std::memory_order_release);
  g_move_handlers_active.fetch_sub(1, std::memory_order_release);
  errno = saved_errno;
}

}  // namespace

// The move signal (called under the patcher's mutex), checked when it is installed: a program that
// took the chosen signal since move_signal_number() answered gets another (or, for a signal
// EngineOptions::move_signal asked for, an error).
Result<void> install_move_signal() {
  int sig = g_move_signal_choice.load(std::memory_order_acquire);
  if (sig == 0 || signal_in_use(sig)) {
    auto r = choose_move_signal(requested_move_signal().c_str());
    if (!r.ok()) return r.error();
    sig = *r;
  }
  struct sigaction ma {};
  ma.sa_sigaction = move_handler;
  // On the thread's alternate stack where it has one: a goroutine's stack has no room
  // below its stack pointer for the kernel's frame (docs/design/arch.md, "Goroutine
  // stacks and signal frames").
  ma.sa_flags = SA_SIGINFO | SA_RESTART | SA_ONSTACK;
  sigfillset(&ma.sa_mask);
  if (sigaction(sig, &ma, nullptr) != 0) return sys_error("sigaction(move signal)");
  g_move_signal_choice.store(sig, std::memory_order_release);
  g_move_signal.store(sig, std::memory_order_release);
  return {};
}

// Threads, read from /proc with raw system calls and no allocation (the window rule).

// /proc/self/task/<tid>/<name> (/proc/self/<name> for tid 0) into buf, NUL-terminated:
// the bytes read, or -errno when the file cannot be opened or read.
long read_proc_file(pid_t tid, const char* name, char* buf, std::size_t size) {
  char path[64] = "/proc/self/";
  std::size_t n = 11;
  if (tid) {
    for (const char* s = "task/"; *s;)
      path[n++] = *s++;
    char digits[16];
    std::size_t nd = 0;
    for (auto v = static_cast<unsigned>(tid); v || nd == 0; v /= 10)
      digits[nd++] = static_cast<char>('0' + v % 10);
    while (nd)
      path[n++] = digits[--nd];
    path[n++] = '/';
  }
  for (const char* s = name; *s;)
    path[n++] = *s++;
  path[n] = 0;
  const long fd =
      raw_syscall(SYS_openat, AT_FDCWD, reinterpret_cast<long>(path), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fd;
  const long got = raw_syscall(SYS_read, fd, reinterpret_cast<long>(buf), size - 1);
  raw_syscall(SYS_close, fd);
  if (got > 0) buf[got] = 0;
  return got;
}

// "/proc/self/task/<tid>/syscall": "running", or "<nr> <args...> <sp> <pc>" with nr -1
// for a thread preempted in user mode.
ThreadState read_thread(pid_t tid) {
  ThreadState out{ThreadState::kGone, 0};
  char buf[256];
  const long got = read_proc_file(tid, "syscall", buf, sizeof buf);
  if (got <= 0) {
    // Gone only when the kernel says so: a file that cannot be opened or read (no
    // descriptor left, say) shows nothing about where the thread is.
    if (raw_syscall(SYS_tgkill, raw_getpid(), tid, 0) != -ESRCH)
      out.state = ThreadState::kUnreadable;
    return out;
  }
  if (buf[0] == 'r') {
    out.state = ThreadState::kRunning;
    return out;
  }
  out.state = buf[0] == '-' ? ThreadState::kPreempted : ThreadState::kBlocked;
  std::size_t end = static_cast<std::size_t>(got);
  while (end && (buf[end - 1] == '\n' || buf[end - 1] == ' '))
    end--;
  std::size_t start = end;
  while (start && buf[start - 1] != ' ')
    start--;
  if (start + 2 <= end && buf[start] == '0' && buf[start + 1] == 'x') start += 2;
  std::uintptr_t pc = 0;
  for (std::size_t i = start; i < end; i++) {
    const char c = buf[i];
    const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (d < 0) break;
    pc = pc * 16 + static_cast<std::uintptr_t>(d);
  }
  out.pc = pc;
  return out;
}

// The other threads of the process into tids[0..cap); returns how many there are (more
// than cap when they did not fit), or -1 when /proc cannot be read.
long list_threads(pid_t* tids, std::size_t cap) {
  const long fd = raw_syscall(SYS_openat, AT_FDCWD, reinterpret_cast<long>("/proc/self/task"),
                              O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return -1;
  const pid_t self = raw_gettid();
  long count = 0;
  alignas(8) char buf[4096];
  for (;;) {
    const long got = raw_syscall(SYS_getdents64, fd, reinterpret_cast<long>(buf), sizeof buf);
    if (got <= 0) break;
    for (long off = 0; off < got;) {
      struct Dirent64 {
        std::uint64_t ino;
        std::int64_t off;
        unsigned short reclen;
        unsigned char type;
        char name[1];
      };
      const auto* d = reinterpret_cast<const Dirent64*>(buf + off);
      off += d->reclen;
      if (d->name[0] < '0' || d->name[0] > '9') continue;
      long t = 0;
      for (const char* p = d->name; *p >= '0' && *p <= '9'; p++)
        t = t * 10 + (*p - '0');
      if (t == self) continue;
      if (static_cast<std::size_t>(count) < cap) tids[count] = static_cast<pid_t>(t);
      count++;
    }
  }
  raw_syscall(SYS_close, fd);
  return count;
}

// The number of threads of the process (num_threads, field 20 of /proc/self/stat: the
// length of the list /proc/self/task walks), or -1.
long thread_count_now() {
  char buf[1024];
  const long got = read_proc_file(0, "stat", buf, sizeof buf);
  if (got <= 0) return -1;
  long i = got - 1;
  while (i >= 0 && buf[i] != ')')  // the command name may hold spaces and parentheses
    i--;
  if (i < 0) return -1;
  for (int field = 2; field < 20 && i < got; i++) {
    if (buf[i] == ' ') field++;
  }
  long v = 0;
  for (; i < got && buf[i] >= '0' && buf[i] <= '9'; i++)
    v = v * 10 + (buf[i] - '0');
  return v;
}

// Like list_threads(), but with every thread of the process listed: a listing is taken
// again until it is shown whole. The kernel lists a thread group by walking it from the
// thread it listed last; when that one exits meanwhile, the walk ends early and the next
// getdents64 starts over by position, past the thread that moved into the exited one's
// place: that thread is never listed, and no verdict reaches it although it may be
// inside a site. A listing is whole when the number of its threads still alive, plus
// this one, equals the process's thread count read after it: a thread alive at that read
// was then alive during the listing (or created after it), and is listed. A thread
// created after the holds is harmless (it starts outside every site) but makes the
// counts differ: the listing is taken again. kListingCut when no listing was whole in
// `attempts`. `cuts` counts the listings that were not.
// Heap sort, by hand: std::sort moves runs with memmove, a libc function that may be a
// site of the batch (the window calls none).
void sort_tids(pid_t* a, long n) {
  auto sift = [a](long i, long end) {
    for (;;) {
      long c = 2 * i + 1;
      if (c >= end) return;
      if (c + 1 < end && a[c + 1] > a[c]) c++;
      if (a[i] >= a[c]) return;
      const pid_t t = a[i];
      a[i] = a[c];
      a[c] = t;
      i = c;
    }
  };
  for (long i = n / 2 - 1; i >= 0; i--)
    sift(i, n);
  for (long end = n - 1; end > 0; end--) {
    const pid_t t = a[0];
    a[0] = a[end];
    a[end] = t;
    sift(0, end);
  }
}

long list_all_threads(pid_t* tids, std::size_t cap, std::int64_t deadline, unsigned& cuts) {
  const pid_t pid = raw_getpid();
  for (;;) {
    long n = list_threads(tids, cap);
    if (n < 0 || static_cast<std::size_t>(n) > cap) return n;
    if (g_partial_listing_for_testing.load(std::memory_order_relaxed)) return n;
    // A thread listed twice must count once.
    sort_tids(tids, n);
    long kept = 0;
    for (long i = 0; i < n; i++) {
      if (kept == 0 || tids[kept - 1] != tids[i]) tids[kept++] = tids[i];
    }
    n = kept;
    const long total = thread_count_now();
    if (total < 0) return -1;
    long alive = 1;  // this thread
    for (long i = 0; i < n; i++)
      alive += raw_syscall(SYS_tgkill, pid, tids[i], 0) == 0;
    if (alive == total) return n;
    cuts++;
    if (now_ns() > deadline) return kListingCut;
    pause_ns(10000);
  }
}

// Whether the thread blocks `sig` (the SigBlk line of /proc/self/task/TID/status); true
// when it cannot be read.
bool blocks_signal(pid_t tid, int sig) {
  char buf[4096];
  const long got = read_proc_file(tid, "status", buf, sizeof buf);
  if (got <= 0) return true;
  static constexpr char kKey[] = "\nSigBlk:\t";
  for (long i = 0; i + 16 < got; i++) {
    std::size_t k = 0;
    while (kKey[k] && buf[i + static_cast<long>(k)] == kKey[k])
      k++;
    if (kKey[k]) continue;
    std::uint64_t mask = 0;
    for (const char* c = buf + i + k; *c && *c != '\n'; c++) {
      const int d = *c >= '0' && *c <= '9' ? *c - '0' : *c >= 'a' && *c <= 'f' ? *c - 'a' + 10 : -1;
      if (d < 0) break;
      mask = mask * 16 + static_cast<std::uint64_t>(d);
    }
    return (mask >> (sig - 1)) & 1;
  }
  return true;
}

bool inside_any(const Range* ranges, std::size_t n, std::uintptr_t pc) {
  const Range* it = std::upper_bound(ranges, ranges + n, pc,
                                     [](std::uintptr_t v, const Range& r) { return v < r.start; });
  if (it == ranges) return false;
  --it;
  return pc > it->start && pc < it->end;
}

// The verdict on each thread in step 2, appended to the file named by
// $HOTPROBE_PATCH_VERDICT_LOG (opened at the first transaction; tests and diagnosis):
// one line per thread and reason, written with raw writes of a small buffer (no libc, no
// allocation inside the window, little stack: the patching thread may be any thread).

class VerdictLog {
 public:
  VerdictLog() : fd_(g_verdict_fd.load(std::memory_order_relaxed)) {}
  ~VerdictLog() { flush(); }
  VerdictLog(const VerdictLog&) = delete;
  VerdictLog& operator=(const VerdictLog&) = delete;

  bool on() const { return fd_ >= 0; }
  VerdictLog& put(const char* s) {
    for (; on() && *s; s++)
      add(*s);
    return *this;
  }
  VerdictLog& num(std::int64_t v) {
    if (v < 0) {
      put("-");
      v = -v;
    }
    return digits(static_cast<std::uint64_t>(v), 10);
  }
  VerdictLog& hex(std::uint64_t v) { return digits(v, 16); }

 private:
  VerdictLog& digits(std::uint64_t v, unsigned base) {
    char d[24];
    std::size_t k = 0;
    do {
      d[k++] = "0123456789abcdef"[v % base];
      v /= base;
    } while (v);
    while (on() && k)
      add(d[--k]);
    return *this;
  }
  void add(char c) {
    if (n_ == sizeof buf_) flush();
    buf_[n_++] = c;
  }
  void flush() {
    if (fd_ >= 0 && n_) raw_syscall(SYS_write, fd_, reinterpret_cast<long>(buf_), n_);
    n_ = 0;
  }
  int fd_;
  char buf_[512];
  std::size_t n_ = 0;
};

std::size_t thread_count_estimate() {
  pid_t none[1];
  const long n = list_threads(none, 0);
  return n > 0 ? static_cast<std::size_t>(n) : 0;
}

// CPU time after which a running thread that was inside a site has left it: a few
// straight-line instructions take nanoseconds; 2 ms leaves room for the page faults and
// interrupts one of them may take on the way.
constexpr std::int64_t kLeftAfterCpuNs = 2000000;

// Step 2: after the holds are in place and serialized, every other thread is shown to be
// outside the interior of every site, or is moved out of it. The set of threads inside
// only shrinks from then on: an arriving thread stops at a site's first byte (it spins
// there, or traps), and no branch lands inside (the relocator refuses such sites). So
// each thread needs to be seen outside once:
//   - blocked in a system call, or preempted with its pc outside: done (never signalled,
//     so never sees EINTR);
//   - preempted inside, or running (/proc shows no pc for a runnable thread, on a CPU
//     or not): sent the move signal once; its handler moves it by the site's ip map and
//     answers. One that blocks the signal is read again until it is seen outside, or,
//     with `cpu_rule`, until it has run kLeftAfterCpuNs since the holds were serialized
//     (a thread inside a site leaves it after a few straight-line instructions), or the
//     budget runs out. cpu_rule is off where a thread may stay at an interior point
//     while it runs: a rep-string instruction, or a hold that spins inside the site.
ObserveFailure observe_threads(const Range* ranges, std::size_t n_ranges, Observation& obs, int sig,
                               bool cpu_rule, bool wait_for_blockers, PatchStats& stats) {
  ObserveFailure fail;
  const std::int64_t deadline = now_ns() + kObserveBudgetNs;
  VerdictLog log;
  unsigned cuts = 0;
  const long listed = list_all_threads(obs.tids.get(), obs.cap, deadline, cuts);
  log.put("listing ").num(listed).put(" threads after ").num(cuts).put(" cut listings\n");
  if (listed == kListingCut) {
    fail.kind = ObserveFailure::kChurn;
    return fail;
  }
  if (listed < 0) {
    fail.kind = ObserveFailure::kProc;
    return fail;
  }
  if (static_cast<std::size_t>(listed) > obs.cap) {
    fail.kind = ObserveFailure::kTooMany;
    return fail;
  }
  const auto n = static_cast<std::size_t>(listed);
  for (std::size_t i = 0; i < n; i++) {
    obs.answered[i].store(0, std::memory_order_relaxed);
    obs.settled[i] = 0;
    obs.signalled[i] = 0;
    obs.cpu_at_start[i] = cpu_rule ? thread_cpu_ns(obs.tids[i]) : 0;
  }
  MoveTable mt{ranges, n_ranges, nullptr, 0, obs.tids.get(), obs.answered.get(), n};
  g_moves.store(&mt, std::memory_order_release);
  const pid_t pid = raw_getpid();
  std::size_t left = n;
  bool signalling = !wait_for_blockers;
  for (unsigned round = 0; left; round++) {
    bool blocker = false;  // a thread that blocks the signal is still to be seen
    for (std::size_t i = 0; i < n; i++) {
      if (obs.settled[i]) continue;
      bool done = obs.answered[i].load(std::memory_order_acquire) != 0;  // A2: matches A1
      bool inside = false;
      bool unreadable = false;
      if (done) {
        log.put("thread ").num(obs.tids[i]).put(" answered the move signal\n");
      } else {
        const ThreadState ts = read_thread(obs.tids[i]);
        const bool shows_pc =
            ts.state == ThreadState::kBlocked || ts.state == ThreadState::kPreempted;
        inside = shows_pc && inside_any(ranges, n_ranges, ts.pc);
        done = ts.state == ThreadState::kGone || (shows_pc && !inside);
        unreadable = ts.state == ThreadState::kUnreadable;
        std::int64_t ran = -1;
        if (!done && cpu_rule && ts.state == ThreadState::kRunning) {
          const std::int64_t cpu = thread_cpu_ns(obs.tids[i]);
          ran = cpu < 0 || obs.cpu_at_start[i] < 0 ? kLeftAfterCpuNs : cpu - obs.cpu_at_start[i];
          done = ran >= kLeftAfterCpuNs;
        }
        if (done && log.on()) {
          log.put("thread ").num(obs.tids[i]);
          if (ts.state == ThreadState::kGone) {
            log.put(" gone\n");
          } else if (ts.state == ThreadState::kRunning) {
            log.put(" running, ran ").num(ran).put(" ns of CPU since the holds\n");
          } else {
            log.put(ts.state == ThreadState::kBlocked ? " in a system call" : " preempted")
                .put(" at pc 0x")
                .hex(ts.pc)
                .put(", outside\n");
          }
        }
        if (!done && !signalling && blocks_signal(obs.tids[i], sig)) blocker = true;
      }
      if (done) {
        obs.settled[i] = 1;
        left--;
      } else {
        fail.tid = obs.tids[i];
        fail.preempted_inside = inside;
        fail.unreadable = unreadable;
      }
    }
    if (!left) break;
    // With wait_for_blockers, nobody is moved while a thread that would not answer is
    // still to be seen: a batch that fails has moved no thread into its trampolines.
    if (!signalling && !blocker) signalling = true;
    if (signalling) {
      for (std::size_t i = 0; i < n; i++) {
        if (obs.settled[i] || obs.signalled[i]) continue;
        if (raw_syscall(SYS_tgkill, pid, obs.tids[i], sig) == 0) stats.threads_signalled++;
        obs.signalled[i] = 1;
      }
    }
    if (now_ns() > deadline) {
      fail.kind = ObserveFailure::kStayed;
      log.put("thread ").num(fail.tid).put(" not shown outside: rolled back\n");
      break;
    }
    pause_ns(round < 50 ? 20000 : 200000);
  }
  g_moves.store(nullptr, std::memory_order_release);
  // M2: matches M1. A handler that loaded the table before it was cleared is finished
  // before `mt` goes away.
  while (g_move_handlers_active.load(std::memory_order_acquire) != 0)
    raw_syscall(SYS_sched_yield);
  return fail;
}

// Sends the move signal to the running threads in `tids` with `mt` published and waits
// (bounded) for their answers. Returns the number of threads that did not answer.
unsigned sample_running(MoveTable& mt, int sig) {
  const pid_t pid = raw_getpid();
  unsigned sent = 0;
  for (std::size_t i = 0; i < mt.n_tids; i++) {
    mt.answered[i].store(0, std::memory_order_relaxed);
  }
  g_moves.store(&mt, std::memory_order_release);
  for (std::size_t i = 0; i < mt.n_tids; i++) {
    if (raw_syscall(SYS_tgkill, pid, mt.tids[i], sig) == 0) {
      sent++;
    } else {
      mt.answered[i].store(1, std::memory_order_relaxed);  // gone
    }
  }
  const std::int64_t deadline = now_ns() + kObserveBudgetNs;
  unsigned missing = 0;
  for (;;) {
    missing = 0;
    for (std::size_t i = 0; i < mt.n_tids; i++)
      missing += mt.answered[i].load(std::memory_order_acquire) == 0;  // A2: matches A1
    if (missing == 0 || now_ns() > deadline) break;
    pause_ns(20000);
  }
  g_moves.store(nullptr, std::memory_order_release);
  // M2: matches M1.
  while (g_move_handlers_active.load(std::memory_order_acquire) != 0)
    raw_syscall(SYS_sched_yield);
  (void)sent;
  return missing;
}

}  // namespace patching

using namespace patching;  // NOLINT(google-build-using-namespace): the patcher's own parts

Result<int> choose_move_signal(const char* requested) {
  const int lo = SIGRTMIN, hi = SIGRTMAX;
  if (requested && *requested) {
    long v = 0;
    bool digits = true;
    for (const char* p = requested; *p; p++) {
      if (*p < '0' || *p > '9' || v > 1000) {
        digits = false;
        break;
      }
      v = v * 10 + (*p - '0');
    }
    const std::string shown = std::string("HOTPROBE_SIGNAL=") + requested;
    if (!digits) {
      return Error(Errc::invalid_argument,
                   shown + " is not a signal number: set it to a real-time signal from " +
                       signal_range() + " that the program does not use, or unset it");
    }
    const int sig = static_cast<int>(v);
    if (sig < lo || sig > hi) {
      const char* name = sig > 0 && sig < 32 ? sigabbrev_np(sig) : nullptr;
      return Error(Errc::invalid_argument,
                   shown + (name ? std::string(" (SIG") + name + ")" : std::string()) +
                       " is not a real-time signal: hotprobe would take it over from the "
                       "program. Use a number from " +
                       signal_range() + " that the program does not use, or unset it");
    }
    if (signal_in_use(sig)) {
      return Error(Errc::busy, shown + ": the program already handles signal " +
                                   std::to_string(sig) + " (" + rt_name(sig) +
                                   "); pick another real-time signal from " + signal_range() +
                                   " that it leaves alone, or unset HOTPROBE_SIGNAL and "
                                   "hotprobe picks a free one");
    }
    return sig;
  }
  // The default, then the others from the top down (programs take SIGRTMIN first).
  if (!signal_in_use(hi - 3)) return hi - 3;
  for (int sig = hi; sig >= lo; sig--) {
    if (sig != hi - 3 && !signal_in_use(sig)) return sig;
  }
  return Error(Errc::busy, "every real-time signal (" + signal_range() +
                               ") has a handler in this program: hotprobe needs one it can own "
                               "to move threads out of the code it patches");
}

int request_move_signal(int sig) noexcept {
  if (int s = g_move_signal.load(std::memory_order_acquire)) return s;
  g_move_signal_requested.store(sig, std::memory_order_release);
  g_move_signal_choice.store(0, std::memory_order_release);
  return 0;
}

int move_signal_number() noexcept {
  if (int s = g_move_signal.load(std::memory_order_acquire)) return s;
  if (int s = g_move_signal_choice.load(std::memory_order_acquire)) return s;
  auto r = choose_move_signal(requested_move_signal().c_str());
  if (!r.ok()) return 0;
  int expected = 0;
  g_move_signal_choice.compare_exchange_strong(expected, *r, std::memory_order_acq_rel);
  return g_move_signal_choice.load(std::memory_order_acquire);
}

void use_partial_thread_listing_for_testing(bool on) noexcept {
  g_partial_listing_for_testing.store(on, std::memory_order_relaxed);
}

Result<std::vector<int>> list_threads_for_testing() {
  const std::size_t cap = thread_count_estimate() * 2 + 256;
  std::vector<pid_t> tids(cap);
  unsigned cuts = 0;
  const long n = list_all_threads(tids.data(), cap, now_ns() + kObserveBudgetNs, cuts);
  if (n == kListingCut) return Error(Errc::busy, "no whole listing of the threads in 1 s");
  if (n < 0 || static_cast<std::size_t>(n) > cap) return Error(Errc::io_error, "listing failed");
  return std::vector<int>(tids.begin(), tids.begin() + n);
}

}  // namespace hp::core
