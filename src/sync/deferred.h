// Deferred reclamation shared by every domain: callbacks are queued, and a worker thread
// (started on first use, restarted lazily in a fork child) runs them in batches after one
// grace period of the owning domain, never inside the caller's read section.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

#include "sync/domain.h"
#include "sync/gp_seq.h"

namespace hp::sync {

class Deferred {
 public:
  // `synchronize(ctx)` runs one full grace period of the owning domain; `seq` is that
  // domain's grace-period sequence, used for polling.
  using SyncFn = void (*)(void* ctx);
  Deferred(void* ctx, SyncFn synchronize, GpSequence& seq, const char* name);
  ~Deferred();  // waits for every queued callback (barrier), then stops the worker
  Deferred(const Deferred&) = delete;
  Deferred& operator=(const Deferred&) = delete;

  // Queue cb; cb->fn(cb) runs after a grace period that starts after this call.
  void call(Callback* cb);
  // Convenience: a heap-allocated callback node around fn.
  void call(std::function<void()> fn);
  // Returns once every callback queued before this call has run.
  void barrier();
  // Polling grace periods: poll(start_poll()) becomes true after a full grace period;
  // start_poll() makes sure one will be run by the worker.
  GpCookie start_poll();
  bool poll(GpCookie c) const noexcept { return seq_.done(c); }

  // Number of callbacks that have run (tests and statistics).
  std::uint64_t invoked() const noexcept;

 private:
  struct State;
  void* ctx_;
  SyncFn sync_;
  GpSequence& seq_;
  const char* name_;
  std::unique_ptr<State> st_;
};

}  // namespace hp::sync
