// Deferred: batching, ordering, barrier, polling, fork, with a fake domain whose grace period
// the test controls.
#include "sync/deferred.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <vector>

#if defined(HOTPROBE_TSAN)
// The children here start threads (the deferred worker); TSan's default die_after_fork=1
// kills a multithreaded process's child that does. __tsan_default_options() is not seen by a
// dynamically linked libtsan unless the executable exports it (it does not, without
// -rdynamic), so the program re-executes itself once with die_after_fork=0 in TSAN_OPTIONS.
#include <fstream>
#include <iterator>
#include <string>
#include <vector>
__attribute__((constructor)) static void reexec_with_die_after_fork_off() {
  const char* cur = ::getenv("TSAN_OPTIONS");
  std::string opts = cur ? cur : "";
  if (opts.find("die_after_fork=0") != std::string::npos) return;
  std::ifstream f("/proc/self/cmdline", std::ios::binary);
  std::string all((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::vector<std::string> args;
  for (std::size_t i = 0; i < all.size();) {
    std::size_t e = all.find('\0', i);
    if (e == std::string::npos) e = all.size();
    args.push_back(all.substr(i, e - i));
    i = e + 1;
  }
  std::vector<char*> argv;
  for (auto& a : args)
    argv.push_back(a.data());
  argv.push_back(nullptr);
  opts += opts.empty() ? "die_after_fork=0" : ":die_after_fork=0";
  ::setenv("TSAN_OPTIONS", opts.c_str(), 1);
  ::execv("/proc/self/exe", argv.data());
}
#endif

namespace {

using hp::sync::Callback;
using hp::sync::Deferred;
using hp::sync::GpCookie;
using hp::sync::GpSequence;
using namespace std::chrono_literals;

// A domain whose grace periods can be held open by the test (gate closed). Atomics and
// polling only, so a fork child can use its copy (a condition variable copied from a parent
// with waiters is not usable in the child).
class FakeDomain {
 public:
  static void sync(void* self) { static_cast<FakeDomain*>(self)->run_gp(); }
  void run_gp() {
    seq.start();
    in_gp_.store(true);
    while (!open_.load())
      std::this_thread::sleep_for(1ms);
    in_gp_.store(false);
    gps.fetch_add(1);
    seq.end();
  }
  void close() { open_.store(false); }
  void open() { open_.store(true); }
  void wait_in_gp() {
    while (!in_gp_.load())
      std::this_thread::sleep_for(1ms);
  }
  GpSequence seq;
  std::atomic<int> gps{0};

 private:
  std::atomic<bool> open_{true};
  std::atomic<bool> in_gp_{false};
};

struct Recorder {
  std::mutex m;
  std::vector<int> order;
  void add(int i) {
    std::lock_guard l(m);
    order.push_back(i);
  }
};

TEST(Deferred, RunsAfterGracePeriodInBatchesOldestFirst) {
  FakeDomain dom;
  Recorder rec;
  {
    Deferred d(&dom, &FakeDomain::sync, dom.seq, "test");
    dom.close();
    d.call([&] { rec.add(0); });
    dom.wait_in_gp();  // the worker holds callback 0 in a grace period
    for (int i = 1; i <= 100; i++)
      d.call([&rec, i] { rec.add(i); });
    std::this_thread::sleep_for(20ms);
    {
      std::lock_guard l(rec.m);
      EXPECT_TRUE(rec.order.empty()) << "ran before its grace period ended";
    }
    dom.open();
    d.barrier();
    EXPECT_EQ(d.invoked(), 101u);
    EXPECT_LE(dom.gps.load(), 2) << "callbacks 1..100 should share one grace period";
  }
  ASSERT_EQ(rec.order.size(), 101u);
  for (int i = 0; i <= 100; i++)
    EXPECT_EQ(rec.order[i], i);
}

struct Node : Callback {
  int* counter = nullptr;
};

TEST(Deferred, IntrusiveCallbacks) {
  FakeDomain dom;
  Deferred d(&dom, &FakeDomain::sync, dom.seq, "test");
  int counter = 0;
  std::vector<Node> nodes(10);
  for (Node& n : nodes) {
    n.counter = &counter;
    n.fn = [](Callback* cb) { ++*static_cast<Node*>(cb)->counter; };
    d.call(&n);
  }
  d.barrier();
  EXPECT_EQ(counter, 10);
}

TEST(Deferred, BarrierWithNothingQueuedReturns) {
  FakeDomain dom;
  Deferred d(&dom, &FakeDomain::sync, dom.seq, "test");
  d.barrier();
  EXPECT_EQ(dom.gps.load(), 0);
}

TEST(Deferred, BarrierWaitsOnlyForEarlierCallbacks) {
  FakeDomain dom;
  Deferred d(&dom, &FakeDomain::sync, dom.seq, "test");
  std::atomic<int> ran{0};
  for (int i = 0; i < 5; i++)
    d.call([&] { ran.fetch_add(1); });
  d.barrier();
  EXPECT_EQ(ran.load(), 5);
}

TEST(Deferred, StartPollIsNotCountedAsCallback) {
  FakeDomain dom;
  Deferred d(&dom, &FakeDomain::sync, dom.seq, "test");
  GpCookie c = d.start_poll();
  const auto t0 = std::chrono::steady_clock::now();
  while (!d.poll(c) && std::chrono::steady_clock::now() - t0 < 10s) {
    std::this_thread::sleep_for(1ms);
  }
  EXPECT_TRUE(d.poll(c));
  EXPECT_EQ(d.invoked(), 0u);
  d.barrier();  // nothing queued: returns at once
}

TEST(Deferred, PollNotDoneWhileGracePeriodHeld) {
  FakeDomain dom;
  Deferred d(&dom, &FakeDomain::sync, dom.seq, "test");
  dom.close();
  GpCookie c = d.start_poll();
  dom.wait_in_gp();
  std::this_thread::sleep_for(20ms);
  EXPECT_FALSE(d.poll(c));
  dom.open();
  const auto t0 = std::chrono::steady_clock::now();
  while (!d.poll(c) && std::chrono::steady_clock::now() - t0 < 10s) {
    std::this_thread::sleep_for(1ms);
  }
  EXPECT_TRUE(d.poll(c));
}

TEST(Deferred, CallbackMayQueueMore) {
  FakeDomain dom;
  Deferred d(&dom, &FakeDomain::sync, dom.seq, "test");
  std::atomic<int> ran{0};
  d.call([&] {
    ran.fetch_add(1);
    d.call([&] { ran.fetch_add(1); });
  });
  d.barrier();
  d.barrier();  // the second barrier covers the callback queued by the first batch
  EXPECT_EQ(ran.load(), 2);
}

TEST(Deferred, DestructorRunsPendingCallbacks) {
  FakeDomain dom;
  std::atomic<int> ran{0};
  {
    Deferred d(&dom, &FakeDomain::sync, dom.seq, "test");
    for (int i = 0; i < 3; i++)
      d.call([&] { ran.fetch_add(1); });
  }
  EXPECT_EQ(ran.load(), 3);
}

TEST(DeferredDeathTest, BarrierFromCallbackDies) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        FakeDomain dom;
        Deferred d(&dom, &FakeDomain::sync, dom.seq, "test");
        d.call([&] { d.barrier(); });
        d.barrier();
      },
      "called from a callback");
}

// fork() while the worker holds a batch in a grace period that never ends in the child, with
// more callbacks pending: the child's barrier() returns (the in-flight batch counts as done
// there, the pending ones run on a new worker).
TEST(Deferred, ForkChildBarrierWithInflightAndPendingBatches) {
  FakeDomain dom;
  Deferred d(&dom, &FakeDomain::sync, dom.seq, "test");
  std::atomic<int> ran{0};
  dom.close();
  d.call([&] { ran.fetch_add(1); });
  dom.wait_in_gp();
  d.call([&] { ran.fetch_add(10); });
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    dom.open();  // the child's copy of the gate; the parent's worker is not here
    d.barrier();
    // Only the pending callback ran here; the in-flight one belongs to the parent.
    int code = ran.load() == 10 ? 0 : 1;
    d.call([&] { ran.fetch_add(100); });
    d.barrier();
    if (ran.load() != 110) code = 2;
    ::_exit(code);
  }
  int status = 0;
  const auto t0 = std::chrono::steady_clock::now();
  pid_t r = 0;
  while ((r = ::waitpid(pid, &status, WNOHANG)) == 0 &&
         std::chrono::steady_clock::now() - t0 < 20s) {
    std::this_thread::sleep_for(5ms);
  }
  if (r == 0) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
    FAIL() << "fork child's barrier() hung";
  }
  EXPECT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  dom.open();
  d.barrier();
  EXPECT_EQ(ran.load(), 11);
}

}  // namespace
