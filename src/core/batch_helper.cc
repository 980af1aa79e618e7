#include "core/batch_helper.h"

#include <immintrin.h>
#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <system_error>

#include "base/signals.h"
#include "core/thread_state.h"

namespace hp::core {
namespace {

// How long the helper spins between passes before it sleeps: about the serial stretch
// between a batch's parallel passes, so it is still on its CPU when the next one starts.
constexpr auto kSpin = std::chrono::milliseconds(5);

}  // namespace

BatchHelper::Task BatchHelper::stop_{nullptr, 0, 1, 0};

BatchHelper::BatchHelper(bool use_thread) {
  if (!use_thread) return;
  // No handler of the program may run on the helper: it starts with every asynchronous
  // signal blocked, and takes only the engine's own (start_own_worker).
  sigset_t all, old;
  hp::fill_async_signals(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  try {
    thread_ = std::thread([this] {
      start_own_worker();  // what the helper calls is hotprobe's work, not the program's
      loop();
    });
  } catch (const std::system_error&) {
    // No thread to be had: every pass runs on the caller's.
  }
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
}

BatchHelper::~BatchHelper() {
  if (!thread_.joinable()) return;
  task_.store(&stop_, std::memory_order_seq_cst);
  task_.notify_one();
  thread_.join();
}

void BatchHelper::work(int worker, Task& t) {
  for (;;) {
    const std::size_t begin = t.next.fetch_add(t.chunk, std::memory_order_relaxed);
    if (begin >= t.n) return;
    (*t.fn)(worker, begin, std::min(begin + t.chunk, t.n));
    t.done.fetch_add(1, std::memory_order_release);
  }
}

void BatchHelper::run(std::size_t n, std::size_t chunk, const Fn& fn) {
  if (n == 0) return;
  Task t{&fn, n, chunk, ++generation_};
  const std::size_t chunks = (n + chunk - 1) / chunk;
  if (thread_.joinable()) {
    task_.store(&t, std::memory_order_seq_cst);
    task_.notify_one();
  }
  work(0, t);
  // The helper may still be in its last chunk.
  while (t.done.load(std::memory_order_acquire) < chunks)
    _mm_pause();
  if (thread_.joinable()) {
    task_.store(nullptr, std::memory_order_seq_cst);
    task_.notify_one();
    while (busy_.load(std::memory_order_seq_cst) != 0)
      _mm_pause();
  }
}

void BatchHelper::loop() {
  std::uint64_t seen = 0;  // the generation of the last pass worked on
  auto idle_since = std::chrono::steady_clock::now();
  for (;;) {
    busy_.fetch_add(1, std::memory_order_seq_cst);
    Task* t = task_.load(std::memory_order_seq_cst);
    if (t == &stop_) {
      busy_.fetch_sub(1, std::memory_order_seq_cst);
      return;
    }
    const bool fresh = t && t->generation != seen;
    if (fresh) {
      work(1, *t);
      seen = t->generation;
    }
    busy_.fetch_sub(1, std::memory_order_seq_cst);
    if (fresh) {
      idle_since = std::chrono::steady_clock::now();
    } else if (std::chrono::steady_clock::now() - idle_since < kSpin) {
      for (int i = 0; i < 64; i++)
        _mm_pause();
    } else {
      task_.wait(t, std::memory_order_seq_cst);  // until run() or the destructor moves it
      idle_since = std::chrono::steady_clock::now();
    }
  }
}

}  // namespace hp::core
