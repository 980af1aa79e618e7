// A batch whose specs name one place more than once builds one site for it, with every
// consumer on it (the batch finds the sites it has just built by key).
#include <gtest/gtest.h>

#include <vector>

#include "hotprobe/probe.h"

extern "C" {
__attribute__((noinline)) int hp_bs_first(int x) {
  asm volatile("");
  return x * 3 + 1;
}
__attribute__((noinline)) int hp_bs_second(int x) {
  asm volatile("");
  return x * 5 + 2;
}
}

namespace {

using hotprobe::Engine;
using hotprobe::Handle;
using hotprobe::Hit;
using hotprobe::ProbeSpec;

ProbeSpec counting(const char* target, long* count) {
  ProbeSpec s;
  s.target = target;
  s.on_entry = [](Hit& h) { ++*static_cast<long*>(h.cookie); };
  s.cookie = count;
  return s;
}

TEST(BatchShare, SpecsOfOneBatchNamingOnePlaceShareItsSite) {
  auto e = Engine::create();
  ASSERT_TRUE(e.ok()) << e.error().message();
  long a = 0, b = 0, c = 0, d = 0;
  // hp_bs_first three times (by name twice, and by a glob), hp_bs_second once.
  std::vector<ProbeSpec> specs{counting(":hp_bs_first", &a), counting(":hp_bs_second", &b),
                               counting(":hp_bs_first", &c), counting(":hp_bs_fir*", &d)};
  const auto before = (*e)->stats();
  auto r = (*e)->attach(specs, hotprobe::BatchMode::all_or_nothing);
  ASSERT_EQ(r.size(), specs.size());
  std::vector<Handle> handles;
  for (auto& one : r) {
    ASSERT_TRUE(one.ok()) << one.error().message();
    ASSERT_EQ(one->size(), 1u);
    handles.push_back(one->front());
  }
  const auto after = (*e)->stats();
  EXPECT_EQ(after.sites_jmp + after.sites_int3 - before.sites_jmp - before.sites_int3, 2u);
  EXPECT_EQ(after.consumers - before.consumers, 4u);
  EXPECT_EQ(hp_bs_first(1), 4);
  EXPECT_EQ(hp_bs_second(1), 7);
  EXPECT_EQ(a, 1);
  EXPECT_EQ(b, 1);
  EXPECT_EQ(c, 1);
  EXPECT_EQ(d, 1);
  ASSERT_TRUE((*e)->detach(handles).ok());
  EXPECT_EQ(hp_bs_first(2), 7);
  EXPECT_EQ(a, 1);
  EXPECT_EQ(d, 1);
}

}  // namespace
