// Local scope: a reader parked for 2 s in one domain delays no other domain's grace
// period (DESIGN.md: SRCU domains are independent, and independent of the hot-path
// tasks-trace domain). The bound (500 ms) is generous: on an idle machine these grace
// periods take microseconds. Each case also checks that the parked reader really does
// hold up its own domain, so the test cannot pass vacuously: a synchronize() of the
// parked reader's domain, started while the reader is parked, must return only after
// the reader has left (checked once that synchronize() has returned, not sampled while
// it may not have begun).
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <future>
#include <thread>

#include "sync/percpu_rwsem.h"
#include "sync/srcu.h"
#include "sync/tasks_trace.h"

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
constexpr auto kPark = 2000ms;
constexpr auto kBound = 500ms;

// Parks a reader of `d` for kPark on its own thread.
template <class D>
class ParkedReader {
 public:
  explicit ParkedReader(D& d)
      : t_([this, &d] {
          hp::sync::ReadToken tok = d.read_lock();
          in_.set_value();
          std::this_thread::sleep_for(kPark);
          left_.store(true);
          d.read_unlock(tok);
        }) {
    in_.get_future().wait();
  }
  ~ParkedReader() { t_.join(); }
  // True once the reader is about to leave its section.
  bool left() const { return left_.load(); }

 private:
  std::promise<void> in_;
  std::atomic<bool> left_{false};
  std::thread t_;
};

template <class D>
std::chrono::milliseconds time_synchronize(D& d) {
  auto t0 = Clock::now();
  d.synchronize();
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0);
}

// Runs d.synchronize() on a thread and records whether the parked reader had left by
// the time it returned.
template <class D, class P>
class PendingSync {
 public:
  PendingSync(D& d, const P& parked)
      : t_([this, &d, &parked] {
          d.synchronize();
          reader_had_left_ = parked.left();
        }) {}
  // Waits for the synchronize() to return.
  bool reader_had_left() {
    if (t_.joinable()) t_.join();
    return reader_had_left_;
  }
  ~PendingSync() {
    if (t_.joinable()) t_.join();
  }

 private:
  bool reader_had_left_ = false;
  std::thread t_;
};

template <class A, class B>
void expect_isolated(A& a, B& b) {
  ParkedReader<A> parked(a);
  PendingSync own(a, parked);  // must wait for the parked reader
  auto took = time_synchronize(b);
  std::printf("other domain's synchronize(): %lld ms\n", static_cast<long long>(took.count()));
  EXPECT_LT(took, kBound) << "synchronize() on another domain waited for a parked reader";
  EXPECT_TRUE(own.reader_had_left())
      << "synchronize() of the parked reader's own domain returned while it was parked";
}

TEST(ScopeIsolation, SrcuFastReaderDoesNotDelayOtherSrcuFast) {
  hp::sync::SrcuFast a, b;
  expect_isolated(a, b);
}

TEST(ScopeIsolation, SrcuReaderDoesNotDelayOtherSrcu) {
  hp::sync::Srcu a, b;
  expect_isolated(a, b);
}

TEST(ScopeIsolation, SrcuReaderDoesNotDelayTasksTrace) {
  hp::sync::SrcuFast a;
  expect_isolated(a, hp::sync::tasks_trace());
}

TEST(ScopeIsolation, TasksTraceReaderDoesNotDelaySrcu) {
  hp::sync::SrcuFast b;
  expect_isolated(hp::sync::tasks_trace(), b);
}

TEST(ScopeIsolation, SrcuReaderDoesNotDelayPercpuRwsem) {
  hp::sync::Srcu a;
  hp::sync::PercpuRwsem b;
  expect_isolated(a, b);
}

}  // namespace
