#include "sync/deferred.h"

#include <pthread.h>

#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <new>

#include "base/assert.h"
#include "base/thread.h"
#include "base/thread_annotations.h"

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

// Queue and worker. `queued` counts callbacks ever queued, `done` those whose batch has
// finished, so a barrier waits for done >= queued-at-entry (batches run in queue order on
// one worker). `poll_wanted` asks the worker for a grace period without callbacks.
// `inflight_end` is the `queued` value of the batch the worker is running (valid while
// `inflight`), so a fork child can count that batch as done.
//
// Lock order: fork_list_mu() before State::mu; State::mu is never held while running a
// grace period or a callback.
struct Deferred::State {
  Mutex mu;
  std::condition_variable work_cv;             // worker waits for work
  std::condition_variable done_cv;             // barrier() waits for progress
  Callback* head HP_GUARDED_BY(mu) = nullptr;  // pending, newest first
  std::uint64_t queued HP_GUARDED_BY(mu) = 0;
  std::uint64_t done HP_GUARDED_BY(mu) = 0;
  std::uint64_t inflight_end HP_GUARDED_BY(mu) = 0;
  bool inflight HP_GUARDED_BY(mu) = false;
  bool poll_wanted HP_GUARDED_BY(mu) = false;
  bool stop HP_GUARDED_BY(mu) = false;
  bool worker_started HP_GUARDED_BY(mu) = false;
  // The current worker's generation: a worker whose generation is not this one has been
  // retired (stop_idle_workers) and ends without touching the queue.
  std::uint64_t worker_gen HP_GUARDED_BY(mu) = 0;
  pthread_t worker{};  // valid while worker_started (and until a retired one is joined)
  std::atomic<std::uint64_t> invoked{0};
  // Every live State, for the fork handler (guarded by fork_list_mu()).
  State* fork_prev = nullptr;
  State* fork_next = nullptr;
};

namespace {

thread_local const Deferred::State* tls_worker_of = nullptr;
std::atomic<WorkerStartHook> g_worker_start_hook{nullptr};

Mutex& fork_list_mu() {
  static Mutex* m = new Mutex;  // immortal: fork handlers may run during exit
  return *m;
}
Deferred::State* g_fork_list = nullptr;  // guarded by fork_list_mu()

// pthread_atfork: hold every State's lock across fork() so the child's copy is consistent.
void fork_prepare() HP_NO_THREAD_SAFETY_ANALYSIS {
  fork_list_mu().lock();
  for (Deferred::State* s = g_fork_list; s; s = s->fork_next) {
    s->mu.lock();
  }
}

void fork_parent() HP_NO_THREAD_SAFETY_ANALYSIS {
  for (Deferred::State* s = g_fork_list; s; s = s->fork_next) {
    s->mu.unlock();
  }
  fork_list_mu().unlock();
}

void fork_child() HP_NO_THREAD_SAFETY_ANALYSIS {
  for (Deferred::State* s = g_fork_list; s; s = s->fork_next) {
    // The parent's waiters on the condition variables do not exist here; glibc condition
    // variables keep waiter counts that a signal could wait on, so make fresh ones.
    new (&s->work_cv) std::condition_variable();
    new (&s->done_cv) std::condition_variable();
    if (tls_worker_of != s) {
      // The worker thread does not exist here. Forget its handle without joining or
      // detaching it (both would act on a thread of another process).
      s->worker = pthread_t{};
      s->worker_started = false;
      s->stop = false;
      if (s->inflight) {
        s->done = s->inflight_end;  // see the header: never run a batch twice
        s->inflight = false;
      }
    }
    // else a callback forked: the forking thread is this child's worker, in the middle of
    // its batch, and carries on with it.
    s->mu.unlock();
  }
  fork_list_mu().unlock();
}

void register_fork_handlers_once() {
  static const int rc = pthread_atfork(&fork_prepare, &fork_parent, &fork_child);
  HP_CHECK_MSG(rc == 0, "pthread_atfork failed");
}

}  // namespace

void set_worker_start_hook(WorkerStartHook hook) noexcept {
  g_worker_start_hook.store(hook, std::memory_order_release);
}

Deferred::Deferred(void* ctx, SyncFn synchronize, GpSequence& seq, const char* name)
    : ctx_(ctx), sync_(synchronize), seq_(seq), name_(name), st_(std::make_unique<State>()) {
  register_fork_handlers_once();
  MutexLock l(fork_list_mu());
  st_->fork_next = g_fork_list;
  if (g_fork_list) {
    g_fork_list->fork_prev = st_.get();
  }
  g_fork_list = st_.get();
}

Deferred::~Deferred() {
  barrier();
  {
    MutexLock l(fork_list_mu());
    State* s = st_.get();
    if (s->fork_prev) {
      s->fork_prev->fork_next = s->fork_next;
    } else {
      g_fork_list = s->fork_next;
    }
    if (s->fork_next) {
      s->fork_next->fork_prev = s->fork_prev;
    }
  }
  bool join = false;
  {
    MutexLock l(st_->mu);
    st_->stop = true;
    join = st_->worker_started;
    st_->work_cv.notify_all();
  }
  if (join) {
    (void)pthread_join(st_->worker, nullptr);
  }
}

// One batch: every queued callback, one grace period, then the callbacks oldest first. Called
// with `wl` (st.mu) held and something to do, returns with it held. On the worker, or on a
// barrier()'s caller when no worker can be started.
static void run_batch(Deferred::State& st, void* ctx, Deferred::SyncFn sync,
                      std::unique_lock<std::mutex>& wl) HP_NO_THREAD_SAFETY_ANALYSIS {
  Callback* batch = st.head;
  st.head = nullptr;
  st.poll_wanted = false;  // the grace period below starts after every start_poll() so far
  std::uint64_t batch_end = st.queued;
  st.inflight = true;
  st.inflight_end = batch_end;
  wl.unlock();
  sync(ctx);  // one grace period for the whole batch
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
    try {
      rev->fn(rev);
    } catch (...) {
      // Nothing of hotprobe's may end the program: the callback's work is lost, the
      // others still run.
    }
    rev = n;
    ran++;
  }
  st.invoked.fetch_add(ran, std::memory_order_relaxed);
  wl.lock();
  st.inflight = false;
  st.done = batch_end;
  st.done_cv.notify_all();
}

struct WorkerArgs {
  Deferred::State* st;
  void* ctx;
  Deferred::SyncFn sync;
  const char* name;
  std::uint64_t gen;
};

// The worker: a batch at a time until stopped or retired.
static void* worker_main(void* p) HP_NO_THREAD_SAFETY_ANALYSIS {
  // The hook first: from there on, what the worker calls (the free of its arguments
  // included) is hotprobe's work, which probes skip.
  if (WorkerStartHook hook = g_worker_start_hook.load(std::memory_order_acquire)) hook();
  const WorkerArgs a = *static_cast<WorkerArgs*>(p);
  delete static_cast<WorkerArgs*>(p);
  Deferred::State& st = *a.st;
  tls_worker_of = &st;
  // Name the worker so stall reports and debuggers show whose it is.
  char tname[16];
  std::snprintf(tname, sizeof tname, "hp-gp-%.9s", a.name);
  pthread_setname_np(pthread_self(), tname);
  std::unique_lock wl(st.mu.native());
  for (;;) {
    st.work_cv.wait(wl, [&]() HP_NO_THREAD_SAFETY_ANALYSIS {
      return st.stop || st.worker_gen != a.gen || st.head != nullptr || st.poll_wanted;
    });
    if (st.worker_gen != a.gen) {
      return nullptr;  // retired by stop_idle_workers(): another worker (if any) has the queue
    }
    if (st.head == nullptr && !st.poll_wanted) {
      return nullptr;  // stop requested, nothing left
    }
    run_batch(st, a.ctx, a.sync, wl);
  }
}

// Starts the worker if this process has none (first use, or a fork child). False when no
// thread could be had (no memory for its stack, a thread limit): the next request tries
// again, and barrier() runs the batch itself.
static bool ensure_worker(Deferred::State& st, void* ctx, Deferred::SyncFn sync, const char* name)
    HP_REQUIRES(st.mu) {
  if (st.worker_started) {
    return true;
  }
  auto* args = new (std::nothrow) WorkerArgs{&st, ctx, sync, name, st.worker_gen + 1};
  if (!args) {
    return false;
  }
  // The worker starts with every asynchronous signal blocked: a program's handler (a
  // process-directed SIGALRM, say) must never run on a thread of hotprobe's. The start
  // hook opens what hotprobe needs (the engine's own signal). Its stack is hotprobe's
  // size, not the program's RLIMIT_STACK.
  if (start_own_thread(&st.worker, &worker_main, args) != 0) {
    delete args;
    return false;
  }
  st.worker_gen++;
  st.worker_started = true;
  return true;
}

void Deferred::call(Callback* cb) {
  HP_ASSERT(cb != nullptr && cb->fn != nullptr);
  MutexLock l(st_->mu);
  cb->next = st_->head;
  st_->head = cb;
  st_->queued++;
  ensure_worker(*st_, ctx_, sync_, name_);
  st_->work_cv.notify_one();
}

void Deferred::call(std::function<void()> fn) {
  auto* cb = new FnCallback;
  cb->fn = std::move(fn);
  cb->Callback::fn = &run_fn_callback;
  call(static_cast<Callback*>(cb));
}

void Deferred::barrier() HP_NO_THREAD_SAFETY_ANALYSIS {
  HP_CHECK_MSG(!on_worker(),
               "Deferred::barrier() called from a callback: it would wait for itself");
  std::unique_lock lk(st_->mu.native());
  const std::uint64_t target = st_->queued;
  if (st_->done >= target) {
    return;
  }
  // In a fork child the worker starts here if callbacks were pending at fork(). Without
  // one (no thread to be had), the batches run here.
  while (st_->done < target) {
    if (ensure_worker(*st_, ctx_, sync_, name_)) {
      st_->work_cv.notify_one();
      st_->done_cv.wait(lk, [&]() HP_NO_THREAD_SAFETY_ANALYSIS { return st_->done >= target; });
    } else if (!st_->inflight && st_->head != nullptr) {
      run_batch(*st_, ctx_, sync_, lk);
    } else {
      st_->done_cv.wait(lk);
    }
  }
}

GpCookie Deferred::start_poll() {
  GpCookie c = seq_.snap();
  if (seq_.done(c)) {
    return c;
  }
  MutexLock l(st_->mu);
  st_->poll_wanted = true;
  ensure_worker(*st_, ctx_, sync_, name_);
  st_->work_cv.notify_one();
  return c;
}

// Under fork_list_mu() throughout, joins included: a ~Deferred (which unlinks its State under
// that lock first) cannot free a State whose retired worker has not ended yet. A retired
// worker needs only its State's lock to end, never fork_list_mu().
void stop_idle_workers() HP_NO_THREAD_SAFETY_ANALYSIS {
  MutexLock fl(fork_list_mu());
  for (Deferred::State* s = g_fork_list; s; s = s->fork_next) {
    std::unique_lock lk(s->mu.native());
    if (tls_worker_of == s) {
      continue;  // called from this worker's own callback
    }
    if (!s->worker_started) {
      continue;  // none (a fork child's pending callbacks wait for the next request)
    }
    // Wait for what is queued (a barrier): callbacks queued by the last detach included.
    // No callback destroys a Deferred, which would wait for fork_list_mu() held here.
    const std::uint64_t target = s->queued;
    s->done_cv.wait(lk, [&]() HP_NO_THREAD_SAFETY_ANALYSIS { return s->done >= target; });
    if (!s->worker_started || s->inflight || s->head != nullptr || s->poll_wanted) {
      continue;  // busy again (another user queued meanwhile): it stays
    }
    s->worker_gen++;
    s->worker_started = false;
    const pthread_t retired = s->worker;
    s->worker = pthread_t{};
    s->work_cv.notify_all();
    lk.unlock();
    // pthread_join, not std::thread::join: an error (none is expected) must not throw
    // into the program.
    (void)pthread_join(retired, nullptr);
  }
}

std::uint64_t Deferred::invoked() const noexcept {
  return st_->invoked.load(std::memory_order_relaxed);
}

bool Deferred::on_worker() const noexcept {
  return tls_worker_of == st_.get();
}

}  // namespace hp::sync
