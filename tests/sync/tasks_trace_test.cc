// The tasks-trace domain beyond the domain contract (domain_contract_test.cc): lazy
// registration, later readers not waited for, busy and sleeping readers, std::function
// callbacks and batching, thread churn and holdouts that exit, thread_local destructors,
// the membarrier fallback, read sections in signal handlers, misuse that dies.
#include "sync/tasks_trace.h"

#include <gtest/gtest.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <vector>

#include "support/sync_support.h"

namespace {

using hp::sync::ReadGuard;
using hp::sync::tasks_trace;
using hp::sync::TasksTrace;
using hp::test::Event;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr std::uint64_t kLive = 0x11223344'55667788ULL;
constexpr std::uint64_t kPoison = 0xdeaddeaddeaddeadULL;

// An object that is poisoned, not freed, by its deleter: a reader that still sees it after
// the deleter ran reads kPoison (well-defined memory), which the test checks.
struct Obj {
  std::atomic<std::uint64_t> v{kLive};
};
struct PoisonDeleter {
  void operator()(Obj* o) const { o->v.store(kPoison, std::memory_order_relaxed); }
};

class TasksTraceTest : public ::testing::Test {
 protected:
  void TearDown() override {
    tasks_trace().set_stall_timeout(10s);
    tasks_trace().set_stall_callback({});
  }
};

TEST_F(TasksTraceTest, LazyRegistrationAndUnregistrationAtExit) {
  TasksTrace& tt = tasks_trace();
  { ReadGuard g(tt); }  // this thread is registered from here on
  const std::size_t base = tt.registered_threads();
  Event entered, release;
  std::thread t([&] {
    ReadGuard g(tt);
    entered.set();
    release.wait();
  });
  entered.wait();
  EXPECT_EQ(tt.registered_threads(), base + 1);
  release.set();
  t.join();
  EXPECT_EQ(tt.registered_threads(), base);
}

TEST_F(TasksTraceTest, SynchronizeWithNoReaders) {
  TasksTrace& tt = tasks_trace();
  const auto gp0 = tt.grace_periods();
  tt.synchronize();
  tt.synchronize();
  EXPECT_GE(tt.grace_periods(), gp0 + 2);
}

// A reader that enters after synchronize() has scanned the threads does not delay it, even if
// it never leaves while synchronize() runs. The first stall report (timeout 1 ms) proves that
// the scan happened: it names a reader found inside a section.
TEST_F(TasksTraceTest, SynchronizeDoesNotWaitForLaterReader) {
  TasksTrace& tt = tasks_trace();
  Event a_entered, scanned, b_entered, release_a, release_b;
  std::atomic<bool> b_inside{false};
  tt.barrier();  // no deferred grace period around: the only stall reports are w's
  tt.set_stall_timeout(1ms);
  tt.set_stall_callback([&](const hp::sync::StallReport&) { scanned.set(); });
  std::thread a([&] {
    ReadGuard g(tt);
    a_entered.set();
    release_a.wait();
  });
  a_entered.wait();
  std::thread w([&] { tt.synchronize(); });
  ASSERT_TRUE(scanned.wait_for(30s));
  std::thread b([&] {
    ReadGuard g(tt);
    b_inside.store(true);
    b_entered.set();
    release_b.wait();
  });
  b_entered.wait();
  release_a.set();
  w.join();  // returns although b is still inside its section
  EXPECT_TRUE(b_inside.load());
  release_b.set();
  a.join();
  b.join();
}

// A reader that keeps starting new sections (never at depth 0 when looked at, perhaps) does
// not starve the writer: a changed entry count ends the wait.
TEST_F(TasksTraceTest, BusyReaderDoesNotStarveWriter) {
  TasksTrace& tt = tasks_trace();
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> sections{0};
  std::thread r([&] {
    while (!stop.load(std::memory_order_relaxed)) {
      ReadGuard g(tt);
      for (int i = 0; i < 100; i++)
        asm volatile("" ::: "memory");
      sections.fetch_add(1, std::memory_order_relaxed);
    }
  });
  while (sections.load() == 0)
    std::this_thread::yield();
  const auto t0 = Clock::now();
  for (int i = 0; i < 50; i++)
    tt.synchronize();
  EXPECT_LT(Clock::now() - t0, 20s);  // generous: in practice milliseconds
  stop.store(true);
  r.join();
  EXPECT_GT(sections.load(), 0u);
}

// Sleepable readers: a reader sleeping 300 ms inside its section delays synchronize() until
// it leaves, and the object it points to is not reclaimed before.
TEST_F(TasksTraceTest, SleepingReaderDelaysReclaim) {
  TasksTrace& tt = tasks_trace();
  auto* obj = new Obj;
  std::atomic<Obj*> ptr{obj};
  Event entered;
  std::atomic<std::uint64_t> seen_after_sleep{0};
  std::atomic<bool> woke{false};
  std::thread r([&] {
    ReadGuard g(tt);
    Obj* p = ptr.load(std::memory_order_acquire);
    entered.set();
    std::this_thread::sleep_for(300ms);
    seen_after_sleep.store(p->v.load(std::memory_order_relaxed));
    woke.store(true);
  });
  entered.wait();
  Obj* old = ptr.exchange(nullptr, std::memory_order_acq_rel);
  tt.synchronize();
  EXPECT_TRUE(woke.load());  // it waited for the sleeper to leave
  PoisonDeleter{}(old);
  r.join();
  EXPECT_EQ(seen_after_sleep.load(), kLive);
  delete obj;
}

// The same through call()/retire(): the deleter runs after the grace period, on the worker,
// never inside the retiring thread's read section.
TEST_F(TasksTraceTest, RetireRunsAfterGracePeriodNotInsideSection) {
  TasksTrace& tt = tasks_trace();
  auto* obj = new Obj;
  std::atomic<Obj*> ptr{obj};
  std::atomic<bool> reader_left{false};
  std::atomic<bool> deleter_saw_left{false};
  std::atomic<bool> deleter_in_reader{true};
  std::atomic<int> ran{0};
  std::thread::id retiring_thread = std::this_thread::get_id();
  std::atomic<bool> ran_on_retiring_thread{false};
  {
    ReadGuard g(tt);
    Obj* p = ptr.load(std::memory_order_acquire);
    ptr.store(nullptr, std::memory_order_release);
    tt.call([&, p] {
      deleter_saw_left.store(reader_left.load());
      deleter_in_reader.store(tt.in_reader());
      ran_on_retiring_thread.store(std::this_thread::get_id() == retiring_thread);
      PoisonDeleter{}(p);
      ran.fetch_add(1);
    });
    std::this_thread::sleep_for(100ms);
    EXPECT_EQ(p->v.load(), kLive);
    EXPECT_EQ(ran.load(), 0);
    reader_left.store(true);
  }
  tt.barrier();
  EXPECT_EQ(ran.load(), 1);
  EXPECT_TRUE(deleter_saw_left.load());
  EXPECT_FALSE(deleter_in_reader.load());
  EXPECT_FALSE(ran_on_retiring_thread.load());
  EXPECT_EQ(obj->v.load(), kPoison);
  delete obj;
}

// barrier() waits for every callback queued before it, from every thread.
TEST_F(TasksTraceTest, BarrierWaitsForAllQueuedCallbacks) {
  TasksTrace& tt = tasks_trace();
  constexpr int kThreads = 4, kPerThread = 200;
  std::atomic<int> ran{0};
  const auto inv0 = tt.callbacks_invoked();
  std::vector<std::thread> ts;
  for (int t = 0; t < kThreads; t++) {
    ts.emplace_back([&] {
      for (int i = 0; i < kPerThread; i++)
        tt.call([&] { ran.fetch_add(1); });
    });
  }
  for (auto& t : ts)
    t.join();
  tt.barrier();
  EXPECT_EQ(ran.load(), kThreads * kPerThread);
  EXPECT_EQ(tt.callbacks_invoked() - inv0, static_cast<std::uint64_t>(kThreads * kPerThread));
}

// Callbacks are batched: far fewer grace periods than callbacks.
TEST_F(TasksTraceTest, CallbacksAreBatched) {
  TasksTrace& tt = tasks_trace();
  tt.barrier();
  const auto gp0 = tt.grace_periods();
  std::atomic<int> ran{0};
  for (int i = 0; i < 1000; i++)
    tt.call([&] { ran.fetch_add(1); });
  tt.barrier();
  EXPECT_EQ(ran.load(), 1000);
  EXPECT_LT(tt.grace_periods() - gp0, 500u);
}

// start_poll() queues no callback: the grace period it asks for completes by itself
// (that poll() completes only after earlier readers left is in the domain contract).
TEST_F(TasksTraceTest, StartPollQueuesNoCallback) {
  TasksTrace& tt = tasks_trace();
  tt.barrier();
  const auto inv0 = tt.callbacks_invoked();
  hp::sync::GpCookie c = tt.start_poll();
  EXPECT_TRUE(hp::test::eventually([&] { return tt.poll(c); }));
  EXPECT_EQ(tt.callbacks_invoked(), inv0);
}

// Concurrent synchronize() callers share grace periods and all return.
TEST_F(TasksTraceTest, ConcurrentSynchronizeShareGracePeriods) {
  TasksTrace& tt = tasks_trace();
  const auto gp0 = tt.grace_periods();
  Event entered, release;
  std::thread r([&] {
    ReadGuard g(tt);
    entered.set();
    release.wait();
  });
  entered.wait();
  std::vector<std::thread> ws;
  std::atomic<int> done{0};
  for (int i = 0; i < 6; i++) {
    ws.emplace_back([&] {
      tt.synchronize();
      done.fetch_add(1);
    });
  }
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(done.load(), 0);
  release.set();
  for (auto& w : ws)
    w.join();
  r.join();
  EXPECT_EQ(done.load(), 6);
  // At most: the one in progress, plus one more shared by every waiter (the deferred worker
  // may add its own).
  EXPECT_LE(tt.grace_periods() - gp0, 4u);
}

// Threads that start, read and exit while synchronize() loops: their records come and go
// mid-scan and the writer must neither wait for them forever nor touch freed TLS.
TEST_F(TasksTraceTest, ThreadChurnDuringSynchronize) {
  TasksTrace& tt = tasks_trace();
  { ReadGuard g(tt); }
  const std::size_t base = tt.registered_threads();
  std::atomic<bool> stop{false};
  std::thread spawner([&] {
    unsigned n = 0;
    while (!stop.load()) {
      std::vector<std::thread> batch;
      for (int i = 0; i < 4; i++) {
        batch.emplace_back([&tt, i, n] {
          for (unsigned k = 0; k < 20; k++) {
            ReadGuard g(tt);
            if ((k + i + n) % 7 == 0) std::this_thread::sleep_for(std::chrono::microseconds(200));
          }
          // Exit right after a section, sometimes from inside a nested one's end.
        });
      }
      for (auto& t : batch)
        t.join();
      n++;
    }
  });
  const auto t0 = Clock::now();
  int syncs = 0;
  while (Clock::now() - t0 < 700ms) {
    tt.synchronize();
    syncs++;
  }
  stop.store(true);
  spawner.join();
  EXPECT_GT(syncs, 0);
  EXPECT_EQ(tt.registered_threads(), base);
}

// A thread that exits while the writer waits for it (here: inside a section it never left,
// through pthread_exit, which no ReadGuard would allow) is dropped from the holdouts by its
// exit hook; the writer finishes and never touches the gone thread's TLS.
TEST_F(TasksTraceTest, HoldoutThreadExitingMidGracePeriod) {
  TasksTrace& tt = tasks_trace();
  tt.barrier();
  Event entered, scanned, go;
  tt.set_stall_timeout(1ms);
  tt.set_stall_callback([&](const hp::sync::StallReport&) { scanned.set(); });
  { ReadGuard g(tt); }
  const std::size_t base = tt.registered_threads();
  pthread_t th;
  struct Ctx {
    Event* entered;
    Event* go;
  } ctx{&entered, &go};
  ASSERT_EQ(pthread_create(
                &th, nullptr,
                [](void* p) -> void* {
                  auto* c = static_cast<Ctx*>(p);
                  (void)TasksTrace::read_lock();  // never unlocked
                  c->entered->set();
                  c->go->wait();
                  pthread_exit(nullptr);
                },
                &ctx),
            0);
  entered.wait();
  std::thread w([&] { tt.synchronize(); });
  scanned.wait();  // the writer found the thread inside its section
  go.set();        // now it exits without leaving the section
  w.join();
  pthread_join(th, nullptr);
  EXPECT_EQ(tt.registered_threads(), base);
}

// A read section inside a thread_local destructor is still protected: the thread
// unregisters after the C++ thread_local destructors.
struct TlsUser {
  std::atomic<Obj*>* ptr = nullptr;
  std::atomic<std::uint64_t>* seen = nullptr;
  Event* entered = nullptr;
  ~TlsUser() {
    if (!ptr) return;
    ReadGuard g(tasks_trace());
    Obj* p = ptr->load(std::memory_order_acquire);
    entered->set();
    std::this_thread::sleep_for(150ms);
    seen->store(p->v.load(std::memory_order_relaxed));
  }
};

TEST_F(TasksTraceTest, ReaderInThreadLocalDestructor) {
  TasksTrace& tt = tasks_trace();
  auto* obj = new Obj;
  std::atomic<Obj*> ptr{obj};
  std::atomic<std::uint64_t> seen{0};
  Event entered;
  std::thread t([&] {
    static thread_local TlsUser u;
    u.ptr = &ptr;
    u.seen = &seen;
    u.entered = &entered;
  });
  entered.wait();
  Obj* old = ptr.exchange(nullptr);
  tt.synchronize();
  PoisonDeleter{}(old);
  t.join();
  EXPECT_EQ(seen.load(), kLive);
  delete obj;
}

// The fallback barrier (membarrier GLOBAL) gives the same guarantees, more slowly.
TEST_F(TasksTraceTest, GlobalMembarrierFallback) {
  TasksTrace& tt = tasks_trace();
  const TasksTrace::BarrierKind saved = tt.barrier_kind();
  if (saved == TasksTrace::BarrierKind::kNone) GTEST_SKIP() << "membarrier unavailable here";
  tt.force_barrier_kind_for_testing(TasksTrace::BarrierKind::kGlobal);
  Event entered;
  std::atomic<bool> left{false};
  std::thread r([&] {
    ReadGuard g(tt);
    entered.set();
    std::this_thread::sleep_for(100ms);
    left.store(true);
  });
  entered.wait();
  tt.synchronize();
  EXPECT_TRUE(left.load());
  r.join();
  tt.force_barrier_kind_for_testing(saved);
}

// Read sections in signal handlers (hotprobe's int3 mode runs handlers from SIGTRAP): a
// thread may register from a handler, and a writer interrupted by handlers that read does not
// deadlock on its own registry lock.
std::atomic<int> g_handler_sections{0};
void reading_handler(int) {
  ReadGuard g(tasks_trace());
  g_handler_sections.fetch_add(1, std::memory_order_relaxed);
}

TEST_F(TasksTraceTest, ReadSectionsInSignalHandlers) {
  TasksTrace& tt = tasks_trace();
  struct sigaction sa = {}, old = {};
  sa.sa_handler = &reading_handler;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  ASSERT_EQ(sigaction(SIGUSR1, &sa, &old), 0);
  { ReadGuard g(tt); }
  const std::size_t base = tt.registered_threads();
  // A fresh thread whose first read section is in the handler.
  std::atomic<bool> stop{false};
  std::atomic<int> registered_seen{-1};
  std::thread fresh([&] {
    while (!stop.load())
      std::this_thread::sleep_for(1ms);
  });
  const int h0 = g_handler_sections.load();
  pthread_kill(fresh.native_handle(), SIGUSR1);
  while (g_handler_sections.load() == h0)
    std::this_thread::sleep_for(1ms);
  registered_seen.store(static_cast<int>(tt.registered_threads()));
  EXPECT_EQ(registered_seen.load(), static_cast<int>(base + 1));
  // A writer thread hammered with signals whose handlers read.
  std::atomic<bool> writer_done{false};
  std::thread writer([&] {
    for (int i = 0; i < 200; i++)
      tt.synchronize();
    writer_done.store(true);
  });
  while (!writer_done.load()) {
    pthread_kill(writer.native_handle(), SIGUSR1);
    pthread_kill(fresh.native_handle(), SIGUSR1);
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
  writer.join();
  stop.store(true);
  fresh.join();
  EXPECT_EQ(tt.registered_threads(), base);
  ASSERT_EQ(sigaction(SIGUSR1, &old, nullptr), 0);
}

using TasksTraceDeathTest = TasksTraceTest;

TEST_F(TasksTraceDeathTest, SynchronizeInsideReadSectionDies) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        ReadGuard g(tasks_trace());
        tasks_trace().synchronize();
      },
      "inside a read section");
}

TEST_F(TasksTraceDeathTest, BarrierInsideReadSectionDies) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        ReadGuard g(tasks_trace());
        tasks_trace().barrier();
      },
      "inside a read section");
}

}  // namespace
