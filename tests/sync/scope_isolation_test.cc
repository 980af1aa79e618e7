// Local scope: a reader parked for 2 s in one domain delays no other domain's grace
// period (DESIGN.md: SRCU domains are independent, and independent of the hot-path
// tasks-trace domain). The bound (500 ms) is generous: on an idle machine these grace
// periods take microseconds. Each case also checks that the parked reader really does
// hold up its own domain, so the test cannot pass vacuously.
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
          d.read_unlock(tok);
        }) {
    in_.get_future().wait();
    start_ = Clock::now();
  }
  ~ParkedReader() { t_.join(); }
  Clock::time_point start() const { return start_; }

 private:
  std::promise<void> in_;
  std::thread t_;
  Clock::time_point start_;
};

template <class D>
std::chrono::milliseconds time_synchronize(D& d) {
  auto t0 = Clock::now();
  d.synchronize();
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0);
}

// Starts a.synchronize() on a thread and reports whether it is still waiting.
template <class D>
class PendingSync {
 public:
  explicit PendingSync(D& d)
      : t_([this, &d] {
          d.synchronize();
          done_ = true;
        }) {}
  ~PendingSync() { t_.join(); }
  bool done() const { return done_.load(); }

 private:
  std::atomic<bool> done_{false};
  std::thread t_;
};

template <class A, class B>
void expect_isolated(A& a, B& b) {
  ParkedReader<A> parked(a);
  PendingSync<A> own(a);  // must wait for the parked reader
  auto took = time_synchronize(b);
  std::printf("other domain's synchronize(): %lld ms\n", static_cast<long long>(took.count()));
  EXPECT_LT(took, kBound) << "synchronize() on another domain waited for a parked reader";
  bool own_done_early = own.done() && Clock::now() - parked.start() < kPark - 100ms;
  EXPECT_FALSE(own_done_early) << "the parked reader did not hold up its own domain";
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
