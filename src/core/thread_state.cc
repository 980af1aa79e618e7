#include "core/thread_state.h"

#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>

#include <cerrno>

#include <algorithm>
#include <new>

#include "base/assert.h"
#include "base/raw_syscall.h"
#include "base/thread_annotations.h"
#include "core/text_patch.h"
#include "sync/deferred.h"
#include "sync/tasks_trace.h"

namespace hp::core {

constinit thread_local ThreadState tls_state
    __attribute__((tls_model("initial-exec"))){nullptr, false, false, 0, false, 0};
std::atomic<std::uint64_t> g_unregistered_misses{0};

namespace {

std::atomic<ThreadRecord*> g_head{nullptr};
// The records' lock. Registration holds it between a trampoline and the read section,
// where the trampoline reclaimer tells a thread by its pc (base/compiler.h,
// HP_DISPATCH_SECTION): a waiter inside pthread_mutex_lock (libc's futex call) would count
// as outside, and return into a site restored meanwhile. So it spins, and its wait (pause,
// then a direct sched_yield) stays in the caller's code.
class HP_CAPABILITY("mutex") RecordsLock {
 public:
  HP_ALWAYS_INLINE void lock() HP_ACQUIRE() {
    unsigned spins = 0;
    while (held_.exchange(true, std::memory_order_acquire)) {
      while (held_.load(std::memory_order_relaxed)) {
        if (spins < 64) {
          spins++;
          __builtin_ia32_pause();
        } else {
          (void)raw_syscall(SYS_sched_yield);
        }
      }
    }
  }
  HP_ALWAYS_INLINE void unlock() HP_RELEASE() { held_.store(false, std::memory_order_release); }
  // In a fork child: the holder (another thread of the parent) does not exist there.
  void reinit_after_fork() HP_NO_THREAD_SAFETY_ANALYSIS {
    held_.store(false, std::memory_order_relaxed);
  }

 private:
  std::atomic<bool> held_{false};
};

class HP_SCOPED_CAPABILITY RecordsLockHold {
 public:
  HP_ALWAYS_INLINE explicit RecordsLockHold(RecordsLock& l) HP_ACQUIRE(l) : l_(l) { l_.lock(); }
  HP_ALWAYS_INLINE ~RecordsLockHold() HP_RELEASE() { l_.unlock(); }
  RecordsLockHold(const RecordsLockHold&) = delete;
  RecordsLockHold& operator=(const RecordsLockHold&) = delete;

 private:
  RecordsLock& l_;
};

// Serializes registration and folding; the list itself is lock-free.
RecordsLock g_records_mu;
// Records mapped and not handed out yet.
constexpr unsigned kRecordsPerChunk = 16;
ThreadRecord* g_chunk HP_GUARDED_BY(g_records_mu) = nullptr;
unsigned g_chunk_left HP_GUARDED_BY(g_records_mu) = 0;
std::atomic<std::uint64_t> g_exited_hits{0}, g_exited_rec{0}, g_exited_ret{0};

std::atomic<std::uint64_t> g_exited_own{0};

// Folds `r`'s counts into the totals and frees it for reuse: its thread is gone. Pending
// return instances die with the thread. Inlined: registration (in the dispatch section)
// reuses records this way.
HP_ALWAYS_INLINE void fold_and_free(ThreadRecord* r) HP_REQUIRES(g_records_mu) {
  const std::uint64_t rec = r->misses_recursion.exchange(0, std::memory_order_relaxed);
  g_exited_hits.fetch_add(r->hits.exchange(0, std::memory_order_relaxed),
                          std::memory_order_relaxed);
  (r->own_thread.load(std::memory_order_relaxed) ? g_exited_own : g_exited_rec)
      .fetch_add(rec, std::memory_order_relaxed);
  g_exited_own.fetch_add(r->skipped_own.exchange(0, std::memory_order_relaxed),
                         std::memory_order_relaxed);
  g_exited_ret.fetch_add(r->misses_return_stack.exchange(0, std::memory_order_relaxed),
                         std::memory_order_relaxed);
  for (std::uint32_t i = 0; i < kMaxReturnDepth; i++)
    r->stack[i].site.store(nullptr, std::memory_order_relaxed);
  r->depth.store(0, std::memory_order_release);
  r->own_thread.store(false, std::memory_order_relaxed);
  r->tid = 0;
  r->exiting = false;
  r->in_use.store(false, std::memory_order_release);
}

// Marks the record of an exiting thread: the thread keeps it for its last steps (glibc's
// __libc_thread_freeres frees after every key destructor, and those hits count), and a
// registration reuses it once the thread is gone (its counts folded into the totals). A
// pthread key's destructor, not a thread_local one: registering a thread_local destructor
// allocates a node that glibc frees when the thread exits, a free() the program did not
// make (and a probe on free would count it).
void release_record(void*) {
  tls_state.keys_done = true;
  ThreadRecord* r = tls_state.rec;
  if (!r) return;
  const bool prev = tls_state.in_handler;
  tls_state.in_handler = true;  // the lock below is hotprobe's work, not the program's
  {
    RecordsLockHold l(g_records_mu);
    r->exiting = true;
  }
  tls_state.in_handler = prev;
}

// In the dispatch section with a direct system call: registration runs between a
// trampoline and the read section (base/raw_syscall.h).
HP_DISPATCH_SECTION int current_tid() noexcept {
  return static_cast<int>(raw_syscall(SYS_gettid));
}

pthread_key_t g_release_key;
[[maybe_unused]] const int g_release_key_made = [] {
  int rc = pthread_key_create(&g_release_key, &release_record);
  HP_CHECK_MSG(rc == 0, "pthread_key_create failed: no thread record would be released");
  return 0;
}();

}  // namespace

// A worker thread of hotprobe's that started with every asynchronous signal blocked (so
// that no handler of the program runs on it) takes the engine's own signal: it may be in
// a probed function's bytes when they are patched, and must be movable.
void start_own_worker() noexcept {
  mark_own_thread();
  sigset_t move;
  sigemptyset(&move);
  sigaddset(&move, move_signal_number());
  pthread_sigmask(SIG_UNBLOCK, &move, nullptr);
}

// In a fork child only the forking thread exists: the other records are released, so
// their return stacks no longer keep sites as zombies.
void release_records_in_child() HP_NO_THREAD_SAFETY_ANALYSIS {
  g_records_mu.reinit_after_fork();
  for (ThreadRecord* p = g_head.load(std::memory_order_acquire); p; p = p->next) {
    if (p == tls_state.rec) {
      p->tid = current_tid();  // the child's own
      continue;
    }
    for (std::uint32_t i = 0; i < kMaxReturnDepth; i++) {
      p->stack[i].site.store(nullptr, std::memory_order_relaxed);
    }
    p->depth.store(0, std::memory_order_relaxed);
    p->in_use.store(false, std::memory_order_release);
  }
}

[[maybe_unused]] const int g_atfork = [] {
  pthread_atfork(nullptr, nullptr, &release_records_in_child);
  // The grace-period workers are hotprobe's threads: what they call is not the program's.
  sync::set_worker_start_hook(&start_own_worker);
  return 0;
}();

HP_DISPATCH_SECTION ThreadRecord& register_thread_record() {
  RecordsLockHold l(g_records_mu);
  ThreadRecord* r = nullptr;
  long pid = 0;
  for (ThreadRecord* p = g_head.load(std::memory_order_acquire); p; p = p->next) {
    if (!p->in_use.load(std::memory_order_acquire)) {
      r = p;
      break;
    }
    // An exiting thread's record (release_record), free once the thread is gone.
    if (p->exiting) {
      if (pid == 0) pid = raw_syscall(SYS_getpid);
      if (raw_syscall(SYS_tgkill, pid, p->tid, 0) == -ESRCH) {
        fold_and_free(p);
        r = p;
        break;
      }
    }
  }
  if (!r) {
    // Never freed (scans may read any record at any time). Mapped directly, not with new:
    // the first hit may come in a signal handler (int3 mode), and nothing here may throw
    // into the program. Sixteen at a time: one mapping each would add hundreds of mappings
    // to a program that starts threads by the thousand.
    if (g_chunk_left == 0) {
      constexpr long kSize = (kRecordsPerChunk * sizeof(ThreadRecord) + 4095) & ~4095L;
      const long m = raw_syscall(SYS_mmap, 0, kSize, PROT_READ | PROT_WRITE,
                                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      HP_CHECK_MSG(m > 0 || m <= -4096,
                   "hotprobe: no memory for a thread's record (mmap failed): the process is "
                   "out of memory or of mappings (vm.max_map_count)");
      g_chunk = reinterpret_cast<ThreadRecord*>(m);
      g_chunk_left = kRecordsPerChunk;
    }
    r = new (g_chunk++) ThreadRecord;
    g_chunk_left--;
    r->next = g_head.load(std::memory_order_relaxed);
    g_head.store(r, std::memory_order_release);
  }
  r->in_use.store(true, std::memory_order_release);
  r->own_thread.store(tls_state.own_thread, std::memory_order_relaxed);
  r->tid = current_tid();
  r->exiting = tls_state.keys_done;  // registered in the thread's last steps
  tls_state.rec = r;
  // Keys below 32 live in the thread descriptor: no allocation (the first keys of a
  // process, which this one is: made by the engine's static initializer).
  pthread_setspecific(g_release_key, r);
  return *r;
}

// Records of threads that ended without their key destructor (registered after it), freed
// when their thread is gone. Under the lock, which every registration and release takes:
// a record checked here cannot change owner meanwhile, and a tid reused by a new thread
// only keeps its record until that thread is gone too.
void release_records_of_exited_threads() noexcept {
  OwnWork own;  // the lock and the system calls are hotprobe's work
  RecordsLockHold l(g_records_mu);
  const long pid = raw_syscall(SYS_getpid);
  for (ThreadRecord* r = g_head.load(std::memory_order_acquire); r; r = r->next) {
    if (r->in_use.load(std::memory_order_relaxed) && r->tid > 0 && r != tls_state.rec &&
        raw_syscall(SYS_tgkill, pid, r->tid, 0) == -ESRCH) {
      fold_and_free(r);
    }
  }
}

ThreadRecord* thread_records_head() noexcept {
  return g_head.load(std::memory_order_acquire);
}

HitTotals hit_totals() noexcept {
  HitTotals t{g_exited_hits.load(std::memory_order_relaxed),
              g_exited_rec.load(std::memory_order_relaxed) +
                  g_unregistered_misses.load(std::memory_order_relaxed),
              g_exited_ret.load(std::memory_order_relaxed),
              g_exited_own.load(std::memory_order_relaxed)};
  for (ThreadRecord* p = thread_records_head(); p; p = p->next) {
    t.hits += p->hits.load(std::memory_order_relaxed);
    const std::uint64_t rec = p->misses_recursion.load(std::memory_order_relaxed);
    (p->own_thread.load(std::memory_order_relaxed) ? t.skipped_own : t.misses_recursion) += rec;
    t.skipped_own += p->skipped_own.load(std::memory_order_relaxed);
    t.misses_return_stack += p->misses_return_stack.load(std::memory_order_relaxed);
  }
  return t;
}

// Never registers a record (that allocates): async-signal-safe. A thread with no record
// yet counts its skips with the unregistered threads' (g_unregistered_misses).
OwnWorkToken begin_own_work() noexcept {
  ThreadState& ts = tls_state;
  OwnWorkToken t{ts.in_handler, ts.rec, 0};
  ts.in_handler = true;
  ts.own_depth++;
  if (t.rec) t.misses_before = t.rec->misses_recursion.load(std::memory_order_relaxed);
  return t;
}

// The skips of the scope move from misses_recursion to skipped_own (both the owner's:
// plain load and store, as the dispatcher counts). A nested scope has moved its own
// already, so each scope moves exactly the skips that happened in it and not in an
// inner one.
void end_own_work(OwnWorkToken t) noexcept {
  ThreadState& ts = tls_state;
  if (ThreadRecord* r = ts.rec; r && r == t.rec) {
    const std::uint64_t now = r->misses_recursion.load(std::memory_order_relaxed);
    if (now > t.misses_before) {
      r->misses_recursion.store(t.misses_before, std::memory_order_relaxed);
      r->skipped_own.store(r->skipped_own.load(std::memory_order_relaxed) + (now - t.misses_before),
                           std::memory_order_relaxed);
    }
  }
  ts.own_depth--;
  ts.in_handler = t.prev_in_handler;
}

void mark_own_thread() noexcept {
  ThreadState& ts = tls_state;
  ts.in_handler = true;
  ts.own_thread = true;
  thread_record().own_thread.store(true, std::memory_order_relaxed);
}

bool in_own_work() noexcept {
  return tls_state.own_thread || tls_state.own_depth > 0;
}

bool is_own_thread() noexcept {
  return tls_state.own_thread;
}

std::vector<const Site*> sites_referenced_by_return_stacks() {
  std::vector<const Site*> out;
  for (ThreadRecord* p = thread_records_head(); p; p = p->next) {
    (void)p->depth.load(std::memory_order_acquire);  // R2: matches R1
    // Entries at or above depth may be written concurrently, but a push stores the site
    // before publishing depth, so a pending instance is always visible below depth. Look
    // at all entries anyway: a stale pointer only delays reclamation.
    for (std::uint32_t i = 0; i < kMaxReturnDepth; i++) {
      if (const Site* s = p->stack[i].site.load(std::memory_order_acquire)) out.push_back(s);
    }
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

}  // namespace hp::core
