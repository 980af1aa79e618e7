// fork(): the child of a process with readers in other threads (one parked inside a read
// section, one writer stuck waiting for it, the deferred worker busy) has a working domain.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <vector>

#include "sync/tasks_trace.h"

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

using hp::sync::ReadGuard;
using hp::sync::tasks_trace;
using namespace std::chrono_literals;

class Event {
 public:
  void set() {
    std::lock_guard l(m_);
    set_ = true;
    cv_.notify_all();
  }
  void wait() {
    std::unique_lock l(m_);
    cv_.wait(l, [&] { return set_; });
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  bool set_ = false;
};

// Exit codes of the children.
enum : int { kChildOk = 0, kChildBadRegistry = 3, kChildBadBarrier = 4, kChildBadPoll = 5 };

// Waits for pid for up to `limit`; kills it and returns -1 if it is still running.
int wait_child(pid_t pid, std::chrono::seconds limit) {
  const auto t0 = std::chrono::steady_clock::now();
  for (;;) {
    int status = 0;
    pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (std::chrono::steady_clock::now() - t0 > limit) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      return -1;
    }
    std::this_thread::sleep_for(5ms);
  }
}

// The parent's threads for every test: a reader parked inside a section, readers looping
// over short sections, and a writer blocked in synchronize() on the parked reader (so the
// grace-period mutex is held by a thread that does not exist in the child).
class ForkWorld {
 public:
  ForkWorld() {
    parked_ = std::thread([this] {
      ReadGuard g(tasks_trace());
      parked_in_.set();
      release_.wait();
    });
    parked_in_.wait();
    for (int i = 0; i < 2; i++) {
      loopers_.emplace_back([this] {
        while (!stop_.load(std::memory_order_relaxed)) {
          ReadGuard g(tasks_trace());
          std::this_thread::yield();
        }
      });
    }
    writer_ = std::thread([] { tasks_trace().synchronize(); });
    // Queue a callback: the deferred worker takes it and waits for the parked reader too.
    tasks_trace().call([] {});
    std::this_thread::sleep_for(50ms);  // let the writer and the worker start waiting
  }
  ~ForkWorld() {
    release_.set();
    stop_.store(true);
    parked_.join();
    for (auto& t : loopers_)
      t.join();
    writer_.join();
    tasks_trace().barrier();
  }

 private:
  Event parked_in_, release_;
  std::atomic<bool> stop_{false};
  std::thread parked_, writer_;
  std::vector<std::thread> loopers_;
};

// In the child: synchronize (the parked reader and the stuck writer are the parent's), then
// use the deferred machinery (worker restarted on demand), then poll.
int child_body(bool registered_before_fork) {
  auto& tt = tasks_trace();
  if (tt.registered_threads() != (registered_before_fork ? 1u : 0u)) return kChildBadRegistry;
  tt.synchronize();
  tt.synchronize();
  std::atomic<int> ran{0};
  tt.call([&] { ran.fetch_add(1); });
  tt.barrier();  // includes the callback queued in the parent before fork()
  if (ran.load() != 1) return kChildBadBarrier;
  hp::sync::GpCookie c = tt.start_poll();
  const auto t0 = std::chrono::steady_clock::now();
  while (!tt.poll(c)) {
    if (std::chrono::steady_clock::now() - t0 > 5s) return kChildBadPoll;
    std::this_thread::sleep_for(1ms);
  }
  return kChildOk;
}

TEST(TasksTraceFork, ChildDoesNotWaitForParentThreads) {
  { ReadGuard g(tasks_trace()); }  // the forking thread is registered
  ForkWorld world;
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) ::_exit(child_body(true));
  EXPECT_EQ(wait_child(pid, 20s), kChildOk);
}

// The forking thread is inside a read section: the child leaves it and synchronizes.
TEST(TasksTraceFork, ForkInsideReadSection) {
  ForkWorld world;
  auto& tt = tasks_trace();
  auto tok = tt.read_lock();
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    if (!tt.in_reader()) ::_exit(10);
    tt.read_unlock(tok);
    ::_exit(child_body(true));
  }
  tt.read_unlock(tok);
  EXPECT_EQ(wait_child(pid, 20s), kChildOk);
}

// A forking thread that never used the domain: nothing is registered in the child until it
// reads.
TEST(TasksTraceFork, ForkFromUnregisteredThread) {
  ForkWorld world;
  int code = -2;
  std::thread t([&] {
    pid_t pid = ::fork();
    if (pid == 0) ::_exit(child_body(false));
    code = pid < 0 ? -3 : wait_child(pid, 20s);
  });
  t.join();
  EXPECT_EQ(code, kChildOk);
}

// Grandchildren: a child forks again after using the domain.
TEST(TasksTraceFork, ForkTwice) {
  { ReadGuard g(tasks_trace()); }
  ForkWorld world;
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    int rc = child_body(true);
    if (rc != kChildOk) ::_exit(rc);
#if !defined(HOTPROBE_TSAN)
    // A second new thread in a child of a multithreaded process makes TSan (g++ 12) report
    // "dup thread with used id" (glibc reuses a parent thread's stack, which TSan still
    // believes alive), so the TSan build forks again without it.
    std::thread reader([] { ReadGuard g(tasks_trace()); });
    reader.join();
#endif
    pid_t gc = ::fork();
    if (gc == 0) ::_exit(child_body(true));
    ::_exit(wait_child(gc, 10s));
  }
  EXPECT_EQ(wait_child(pid, 30s), kChildOk);
}

}  // namespace
