// Stall warnings: a reader held past the stall timeout makes the waiting writer report it
// once (thread id, name, how long); readers under the timeout are never reported.
#include <gtest/gtest.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "sync/tasks_trace.h"

namespace {

using hp::sync::ReadGuard;
using hp::sync::StallReport;
using hp::sync::tasks_trace;
using namespace std::chrono_literals;

class Reports {
 public:
  void add(const StallReport& r) {
    std::lock_guard l(m_);
    v_.push_back(r);
  }
  std::vector<StallReport> get() {
    std::lock_guard l(m_);
    return v_;
  }

 private:
  std::mutex m_;
  std::vector<StallReport> v_;
};

class TasksTraceStallTest : public ::testing::Test {
 protected:
  void SetUp() override {
    tasks_trace().set_stall_callback([this](const StallReport& r) { reports_.add(r); });
  }
  void TearDown() override {
    tasks_trace().set_stall_timeout(10s);
    tasks_trace().set_stall_callback({});
  }
  Reports reports_;
};

// Runs a reader thread named `name` that holds one section for `hold`, and a synchronize()
// that starts while it is inside. Returns the reader's tid.
pid_t run_held_reader(const char* name, std::chrono::milliseconds hold) {
  std::atomic<pid_t> tid{0};
  std::mutex m;
  std::condition_variable cv;
  bool entered = false;
  std::thread r([&] {
    pthread_setname_np(pthread_self(), name);
    tid.store(static_cast<pid_t>(::syscall(SYS_gettid)));
    ReadGuard g(tasks_trace());
    {
      std::lock_guard l(m);
      entered = true;
      cv.notify_all();
    }
    std::this_thread::sleep_for(hold);
  });
  {
    std::unique_lock l(m);
    cv.wait(l, [&] { return entered; });
  }
  tasks_trace().synchronize();
  r.join();
  return tid.load();
}

TEST_F(TasksTraceStallTest, ReportsReaderHeldPastTimeoutOnce) {
  tasks_trace().set_stall_timeout(150ms);
  const auto t0 = std::chrono::steady_clock::now();
  pid_t tid = run_held_reader("hp-stalled-rd", 700ms);
  const auto total = std::chrono::steady_clock::now() - t0;
  std::vector<StallReport> rs = reports_.get();
  ASSERT_EQ(rs.size(), 1u) << "one report per stall, however long the writer keeps waiting";
  EXPECT_EQ(rs[0].tid, tid);
  EXPECT_EQ(rs[0].name, "hp-stalled-rd");
  EXPECT_GE(rs[0].held, 150ms);  // reported only once past the timeout
  EXPECT_LE(rs[0].held, total);  // and never longer than the reader was actually held
  EXPECT_GT(rs[0].grace_period, 0u);
}

TEST_F(TasksTraceStallTest, NoReportForReaderUnderTimeout) {
  tasks_trace().set_stall_timeout(5s);
  run_held_reader("hp-quick-rd", 100ms);
  EXPECT_TRUE(reports_.get().empty());
}

// Two readers past the timeout in the same grace period: one report each.
TEST_F(TasksTraceStallTest, OneReportPerStalledReader) {
  tasks_trace().set_stall_timeout(100ms);
  std::atomic<int> entered{0};
  std::vector<std::thread> rs;
  std::vector<pid_t> tids(2);
  for (int i = 0; i < 2; i++) {
    rs.emplace_back([&, i] {
      pthread_setname_np(pthread_self(), i == 0 ? "hp-stall-a" : "hp-stall-b");
      tids[i] = static_cast<pid_t>(::syscall(SYS_gettid));
      ReadGuard g(tasks_trace());
      entered.fetch_add(1);
      std::this_thread::sleep_for(400ms);
    });
  }
  while (entered.load() < 2)
    std::this_thread::yield();
  tasks_trace().synchronize();
  for (auto& t : rs)
    t.join();
  std::vector<StallReport> got = reports_.get();
  ASSERT_EQ(got.size(), 2u);
  for (const StallReport& r : got) {
    EXPECT_TRUE(r.tid == tids[0] || r.tid == tids[1]);
    EXPECT_EQ(r.name, r.tid == tids[0] ? "hp-stall-a" : "hp-stall-b");
  }
  EXPECT_NE(got[0].tid, got[1].tid);
}

// The default report is one line on stderr naming the thread.
TEST_F(TasksTraceStallTest, DefaultReportGoesToStderr) {
  tasks_trace().set_stall_callback({});
  tasks_trace().set_stall_timeout(100ms);
  testing::internal::CaptureStderr();
  pid_t tid = run_held_reader("hp-stderr-rd", 400ms);
  std::string err = testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("tasks-trace stall"), std::string::npos) << err;
  EXPECT_NE(err.find("thread " + std::to_string(tid) + " (hp-stderr-rd)"), std::string::npos)
      << err;
}

}  // namespace
