// The own-work guard (core/thread_state.h): a probe hit in hotprobe's own work runs no
// handler and is counted as skipped_own, never as a recursion miss; a scope nests and
// restores the guard; a thread marked as hotprobe's skips every hit for its life, and its
// skips stay counted apart after it exits; the grace-period worker and the batch helper
// are such threads and block the program's asynchronous signals.
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <thread>

#include <gtest/gtest.h>

#include "base/signals.h"
#include "core/thread_state.h"
#include "hotprobe/probe.h"
#include "sync/tasks_trace.h"

extern "C" {
std::atomic<long> hp_ow_sink;
__attribute__((noinline, used)) long hp_ow_leaf(long x) {
  hp_ow_sink.store(x, std::memory_order_relaxed);
  return x + 1;
}
}

namespace {

using hotprobe::Engine;
using hotprobe::Hit;
using hotprobe::ProbeSpec;
using hp::core::hit_totals;
using hp::core::OwnWork;

std::atomic<long> g_entries{0};
void count_entry(Hit&) {
  g_entries.fetch_add(1, std::memory_order_relaxed);
}

struct Probed {
  std::unique_ptr<Engine> e = Engine::create().value();
  std::vector<hotprobe::Handle> h;
  Probed() {
    ProbeSpec s;
    s.target = ":hp_ow_leaf";
    s.on_entry = &count_entry;
    auto r = e->attach(s);
    EXPECT_TRUE(r.ok()) << r.error().message();
    if (r.ok()) h = *r;
    hp_ow_leaf(0);  // the thread's first hit registers it
    g_entries = 0;
  }
  ~Probed() { (void)e->detach(h); }
};

TEST(OwnWork, HitsInAScopeRunNoHandlerAndAreNotMisses) {
  Probed p;
  const auto before = hit_totals();
  {
    OwnWork own;
    for (int i = 0; i < 10; i++)
      hp_ow_leaf(i);
    {
      OwnWork nested;
      hp_ow_leaf(1);
    }
    EXPECT_TRUE(hp::core::in_own_work());
    hp_ow_leaf(2);  // still inside the outer scope after the nested one ended
  }
  EXPECT_FALSE(hp::core::in_own_work());
  EXPECT_EQ(g_entries.load(), 0) << "a handler ran in hotprobe's own work";
  hp_ow_leaf(3);
  EXPECT_EQ(g_entries.load(), 1) << "the guard was not restored";
  const auto after = hit_totals();
  EXPECT_EQ(after.skipped_own - before.skipped_own, 12u);
  EXPECT_EQ(after.misses_recursion - before.misses_recursion, 0u);
}

TEST(OwnWork, AMarkedThreadSkipsForItsWholeLifeAndStaysCountedApart) {
  Probed p;
  const auto before = hit_totals();
  std::thread t([] {
    hp::core::mark_own_thread();
    for (int i = 0; i < 7; i++)
      hp_ow_leaf(i);
  });
  t.join();  // its record released: the counts folded into the totals
  EXPECT_EQ(g_entries.load(), 0);
  const auto after = hit_totals();
  EXPECT_EQ(after.skipped_own - before.skipped_own, 7u);
  EXPECT_EQ(after.misses_recursion - before.misses_recursion, 0u);
  // A later thread reusing the record is the program's again.
  std::thread u([] { hp_ow_leaf(1); });
  u.join();
  EXPECT_EQ(g_entries.load(), 1);
}

// The grace-period worker runs the callbacks: it is hotprobe's, and blocks every
// asynchronous signal (a program's SIGALRM handler must not run there) but the engine's.
TEST(OwnWork, GracePeriodWorkerIsOwnAndBlocksAsyncSignals) {
  std::atomic<bool> own{false};
  std::atomic<bool> alrm_blocked{false}, move_open{false};
  hp::sync::tasks_trace().call([&] {
    own = hp::core::in_own_work();
    sigset_t cur;
    pthread_sigmask(SIG_BLOCK, nullptr, &cur);
    alrm_blocked = sigismember(&cur, SIGALRM) == 1;
    move_open = sigismember(&cur, hotprobe::reserved_signal()) == 0;
  });
  hp::sync::tasks_trace().barrier();
  EXPECT_TRUE(own.load());
  EXPECT_TRUE(alrm_blocked.load());
  EXPECT_TRUE(move_open.load());
}

}  // namespace
