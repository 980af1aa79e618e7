// A site that another tracer holds: a kernel uprobe (bpftrace, perf) or a debugger's
// breakpoint is an int3 written over an instruction's first byte. The patcher compares
// the code with the bytes the caller expects (from the file) before it writes anything,
// and refuses a site whose bytes differ, or whose expected bytes already hold such an
// int3 (a caller that read them from memory), with an error that names the other tracer.
// Nothing is written, and the program keeps running its code.
#include <sys/mman.h>

#include <cstdint>
#include <string>

#include <gtest/gtest.h>

#include "race_code.h"

namespace {

using hp::core::apply_patches;
using hp_test::RaceCode;

// Writes `b` at `addr` in RaceCode's page, as a kernel uprobe or a debugger does.
void poke(std::uintptr_t addr, std::uint8_t b) {
  auto* page = reinterpret_cast<void*>(addr & ~std::uintptr_t{4095});
  ASSERT_EQ(mprotect(page, 4096, PROT_READ | PROT_WRITE | PROT_EXEC), 0);
  *reinterpret_cast<volatile std::uint8_t*>(addr) = b;
  ASSERT_EQ(mprotect(page, 4096, PROT_READ | PROT_EXEC), 0);
}

void expect_refused_by_tracer(const hp::core::PatchSite& s) {
  auto r = apply_patches({&s, 1});
  ASSERT_FALSE(r.ok());
  const std::string m = r.error().message();
  EXPECT_NE(m.find("was changed by another tracer (a kernel uprobe or debugger breakpoint); "
                   "detach it first"),
            std::string::npos)
      << m;
  char addr[32];
  std::snprintf(addr, sizeof addr, "0x%lx", (unsigned long)s.addr);
  EXPECT_NE(m.find(addr), std::string::npos) << m;
}

// The tracer's int3 on the first byte, the caller expecting the file's bytes.
TEST(ForeignInt3, SiteWithAnotherTracersInt3IsRefused) {
  RaceCode code(hp_test::short_sled(), 0);
  const auto* f = reinterpret_cast<const std::uint8_t*>(code.f);
  poke(code.f, 0xCC);
  expect_refused_by_tracer(code.attach());
  EXPECT_EQ(f[0], 0xCC);  // nothing written
  EXPECT_EQ(f[1], 0x90);
  // The tracer goes away: the same site patches.
  poke(code.f, 0x66);
  EXPECT_EQ(code.call(), 1);
  hp::core::PatchSite on = code.attach();
  auto a = apply_patches({&on, 1});
  ASSERT_TRUE(a.ok()) << a.error().message();
  EXPECT_EQ(code.call(), 2);
  hp::core::PatchSite off = code.detach();
  auto d = apply_patches({&off, 1});
  ASSERT_TRUE(d.ok()) << d.error().message();
  EXPECT_EQ(code.call(), 1);
  EXPECT_EQ(code.hits.load(), 1u);
}

// An int3 on an instruction inside the displaced bytes (a uprobe at free+3, say).
TEST(ForeignInt3, Int3InsideTheSiteIsRefused) {
  RaceCode code(hp_test::short_sled(), 0);
  poke(code.f + 4, 0xCC);
  expect_refused_by_tracer(code.attach());
  EXPECT_EQ(reinterpret_cast<const std::uint8_t*>(code.f)[4], 0xCC);
  poke(code.f + 4, 0x66);
  EXPECT_EQ(code.call(), 1);
}

// A caller that took the expected bytes from memory, under the tracer: they match the
// code, but hold the int3 at an instruction's start.
TEST(ForeignInt3, ExpectedBytesReadUnderTheTracerAreRefused) {
  RaceCode code(hp_test::short_sled(), 0);
  poke(code.f, 0xCC);
  hp::core::PatchSite on = code.attach();
  std::vector<std::uint8_t> seen = hp_test::short_sled().site;
  seen[0] = 0xCC;
  on.old_bytes = seen;
  expect_refused_by_tracer(on);
  // An int3-mode site over the tracer's int3 (CC over CC) too.
  hp::core::PatchSite one;
  one.addr = code.f;
  one.old_bytes = {0xCC};
  one.new_bytes = {0xCC};
  one.trap_target = code.copy;
  expect_refused_by_tracer(one);
  poke(code.f, 0x66);
  EXPECT_EQ(code.call(), 1);
}

// A tracer that arrives after the patch writes its int3 over the jump: the detach does not
// write over the kernel's breakpoint, and says why.
TEST(ForeignInt3, DetachUnderAnotherTracersInt3IsRefused) {
  RaceCode code(hp_test::short_sled(), 0);
  hp::core::PatchSite on = code.attach();
  ASSERT_TRUE(apply_patches({&on, 1}).ok());
  const auto* f = reinterpret_cast<const std::uint8_t*>(code.f);
  ASSERT_EQ(f[0], 0xE9);
  poke(code.f, 0xCC);
  expect_refused_by_tracer(code.detach());
  EXPECT_EQ(f[0], 0xCC);
  poke(code.f, 0xE9);  // the int3 taken away by hand (a kernel uprobe would put back the
                       // file's byte, 0x66 here, over the jump)
  hp::core::PatchSite off = code.detach();
  auto d = apply_patches({&off, 1});
  ASSERT_TRUE(d.ok()) << d.error().message();
  EXPECT_EQ(code.call(), 1);
}

// hotprobe's own int3-mode site goes away (CC back to the function's byte): allowed.
TEST(ForeignInt3, OwnInt3SiteIsRestored) {
  RaceCode code(hp_test::short_sled(), 0);
  hp::core::PatchSite on;
  on.addr = code.f;
  on.old_bytes = {0x66};
  on.new_bytes = {0xCC};
  on.trap_target = code.copy;
  ASSERT_TRUE(apply_patches({&on, 1}).ok());
  hp::core::PatchSite off;
  off.addr = code.f;
  off.old_bytes = {0xCC};
  off.new_bytes = {0x66};
  off.trap_target = code.copy;
  auto d = apply_patches({&off, 1});
  ASSERT_TRUE(d.ok()) << d.error().message();
  EXPECT_EQ(code.call(), 1);
}

}  // namespace
