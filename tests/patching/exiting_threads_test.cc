// Threads that block every signal, spend their time strictly inside a site, and are
// created and exit while the site is patched (glibc's last steps of thread exit run with
// every signal blocked, and call free). Other threads exit at the moment the patch starts
// listing the threads of the process: /proc/self/task then skips the thread listed after
// the one that exited. A thread that no verdict reaches, preempted inside the site while
// its bytes change, resumes in the middle of the new instruction and dies. With every
// thread listed, each call gives what its window says and the probe counts exactly the
// calls that went through it. (thread_listing_test.cc races the listing itself, where
// the variant that takes the first listing as it comes is caught within seconds.)
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "race_code.h"

namespace {

using hp::core::apply_patches;
using hp_test::RaceCode;

struct Round {
  RaceCode* code;
  std::atomic<unsigned>* phase;
  std::atomic<bool> stop{false};
  std::atomic<int> calling{0};
  std::atomic<long> calls{0}, through{0}, wrong{0};
};

// Calls the site until the round ends.
void* caller(void* arg) {
  auto* r = static_cast<Round*>(arg);
  long n = 0, p = 0, w = 0;
  r->calling.fetch_add(1);
  while (!r->stop.load(std::memory_order_relaxed)) {
    const unsigned s0 = r->phase->load(std::memory_order_acquire);
    const int v = r->code->call();
    const unsigned s1 = r->phase->load(std::memory_order_acquire);
    n++;
    p += v == 2;
    if (v != 1 && v != 2) w++;
    if (s0 == s1 && s0 % 4 == 0 && v != 1) w++;
    if (s0 == s1 && s0 % 4 == 2 && v != 2) w++;
  }
  r->calls.fetch_add(n);
  r->through.fetch_add(p);
  r->wrong.fetch_add(w);
  return nullptr;
}

// Exits as soon as the site's hold is in place: while the patcher lists the threads.
void* exiter(void* arg) {
  auto* r = static_cast<Round*>(arg);
  const auto* f = reinterpret_cast<const volatile std::uint8_t*>(r->code->f);
  while (f[0] != 0xEB && !r->stop.load(std::memory_order_relaxed)) {
  }
  return nullptr;
}

struct Outcome {
  int rounds = 0;
  int refused = 0;
  long calls = 0, through = 0, wrong = 0;
  std::uint64_t hits = 0;
};

// Rounds of: (exiter, caller) pairs started with every signal blocked, interleaved in the
// thread list; attach; detach; every thread of the round joined.
Outcome run(std::chrono::milliseconds duration, int min_rounds) {
  RaceCode code(hp_test::short_sled(), 0);
  std::atomic<unsigned> phase{0};
  Outcome out;
  sigset_t all, old;
  sigfillset(&all);
  constexpr int kPairs = 3;
  const auto start = std::chrono::steady_clock::now();
  while ((std::chrono::steady_clock::now() - start < duration || out.rounds < min_rounds) &&
         std::chrono::steady_clock::now() - start < duration * 4) {
    Round r;
    r.code = &code;
    r.phase = &phase;
    std::vector<pthread_t> threads;
    pthread_sigmask(SIG_SETMASK, &all, &old);  // inherited by the threads of the round
    for (int i = 0; i < kPairs; i++) {
      pthread_t t;
      if (pthread_create(&t, nullptr, exiter, &r) == 0) threads.push_back(t);
      if (pthread_create(&t, nullptr, caller, &r) == 0) threads.push_back(t);
    }
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    while (r.calling.load() < kPairs)
      sched_yield();
    hp::core::PatchSite on = code.attach();
    phase.fetch_add(1);  // attaching
    auto a = apply_patches({&on, 1});
    if (a.ok()) {
      phase.fetch_add(1);  // attached
      sched_yield();
      hp::core::PatchSite off = code.detach();
      phase.fetch_add(1);  // detaching
      auto d = apply_patches({&off, 1});
      if (!d.ok()) {
        std::fprintf(stderr, "detach failed: %s\n", d.error().message().c_str());
        std::_Exit(3);
      }
      phase.fetch_add(1);  // detached
    } else {
      out.refused++;
      std::fprintf(stderr, "attach refused: %s\n", a.error().message().c_str());
      phase.fetch_add(3);
    }
    r.stop = true;
    for (pthread_t t : threads)
      pthread_join(t, nullptr);
    out.rounds++;
    out.calls += r.calls.load();
    out.through += r.through.load();
    out.wrong += r.wrong.load();
  }
  out.hits = code.hits.load();
  std::printf("rounds=%d refused=%d calls=%ld through_probe=%ld hits=%llu wrong=%ld\n", out.rounds,
              out.refused, out.calls, out.through, (unsigned long long)out.hits, out.wrong);
  std::fflush(stdout);
  return out;
}

bool exact(const Outcome& o, int min_rounds) {
  return o.wrong == 0 && o.refused == 0 && o.rounds >= min_rounds &&
         o.hits == static_cast<std::uint64_t>(o.through);
}

constexpr int kMinRounds = 20;

TEST(ExitingThreads, EveryThreadIsListedAndCountsAreExact) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        const Outcome o = run(std::chrono::milliseconds(1500), kMinRounds);
        std::_Exit(exact(o, kMinRounds) ? 0 : 1);
      },
      testing::ExitedWithCode(0), "");
}

}  // namespace
