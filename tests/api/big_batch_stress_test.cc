// Batches of 3,000 probes, on one thread and on two (EngineOptions::batch_threads = 2: the
// engine resolves and builds a batch of 1,024 specs or more on a second thread too):
// every probe lands on its own function with its own consumer, a batch that names each
// function twice still builds one site per function, and threads calling the functions
// while whole batches attach and detach see the functions' right results and are
// counted exactly while the probes are on.
#include <dlfcn.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "hotprobe/probe.h"

namespace {

using hotprobe::Engine;
using hotprobe::Handle;
using hotprobe::Hit;
using hotprobe::ProbeSpec;

constexpr long kCount = HP_TEST_GEN_COUNT;
using GenFn = int (*)(int);  // hp_gen_f<N>(x) = x + N + 1000

struct Fixture {
  void* lib = nullptr;
  std::vector<GenFn> fns;
  std::vector<std::atomic<long>> hits = std::vector<std::atomic<long>>(kCount);
};

Fixture& fixture() {
  static Fixture* f = [] {
    auto* f = new Fixture;
    f->lib = dlopen(HP_TEST_GEN_PATH, RTLD_NOW);
    if (!f->lib) return f;
    for (long i = 0; i < kCount; i++) {
      f->fns.push_back(
          reinterpret_cast<GenFn>(dlsym(f->lib, ("hp_gen_f" + std::to_string(i)).c_str())));
    }
    return f;
  }();
  return *f;
}

void count(Hit& h) {
  static_cast<std::atomic<long>*>(h.cookie)->fetch_add(1);
}

std::vector<ProbeSpec> specs_for_all(int times) {
  Fixture& f = fixture();
  std::vector<ProbeSpec> specs;
  for (int t = 0; t < times; t++) {
    for (long i = 0; i < kCount; i++) {
      ProbeSpec s;
      s.target = std::string(HP_TEST_GEN_PATH) + ":hp_gen_f" + std::to_string(i);
      s.on_entry = &count;
      s.cookie = &f.hits[i];
      specs.push_back(std::move(s));
    }
  }
  return specs;
}

std::vector<Handle> attach_all(Engine& e, const std::vector<ProbeSpec>& specs) {
  auto results = e.attach(specs, hotprobe::BatchMode::all_or_nothing);
  std::vector<Handle> handles;
  EXPECT_EQ(results.size(), specs.size());
  for (auto& r : results) {
    EXPECT_TRUE(r.ok()) << r.error().message();
    if (r.ok()) handles.insert(handles.end(), r->begin(), r->end());
  }
  return handles;
}

void reset_hits() {
  for (auto& h : fixture().hits)
    h.store(0);
}

// Each test runs with one thread (the default) and with two.
class BigBatch : public ::testing::TestWithParam<bool> {
 protected:
  hotprobe::Result<std::unique_ptr<Engine>> create() const {
    hotprobe::EngineOptions o;
    o.batch_threads = GetParam() ? 2 : 1;
    return Engine::create(o);
  }
};

TEST_P(BigBatch, EveryProbeOnItsOwnFunction) {
  Fixture& f = fixture();
  ASSERT_NE(f.lib, nullptr) << dlerror();
  auto e = create();
  ASSERT_TRUE(e.ok()) << e.error().message();
  reset_hits();
  const auto before = (*e)->stats();
  auto handles = attach_all(**e, specs_for_all(1));
  ASSERT_EQ(handles.size(), static_cast<std::size_t>(kCount));
  const auto after = (*e)->stats();
  EXPECT_EQ(after.sites_jmp - before.sites_jmp, static_cast<std::uint64_t>(kCount));
  for (long i = 0; i < kCount; i++) {
    for (long k = 0; k <= i % 3; k++)
      ASSERT_EQ(f.fns[i](7), 7 + i + 1000) << "hp_gen_f" << i;
  }
  for (long i = 0; i < kCount; i++)
    ASSERT_EQ(f.hits[i].load(), i % 3 + 1) << "hp_gen_f" << i;
  ASSERT_TRUE((*e)->detach(handles).ok());
  for (long i = 0; i < kCount; i++)
    ASSERT_EQ(f.fns[i](1), 1 + i + 1000);
  EXPECT_EQ(f.hits[kCount - 1].load(), (kCount - 1) % 3 + 1);
}

TEST_P(BigBatch, NamingEachFunctionTwiceBuildsOneSiteEach) {
  Fixture& f = fixture();
  ASSERT_NE(f.lib, nullptr) << dlerror();
  auto e = create();
  ASSERT_TRUE(e.ok()) << e.error().message();
  reset_hits();
  const auto before = (*e)->stats();
  auto handles = attach_all(**e, specs_for_all(2));
  ASSERT_EQ(handles.size(), static_cast<std::size_t>(2 * kCount));
  const auto after = (*e)->stats();
  EXPECT_EQ(after.sites_jmp - before.sites_jmp, static_cast<std::uint64_t>(kCount));
  EXPECT_EQ(after.consumers - before.consumers, static_cast<std::uint64_t>(2 * kCount));
  for (long i = 0; i < kCount; i++)
    ASSERT_EQ(f.fns[i](0), i + 1000);
  for (long i = 0; i < kCount; i++)
    ASSERT_EQ(f.hits[i].load(), 2) << "hp_gen_f" << i;
  ASSERT_TRUE((*e)->detach(handles).ok());
}

// Callers run all along, calling random functions (and checking their results) while
// whole batches attach and detach. In each round, once the batch is attached, the callers
// stop at a handshake, then each makes a known set of calls, which must be counted
// exactly, function by function.
TEST_P(BigBatch, CallersDuringAttachAndDetachOfWholeBatches) {
#if defined(HOTPROBE_TSAN)
  GTEST_SKIP() << "patching under running threads needs thread moves, which ThreadSanitizer's "
                  "deferred signal delivery defeats";
#endif
  Fixture& f = fixture();
  ASSERT_NE(f.lib, nullptr) << dlerror();
  auto e = create();
  ASSERT_TRUE(e.ok()) << e.error().message();
  const auto specs = specs_for_all(1);
  constexpr int kCallers = 2;
  constexpr long kCountedCalls = 20000;
  // step % 3 == 0: random calls; 1: stop and say so; 2: make the counted calls.
  std::atomic<int> step{0};
  std::atomic<int> stopped{0}, counted{0};
  std::atomic<bool> quit{false};
  std::atomic<long> wrong{0};
  std::vector<std::thread> callers;
  for (int c = 0; c < kCallers; c++) {
    callers.emplace_back([&, c] {
      unsigned x = 12345u + static_cast<unsigned>(c);
      int done_step = 0;
      while (!quit.load()) {
        const int s = step.load();
        if (s % 3 == 1 && done_step != s) {
          done_step = s;
          stopped.fetch_add(1);
        } else if (s % 3 == 2 && done_step != s) {
          for (long k = 0; k < kCountedCalls; k++) {
            const long i = (k * (c + 1)) % kCount;
            if (f.fns[i](3) != 3 + i + 1000) wrong.fetch_add(1);
          }
          done_step = s;
          counted.fetch_add(1);
        } else if (s % 3 == 0) {
          x = x * 1103515245u + 12345u;
          const long i = static_cast<long>(x % kCount);
          if (f.fns[i](5) != 5 + i + 1000) wrong.fetch_add(1);
        } else {
          std::this_thread::yield();
        }
      }
    });
  }
  std::vector<long> expect(kCount, 0);
  for (int c = 0; c < kCallers; c++) {
    for (long k = 0; k < kCountedCalls; k++)
      expect[(k * (c + 1)) % kCount]++;
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(4);
  int rounds = 0;
  while (rounds < 3 || (rounds < 12 && std::chrono::steady_clock::now() < deadline)) {
    auto handles = attach_all(**e, specs);
    ASSERT_EQ(handles.size(), static_cast<std::size_t>(kCount));
    stopped.store(0);
    step.fetch_add(1);  // stop
    while (stopped.load() < kCallers)
      std::this_thread::yield();
    std::vector<long> base(kCount);
    for (long i = 0; i < kCount; i++)
      base[i] = f.hits[i].load();
    counted.store(0);
    step.fetch_add(1);  // count
    while (counted.load() < kCallers)
      std::this_thread::yield();
    for (long i = 0; i < kCount; i++)
      ASSERT_EQ(f.hits[i].load() - base[i], expect[i]) << "hp_gen_f" << i << ", round " << rounds;
    step.fetch_add(1);  // random calls again, through the detach
    ASSERT_TRUE((*e)->detach(handles).ok());
    rounds++;
  }
  quit.store(true);
  for (auto& t : callers)
    t.join();
  EXPECT_EQ(wrong.load(), 0) << "a probed function returned a wrong value";
}

INSTANTIATE_TEST_SUITE_P(Threads, BigBatch, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& p) {
                           return p.param ? "two" : "one";
                         });

}  // namespace
