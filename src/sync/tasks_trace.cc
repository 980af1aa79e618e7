// Tasks-trace RCU: registry, grace periods, stall warnings, fork handling.
// Memory-ordering pairs (R0, R1, R2, W1, W2) are explained in docs/design/sync-tasks-trace.md.
#include "sync/tasks_trace.h"

#include <fcntl.h>
#include <linux/futex.h>
#include <linux/membarrier.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <ctime>
#include <new>
#include <vector>

#include "base/compiler.h"
#include "base/raw_syscall.h"
#include "base/signals.h"
#include "base/thread_annotations.h"

namespace hp::sync {

namespace tt_detail {
constinit thread_local std::atomic<std::uint64_t> tls_word
    __attribute__((tls_model("initial-exec"))){0};
}  // namespace tt_detail

using tt_detail::kNestMask;
using tt_detail::tls_word;

namespace {
// This thread's exit hook has run: a registration now is one of its last steps.
constinit thread_local bool tls_past_exit __attribute__((tls_model("initial-exec"))) = false;
}  // namespace

namespace tt_detail {
// -1 while a writer sleeps waiting for readers (liburcu memb's gp futex); alone on its
// cache line, which readers only read.
alignas(64) std::atomic<std::int32_t> gp_futex{0};

void wake_writer() noexcept {
  if (gp_futex.exchange(0, std::memory_order_relaxed) == -1) {
    ::syscall(SYS_futex, &gp_futex, FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0);
  }
}
}  // namespace tt_detail

namespace {

// Registration (register_thread) runs between a trampoline and the dispatcher's read
// section on a thread's first probe hit. The trampoline reclaimer tells a thread there by
// its pc (the hp_dispatch section, HP_DISPATCH_SECTION): everything registration calls
// while it may wait or be preempted for long is in that section and makes its system
// calls directly (base/raw_syscall.h), with a lock of its own (RawMutex) instead of
// libc's. What is left in libc is pthread_setspecific at the end, a few stores.

// The identity of one thread instance, for records that outlive their thread (below):
// the tid and the inode of the thread's pidfd (pidfs, Linux 6.9: unique per thread for
// the system's uptime), or where the kernel has no thread pidfds, its start time in clock
// ticks (field 22 of /proc/thread-self/stat). Linux hands a tid to a new thread within
// seconds in a program that churns threads; the tid alone would take the new thread for
// the old one.
struct ThreadIdentity {
  pid_t tid = 0;
  std::uint64_t instance = 0;  // pidfs inode, or start time + 1 (thread_instance())
};

constexpr long kPidfdThread = O_EXCL;  // PIDFD_THREAD: the pidfd of one thread

HP_DISPATCH_SECTION pid_t raw_gettid() noexcept {
  return static_cast<pid_t>(raw_syscall(SYS_gettid));
}

// Field 22 of a /proc stat file, + 1 (0: unreadable).
HP_DISPATCH_SECTION std::uint64_t start_time_plus_one(const char* path) noexcept {
  const long fd =
      raw_syscall(SYS_openat, AT_FDCWD, reinterpret_cast<long>(path), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  char buf[512];
  const long n = raw_syscall(SYS_read, fd, reinterpret_cast<long>(buf), sizeof buf - 1);
  (void)raw_syscall(SYS_close, fd);
  if (n <= 0) return 0;
  // Fields from the third on follow the last ')' (the command may hold spaces).
  long i = n - 1;
  while (i >= 0 && buf[i] != ')')
    i--;
  if (i < 0) return 0;
  int field = 2;
  std::uint64_t v = 0;
  for (i++; i < n; i++) {
    if (buf[i] == ' ') {
      if (field == 22) return v + 1;
      field++;
      v = 0;
    } else if (field == 22) {
      v = v * 10 + static_cast<std::uint64_t>(buf[i] - '0');
    }
  }
  return field == 22 ? v + 1 : 0;
}

constexpr std::uint64_t kGone = 0, kUnknown = ~0ULL;

// The instance of thread `tid` now: kGone once it has ended, kUnknown when the kernel
// would not say (no descriptor left, say). `self`: the calling thread, whose /proc entry
// is found even in a PID namespace other than that of /proc.
HP_DISPATCH_SECTION std::uint64_t thread_instance(pid_t tid, bool self) noexcept {
  const long fd = raw_syscall(SYS_pidfd_open, tid, kPidfdThread);
  if (fd >= 0) {
    struct stat st;
    const long rc = raw_syscall(SYS_fstat, fd, reinterpret_cast<long>(&st));
    (void)raw_syscall(SYS_close, fd);
    return rc == 0 && st.st_ino != kGone ? st.st_ino : kUnknown;
  }
  if (fd == -ESRCH) return kGone;
  if (fd != -EINVAL) return kUnknown;  // EINVAL: no thread pidfds (before Linux 6.9)
  if (self) {
    const std::uint64_t t = start_time_plus_one("/proc/thread-self/stat");
    return t != 0 ? t : kUnknown;
  }
  char path[64] = "/proc/self/task/";
  std::size_t at = 16;
  char digits[16];
  int nd = 0;
  for (unsigned v = static_cast<unsigned>(tid); nd == 0 || v != 0; v /= 10)
    digits[nd++] = static_cast<char>('0' + v % 10);
  while (nd > 0)
    path[at++] = digits[--nd];
  for (const char* tail = "/stat"; *tail;)
    path[at++] = *tail++;
  path[at] = 0;
  const std::uint64_t t = start_time_plus_one(path);
  return t != 0 ? t : kGone;
}

// One registered thread. Records come from a pool of never-unmapped pages (mmap, so a
// thread may register from a signal handler), not from the thread's TLS: a thread whose
// first read section comes after its exit hook's round (a key destructor of glibc's last
// round, a probed free() in glibc's last steps of thread exit) is never unlinked by that
// hook, and a record in its TLS would be zeroed or reused under the list when the next
// thread takes its stack. Such a record outlives its thread, and nothing tells which
// records will: so the writer reads every word with a system call that fails instead of
// faulting (the thread's TLS may be unmapped the moment it ends), checks the thread
// instance (ThreadIdentity) of every record it finds inside a section before it waits for
// it, and of a few others per grace period in turn, and releases a record whose instance
// is gone. A tid alone would take a new thread with the same tid for the dead one: a
// grace period would wait, for as long as the new thread lives, on a word in memory the
// program has reused.
struct ThreadRecord {
  std::atomic<std::uint64_t>* word = nullptr;
  ThreadIdentity id;
  ThreadRecord* prev = nullptr;
  ThreadRecord* next = nullptr;
  // Holdout state: written by the writer holding gp_mu, read by the exit hook; both under
  // registry_mu.
  bool holdout = false;
  bool stall_reported = false;
  std::uint64_t snap = 0;  // the word when the grace period found it inside a section
  // Registered after its thread's exit hook (a section in glibc's last steps of the
  // thread, after every key destructor): released once the thread is gone, by the
  // registration of the thread that takes its stack (and so its word), or by a grace
  // period, which checks its instance every time. Linked through `exited_next` in
  // Impl::exited. Under registry_mu.
  bool exited = false;
  ThreadRecord* exited_next = nullptr;
};

// Records to reuse (linked through `next`), under registry_mu.
ThreadRecord* g_free_records = nullptr;

// Whether the thread instance of record `r` is gone (whatever thread has its tid now).
bool thread_gone(const ThreadRecord& r) {
  const std::uint64_t now = thread_instance(r.id.tid, false);
  if (now == kGone) return true;
  if (now != kUnknown && r.id.instance != kUnknown) return now != r.id.instance;
  // Unknown: the tid alone (signal 0).
  return raw_syscall(SYS_tgkill, raw_syscall(SYS_getpid), r.id.tid, 0) == -ESRCH;
}

// The word of record `r` (W2: an acquire load), read through process_vm_readv, which fails
// (EFAULT) instead of faulting when the memory is gone; `ok` is false then (its thread has
// ended). Where the call is not allowed (a seccomp filter), the instance is asked first
// and the word loaded directly.
std::uint64_t load_word(const ThreadRecord& r, bool& ok) {
#if defined(HOTPROBE_TSAN)
  // ThreadSanitizer cannot see a system call's read pair with the reader's release store:
  // there, the acquire load it sees, of the word of a thread that is not gone.
  ok = !thread_gone(r);
  return ok ? r.word->load(std::memory_order_acquire) : 0;
#endif
  std::uint64_t v = 0;
  iovec local{&v, sizeof v};
  iovec remote{r.word, sizeof v};
  const long n =
      raw_syscall(SYS_process_vm_readv, raw_syscall(SYS_getpid), reinterpret_cast<long>(&local), 1,
                  reinterpret_cast<long>(&remote), 1, 0);
  ok = true;
  if (n == sizeof v) {
    std::atomic_thread_fence(std::memory_order_acquire);
    return v;
  }
  if (n == -EFAULT || thread_gone(r)) {
    ok = false;
    return 0;
  }
  return r.word->load(std::memory_order_acquire);
}

// How often a grace period's scan checks the instance of a record: every
// kIdentitySweep-th record in turn (a holdout is checked while it is waited for).
constexpr std::size_t kIdentitySweep = 16;

// A futex lock whose every instruction is in the dispatch section (registration takes it;
// libc's mutex would put a thread waiting for it at a pc in libc).
class HP_CAPABILITY("mutex") RawMutex {
 public:
  HP_DISPATCH_SECTION void lock() noexcept HP_ACQUIRE();
  HP_DISPATCH_SECTION void unlock() noexcept HP_RELEASE();
  // After fork() in the child only.
  void reinit_after_fork() noexcept HP_NO_THREAD_SAFETY_ANALYSIS { w_.store(0); }

 private:
  std::atomic<int> w_{0};  // 0 free, 1 held, 2 held with waiters
};

HP_DISPATCH_SECTION void RawMutex::lock() noexcept HP_NO_THREAD_SAFETY_ANALYSIS {
  int c = 0;
  if (w_.compare_exchange_strong(c, 1, std::memory_order_acquire)) return;
  if (c != 2) c = w_.exchange(2, std::memory_order_acquire);
  while (c != 0) {
    (void)raw_syscall(SYS_futex, reinterpret_cast<long>(&w_), FUTEX_WAIT_PRIVATE, 2, 0);
    c = w_.exchange(2, std::memory_order_acquire);
  }
}

HP_DISPATCH_SECTION void RawMutex::unlock() noexcept HP_NO_THREAD_SAFETY_ANALYSIS {
  if (w_.exchange(0, std::memory_order_release) == 2) {
    (void)raw_syscall(SYS_futex, reinterpret_cast<long>(&w_), FUTEX_WAKE_PRIVATE, 1);
  }
}

class HP_SCOPED_CAPABILITY RawLock {
 public:
  HP_DISPATCH_SECTION explicit RawLock(RawMutex& m) HP_ACQUIRE(m) : m_(m) { m_.lock(); }
  HP_DISPATCH_SECTION ~RawLock() HP_RELEASE() { m_.unlock(); }
  RawLock(const RawLock&) = delete;
  RawLock& operator=(const RawLock&) = delete;

 private:
  RawMutex& m_;
};

// Every signal but the synchronous ones (hp::fill_async_signals) and glibc's two internal
// ones (32, 33: cancellation and set*id, which pthread_sigmask never blocks either), as
// the kernel's 64-bit mask.
constexpr std::uint64_t sig_bit(int sig) {
  return 1ULL << (sig - 1);
}
constexpr std::uint64_t kAsyncSignalMask =
    ~(sig_bit(SIGTRAP) | sig_bit(SIGSEGV) | sig_bit(SIGBUS) | sig_bit(SIGILL) | sig_bit(SIGFPE) |
      sig_bit(32) | sig_bit(33));

// Blocks every asynchronous signal on this thread while it holds registry_mu outside a
// grace period (in registration, the exit hook, statistics): a signal handler on this
// thread whose read_lock() registers the thread would otherwise wait for the lock its own
// thread holds. Writers need no mask: synchronize() registers its thread first, so its
// handlers never take the lock. Direct rt_sigprocmask: registration runs it.
class SignalsBlocked {
 public:
  HP_DISPATCH_SECTION SignalsBlocked() noexcept {
    const std::uint64_t all = kAsyncSignalMask;
    (void)raw_syscall(SYS_rt_sigprocmask, SIG_BLOCK, reinterpret_cast<long>(&all),
                      reinterpret_cast<long>(&old_), sizeof old_);
  }
  HP_DISPATCH_SECTION ~SignalsBlocked() {
    (void)raw_syscall(SYS_rt_sigprocmask, SIG_SETMASK, reinterpret_cast<long>(&old_), 0,
                      sizeof old_);
  }
  SignalsBlocked(const SignalsBlocked&) = delete;
  SignalsBlocked& operator=(const SignalsBlocked&) = delete;

 private:
  std::uint64_t old_ = 0;
};

// The forking thread's signal mask, blocked from fork_prepare() to the parent/child handler.
thread_local sigset_t tls_fork_saved_mask;

int membarrier(int cmd) {
  return static_cast<int>(::syscall(__NR_membarrier, cmd, 0U, 0));
}

std::string thread_name(pid_t tid) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/self/task/%d/comm", static_cast<int>(tid));
  std::FILE* f = std::fopen(path, "re");
  if (!f) {
    return {};
  }
  char buf[64] = {};
  std::string name;
  if (std::fgets(buf, sizeof buf, f)) {
    name = buf;
    if (!name.empty() && name.back() == '\n') {
      name.pop_back();
    }
  }
  std::fclose(f);
  return name;
}

void default_stall_report(const StallReport& r) {
  std::fprintf(stderr,
               "hotprobe: tasks-trace stall: thread %d (%s) has been inside one read section for "
               "%lld ms, blocking grace period %llu\n",
               static_cast<int>(r.tid), r.name.empty() ? "?" : r.name.c_str(),
               static_cast<long long>(r.held.count()),
               static_cast<unsigned long long>(r.grace_period));
}

// Spin briefly, then yield, then sleep with exponential backoff up to 10 ms.
void wait_step(unsigned iter) {
  if (iter < 32) {
    for (int i = 0; i < 64; i++) {
      __builtin_ia32_pause();
    }
  } else if (iter < 48) {
    sched_yield();
  } else {
    unsigned shift = iter - 48 < 9 ? iter - 48 : 9;
    long us = 20L << shift;  // 20 us .. 10.24 ms
    timespec ts{0, us * 1000};
    nanosleep(&ts, nullptr);
  }
}

}  // namespace

// Lock order (liburcu style, declared where the locks are): gp_mu, then registry_mu. cfg_mu
// is a leaf and never held together with registry_mu. The fork handler takes registry_mu and
// cfg_mu (each is only held briefly, never across a wait), never gp_mu, which a writer holds
// while waiting for readers (one of them may be the forking thread).
struct TasksTraceAccess;

struct TasksTrace::Impl {
  Mutex gp_mu;  // one grace period at a time
  RawMutex registry_mu HP_ACQUIRED_AFTER(gp_mu);
  ThreadRecord* threads HP_GUARDED_BY(registry_mu) = nullptr;
  std::size_t nthreads HP_GUARDED_BY(registry_mu) = 0;
  // Records registered after their thread's exit hook (ThreadRecord::exited).
  ThreadRecord* exited HP_GUARDED_BY(registry_mu) = nullptr;
  // Records the current grace period waits for; an exiting thread removes itself.
  std::vector<ThreadRecord*> holdouts HP_GUARDED_BY(registry_mu);
  std::size_t sweep HP_GUARDED_BY(registry_mu) = 0;  // where kIdentitySweep starts
  pthread_key_t exit_key{};
  std::atomic<std::int64_t> stall_timeout_ms{10'000};
  Mutex cfg_mu;
  std::function<void(const StallReport&)> stall_cb HP_GUARDED_BY(cfg_mu);

  // link() and alloc_record() run in registration: inlined into the dispatch section.
  HP_ALWAYS_INLINE void link(ThreadRecord* r) HP_REQUIRES(registry_mu) {
    r->prev = nullptr;
    r->next = threads;
    if (threads) {
      threads->prev = r;
    }
    threads = r;
    nthreads++;
  }
  // A record from the pool (a new page of them when it is empty: zero-filled, which is
  // a value-initialized ThreadRecord). Null when no page can be mapped.
  HP_ALWAYS_INLINE ThreadRecord* alloc_record() HP_REQUIRES(registry_mu) {
    if (!g_free_records) {
      constexpr long kPage = 4096;
      const long mem = raw_syscall(SYS_mmap, 0, kPage, PROT_READ | PROT_WRITE,
                                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (mem < 0 && mem > -4096) return nullptr;
      auto* recs = reinterpret_cast<ThreadRecord*>(mem);
      for (std::size_t i = 0; i < kPage / sizeof(ThreadRecord); i++) {
        recs[i].next = g_free_records;
        g_free_records = &recs[i];
      }
    }
    ThreadRecord* r = g_free_records;
    g_free_records = r->next;
    *r = ThreadRecord{};
    return r;
  }
  // Unlinks `r` and returns it to the pool.
  void release(ThreadRecord* r) HP_REQUIRES(registry_mu) {
    HP_ASSERT_MSG(r->word != nullptr, "tasks-trace: a thread record released twice");
    unlink(r);
    recycle(r);
  }
  // A record that is no holdout, off every list and back in the pool (registration: inlined
  // into the dispatch section).
  HP_ALWAYS_INLINE void release_unheld(ThreadRecord* r) HP_REQUIRES(registry_mu) {
    unlink_lists(r);
    recycle(r);
  }
  HP_ALWAYS_INLINE void recycle(ThreadRecord* r) HP_REQUIRES(registry_mu) {
    *r = ThreadRecord{};
    r->next = g_free_records;
    g_free_records = r;
  }
  void unlink(ThreadRecord* r) HP_REQUIRES(registry_mu) {
    unlink_lists(r);
    if (r->holdout) {
      for (auto& h : holdouts) {
        if (h == r) {
          h = holdouts.back();
          holdouts.pop_back();
          break;
        }
      }
      r->holdout = false;
    }
  }
  HP_ALWAYS_INLINE void unlink_lists(ThreadRecord* r) HP_REQUIRES(registry_mu) {
    if (r->prev) {
      r->prev->next = r->next;
    } else {
      threads = r->next;
    }
    if (r->next) {
      r->next->prev = r->prev;
    }
    nthreads--;
    if (r->exited) {
      ThreadRecord** p = &exited;
      while (*p != r)
        p = &(*p)->exited_next;
      *p = r->exited_next;
      r->exited = false;
    }
  }
};

namespace {

TasksTrace* g_instance = nullptr;  // set once, before any fork handler can run

// The thread-exit hook (a pthread key destructor): runs after the thread's C++ thread_local
// destructors (which may still use read sections) and before its TLS is freed. After it, the
// writer can no longer reach this thread's word, until a later section registers it again.
void on_thread_exit(void* p);

}  // namespace

struct TasksTraceAccess {
  static TasksTrace::Impl& impl(TasksTrace& t) { return *t.impl_; }
  static void set_barrier_kind(TasksTrace& t, TasksTrace::BarrierKind k) {
    t.barrier_kind_.store(k, std::memory_order_relaxed);
  }
};

namespace {

void on_thread_exit(void* p) {
  auto* rec = static_cast<ThreadRecord*>(p);
  auto& im = TasksTraceAccess::impl(*g_instance);
  SignalsBlocked sb;
  {
    RawLock l(im.registry_mu);
    // Only this thread's own record. A thread that registered after its exit hook leaves
    // its key's value behind in its thread descriptor, which glibc hands, uncleared, to the
    // next thread that takes the cached stack: that value is not this thread's (the writer
    // released the record when it found that thread gone).
    if (rec->word == &tls_word) im.release(rec);
  }
  // A read_lock() in a later destructor, or in glibc's last steps of the thread after them
  // all, registers the thread again, with a record marked exited (glibc runs this hook again
  // when a round of key destructors remains).
  tls_word.store(0, std::memory_order_relaxed);
  tls_past_exit = true;
}

void fork_prepare() HP_NO_THREAD_SAFETY_ANALYSIS {
  auto& im = TasksTraceAccess::impl(*g_instance);
  sigset_t all;
  hp::fill_async_signals(&all);
  pthread_sigmask(SIG_BLOCK, &all, &tls_fork_saved_mask);
  im.registry_mu.lock();
  im.cfg_mu.lock();
}

void fork_parent() HP_NO_THREAD_SAFETY_ANALYSIS {
  auto& im = TasksTraceAccess::impl(*g_instance);
  im.cfg_mu.unlock();
  im.registry_mu.unlock();
  pthread_sigmask(SIG_SETMASK, &tls_fork_saved_mask, nullptr);
}

}  // namespace

namespace {

// In the child only the forking thread exists: drop every other record (their threads, and
// the TLS their words live in, are the parent's), forget the parent's grace period, make the
// grace-period mutex usable again (a parent thread may have held it), and register for
// membarrier again (the child is a new mm).
void fork_child() HP_NO_THREAD_SAFETY_ANALYSIS {
  TasksTrace& tt = *g_instance;
  auto& im = TasksTraceAccess::impl(tt);
  std::atomic<std::uint64_t>* mine = &tls_word;
  ThreadRecord* r = im.threads;
  while (r) {
    ThreadRecord* n = r->next;
    r->holdout = false;
    if (r->word == mine && !tls_past_exit) {
      r->id = {raw_gettid(), 0};  // a thread of its own (and so an instance of its own)
      r->id.instance = thread_instance(r->id.tid, true);
    } else {
      im.release(r);  // a parent thread's
    }
    r = n;
  }
  im.holdouts.clear();
  im.gp_mu.reinit_after_fork();
  if (tt.barrier_kind() == TasksTrace::BarrierKind::kPrivateExpedited &&
      membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) != 0) {
    TasksTraceAccess::set_barrier_kind(tt, TasksTrace::BarrierKind::kGlobal);
  }
  im.cfg_mu.unlock();
  im.registry_mu.unlock();
  pthread_sigmask(SIG_SETMASK, &tls_fork_saved_mask, nullptr);
}

}  // namespace

TasksTrace::TasksTrace() : impl_(new Impl), deferred_(this, &TasksTrace::sync_thunk, seq_, "tt") {
  // W1's mechanism, chosen once: expedited membarrier if the kernel lets us register for it.
  int mask = membarrier(MEMBARRIER_CMD_QUERY);
  BarrierKind k = BarrierKind::kNone;
  if (mask > 0 && (mask & MEMBARRIER_CMD_PRIVATE_EXPEDITED) &&
      membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) == 0) {
    k = BarrierKind::kPrivateExpedited;
  } else if (mask > 0 && (mask & MEMBARRIER_CMD_GLOBAL)) {
    k = BarrierKind::kGlobal;
  }
  barrier_kind_.store(k, std::memory_order_relaxed);
  HP_CHECK(pthread_key_create(&impl_->exit_key, &on_thread_exit) == 0);
  g_instance = this;
  HP_CHECK(pthread_atfork(&fork_prepare, &fork_parent, &fork_child) == 0);
}

TasksTrace& tasks_trace() noexcept {
  // Immortal; running out of memory here, at first use, is fatal (noexcept).
  static TasksTrace* const instance =
      new TasksTrace;  // NOLINT(bugprone-unhandled-exception-at-new)
  return *instance;
}

// In the dispatch section, with direct system calls and the raw registry lock (see
// RawMutex); pthread_setspecific at the end is the one call into libc.
HP_DISPATCH_SECTION std::uint64_t TasksTrace::register_thread() noexcept {
  TasksTrace& tt = g_instance ? *g_instance : tasks_trace();
  SignalsBlocked sb;
  // A signal handler may have registered this thread between read_lock()'s load and here.
  if (std::uint64_t v = tls_word.load(std::memory_order_relaxed); v != 0) {
    return v;
  }
  const pid_t tid = raw_gettid();
  const ThreadIdentity id{tid, thread_instance(tid, true)};
  ThreadRecord* rec;
  tls_word.store(tt_detail::kRegistered, std::memory_order_relaxed);
  {
    // The writer scans under this lock, so a grace period either sees this record or
    // started its scan before the registration; in the latter case this thread's coming
    // section starts after that scan (the lock orders them) and sees the writer's updates.
    RawLock l(tt.impl_->registry_mu);
    // A thread that registered after its exit hook left its record behind; this thread
    // took its stack, and so its word: that thread is gone.
    for (ThreadRecord *r = tt.impl_->exited, *next; r; r = next) {
      next = r->exited_next;
      if (r->word == &tls_word && !r->holdout) tt.impl_->release_unheld(r);
    }
    rec = tt.impl_->alloc_record();
    HP_CHECK_MSG(rec != nullptr, "tasks-trace: out of memory for thread records");
    rec->word = &tls_word;
    rec->id = id;
    tt.impl_->link(rec);
    if (tls_past_exit) {  // glibc's last steps of this thread: released once it is gone
      rec->exited = true;
      rec->exited_next = tt.impl_->exited;
      tt.impl_->exited = rec;
    }
  }
  // The exit hook (glibc runs it unless this thread is past its last round of key
  // destructors; then the writer releases the record once the thread is gone).
  HP_CHECK(pthread_setspecific(tt.impl_->exit_key, rec) == 0);
  return tt_detail::kRegistered;
}

void TasksTrace::sync_thunk(void* self) {
  static_cast<TasksTrace*>(self)->synchronize();
}

void TasksTrace::synchronize() {
  HP_CHECK_MSG(!in_reader(),
               "TasksTrace::synchronize() inside a read section would wait for itself");
  // Register the writer's own thread first, so a signal handler interrupting it while it
  // holds registry_mu never needs that lock to register.
  if (HP_UNLIKELY(tls_word.load(std::memory_order_relaxed) == 0)) {
    (void)register_thread();
  }
  GpCookie c = seq_.snap();
  MutexLock l(impl_->gp_mu);
  if (seq_.done(c)) {
    return;  // another caller's grace period covered ours
  }
  // Odd here only in a fork child whose parent was in the middle of a grace period: finish
  // that one (it waits for every section the child has, so it is a full grace period).
  if (!seq_.in_progress()) {
    seq_.start();
  }
  run_grace_period();
  seq_.end();
}

void TasksTrace::barrier() {
  HP_CHECK_MSG(!in_reader(), "TasksTrace::barrier() inside a read section would wait for itself");
  deferred_.barrier();
}

void TasksTrace::run_grace_period() {
  Impl& im = *impl_;
  const auto barrier_all = [this] {
    switch (barrier_kind()) {
      case BarrierKind::kPrivateExpedited:
        HP_CHECK(membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) == 0);
        break;
      case BarrierKind::kGlobal:
        HP_CHECK(membarrier(MEMBARRIER_CMD_GLOBAL) == 0);
        break;
      case BarrierKind::kNone:
        break;
    }
  };
  // W1: matches R1 in read_lock() (and orders the caller's unpublishing stores before the
  // scan). Every thread of the process that is running executes a full barrier; the others
  // are between context switches, which imply one. After it, a reader either has its entry
  // visible to the scan below, or its section's loads see everything stored before this call.
  switch (barrier_kind()) {
    case BarrierKind::kPrivateExpedited:
      HP_CHECK_MSG(membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) == 0,
                   "membarrier(PRIVATE_EXPEDITED) failed after registration");
      break;
    case BarrierKind::kGlobal:
      HP_CHECK_MSG(membarrier(MEMBARRIER_CMD_GLOBAL) == 0, "membarrier(GLOBAL) failed");
      break;
    case BarrierKind::kNone:
      HP_DIE(
          "tasks-trace RCU needs membarrier(2) (Linux >= 4.3), and this process may not use it "
          "(a seccomp filter?); allow membarrier or use another hotprobe sync domain");
  }
  const auto t0 = std::chrono::steady_clock::now();
  const std::uint64_t gp_number = seq_.completed() + 1;
  {
    RawLock l(im.registry_mu);
    im.holdouts.clear();
    std::size_t i = im.sweep++;
    for (ThreadRecord *r = im.threads, *next; r; r = next, i++) {
      next = r->next;
      // W2: matches R2 in read_unlock() and R0 in read_lock().
      bool readable;
      std::uint64_t v = load_word(*r, readable);
      // A thread that ended without its exit hook (its first section came after the
      // hook's round): its word went with its TLS. The instance of every
      // kIdentitySweep-th record is checked here, that of a holdout while it is waited for.
      if (!readable || ((r->exited || i % kIdentitySweep == 0) && thread_gone(*r))) {
        im.release(r);
        continue;
      }
      if (v & kNestMask) {
        r->holdout = true;
        r->stall_reported = false;
        r->snap = v;
        im.holdouts.push_back(r);
      }
    }
  }
  for (unsigned iter = 0;; iter++) {
    std::vector<StallReport> stalls;
    {
      RawLock l(im.registry_mu);
      for (std::size_t i = 0; i < im.holdouts.size();) {
        ThreadRecord* r = im.holdouts[i];
        // W2 (matches R2 and R0): depth 0 or a new outermost entry means the section we
        // saw has ended.
        bool readable;
        const std::uint64_t v = load_word(*r, readable);
        const bool same_section = (v & kNestMask) != 0 && (v >> 32) == (r->snap >> 32);
        // A thread that ended inside its section, without its exit hook, or memory reused
        // that reads as a section: the instance is checked every eighth look once the
        // spinning is over (a pidfd costs microseconds; most sections end before).
        if (!readable || (same_section && iter >= 32 && iter % 8 == 0 && thread_gone(*r))) {
          im.holdouts[i] = im.holdouts.back();
          im.holdouts.pop_back();
          r->holdout = false;
          im.release(r);
          continue;
        }
        if (!same_section) {
          r->holdout = false;
          im.holdouts[i] = im.holdouts.back();
          im.holdouts.pop_back();
        } else {
          i++;
        }
      }
      if (im.holdouts.empty()) {
        break;
      }
      const auto held = std::chrono::duration_cast<std::chrono::milliseconds>(
          std::chrono::steady_clock::now() - t0);
      if (held.count() >= im.stall_timeout_ms.load(std::memory_order_relaxed)) {
        for (ThreadRecord* r : im.holdouts) {
          if (r->stall_reported) {
            continue;
          }
          r->stall_reported = true;
          stalls.push_back(StallReport{r->id.tid, {}, held, gp_number});
        }
      }
    }
    if (!stalls.empty()) {
      std::function<void(const StallReport&)> cb;
      {
        MutexLock l(im.cfg_mu);
        cb = im.stall_cb;
      }
      for (StallReport& s : stalls) {
        s.name = thread_name(s.tid);
        if (cb) {
          cb(s);
        } else {
          default_stall_report(s);
        }
      }
    }
    if (iter < 32) {
      wait_step(iter);  // spin: short sections end within microseconds
      continue;
    }
    // Then sleep until a reader leaves its outermost section and wakes us (liburcu memb's
    // scheme), with a timeout for readers that stay (stall reports, sleeping readers).
    // F1: matches F2 in read_unlock(). The barrier between announcing -1 and the re-check
    // makes every reader either visible as out of its section to the re-check, or see -1
    // at its next outermost unlock and wake us.
    if (tt_detail::gp_futex.load(std::memory_order_relaxed) != -1) {
      tt_detail::gp_futex.store(-1, std::memory_order_relaxed);
      barrier_all();
      continue;
    }
    const unsigned shift = iter - 32 < 9 ? iter - 32 : 9;
    timespec ts{0, (20L << shift) * 1000};  // 20 us .. 10.24 ms
    ::syscall(SYS_futex, &tt_detail::gp_futex, FUTEX_WAIT_PRIVATE, -1, &ts, nullptr, 0);
  }
  tt_detail::gp_futex.store(0, std::memory_order_relaxed);
}

std::size_t TasksTrace::registered_threads() const {
  SignalsBlocked sb;
  RawLock l(impl_->registry_mu);
  return impl_->nthreads;
}

void TasksTrace::set_stall_timeout(std::chrono::milliseconds t) noexcept {
  impl_->stall_timeout_ms.store(t.count(), std::memory_order_relaxed);
}

std::chrono::milliseconds TasksTrace::stall_timeout() const noexcept {
  return std::chrono::milliseconds(impl_->stall_timeout_ms.load(std::memory_order_relaxed));
}

void TasksTrace::set_stall_callback(std::function<void(const StallReport&)> cb) {
  MutexLock l(impl_->cfg_mu);
  impl_->stall_cb = std::move(cb);
}

void TasksTrace::force_barrier_kind_for_testing(BarrierKind k) {
  HP_CHECK_MSG(k != BarrierKind::kNone, "force_barrier_kind_for_testing(kNone)");
  if (k == BarrierKind::kPrivateExpedited) {
    HP_CHECK(membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) == 0);
  }
  MutexLock l(impl_->gp_mu);
  barrier_kind_.store(k, std::memory_order_relaxed);
}

void TasksTrace::lock_registry_for_testing() HP_NO_THREAD_SAFETY_ANALYSIS {
  impl_->registry_mu.lock();
}

void TasksTrace::unlock_registry_for_testing() HP_NO_THREAD_SAFETY_ANALYSIS {
  impl_->registry_mu.unlock();
}

}  // namespace hp::sync
