// The listing of the threads that step 2 of the patch protocol gives a verdict on. Threads
// exit all the time in a program that starts threads for short work; when one exits
// while /proc/self/task is being read, the kernel's walk ends early and the read that
// continues it skips the thread after it. A thread that no verdict reaches may be inside
// a site while its bytes are written. Here long-lived threads are created, each right
// after a thread that exits at once (so in the kernel's list each follows one that
// exits), while the listing is taken over and over: every long-lived thread must be in
// every listing.
#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "core/text_patch.h"

namespace {

// Generations of (exits at once, lives) pairs; a generation's long-lived threads stop
// and are joined before the next starts, so the kernel's list stays short.
struct Churn {
  static constexpr int kPairs = 32;
  std::atomic<bool> stop{false};
  std::atomic<bool> generation_stop{false};
  // Odd while a generation ends (its threads may be gone), even while it lives.
  std::atomic<unsigned> generation{0};
  std::atomic<int> tids[kPairs] = {};
  std::atomic<int> n_long{0};
};

void* exit_at_once(void*) {
  return nullptr;
}

void* live_until_stop(void* arg) {
  auto* c = static_cast<Churn*>(arg);
  const int me = static_cast<int>(syscall(SYS_gettid));
  c->tids[c->n_long.load()].store(me);
  c->n_long.fetch_add(1);  // published after its tid
  while (!c->generation_stop.load())
    usleep(200);
  return nullptr;
}

void spawn(Churn* c) {
  while (!c->stop.load()) {
    pthread_t longs[Churn::kPairs];
    int n = 0;
    for (int i = 0; i < Churn::kPairs && !c->stop.load(); i++) {
      pthread_t e;
      if (pthread_create(&e, nullptr, exit_at_once, nullptr) == 0) pthread_detach(e);
      // One long-lived thread at a time publishes its tid (the slot is n_long).
      const int before = c->n_long.load();
      if (pthread_create(&longs[n], nullptr, live_until_stop, c) != 0) continue;
      n++;
      while (c->n_long.load() == before)
        sched_yield();
    }
    c->generation.fetch_add(1);  // odd: ending
    c->generation_stop = true;
    for (int i = 0; i < n; i++)
      pthread_join(longs[i], nullptr);
    c->n_long = 0;
    for (auto& t : c->tids)
      t = 0;
    c->generation_stop = false;
    c->generation.fetch_add(1);  // even: a new one
  }
}

struct Result {
  long listings = 0, refused = 0, checked = 0, missed = 0;
};

Result list_while_churning(std::chrono::milliseconds duration) {
  Churn c;
  std::thread spawner(spawn, &c);
  Result r;
  const auto start = std::chrono::steady_clock::now();
  std::vector<int> known;
  while (std::chrono::steady_clock::now() - start < duration) {
    // The long-lived threads published before the listing starts: each must be in it,
    // unless their generation ended meanwhile.
    const unsigned g0 = c.generation.load();
    known.clear();
    for (int i = 0, n = c.n_long.load(); i < n; i++)
      known.push_back(c.tids[i].load());
    auto listed = hp::core::list_threads_for_testing();
    r.listings++;
    if (!listed.ok()) {
      r.refused++;
      continue;
    }
    if (g0 % 2 || c.generation.load() != g0) continue;
    std::vector<int> l = *listed;
    std::sort(l.begin(), l.end());
    for (int t : known) {
      r.checked++;
      if (!std::binary_search(l.begin(), l.end(), t)) r.missed++;
    }
    if (r.missed) break;
  }
  c.stop = true;
  spawner.join();
  std::printf("listings=%ld refused=%ld threads checked=%ld missed=%ld\n", r.listings, r.refused,
              r.checked, r.missed);
  return r;
}

TEST(ThreadListing, EveryThreadIsListedWhileOthersExit) {
  const Result r = list_while_churning(std::chrono::milliseconds(2000));
  EXPECT_EQ(r.missed, 0);
  EXPECT_GT(r.listings - r.refused, 100);
}

// The broken variant, the first listing as it comes: it misses a long-lived thread.
TEST(ThreadListing, PartialListingMissesAThread) {
#if defined(HOTPROBE_TSAN)
  // ThreadSanitizer slows the lister and the spawner alike: the kernel's window (an exit
  // between two steps of the walk) is hit too rarely to show within the bound.
  GTEST_SKIP() << "the race is too rare to show under ThreadSanitizer";
#endif
  hp::core::use_partial_thread_listing_for_testing(true);
  const Result r = list_while_churning(std::chrono::milliseconds(15000));
  hp::core::use_partial_thread_listing_for_testing(false);
  EXPECT_GT(r.missed, 0);
}

}  // namespace
