// Tasks-trace RCU: the default hot-path domain (the kernel's RCU Tasks Trace, in user space).
//
// OVERVIEW
//   Readers pay a thread-local increment and a compiler barrier; nothing shared is written,
//   there is no atomic read-modify-write, no fence and no system call. The writer pays
//   instead: synchronize() makes every running thread of the process execute a full memory
//   barrier with membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED), then waits for each
//   registered thread that was inside a read section at that point until it leaves that
//   section. Readers may block or sleep inside a section (it is "sleepable"); a reader that
//   stays longer than the stall timeout (10 s by default) makes the waiting writer report it,
//   once, naming the thread.
//
//   Each thread has one 64-bit word in static TLS (tt_detail::tls_word):
//       bits 63..32  outermost-entry count, odd once registered (so 0 means "unregistered")
//       bits 31..0   nesting depth
//   The writer treats a thread as done with the section it saw when the depth is 0 or the
//   entry count has changed (the thread left and started a new section, which began after
//   the writer's barrier and therefore already sees the writer's updates).
//
//   A thread registers itself lazily on its first read_lock() (a cold out-of-line call, in
//   the dispatch section with direct system calls: the trampoline reclaimer tells a thread
//   there by its pc) and unregisters in a pthread-key destructor, which runs after the C++
//   thread_local destructors and before the thread's TLS is freed; the writer only reads a
//   thread's word under the registry lock, which the exiting thread takes to unregister, so
//   it never reads freed memory. A section after that destructor (a later key destructor,
//   or glibc's last steps of the thread, __libc_thread_freeres, after them all) registers
//   the thread again, and grace periods wait for it: that record is marked exited and
//   outlives its thread. It is released by the registration of the thread that takes the
//   cached stack (and so the word), or by a grace period, which reads words without
//   faulting (the thread's TLS may be unmapped the moment it ends) and checks the thread
//   instance (tid and pidfd inode; Linux reuses tids) of every exited record.
//   Memory ordering is in docs/design/sync-tasks-trace.md (pairs R0/R1/R2/W1/W2).
//
// EXAMPLE
//   hp::sync::TasksTrace& tt = hp::sync::tasks_trace();
//   // reader, any thread, no registration:
//   {
//     hp::sync::ReadGuard g(tt);
//     const Config* c = g_config.load(std::memory_order_acquire);
//     use(c);                                      // may block or sleep
//   }
//   // writer:
//   const Config* old = g_config.exchange(fresh, std::memory_order_acq_rel);
//   hp::sync::retire(tt, old);                     // or: tt.synchronize(); delete old;
//
// LIMITS
//   - Never call synchronize() or barrier() inside a read section (it would wait for itself:
//     checked, dies loudly).
//   - Nesting depth below 2^32; entry-count wrap-around (2^31 outermost sections between two
//     looks by a writer) can only make a writer wait longer, never shorter.
//   - One process-wide domain: the per-thread words are shared by everything that uses
//     tasks_trace(). Use SRCU for a domain whose writers must wait only for their own readers.
//   - A thread leaving by a raw SYS_exit (not pthread_exit or returning) is not supported.
//   - Signal handlers may read (a thread may even register from one: no allocation, signals
//     blocked while the registry lock is held), provided tasks_trace() was called once before
//     (creating the domain allocates). synchronize(), barrier(), call(), start_poll() are not
//     async-signal-safe.
//   - Needs membarrier(2): PRIVATE_EXPEDITED (Linux 4.14), else GLOBAL (4.3, a scheduler-based
//     barrier costing milliseconds); if neither is allowed (seccomp), synchronize() dies with
//     a message saying so.
//   - fork(): the child has a working domain with only the forking thread registered; the
//     deferred worker restarts on demand. Callbacks the parent's worker was running at the
//     instant of fork() are not run again in the child (their copies leak there).
//
// COSTS (2-core VM, Linux 6.18, g++ 12 -O2; details in docs/design/sync-tasks-trace.md)
//   read_lock()+read_unlock() around a pointer load: 0.84 ns min / 0.93 ns median on a quiet
//   machine, 0.4-0.5x liburcu-memb's inline read pair measured side by side.
//   synchronize() with no reader inside a section: one membarrier plus a scan, 0.4-1.5 us.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>

#include "base/assert.h"
#include "base/compiler.h"
#include "sync/deferred.h"
#include "sync/domain.h"
#include "sync/gp_seq.h"

namespace hp::sync {

struct TasksTraceAccess;

namespace tt_detail {

inline constexpr std::uint64_t kNestMask = 0xffff'ffffULL;
// One outermost entry adds 2 to the entry count: it stays odd, so a registered word is
// never 0, even after wrap-around.
inline constexpr std::uint64_t kEntryInc = 2ULL << 32;
// The word of a thread that has just registered: entry count 1, depth 0.
inline constexpr std::uint64_t kRegistered = 1ULL << 32;

// The calling thread's reader word. constinit and trivially destructible: access is a plain
// %fs-relative load, no TLS wrapper call; initial-exec so it stays so in a shared library.
extern constinit thread_local std::atomic<std::uint64_t> tls_word
    __attribute__((tls_model("initial-exec")));

// -1 while a writer sleeps waiting for readers; see run_grace_period() (F1/F2).
extern std::atomic<std::int32_t> gp_futex;
HP_COLD void wake_writer() noexcept;

}  // namespace tt_detail

// What the writer tells the stall callback: a reader held a section too long.
struct StallReport {
  pid_t tid = 0;                     // kernel thread id of the reader
  std::string name;                  // its /proc/self/task/TID/comm, "" if it has exited
  std::chrono::milliseconds held{};  // at least this long (measured from the grace period start)
  std::uint64_t grace_period = 0;    // number of the grace period it blocks
};

class TasksTrace {
 public:
  // How synchronize() makes every running thread execute a full barrier.
  enum class BarrierKind {
    kPrivateExpedited,  // membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED): IPIs, microseconds
    kGlobal,            // membarrier(MEMBARRIER_CMD_GLOBAL): waits for context switches, ms
    kNone,              // membarrier refused: synchronize() dies with an actionable message
  };

  TasksTrace(const TasksTrace&) = delete;
  TasksTrace& operator=(const TasksTrace&) = delete;

  // ---- read side: inline, any thread, nesting allowed ----

  // Static: they touch only the calling thread's word, never the domain object.
  HP_ALWAYS_INLINE static ReadToken read_lock() noexcept {
    std::atomic<std::uint64_t>& w = tt_detail::tls_word;
    std::uint64_t v = w.load(std::memory_order_relaxed);
    if ((v & tt_detail::kNestMask) == 0) {
      if (HP_UNLIKELY(v == 0)) {
        v = register_thread();
      }
      v += tt_detail::kEntryInc;
    }
    HP_ASSERT_MSG((v & tt_detail::kNestMask) != tt_detail::kNestMask, "read_lock nesting overflow");
    // R0: matches W2 (acquire loads of the word) in TasksTrace::run_grace_period(). Release,
    // a plain mov on x86: it orders the previous section before this new entry count, so a
    // writer that sees the entry count change also sees the old section's end.
    w.store(v + 1, std::memory_order_release);
    // R1: matches W1 (membarrier) in TasksTrace::run_grace_period(): the section's loads
    // cannot be hoisted by the compiler above the store that announces the section.
    std::atomic_signal_fence(std::memory_order_seq_cst);
    return ReadToken{};
  }

  HP_ALWAYS_INLINE static void read_unlock(ReadToken) noexcept {
    std::atomic<std::uint64_t>& w = tt_detail::tls_word;
    // R2: matches W2 (acquire loads of the word) in TasksTrace::run_grace_period(): the release
    // store below orders every access of the section before the depth decrement, so the
    // writer that sees depth 0 (or a new entry count) may free what the section used.
    std::atomic_signal_fence(std::memory_order_seq_cst);
    std::uint64_t v = w.load(std::memory_order_relaxed);
    HP_ASSERT_MSG((v & tt_detail::kNestMask) != 0, "read_unlock without read_lock");
    w.store(v - 1, std::memory_order_release);
    // F2: matches F1 in run_grace_period(): leaving the outermost section while a writer
    // sleeps wakes it (one load of a line only writers write, like liburcu memb's unlock).
    if (HP_UNLIKELY((v & tt_detail::kNestMask) == 1 &&
                    tt_detail::gp_futex.load(std::memory_order_relaxed) == -1)) {
      tt_detail::wake_writer();
    }
  }

  static bool in_reader() noexcept {
    return (tt_detail::tls_word.load(std::memory_order_relaxed) & tt_detail::kNestMask) != 0;
  }

  // ---- write side ----

  // Returns after every read section that began before the call has ended. Concurrent
  // callers share grace periods. Dies if called inside a read section.
  void synchronize();
  // cb->fn(cb) runs on the domain's worker thread after a grace period, in a batch.
  void call(Callback* cb) { deferred_.call(cb); }
  void call(std::function<void()> fn) { deferred_.call(std::move(fn)); }
  // Waits until every callback queued before the call has run. Not inside a read section,
  // not from a callback.
  void barrier();
  GpCookie start_poll() { return deferred_.start_poll(); }
  bool poll(GpCookie c) const noexcept { return seq_.done(c); }

  // ---- statistics and configuration ----

  // Grace periods run so far (engine statistics).
  std::uint64_t grace_periods() const noexcept { return seq_.completed(); }
  // Callbacks run so far.
  std::uint64_t callbacks_invoked() const noexcept { return deferred_.invoked(); }
  // Threads currently registered (have used read_lock() and not exited).
  std::size_t registered_threads() const;
  BarrierKind barrier_kind() const noexcept {
    return barrier_kind_.load(std::memory_order_relaxed);
  }

  // A reader inside one section longer than this makes the writer report a stall (once per
  // stall). Default 10 s.
  void set_stall_timeout(std::chrono::milliseconds t) noexcept;
  std::chrono::milliseconds stall_timeout() const noexcept;
  // Where stall reports go; an empty function restores the default (one line on stderr).
  // Runs on the waiting writer's thread, outside every domain lock; it must not call
  // synchronize() or barrier() of this domain, nor fork() and return into the domain.
  void set_stall_callback(std::function<void(const StallReport&)> cb);

  // Tests only: use another barrier kind from the next grace period on (kNone is refused).
  void force_barrier_kind_for_testing(BarrierKind k);
  // Tests only: hold the registry lock, as a writer does while it scans (a thread's first
  // read_lock() then waits for it).
  void lock_registry_for_testing();
  void unlock_registry_for_testing();

 private:
  friend TasksTrace& tasks_trace() noexcept;
  friend struct TasksTraceAccess;  // tasks_trace.cc's thread-exit and fork hooks
  struct Impl;
  TasksTrace();
  ~TasksTrace() = delete;  // process-wide and immortal: threads may use it until exit

  // Registers the calling thread and returns its first word (kRegistered).
  HP_COLD static std::uint64_t register_thread() noexcept;
  static void sync_thunk(void* self);
  void run_grace_period();

  GpSequence seq_;
  std::atomic<BarrierKind> barrier_kind_{BarrierKind::kNone};
  Impl* impl_;  // registry, stall state; immortal
  Deferred deferred_;
};

// The process-wide default domain.
TasksTrace& tasks_trace() noexcept;

static_assert(ReclaimingDomain<TasksTrace>);

}  // namespace hp::sync
