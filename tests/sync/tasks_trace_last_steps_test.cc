// Tasks-trace and a thread's last steps: a read section after the thread's exit hook (a key
// destructor of a later key, as glibc's __libc_thread_freeres comes after every key
// destructor) registers the thread again, is waited for by grace periods, and its record
// does not outlive the thread for long: the thread that takes the cached stack (and so
// the word) releases it when it registers, and the next grace period releases it once the
// thread is gone.
#include <gtest/gtest.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>

#include "sync/tasks_trace.h"

namespace {

using hp::sync::ReadGuard;
using hp::sync::tasks_trace;
using hp::sync::TasksTrace;

// Made after tasks-trace's key (tasks_trace() is called first): its destructor runs after
// the exit hook, in the same round.
pthread_key_t g_key;
std::atomic<bool> g_inside{false}, g_go{false};
std::atomic<std::atomic<std::uint64_t>*> g_word{nullptr};

// Each round sets the key again, up to glibc's last round: a section there is one no later
// round of the exit hook will see, as glibc's own last steps are.
void last_step(void* v) {
  const auto round = reinterpret_cast<std::uintptr_t>(v);
  if (round < PTHREAD_DESTRUCTOR_ITERATIONS) {
    pthread_setspecific(g_key, reinterpret_cast<void*>(round + 1));
    return;
  }
  const auto t = TasksTrace::read_lock();
  g_inside.store(true);
  while (!g_go.load())
    sched_yield();
  TasksTrace::read_unlock(t);
}

void* ending_thread(void*) {
  { ReadGuard g(tasks_trace()); }  // registered during its life
  g_word.store(&hp::sync::tt_detail::tls_word);
  pthread_setspecific(g_key, reinterpret_cast<void*>(1));
  return nullptr;
}

void* registering_thread(void* word) {
  { ReadGuard g(tasks_trace()); }
  *static_cast<bool*>(word) = g_word.load() == &hp::sync::tt_detail::tls_word;
  return nullptr;
}

class TasksTraceLastSteps : public ::testing::Test {
 protected:
  void SetUp() override {
#if defined(__SANITIZE_THREAD__)
    // TSan's runtime finishes a thread before glibc's last round of key destructors: an
    // instrumented access there faults inside the runtime.
    GTEST_SKIP() << "ThreadSanitizer cannot run code in a thread's last key destructor round";
#endif
    TasksTrace& tt = tasks_trace();
    { ReadGuard g(tt); }
    ASSERT_EQ(pthread_key_create(&g_key, &last_step), 0);
    made_ = true;
    g_inside.store(false);
    g_go.store(false);
  }
  void TearDown() override {
    if (made_) pthread_key_delete(g_key);
  }
  bool made_ = false;
};

// The writer waits for the section of the thread's last step, and the record that section
// registered is gone after the next grace period (the thread is joined: gone).
TEST_F(TasksTraceLastSteps, GracePeriodWaitsForTheLastStepAndThenReleasesItsRecord) {
  TasksTrace& tt = tasks_trace();
  tt.synchronize();
  const std::size_t base = tt.registered_threads();
  pthread_t t;
  ASSERT_EQ(pthread_create(&t, nullptr, ending_thread, nullptr), 0);
  while (!g_inside.load())
    sched_yield();
  std::atomic<bool> done{false};
  std::thread writer([&] {
    tt.synchronize();
    done.store(true);
  });
  for (int i = 0; i < 2000; ++i) {
    ASSERT_FALSE(done.load()) << "a grace period ended while the thread's last step was inside";
    sched_yield();
  }
  g_go.store(true);
  writer.join();
  pthread_join(t, nullptr);
  tt.synchronize();
  EXPECT_EQ(tt.registered_threads(), base);
}

// The thread that takes the ended thread's cached stack releases the record of its last
// step when it registers, with no grace period in between.
TEST_F(TasksTraceLastSteps, ThreadOnTheCachedStackReleasesTheRecord) {
  TasksTrace& tt = tasks_trace();
  tt.synchronize();
  const std::size_t base = tt.registered_threads();
  g_go.store(true);
  pthread_t t;
  ASSERT_EQ(pthread_create(&t, nullptr, ending_thread, nullptr), 0);
  pthread_join(t, nullptr);
  ASSERT_EQ(tt.registered_threads(), base + 1) << "the last step registered no record";
  bool same_word = false;
  pthread_t u;
  ASSERT_EQ(pthread_create(&u, nullptr, registering_thread, &same_word), 0);
  pthread_join(u, nullptr);
  if (!same_word) GTEST_SKIP() << "glibc gave the new thread another stack";
  // The new thread's own record went with its exit hook (no section after it).
  EXPECT_EQ(tt.registered_threads(), base) << "the ended thread's record outlived its stack";
}

}  // namespace
