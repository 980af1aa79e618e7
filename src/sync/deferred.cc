#include "sync/deferred.h"

#include <pthread.h>

#include <atomic>
#include <vector>

#include "base/assert.h"

namespace hp::sync {

namespace {

struct FnCallback : Callback {
  std::function<void()> fn;
};

void run_fn_callback(Callback* cb) {
  auto* f = static_cast<FnCallback*>(cb);
  f->fn();
  delete f;
}

}  // namespace

// Queue and worker. `queued` counts callbacks ever queued, `done` those that ran, so a
// barrier waits for done >= queued-at-entry. `gp_wanted` asks the worker for a grace
// period without callbacks (start_poll). The worker is created on first use; in a fork
// child (where it does not exist) `pid` differs from getpid() and it is created again.
struct Deferred::State {
  std::mutex mu;
  std::condition_variable work_cv;  // worker waits for work
  std::condition_variable done_cv;  // barrier() waits for progress
  Callback* head = nullptr;         // pending, newest first
  std::uint64_t queued = 0;
  std::uint64_t done = 0;
  bool gp_wanted = false;
  bool stop = false;
  pid_t worker_pid = 0;  // process that owns the worker thread
  std::thread worker;
  std::atomic<std::uint64_t> invoked{0};
};

Deferred::Deferred(void* ctx, SyncFn synchronize, GpSequence& seq, const char* name)
    : ctx_(ctx), sync_(synchronize), seq_(seq), name_(name), st_(std::make_unique<State>()) {}

Deferred::~Deferred() {
  barrier();
  std::unique_lock lk(st_->mu);
  if (st_->worker_pid == ::getpid() && st_->worker.joinable()) {
    st_->stop = true;
    st_->work_cv.notify_all();
    lk.unlock();
    st_->worker.join();
  } else if (st_->worker.joinable()) {
    // A fork child inherited the handle of a thread that does not exist here.
    st_->worker.detach();
  }
}

void Deferred::call(Callback* cb) {
  HP_ASSERT(cb != nullptr && cb->fn != nullptr);
  std::unique_lock lk(st_->mu);
  cb->next = st_->head;
  st_->head = cb;
  st_->queued++;
  if (st_->worker_pid != ::getpid()) {
    if (st_->worker.joinable()) st_->worker.detach();  // parent's thread, gone in a child
    st_->worker_pid = ::getpid();
    st_->worker = std::thread([this] {
      // Name the worker so stall reports and debuggers show whose it is.
      char name[16];
      std::snprintf(name, sizeof name, "hp-gp-%.9s", name_);
      pthread_setname_np(pthread_self(), name);
      std::unique_lock wl(st_->mu);
      for (;;) {
        st_->work_cv.wait(wl, [&] { return st_->stop || st_->head || st_->gp_wanted; });
        if (!st_->head && !st_->gp_wanted && st_->stop) return;
        Callback* batch = st_->head;
        st_->head = nullptr;
        st_->gp_wanted = false;
        std::uint64_t batch_end = st_->queued;
        wl.unlock();
        sync_(ctx_);  // one grace period for the whole batch
        // Run oldest first.
        Callback* rev = nullptr;
        while (batch) {
          Callback* n = batch->next;
          batch->next = rev;
          rev = batch;
          batch = n;
        }
        std::uint64_t ran = 0;
        while (rev) {
          Callback* n = rev->next;
          rev->fn(rev);
          rev = n;
          ran++;
        }
        st_->invoked.fetch_add(ran, std::memory_order_relaxed);
        wl.lock();
        st_->done = batch_end;
        st_->done_cv.notify_all();
      }
    });
  }
  st_->work_cv.notify_one();
}

void Deferred::call(std::function<void()> fn) {
  auto* cb = new FnCallback;
  cb->fn = std::move(fn);
  cb->Callback::fn = &run_fn_callback;
  call(static_cast<Callback*>(cb));
}

void Deferred::barrier() {
  std::unique_lock lk(st_->mu);
  std::uint64_t target = st_->queued;
  if (st_->done >= target) return;
  st_->done_cv.wait(lk, [&] { return st_->done >= target || st_->worker_pid != ::getpid(); });
}

GpCookie Deferred::start_poll() {
  GpCookie c = seq_.snap();
  if (seq_.done(c)) return c;
  {
    std::unique_lock lk(st_->mu);
    st_->gp_wanted = true;
  }
  // Reuse call()'s lazy worker start with an empty callback.
  call([] {});
  return c;
}

std::uint64_t Deferred::invoked() const noexcept {
  return st_->invoked.load(std::memory_order_relaxed);
}

}  // namespace hp::sync
