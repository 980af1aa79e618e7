// Deferred reclamation shared by every domain: callbacks are queued, and a worker thread
// (started on first use, restarted on demand in a fork child) runs them in batches after one
// grace period of the owning domain, never inside the caller's read section.
// stop_idle_workers() ends the workers once what is queued has run (the next request starts
// a new one): a process that `hotprobe attach` detached from keeps no thread of hotprobe's.
//
// Batches: the worker takes every queued callback at once, runs one grace period for the
// batch, then runs its callbacks oldest first. barrier() waits for the batch holding the last
// callback queued before it. start_poll() asks the worker for a grace period without queueing
// anything (and is not counted as a callback).
//
// fork(): a pthread_atfork handler keeps every live Deferred consistent: the child unlocks
// and re-creates the locks and condition variables, forgets the parent's worker, and starts
// its own on the next call(), barrier() or start_poll(). A batch that the parent's worker
// had taken at the instant of fork() is counted as done in the child and not run there:
// its callbacks may have been half-way through, and running them twice would double-free.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>

#include "sync/domain.h"
#include "sync/gp_seq.h"

namespace hp::sync {

// Run first on every worker thread, before it does anything else (null: nothing). The
// engine sets it to mark the thread as hotprobe's own, so that probes skip what the
// worker calls (core/thread_state.h, OwnWork); the sync layer knows no more about it.
using WorkerStartHook = void (*)();
void set_worker_start_hook(WorkerStartHook hook) noexcept;

// Waits until every callback queued so far in every Deferred has run, then ends their
// workers, joined before this returns. A later call(), barrier() or start_poll() starts a
// new worker, so this is safe while others use the domains (their worker just comes
// back). The agent calls it when its last session in the process has ended. Not from a callback
// (its own worker is skipped).
__attribute__((visibility("default"))) void stop_idle_workers();

class Deferred {
 public:
  // `synchronize(ctx)` runs one full grace period of the owning domain; `seq` is that
  // domain's grace-period sequence, used for polling. `name` (static storage) names the
  // worker thread "hp-gp-<name>".
  using SyncFn = void (*)(void* ctx);
  Deferred(void* ctx, SyncFn synchronize, GpSequence& seq, const char* name);
  ~Deferred();  // waits for every queued callback (barrier), then stops the worker
  Deferred(const Deferred&) = delete;
  Deferred& operator=(const Deferred&) = delete;

  // Queue cb; cb->fn(cb) runs after a grace period that starts after this call.
  void call(Callback* cb);
  // Convenience: a heap-allocated callback node around fn.
  void call(std::function<void()> fn);
  // Returns once every callback queued before this call has run. Dies if called from a
  // callback (the worker would wait for itself).
  void barrier();
  // Polling grace periods: poll(start_poll()) becomes true after a full grace period;
  // start_poll() makes sure one will be run by the worker.
  GpCookie start_poll();
  bool poll(GpCookie c) const noexcept { return seq_.done(c); }

  // Number of callbacks that have run (tests and statistics); start_poll() adds nothing.
  std::uint64_t invoked() const noexcept;
  // True on the worker thread (inside a callback).
  bool on_worker() const noexcept;

  struct State;  // public for the fork handler in deferred.cc only

 private:
  void* ctx_;
  SyncFn sync_;
  GpSequence& seq_;
  const char* name_;
  std::unique_ptr<State> st_;
};

}  // namespace hp::sync
