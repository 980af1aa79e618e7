// A batch keeps every spec's targets apart (one list for the whole batch): a spec that fails
// in the middle of a best-effort batch takes none of its neighbours' targets with it, and
// every other spec gets its own probe, at its own function.
#include <atomic>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "core/text_patch.h"
#include "hotprobe/probe.h"

extern "C" {
std::atomic<long> hp_ba_sink;
__attribute__((noinline, used)) long hp_ba_f0(long x) {
  hp_ba_sink.store(x, std::memory_order_relaxed);
  return x + 10;
}
__attribute__((noinline, used)) long hp_ba_f1(long x) {
  hp_ba_sink.store(x, std::memory_order_relaxed);
  return x + 11;
}
__attribute__((noinline, used)) long hp_ba_f2(long x) {
  hp_ba_sink.store(x, std::memory_order_relaxed);
  return x + 12;
}

// Forty functions that one glob names (a batch of one spec with forty targets).
#define HP_BA_G(n)                                          \
  __attribute__((noinline, used)) long hp_ba_g##n(long x) { \
    hp_ba_sink.store(x + n, std::memory_order_relaxed);     \
    return x + n;                                           \
  }
// clang-format off
#define HP_BA_G10(d) \
  HP_BA_G(d##0) HP_BA_G(d##1) HP_BA_G(d##2) HP_BA_G(d##3) HP_BA_G(d##4) \
  HP_BA_G(d##5) HP_BA_G(d##6) HP_BA_G(d##7) HP_BA_G(d##8) HP_BA_G(d##9)
// clang-format on
HP_BA_G10(1)
HP_BA_G10(2)
HP_BA_G10(3)
HP_BA_G10(4)
}

namespace {

std::atomic<int> g_hits[3];

template <int N>
void count(hotprobe::Hit&) {
  g_hits[N].fetch_add(1, std::memory_order_relaxed);
}

TEST(CoreBatchAttach, AFailedSpecInTheMiddleLeavesTheOthersTheirTargets) {
  auto engine = hotprobe::Engine::create();
  ASSERT_TRUE(engine.ok()) << engine.error().message();
  std::vector<hotprobe::ProbeSpec> specs(5);
  specs[0].target = ":hp_ba_f0";
  specs[0].on_entry = &count<0>;
  specs[1].target = ":hp_ba_no_such_function";
  specs[1].on_entry = &count<0>;
  specs[2].target = ":hp_ba_f1";
  specs[2].on_entry = &count<1>;
  specs[3].target = "no-colon";
  specs[3].on_entry = &count<0>;
  specs[4].target = ":hp_ba_f2";
  specs[4].on_entry = &count<2>;
  auto results = (*engine)->attach(specs, hotprobe::BatchMode::best_effort);
  ASSERT_EQ(results.size(), 5u);
  EXPECT_FALSE(results[1].ok());
  EXPECT_FALSE(results[3].ok());
  std::vector<hotprobe::Handle> all;
  for (int i : {0, 2, 4}) {
    ASSERT_TRUE(results[i].ok()) << results[i].error().message();
    ASSERT_EQ(results[i]->size(), 1u) << "spec " << i;
    all.push_back((*results[i])[0]);
  }
  EXPECT_EQ(hp_ba_f0(1), 11);
  EXPECT_EQ(hp_ba_f1(1), 12);
  EXPECT_EQ(hp_ba_f1(1), 12);
  EXPECT_EQ(hp_ba_f2(1), 13);
  EXPECT_EQ(hp_ba_f2(1), 13);
  EXPECT_EQ(hp_ba_f2(1), 13);
  EXPECT_EQ(g_hits[0].load(), 1);
  EXPECT_EQ(g_hits[1].load(), 2);
  EXPECT_EQ(g_hits[2].load(), 3);
  ASSERT_TRUE((*engine)->detach(all).ok());
}

// A batch whose patching fails fails every spec with a target on one of its new sites,
// whole: the consumer such a spec added to a function probed before the batch is taken
// off again (that function keeps counting for its own probe only), no handle is handed
// out, and the functions are left as they were, so the same batch attaches afterwards.
TEST(CoreBatchAttach, AFailedPatchTakesBackEverySpecOnANewSite) {
  for (auto& h : g_hits)
    h.store(0);
  auto engine = hotprobe::Engine::create();
  ASSERT_TRUE(engine.ok()) << engine.error().message();
  hotprobe::ProbeSpec before;
  before.target = ":hp_ba_f0";
  before.on_entry = &count<0>;
  auto kept = (*engine)->attach(before);
  ASSERT_TRUE(kept.ok()) << kept.error().message();

  std::vector<hotprobe::ProbeSpec> specs(2);
  specs[0].target = ":hp_ba_f[01]";  // f0: probed before the batch; f1: a new site
  specs[0].on_entry = &count<1>;
  specs[1].target = ":hp_ba_f2";
  specs[1].on_entry = &count<2>;
  hp::core::fail_next_apply_for_testing();
  auto results = (*engine)->attach(specs, hotprobe::BatchMode::best_effort);
  ASSERT_EQ(results.size(), 2u);
  for (const auto& r : results) {
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.error().message().find("could not patch"), std::string::npos)
        << r.error().message();
  }
  EXPECT_EQ((*engine)->stats().consumers, 1u);
  EXPECT_EQ(hp_ba_f0(1), 11);
  EXPECT_EQ(hp_ba_f1(1), 12);
  EXPECT_EQ(hp_ba_f2(1), 13);
  EXPECT_EQ(g_hits[0].load(), 1);
  EXPECT_EQ(g_hits[1].load(), 0);
  EXPECT_EQ(g_hits[2].load(), 0);

  results = (*engine)->attach(specs, hotprobe::BatchMode::best_effort);
  std::vector<hotprobe::Handle> all(kept->begin(), kept->end());
  for (const auto& r : results) {
    ASSERT_TRUE(r.ok()) << r.error().message();
    all.insert(all.end(), r->begin(), r->end());
  }
  EXPECT_EQ(all.size(), 4u);
  EXPECT_EQ(hp_ba_f0(1), 11);
  EXPECT_EQ(hp_ba_f1(1), 12);
  EXPECT_EQ(hp_ba_f2(1), 13);
  EXPECT_EQ(g_hits[0].load(), 2);
  EXPECT_EQ(g_hits[1].load(), 2);
  EXPECT_EQ(g_hits[2].load(), 1);
  ASSERT_TRUE((*engine)->detach(all).ok());
  EXPECT_EQ((*engine)->stats().consumers, 0u);
}

// One spec whose glob names more functions than a batch has specs: every one is probed
// (the batch's table of new sites is sized by targets, not by specs; sized by specs, this
// attach never returned).
TEST(CoreBatchAttach, OneGlobSpecProbesEveryFunctionItNames) {
  std::atomic<long> hits{0};
  auto engine = hotprobe::Engine::create();
  ASSERT_TRUE(engine.ok()) << engine.error().message();
  hotprobe::ProbeSpec spec;
  spec.target = ":hp_ba_g[1-4][0-9]";
  spec.cookie = &hits;
  spec.on_entry = [](hotprobe::Hit& h) {
    static_cast<std::atomic<long>*>(h.cookie)->fetch_add(1, std::memory_order_relaxed);
  };
  auto handles = (*engine)->attach(spec);
  ASSERT_TRUE(handles.ok()) << handles.error().message();
  EXPECT_EQ(handles->size(), 40u);
  long sum = 0;
  for (long (*f)(long) : {hp_ba_g10, hp_ba_g19, hp_ba_g20, hp_ba_g33, hp_ba_g49})
    sum += f(0);
  EXPECT_EQ(sum, 10 + 19 + 20 + 33 + 49);
  EXPECT_EQ(hits.load(), 5);
  ASSERT_TRUE((*engine)->detach(*handles).ok());
}

}  // namespace
