// Tasks-trace and the identity of threads: a reader record outlives its thread when the
// thread registers after its exit hook (here: a pthread key destructor of the last round),
// and Linux hands that thread's tid to a new thread soon after. A grace period must then
// neither wait for the dead thread's record (whose word is in memory the program has
// reused) nor skip the live thread. And registration, reached from a thread's first probe
// hit, must be seen by the trampoline reclaimer as dispatch code (its pc in the
// hp_dispatch section) for as long as it may block.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include "sync/tasks_trace.h"

// Linker-made bounds of the dispatch section (weak: null in a build where nothing is there).
extern "C" __attribute__((weak)) char __start_hp_dispatch[], __stop_hp_dispatch[];

namespace {

using hp::sync::tasks_trace;
using hp::sync::TasksTrace;
using namespace std::chrono_literals;

pid_t gettid_raw() {
  return static_cast<pid_t>(::syscall(SYS_gettid));
}

// Exit codes of the child that runs the tid-reuse scenario.
enum Outcome : int {
  kOk = 0,
  kNoNamespace = 3,     // unshare(CLONE_NEWPID) refused: skipped
  kSetupFailed = 10,    // a thread, a stack, ns_last_pid
  kTidNotReused = 11,   // the new thread did not get the tid (ns_last_pid had no effect)
  kNoStaleRecord = 12,  // the late registration left no record behind
  kHang = 20,           // the grace period waited for the dead thread's record
  kSkipped = 21,        // the grace period ended while the live reader was inside
  kBadRegistry = 22,    // the dead thread's record is still registered
};

// The last-round key destructor of thread A: a read section after tasks-trace's exit hook
// ran, which registers the thread again. It sets its key again so that glibc runs another
// round, until the last one: there the registration is left behind.
pthread_key_t g_late_key;
void late_reader(void* v) {
  TasksTrace::read_unlock(TasksTrace::read_lock());
  const auto round = reinterpret_cast<std::uintptr_t>(v);
  if (round < PTHREAD_DESTRUCTOR_ITERATIONS) {
    pthread_setspecific(g_late_key, reinterpret_cast<void*>(round + 1));
  }
}

struct ThreadA {
  pid_t tid = 0;
  std::atomic<std::uint64_t>* word = nullptr;
};

void* thread_a(void* p) {
  auto* a = static_cast<ThreadA*>(p);
  TasksTrace::read_unlock(TasksTrace::read_lock());
  a->tid = gettid_raw();
  a->word = &hp::sync::tt_detail::tls_word;
  pthread_setspecific(g_late_key, reinterpret_cast<void*>(1));
  return nullptr;
}

struct Shared {
  std::atomic<pid_t> b_tid{0};
  std::atomic<bool> b_inside{false}, writer_started{false}, writer_done{false};
  std::atomic<bool> b_saw_done_inside{false}, b_left{false}, finish{false};
};

void* thread_b(void* p) {
  auto* s = static_cast<Shared*>(p);
  s->b_tid.store(gettid_raw());
  {
    hp::sync::ReadGuard g(tasks_trace());
    s->b_inside.store(true);
    while (!s->writer_started.load())
      sched_yield();
    // The writer is in (or about to enter) synchronize(): it must not return while this
    // section lasts.
    for (int i = 0; i < 2000; ++i) {
      if (s->writer_done.load()) s->b_saw_done_inside.store(true);
      sched_yield();
    }
    if (s->writer_done.load()) s->b_saw_done_inside.store(true);
  }
  s->b_left.store(true);
  while (!s->finish.load())
    sched_yield();
  return nullptr;
}

void* writer(void* p) {
  auto* s = static_cast<Shared*>(p);
  while (!s->b_inside.load())
    sched_yield();
  s->writer_started.store(true);
  tasks_trace().synchronize();
  s->writer_done.store(true);
  return nullptr;
}

// Runs as PID 1 of a new PID namespace, where this process alone allocates tids and
// /proc/sys/kernel/ns_last_pid picks the next one.
int tid_reuse_scenario() {
  TasksTrace& tt = tasks_trace();
  TasksTrace::read_unlock(TasksTrace::read_lock());  // this thread registered
  if (pthread_key_create(&g_late_key, &late_reader) != 0) return kSetupFailed;
  const std::size_t base = tt.registered_threads();

  // Thread A on a stack the program owns, so that it can reuse the memory afterwards.
  constexpr std::size_t kStack = 1 << 20;
  void* stack = ::mmap(nullptr, kStack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (stack == MAP_FAILED) return kSetupFailed;
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstack(&attr, stack, kStack);
  ThreadA a;
  pthread_t ta;
  if (pthread_create(&ta, &attr, thread_a, &a) != 0) return kSetupFailed;
  pthread_join(ta, nullptr);
  pthread_attr_destroy(&attr);
  if (tt.registered_threads() != base + 1) return kNoStaleRecord;
  // The program reuses the stack buffer: where A's word was, a pattern that reads as a
  // thread inside a read section.
  a.word->store((3ULL << 32) | 1, std::memory_order_relaxed);

  // Thread B gets A's tid and enters a read section; a writer starts a grace period.
  {
    int fd = ::open("/proc/sys/kernel/ns_last_pid", O_WRONLY | O_CLOEXEC);
    if (fd < 0) return kSetupFailed;
    const std::string last = std::to_string(a.tid - 1);
    const bool ok = ::write(fd, last.data(), last.size()) == static_cast<ssize_t>(last.size());
    ::close(fd);
    if (!ok) return kSetupFailed;
  }
  Shared s;
  pthread_t tb, tw;
  if (pthread_create(&tb, nullptr, thread_b, &s) != 0) return kSetupFailed;
  while (s.b_tid.load() == 0)
    sched_yield();
  if (s.b_tid.load() != a.tid) return kTidNotReused;
  if (pthread_create(&tw, nullptr, writer, &s) != 0) return kSetupFailed;
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (!s.writer_done.load()) {
    if (std::chrono::steady_clock::now() > deadline) return kHang;
    std::this_thread::sleep_for(1ms);
  }
  if (s.b_saw_done_inside.load()) return kSkipped;
  pthread_join(tw, nullptr);
  // This thread and B (the writer has exited); A's record is gone.
  if (tt.registered_threads() != base + 1) return kBadRegistry;
  s.finish.store(true);
  pthread_join(tb, nullptr);
  return kOk;
}

TEST(TasksTraceIdentity, ReusedTidOfAnExitedLateReaderNeitherHangsNorSkips) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root (a new PID namespace, ns_last_pid)";
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    if (::unshare(CLONE_NEWPID) != 0) ::_exit(kNoNamespace);
    const pid_t init = ::fork();
    if (init < 0) ::_exit(kSetupFailed);
    if (init == 0) ::_exit(tid_reuse_scenario());
    int status = 0;
    ::waitpid(init, &status, 0);
    ::_exit(WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
  }
  int status = 0;
  pid_t done = 0;
  for (auto until = std::chrono::steady_clock::now() + 30s;
       (done = ::waitpid(child, &status, WNOHANG)) == 0 &&
       std::chrono::steady_clock::now() < until;)
    std::this_thread::sleep_for(2ms);
  if (done == 0) {
    ::kill(child, SIGKILL);
    ::waitpid(child, &status, 0);
    FAIL() << "the scenario did not end";
  }
  ASSERT_TRUE(WIFEXITED(status)) << status;
  const int code = WEXITSTATUS(status);
  if (code == kNoNamespace) GTEST_SKIP() << "unshare(CLONE_NEWPID) is not allowed here";
  EXPECT_NE(code, kHang) << "the grace period waited for the record of a thread that had "
                            "exited, because a new thread had its tid";
  EXPECT_NE(code, kSkipped) << "the grace period ended while a reader was inside";
  EXPECT_NE(code, kBadRegistry) << "the exited thread's record stayed registered";
  EXPECT_EQ(code, kOk);
}

// Where thread `tid` of this process is blocked: the pc of /proc/self/task/TID/syscall
// ("NR ARGS... SP PC"), once it is in system call `nr`; 0 if it never gets there.
std::uintptr_t blocked_pc(pid_t tid, long nr) {
  const std::string path = "/proc/self/task/" + std::to_string(tid) + "/syscall";
  for (int i = 0; i < 10000; ++i) {
    std::ifstream in(path);
    std::string first;
    in >> first;
    if (first == std::to_string(nr)) {
      std::string word, last;
      while (in >> word)
        last = word;
      return static_cast<std::uintptr_t>(std::stoull(last, nullptr, 16));
    }
    std::this_thread::sleep_for(1ms);
  }
  return 0;
}

// A thread's first read_lock() registers it, and may wait for the registry lock while a
// writer scans: all that time it must be seen inside the dispatch section, or the
// trampoline reclaimer (which decides "outside" by pc) would free the trampoline the
// thread returns into.
TEST(TasksTraceIdentity, RegistrationBlockedOnTheRegistryIsInsideTheDispatchSection) {
  TasksTrace& tt = tasks_trace();
  const std::size_t base = tt.registered_threads();
  std::atomic<pid_t> tid{0};
  tt.lock_registry_for_testing();
  std::thread t([&] {
    tid.store(gettid_raw());
    TasksTrace::read_unlock(TasksTrace::read_lock());
  });
  while (tid.load() == 0)
    std::this_thread::yield();
  const std::uintptr_t pc = blocked_pc(tid.load(), SYS_futex);
  tt.unlock_registry_for_testing();
  t.join();
  ASSERT_NE(pc, 0u) << "the registering thread never waited for the registry lock";
  EXPECT_GE(pc, reinterpret_cast<std::uintptr_t>(__start_hp_dispatch));
  EXPECT_LT(pc, reinterpret_cast<std::uintptr_t>(__stop_hp_dispatch))
      << "blocked at pc 0x" << std::hex << pc << ", outside the dispatch section";
  EXPECT_EQ(tt.registered_threads(), base);
}

}  // namespace
