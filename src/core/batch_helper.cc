#include "core/batch_helper.h"

#include <immintrin.h>

#include <algorithm>
#include <chrono>

#include "base/thread.h"
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
  // signal blocked, and takes only the engine's own (start_own_worker). Its stack is
  // hotprobe's size, not the program's RLIMIT_STACK. No thread to be had: every pass runs
  // on the caller's.
  started_ = hp::start_own_thread(&thread_, &BatchHelper::entry, this) == 0;
}

void* BatchHelper::entry(void* self) {
  start_own_worker();  // what the helper calls is hotprobe's work, not the program's
  static_cast<BatchHelper*>(self)->loop();
  return nullptr;
}

BatchHelper::~BatchHelper() {
  if (!started_) return;
  task_.store(&stop_, std::memory_order_seq_cst);
  task_.notify_one();
  (void)pthread_join(thread_, nullptr);
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
  if (started_) {
    task_.store(&t, std::memory_order_seq_cst);
    task_.notify_one();
  }
  work(0, t);
  // The helper may still be in its last chunk.
  while (t.done.load(std::memory_order_acquire) < chunks)
    _mm_pause();
  if (started_) {
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
