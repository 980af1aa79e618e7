// ProbeSpec::patch: one setting for how a probe's bytes are patched, and the older
// allow_int3/force_int3 pair read only where it does not contradict itself.
#include <string>

#include <gtest/gtest.h>

#include "hotprobe/probe.h"

// A function whose first instruction is one byte, followed by more of its own code: no
// jump fits, not even a 2-byte one (the byte after the ret is not padding).
asm(R"(
        .text
        .globl  hp_pm_tiny
        .type   hp_pm_tiny, @function
        .p2align 4
hp_pm_tiny:
        ret
        ud2
        .size   hp_pm_tiny, . - hp_pm_tiny
)");
extern "C" void hp_pm_tiny();
void (*volatile hp_pm_tiny_ptr)() = hp_pm_tiny;

extern "C" __attribute__((noinline, used)) long hp_pm_work(long a) {
  asm volatile("" : "+r"(a));
  return a * 7 + 1;
}
long (*volatile hp_pm_work_ptr)(long) = hp_pm_work;

namespace {

using hotprobe::Engine;
using hotprobe::PatchMode;
using hotprobe::ProbeSpec;

long g_hits = 0;
void count(hotprobe::Hit&) {
  g_hits++;
}

ProbeSpec spec(const char* target) {
  ProbeSpec s;
  s.target = target;
  s.on_entry = &count;
  return s;
}

std::unique_ptr<Engine> engine() {
  auto e = Engine::create();
  EXPECT_TRUE(e.ok());
  return std::move(e.value());
}

TEST(PatchMode, Int3AndJumpOnlyChooseTheSiteMode) {
  auto e = engine();
  for (PatchMode m : {PatchMode::int3, PatchMode::jump_only}) {
    ProbeSpec s = spec(":hp_pm_work");
    s.patch = m;
    const auto before = e->stats();
    auto h = e->attach(s);
    ASSERT_TRUE(h.ok()) << h.error().message();
    const auto after = e->stats();
    EXPECT_EQ(after.sites_int3 - before.sites_int3, m == PatchMode::int3 ? 1u : 0u);
    EXPECT_EQ(after.sites_jmp - before.sites_jmp, m == PatchMode::jump_only ? 1u : 0u);
    g_hits = 0;
    EXPECT_EQ(hp_pm_work_ptr(3), 22);
    EXPECT_EQ(g_hits, 1);
    ASSERT_TRUE(e->detach(*h).ok());
  }
}

TEST(PatchMode, JumpOnlyWhereNoJumpFitsIsRefused) {
  auto e = engine();
  ProbeSpec s = spec(":hp_pm_tiny");
  s.patch = PatchMode::jump_only;
  auto h = e->attach(s);
  ASSERT_FALSE(h.ok());
  EXPECT_NE(h.error().message().find("int3 mode is disabled"), std::string::npos)
      << h.error().message();
  s.patch = PatchMode::automatic;  // an int3 then
  const auto before = e->stats();
  h = e->attach(s);
  ASSERT_TRUE(h.ok()) << h.error().message();
  EXPECT_EQ(e->stats().sites_int3 - before.sites_int3, 1u);
  g_hits = 0;
  hp_pm_tiny_ptr();
  EXPECT_EQ(g_hits, 1);
  ASSERT_TRUE(e->detach(*h).ok());
}

TEST(PatchMode, ContradictoryOlderFlagsAreRefused) {
  auto e = engine();
  ProbeSpec s = spec(":hp_pm_work");
  s.force_int3 = true;
  s.allow_int3 = false;
  auto h = e->attach(s);
  ASSERT_FALSE(h.ok());
  EXPECT_EQ(h.error().code(), hotprobe::Errc::invalid_argument);
  EXPECT_NE(h.error().message().find("PatchMode::int3"), std::string::npos) << h.error().message();
  // `patch` set: the older flags are not read.
  s.patch = PatchMode::int3;
  const auto before = e->stats();
  h = e->attach(s);
  ASSERT_TRUE(h.ok()) << h.error().message();
  EXPECT_EQ(e->stats().sites_int3 - before.sites_int3, 1u);
  ASSERT_TRUE(e->detach(*h).ok());
}

}  // namespace
