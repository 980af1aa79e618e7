// Engine transactions (Engine::begin_transaction / end_transaction): staged attaches and
// detaches applied together at the outermost end, while other threads run the functions.
#include <dlfcn.h>
#include <sched.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "hotprobe/probe.h"

extern "C" {
int hp_tx_sink;
}
#define SINK(v) __atomic_store_n(&hp_tx_sink, static_cast<int>(v), __ATOMIC_RELAXED)

// 150 functions, hp_tx_f00 .. hp_tx_f149, each long enough for a 5-byte jump.
#define HP_TX_FN(n)                                                    \
  extern "C" __attribute__((noinline, used)) long hp_tx_f##n(long a) { \
    SINK(a);                                                           \
    SINK(a + 1##n);                                                    \
    return a + 1##n;                                                   \
  }
#define HP_TX_TEN(d, X) \
  X(d##0) X(d##1) X(d##2) X(d##3) X(d##4) X(d##5) X(d##6) X(d##7) X(d##8) X(d##9)
// clang-format off
#define HP_TX_ALL(X)                                                                  \
  HP_TX_TEN(0, X) HP_TX_TEN(1, X) HP_TX_TEN(2, X) HP_TX_TEN(3, X) HP_TX_TEN(4, X)     \
  HP_TX_TEN(5, X) HP_TX_TEN(6, X) HP_TX_TEN(7, X) HP_TX_TEN(8, X) HP_TX_TEN(9, X)     \
  HP_TX_TEN(10, X) HP_TX_TEN(11, X) HP_TX_TEN(12, X) HP_TX_TEN(13, X) HP_TX_TEN(14, X)
// clang-format on
HP_TX_ALL(HP_TX_FN)
#define HP_TX_PTR(n) &hp_tx_f##n,
long (*const volatile hp_tx_fns[])(long) = {HP_TX_ALL(HP_TX_PTR)};

// A 5-byte jump at +0 moves the instruction at +4 into its trampoline.
asm(R"(
        .text
        .globl  hp_tx_near
        .type   hp_tx_near, @function
        .p2align 4
hp_tx_near:
        lea     1(%rdi), %rax   # +0 (4 bytes)
        xchg    %ax, %ax        # +4 (2 bytes)
        nopl    0(%rax)         # +6 (4 bytes)
        ret                     # +10
        .size   hp_tx_near, . - hp_tx_near
)");
extern "C" long hp_tx_near(long);

namespace {

using hotprobe::Engine;
using hotprobe::Handle;
using hotprobe::Hit;
using hotprobe::ProbeSpec;

constexpr int kFunctions = 150;
static_assert(sizeof(hp_tx_fns) / sizeof(hp_tx_fns[0]) == kFunctions);

std::string target_of(int i) {
  return ":hp_tx_f" + (i < 10 ? "0" + std::to_string(i) : std::to_string(i));
}

void count_hit(Hit& h) {
  static_cast<std::atomic<long>*>(h.cookie)->fetch_add(1, std::memory_order_relaxed);
}

ProbeSpec counting(const std::string& target, std::atomic<long>* counter) {
  ProbeSpec s;
  s.target = target;
  s.on_entry = count_hit;
  s.cookie = counter;
  return s;
}

std::vector<Handle> flat(const std::vector<hotprobe::Result<std::vector<Handle>>>& results) {
  std::vector<Handle> out;
  for (const auto& r : results) {
    EXPECT_TRUE(r.ok()) << r.error().message();
    if (r.ok()) out.insert(out.end(), r->begin(), r->end());
  }
  return out;
}

// Threads that call every function in turn; `passes` counts their whole passes.
class Hammer {
 public:
  explicit Hammer(int threads) {
    for (int t = 0; t < threads; t++) {
      threads_.emplace_back([this] {
        while (!stop_.load(std::memory_order_relaxed)) {
          for (int i = 0; i < kFunctions; i++)
            hp_tx_fns[i](i);
          passes_.fetch_add(1, std::memory_order_release);
        }
      });
    }
  }
  ~Hammer() { stop(); }
  // Waits until every thread has made `n` more passes (at least n * threads in all).
  // The bound only keeps a broken engine from hanging the test.
  bool wait_passes(long n) {
    const long goal = passes_.load(std::memory_order_acquire) +
                      n * static_cast<long>(threads_.size()) + static_cast<long>(threads_.size());
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (passes_.load(std::memory_order_acquire) < goal) {
      if (std::chrono::steady_clock::now() > give_up) return false;
      sched_yield();
    }
    return true;
  }
  void stop() {
    stop_.store(true);
    for (auto& t : threads_)
      if (t.joinable()) t.join();
  }

 private:
  std::atomic<bool> stop_{false};
  std::atomic<long> passes_{0};
  std::vector<std::thread> threads_;
};

// Lets every hammer thread make two more passes, then checks each probe: the new ones
// (functions 0..99) have been hit (`new_on`) or never, the old ones (100..149) have been
// hit during the passes (`old_on`) or not once.
void expect_probes(Hammer& hammer, const std::atomic<long>* counts, bool new_on, bool old_on,
                   const char* when) {
  long old_before[kFunctions] = {};
  for (int i = 100; i < kFunctions; i++)
    old_before[i] = counts[i].load();
  ASSERT_TRUE(hammer.wait_passes(2));
  for (int i = 0; i < 100; i++)
    EXPECT_EQ(counts[i].load() > 0, new_on) << "new probe " << target_of(i) << ", " << when;
  for (int i = 100; i < kFunctions; i++)
    EXPECT_EQ(counts[i].load() > old_before[i], old_on)
        << "old probe " << target_of(i) << ", " << when;
}

TEST(Transaction, HundredAttachesAndFiftyDetachesApplyTogetherAtTheOutermostEnd) {
#if defined(HOTPROBE_TSAN)
  // The callers run through the sites while they are patched: moving them out needs the
  // move signal at once, and TSan delivers asynchronous signals late, on a copy of the
  // context (TextPatch.RacesCallers skips the same way).
  GTEST_SKIP() << "thread moves need signal contexts that ThreadSanitizer does not provide";
#endif
  auto engine = Engine::create().value();
  static std::atomic<long> counts[kFunctions];
  for (auto& c : counts)
    c.store(0);
  // The old probes: 100..149, attached before.
  std::vector<ProbeSpec> old_specs;
  for (int i = 100; i < kFunctions; i++)
    old_specs.push_back(counting(target_of(i), &counts[i]));
  const std::vector<Handle> old_handles = flat(engine->attach(old_specs));
  ASSERT_EQ(old_handles.size(), 50u);

  Hammer hammer(2);
  ASSERT_TRUE(hammer.wait_passes(1));
  for (int i = 100; i < kFunctions; i++)
    ASSERT_GT(counts[i].load(), 0) << target_of(i);

  const hotprobe::Stats before = engine->stats();
  engine->begin_transaction();
  engine->begin_transaction();  // nested: only the outer end applies
  // The new probes: 0..99, half one call each, half in one batch.
  std::vector<Handle> new_handles;
  for (int i = 0; i < 50; i++) {
    auto h = engine->attach(counting(target_of(i), &counts[i]));
    ASSERT_TRUE(h.ok()) << h.error().message();
    new_handles.insert(new_handles.end(), h->begin(), h->end());
  }
  std::vector<ProbeSpec> batch;
  for (int i = 50; i < 100; i++)
    batch.push_back(counting(target_of(i), &counts[i]));
  for (Handle h : flat(engine->attach(batch)))
    new_handles.push_back(h);
  ASSERT_EQ(new_handles.size(), 100u);
  ASSERT_TRUE(engine->detach(old_handles).ok());  // staged: returns without waiting
  ASSERT_TRUE(engine->end_transaction().ok());    // the inner end applies nothing

  // Still staged: no new probe has run, the old ones still do.
  expect_probes(hammer, counts, /*new_on=*/false, /*old_on=*/true, "before the end");
  const hotprobe::Stats staged = engine->stats();
  EXPECT_EQ(staged.grace_periods, before.grace_periods);
  EXPECT_EQ(staged.sync_core_rounds, before.sync_core_rounds);
  EXPECT_EQ(staged.consumers, 50u);

  auto ended = engine->end_transaction();
  ASSERT_TRUE(ended.ok()) << ended.error().message();
  // The end waited for the detached handlers: none runs from here on.
  expect_probes(hammer, counts, /*new_on=*/true, /*old_on=*/false, "after the end");
  hammer.stop();

  const hotprobe::Stats after = engine->stats();
  EXPECT_EQ(after.grace_periods - before.grace_periods, 1u) << "one grace period per transaction";
  // One text_patch pass writes the new sites' bytes and restores the old ones': three core
  // serializations, and one more round for each time a caller sits inside a site being
  // written and is moved out (the callers run all along); a call per probe would take 150
  // passes, 450 serializations or more.
  const std::uint64_t rounds = after.sync_core_rounds - before.sync_core_rounds;
  EXPECT_GE(rounds, 3u);
  EXPECT_LE(rounds, 8u) << "more than one patch pass for the transaction";
  EXPECT_EQ(after.consumers, 100u);

  // Exact counts on one thread: each new probe once per call, the old ones never.
  long snapshot[kFunctions];
  for (int i = 0; i < kFunctions; i++)
    snapshot[i] = counts[i].load();
  for (int k = 0; k < 3; k++)
    for (int i = 0; i < kFunctions; i++)
      hp_tx_fns[i](k);
  for (int i = 0; i < kFunctions; i++)
    EXPECT_EQ(counts[i].load() - snapshot[i], i < 100 ? 3 : 0) << target_of(i);
  EXPECT_TRUE(engine->detach(new_handles).ok());
}

TEST(Transaction, AnErrorRollsBackOnlyWhatItsCallStaged) {
  auto engine = Engine::create().value();
  static std::atomic<long> a{0}, b{0};
  engine->begin_transaction();
  auto good = engine->attach(counting(target_of(0), &a));
  ASSERT_TRUE(good.ok()) << good.error().message();
  auto bad = engine->attach(counting(":hp_tx_no_such_function", &b));
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message().find("hp_tx_no_such_function"), std::string::npos)
      << bad.error().message();
  // All or nothing: one bad spec stages nothing of the batch.
  std::vector<ProbeSpec> batch = {counting(target_of(1), &b),
                                  counting(":hp_tx_no_such_function", &b)};
  auto results = engine->attach(batch, hotprobe::BatchMode::all_or_nothing);
  EXPECT_FALSE(results[0].ok());
  EXPECT_FALSE(results[1].ok());
  ASSERT_TRUE(engine->end_transaction().ok());
  hp_tx_fns[0](1);
  hp_tx_fns[1](1);
  EXPECT_EQ(a.load(), 1);
  EXPECT_EQ(b.load(), 0);
  EXPECT_EQ(engine->stats().consumers, 1u);
  EXPECT_TRUE(engine->detach(*good).ok());
}

TEST(Transaction, EndWithoutBeginIsAnError) {
  auto engine = Engine::create().value();
  auto r = engine->end_transaction();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), hotprobe::Errc::invalid_argument);
  EXPECT_NE(r.error().message().find("begin_transaction"), std::string::npos);
  engine->begin_transaction();
  EXPECT_TRUE(engine->end_transaction().ok());
  EXPECT_FALSE(engine->end_transaction().ok());
}

TEST(Transaction, DetachingAProbeAttachedInTheSameTransactionCancelsIt) {
  auto engine = Engine::create().value();
  static std::atomic<long> n{0};
  const hotprobe::Stats before = engine->stats();
  engine->begin_transaction();
  auto h = engine->attach(counting(target_of(2), &n));
  ASSERT_TRUE(h.ok()) << h.error().message();
  ASSERT_TRUE(engine->detach(*h).ok());
  EXPECT_FALSE(engine->detach(*h).ok()) << "detached twice";
  ASSERT_TRUE(engine->end_transaction().ok());
  hp_tx_fns[2](1);
  EXPECT_EQ(n.load(), 0);
  const hotprobe::Stats after = engine->stats();
  EXPECT_EQ(after.consumers, 0u);
  EXPECT_EQ(after.sites_jmp, before.sites_jmp) << "a cancelled probe's site was patched";
  EXPECT_EQ(after.sync_core_rounds, before.sync_core_rounds);
  EXPECT_EQ(after.grace_periods, before.grace_periods) << "nothing detached waits";
}

TEST(Transaction, AnotherEngineCannotAttachAPlaceStagedByThisOne) {
  auto one = Engine::create().value();
  auto two = Engine::create().value();
  static std::atomic<long> a{0}, b{0};
  one->begin_transaction();
  auto h1 = one->attach(counting(target_of(3), &a));
  ASSERT_TRUE(h1.ok()) << h1.error().message();
  auto refused = two->attach(counting(target_of(3), &b));
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code(), hotprobe::Errc::busy);
  EXPECT_NE(refused.error().message().find("end_transaction"), std::string::npos)
      << refused.error().message();
  // The same engine adds a second consumer to the staged site.
  auto again = one->attach(counting(target_of(3), &b));
  ASSERT_TRUE(again.ok()) << again.error().message();
  ASSERT_TRUE(one->end_transaction().ok());
  auto h2 = two->attach(counting(target_of(3), &b));
  ASSERT_TRUE(h2.ok()) << h2.error().message();
  hp_tx_fns[3](1);
  EXPECT_EQ(a.load(), 1);
  EXPECT_EQ(b.load(), 2);
  EXPECT_TRUE(two->detach(*h2).ok());
  EXPECT_TRUE(one->detach(*h1).ok());
  EXPECT_TRUE(one->detach(*again).ok());
}

TEST(Transaction, OverlappingProbesStagedByTwoCallsAreRefused) {
  auto engine = Engine::create().value();
  static std::atomic<long> a{0}, b{0};
  engine->begin_transaction();
  ProbeSpec at0 = counting(":hp_tx_near", &a);
  at0.patch = hotprobe::PatchMode::jump_only;
  auto h0 = engine->attach(at0);
  ASSERT_TRUE(h0.ok()) << h0.error().message();
  ProbeSpec at2 = counting(":hp_tx_near+4", &b);
  at2.patch = hotprobe::PatchMode::jump_only;
  auto h2 = engine->attach(at2);
  ASSERT_FALSE(h2.ok());
  EXPECT_EQ(h2.error().code(), hotprobe::Errc::busy);
  EXPECT_NE(h2.error().message().find("staged earlier in this transaction"), std::string::npos)
      << h2.error().message();
  ASSERT_TRUE(engine->end_transaction().ok());
  EXPECT_EQ(hp_tx_near(41), 42);
  EXPECT_EQ(a.load(), 1);
  EXPECT_EQ(b.load(), 0);
  EXPECT_TRUE(engine->detach(*h0).ok());
  EXPECT_EQ(hp_tx_near(1), 2);
}

// The library libhp_api_dl.so (tests/api/fixture/dl_target.c), built beside the tests.
std::string dl_path() {
  char exe[4096];
  const ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0) return {};
  std::string dir(exe, static_cast<std::size_t>(n));
  dir.resize(dir.rfind('/'));
  return dir + "/api_fixtures/libhp_api_dl.so";
}

// A probe staged on a site of a library that is unloaded and loaded again before the end:
// the site it was staged on is gone (the module watcher retired it), and the end puts
// the probe on the site that took its place.
TEST(Transaction, AStagedProbeFollowsItsLibraryThroughDlcloseAndDlopen) {
  const std::string path = dl_path();
  void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!lib) GTEST_SKIP() << "no " << path << ": " << dlerror();
  auto engine = Engine::create().value();
  static std::atomic<long> before_count{0}, staged_count{0};
  auto before = engine->attach(counting(path + ":hp_dl_work", &before_count));
  ASSERT_TRUE(before.ok()) << before.error().message();
  engine->begin_transaction();
  auto staged = engine->attach(counting(path + ":hp_dl_work", &staged_count));
  ASSERT_TRUE(staged.ok()) << staged.error().message();
  ASSERT_EQ(dlclose(lib), 0);
  engine->sync();  // lets reclaim free the retired site
  lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  ASSERT_NE(lib, nullptr) << dlerror();
  ASSERT_TRUE(engine->end_transaction().ok());
  auto fn = reinterpret_cast<long (*)(long)>(dlsym(lib, "hp_dl_work"));
  ASSERT_NE(fn, nullptr);
  EXPECT_EQ(fn(3), 6);
  EXPECT_EQ(before_count.load(), 1);
  EXPECT_EQ(staged_count.load(), 1) << "the staged probe is not on the library's new site";
  EXPECT_TRUE(engine->detach(*staged).ok());
  EXPECT_TRUE(engine->detach(*before).ok());
  dlclose(lib);
}

TEST(Transaction, TheDestructorEndsATransactionLeftOpen) {
  static std::atomic<long> n{0};
  std::uint64_t sites_before = 0;
  {
    auto engine = Engine::create().value();
    sites_before = engine->stats().sites_jmp;
    engine->begin_transaction();
    engine->begin_transaction();
    auto h = engine->attach(counting(target_of(4), &n));
    ASSERT_TRUE(h.ok()) << h.error().message();
  }
  hp_tx_fns[4](1);
  EXPECT_EQ(n.load(), 0);
  auto engine = Engine::create().value();
  EXPECT_EQ(engine->stats().sites_jmp, sites_before);
}

}  // namespace
