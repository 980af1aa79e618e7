// BatchHelper: a second thread for one large batch (EngineImpl::attach), which runs the
// batch's parallel passes beside the calling thread.
//
// A new thread takes 1-1.5 ms here to get the other CPU (a VM waking an idle vCPU), as
// long as a pass over 10,000 probes takes. So the helper is started first thing, and each
// pass is cut into chunks that both threads take from one counter: a helper that comes
// late takes only what is left, and one that never comes (no thread to be had, or
// none asked for) costs nothing. Between passes the helper spins for a while, then
// sleeps on a futex; it is stopped and joined by the destructor.
#pragma once

#include <pthread.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>

namespace hp::core {

class BatchHelper {
 public:
  // `use_thread`: start the helper (false: every pass runs on the calling thread only).
  explicit BatchHelper(bool use_thread);
  ~BatchHelper();
  BatchHelper(const BatchHelper&) = delete;
  BatchHelper& operator=(const BatchHelper&) = delete;

  // Runs fn(worker, begin, end) over [0, n) in chunks of at most `chunk`, on the calling
  // thread (worker 0) and the helper (worker 1); returns when every chunk is done. fn
  // must be safe to run on both at once for different chunks.
  using Fn = std::function<void(int worker, std::size_t begin, std::size_t end)>;
  void run(std::size_t n, std::size_t chunk, const Fn& fn);
  // Whether a helper thread was started (else run() is a loop on the caller's thread).
  bool two_threads() const { return started_; }

 private:
  struct Task {
    const Fn* fn;
    std::size_t n;
    std::size_t chunk;
    std::uint64_t generation;  // one per run(): a task at a reused address is new
    std::atomic<std::size_t> next{0};
    std::atomic<std::size_t> done{0};
  };
  static Task stop_;  // not a task: the destructor's word to the helper to end
  static void work(int worker, Task& t);
  void loop();
  static void* entry(void* self);

  // The pass in progress (null between passes, &stop_ to end). The helper marks itself
  // busy_ before it reads task_, and run() clears task_ before it waits for busy_ to
  // drop: a helper that saw the task is done with it before run() returns (seq_cst).
  std::atomic<Task*> task_{nullptr};
  std::atomic<int> busy_{0};
  std::uint64_t generation_ = 0;  // the calling thread's only
  pthread_t thread_{};
  bool started_ = false;
};

}  // namespace hp::core
