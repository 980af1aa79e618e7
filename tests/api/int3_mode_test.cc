// int3 mode through the public API: where a 5-byte jump cannot be placed (a function
// shorter than 5 bytes, a branch back into the bytes a jump would displace) the engine
// falls back to a trap; offsets inside a function work on instruction boundaries and are
// refused, with a message that says why, elsewhere. The targets are written in assembly so
// their bytes (and so the decisions) do not depend on the compiler or the sanitizer.
#include <string>

#include <gtest/gtest.h>

#include "internal_probes.h"

#include "hotprobe/probe.h"

// Byte layouts (checked by InstructionLayoutIsWhatTheTestsAssume below):
//   hp_i3_short:  31 c0     xor eax, eax         +0
//                 c3        ret                  +2
//                 31 c0 c3  (never reached: code of the function, not padding, so
//                            no 2-byte jump may cover the byte after the ret)
//   hp_i3_loop:   31 c0     xor eax, eax         +0   returns rdi (rdi >= 1)
//                 83 c0 01  add eax, 1           +2   <- loop head, jnz target
//                 48 ff cf  dec rdi              +5
//                 75 f8     jnz +2               +8
//                 c3        ret                  +10           (11 bytes)
//   hp_i3_long:   an ordinary function long enough for a jump (a control).
asm(R"(
  .pushsection .text
  .p2align 4
  .globl hp_i3_short
  .type hp_i3_short, @function
hp_i3_short:
  xorl %eax, %eax
  ret
  xorl %eax, %eax
  ret
  .size hp_i3_short, .-hp_i3_short

  .p2align 4
  .globl hp_i3_loop
  .type hp_i3_loop, @function
hp_i3_loop:
  xorl %eax, %eax
1:
  addl $1, %eax
  decq %rdi
  jnz 1b
  ret
  .size hp_i3_loop, .-hp_i3_loop

  .p2align 4
  .globl hp_i3_long
  .type hp_i3_long, @function
hp_i3_long:
  pushq %rbp
  movq %rsp, %rbp
  leaq 1(%rdi), %rax
  popq %rbp
  ret
  .size hp_i3_long, .-hp_i3_long
  .popsection
)");

extern "C" {
long hp_i3_short();
long hp_i3_loop(long n);
long hp_i3_long(long x);
}

namespace {

[[maybe_unused]] ::testing::Environment* const g_install_internal_probes =
    ::testing::AddGlobalTestEnvironment(new hp_test::InternalProbesEnvironment(":hp_i3_long"));

using hotprobe::Engine;
using hotprobe::Errc;
using hotprobe::Hit;
using hotprobe::ProbeSpec;

struct Count {
  long n = 0;  // handlers run on the calling thread: no atomics needed in these tests
  std::uint64_t last_probe_address = 0;
  std::uint64_t last_rip = 0;
};

void count(Hit& h) {
  auto* c = static_cast<Count*>(h.cookie);
  c->n++;
  c->last_probe_address = h.probe_address;
  c->last_rip = h.regs->ip();
}

ProbeSpec spec(std::string target, Count* c) {
  ProbeSpec s;
  s.target = std::move(target);
  s.on_entry = &count;
  s.cookie = c;
  return s;
}

std::uintptr_t addr(const void* f) {
  return reinterpret_cast<std::uintptr_t>(f);
}

TEST(Int3Mode, InstructionLayoutIsWhatTheTestsAssume) {
  const auto* s = reinterpret_cast<const unsigned char*>(&hp_i3_short);
  EXPECT_EQ(s[0], 0x31);
  EXPECT_EQ(s[2], 0xc3);
  EXPECT_EQ(s[3], 0x31);
  const auto* l = reinterpret_cast<const unsigned char*>(&hp_i3_loop);
  EXPECT_EQ(l[2], 0x83);
  EXPECT_EQ(l[8], 0x75);
  EXPECT_EQ(static_cast<signed char>(l[9]), 2 - 10);  // jnz back to +2
  EXPECT_EQ(hp_i3_short(), 0);
  EXPECT_EQ(hp_i3_loop(5), 5);
}

TEST(Int3Mode, ThreeByteFunctionTakesAShortJump) {
  auto e = Engine::create().value();
  Count c;
  const auto before = e->stats();
  auto h = e->attach(spec(":hp_i3_short", &c));
  ASSERT_TRUE(h.ok()) << h.error().message();
  ASSERT_EQ(h->size(), 1u);
  auto st = e->stats();
  EXPECT_EQ(st.sites_jmp - before.sites_jmp, 1u) << "a 2-byte jump to a pad in the padding";
  EXPECT_EQ(st.sites_int3 - before.sites_int3, 0u);
  EXPECT_EQ(reinterpret_cast<const unsigned char*>(&hp_i3_short)[0], 0xEB);
  for (int i = 0; i < 1000; i++)
    ASSERT_EQ(hp_i3_short(), 0);
  EXPECT_EQ(c.n, 1000);
  EXPECT_EQ(c.last_probe_address, addr(reinterpret_cast<const void*>(&hp_i3_short)));
  EXPECT_EQ(c.last_rip, c.last_probe_address);
  ASSERT_TRUE(e->detach(*h).ok());
  EXPECT_EQ(e->stats().sites_jmp, before.sites_jmp);
  EXPECT_EQ(hp_i3_short(), 0);
  EXPECT_EQ(c.n, 1000);
  // The original bytes are back.
  EXPECT_EQ(reinterpret_cast<const unsigned char*>(&hp_i3_short)[0], 0x31);
}

TEST(Int3Mode, OneByteInstructionFallsBackToInt3) {
  auto e = Engine::create().value();
  Count c;
  const auto before = e->stats();
  auto h = e->attach(spec(":hp_i3_short+2", &c));  // the `ret`: 1 byte, no jump fits
  ASSERT_TRUE(h.ok()) << h.error().message();
  auto st = e->stats();
  EXPECT_EQ(st.sites_int3 - before.sites_int3, 1u);
  EXPECT_EQ(st.sites_jmp - before.sites_jmp, 0u);
  for (int i = 0; i < 1000; i++)
    ASSERT_EQ(hp_i3_short(), 0);
  EXPECT_EQ(c.n, 1000);
  ASSERT_TRUE(e->detach(*h).ok());
  EXPECT_EQ(e->stats().sites_int3, before.sites_int3);
  EXPECT_EQ(reinterpret_cast<const unsigned char*>(&hp_i3_short)[2], 0xc3);
}

TEST(Int3Mode, AllowInt3FalseOnAShortFunctionIsRefusedAndSaysWhy) {
  auto e = Engine::create().value();
  Count c;
  ProbeSpec s = spec(":hp_i3_short+2", &c);
  s.allow_int3 = false;
  const auto before = e->stats();
  auto h = e->attach(s);
  ASSERT_FALSE(h.ok());
  EXPECT_EQ(h.error().code(), Errc::not_relocatable) << h.error().message();
  const std::string& m = h.error().message();
  EXPECT_NE(m.find("hp_i3_short"), std::string::npos) << m;
  EXPECT_NE(m.find("int3"), std::string::npos) << "should say int3 mode is off: " << m;
  EXPECT_NE(m.find("short"), std::string::npos) << "should say the function is too short: " << m;
  auto st = e->stats();
  EXPECT_EQ(st.sites_int3, before.sites_int3);
  EXPECT_EQ(st.sites_jmp, before.sites_jmp);
  EXPECT_EQ(st.consumers, 0u);
  EXPECT_EQ(hp_i3_short(), 0);
  EXPECT_EQ(c.n, 0);
}

TEST(Int3Mode, BranchIntoTheDisplacedBytesTakesAShortJump) {
  auto e = Engine::create().value();
  Count c;
  // No 5-byte jump: the jnz at +8 lands on +2, inside the 5 bytes it would take. The
  // first instruction (2 bytes) takes a short jump, with int3 mode off as well.
  ProbeSpec strict = spec(":hp_i3_loop", &c);
  strict.allow_int3 = false;
  const auto before = e->stats();
  auto h = e->attach(strict);
  ASSERT_TRUE(h.ok()) << h.error().message();
  EXPECT_EQ(e->stats().sites_jmp - before.sites_jmp, 1u);
  EXPECT_EQ(e->stats().sites_int3 - before.sites_int3, 0u);
  long total = 0;
  for (long n = 1; n <= 50; n++)
    total += hp_i3_loop(n);
  EXPECT_EQ(total, 50 * 51 / 2);
  EXPECT_EQ(c.n, 50);  // once per call: the entry is not the loop head
  ASSERT_TRUE(e->detach(*h).ok());
  EXPECT_EQ(hp_i3_loop(3), 3);
  EXPECT_EQ(c.n, 50);
}

class MidFunction : public ::testing::TestWithParam<bool> {};

TEST_P(MidFunction, OffsetOnABoundaryWorks) {
  const bool int3 = GetParam();
  auto e = Engine::create().value();
  Count c;
  // +2 is the loop head: a jump there displaces [+2, +8), and the jnz lands on its first
  // byte (allowed), so jmp mode works; every iteration hits the probe.
  ProbeSpec s = spec(":hp_i3_loop+2", &c);
  s.force_int3 = int3;
  s.allow_int3 = int3;
  const auto before = e->stats();
  auto h = e->attach(s);
  ASSERT_TRUE(h.ok()) << h.error().message();
  auto st = e->stats();
  EXPECT_EQ(st.sites_int3 - before.sites_int3, int3 ? 1u : 0u);
  EXPECT_EQ(st.sites_jmp - before.sites_jmp, int3 ? 0u : 1u);
  EXPECT_EQ(hp_i3_loop(7), 7);
  EXPECT_EQ(c.n, 7);
  EXPECT_EQ(hp_i3_loop(100), 100);
  EXPECT_EQ(c.n, 107);
  EXPECT_EQ(c.last_probe_address, addr(reinterpret_cast<const void*>(&hp_i3_loop)) + 2);
  EXPECT_EQ(c.last_rip, c.last_probe_address);
  ASSERT_TRUE(e->detach(*h).ok());
  EXPECT_EQ(hp_i3_loop(4), 4);
  EXPECT_EQ(c.n, 107);

  // And on an ordinary function, after its push rbp.
  Count d;
  ProbeSpec l = spec(":hp_i3_long+1", &d);
  l.force_int3 = int3;
  auto hl = e->attach(l);
  ASSERT_TRUE(hl.ok()) << hl.error().message();
  EXPECT_EQ(hp_i3_long(41), 42);
  EXPECT_EQ(d.n, 1);
  EXPECT_EQ(d.last_probe_address, addr(reinterpret_cast<const void*>(&hp_i3_long)) + 1);
  ASSERT_TRUE(e->detach(*hl).ok());
}

TEST_P(MidFunction, OffsetInsideAnInstructionIsRefused) {
  const bool int3 = GetParam();
  auto e = Engine::create().value();
  Count c;
  for (const char* target : {":hp_i3_loop+3", ":hp_i3_loop+4", ":hp_i3_loop+9", ":hp_i3_long+2"}) {
    ProbeSpec s = spec(target, &c);
    s.force_int3 = int3;
    auto h = e->attach(s);
    ASSERT_FALSE(h.ok()) << target << " was accepted";
    EXPECT_EQ(h.error().code(), Errc::not_on_boundary) << target << ": " << h.error().message();
    const std::string& m = h.error().message();
    const std::string off = std::string(target).substr(std::string(target).find('+'));
    EXPECT_NE(m.find(off.substr(0, 1) + "0x" + off.substr(1)), std::string::npos)
        << "should name the offset: " << m;
    EXPECT_TRUE(m.find("boundary") != std::string::npos || m.find("inside") != std::string::npos)
        << "should say it is not an instruction boundary: " << m;
  }
  EXPECT_EQ(e->stats().consumers, 0u);
  EXPECT_EQ(hp_i3_loop(3), 3);
  EXPECT_EQ(hp_i3_long(1), 2);
  EXPECT_EQ(c.n, 0);
}

INSTANTIATE_TEST_SUITE_P(JmpAndInt3, MidFunction, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "int3" : "jmp"; });

TEST(Int3Mode, ForcedInt3AndJmpConsumersShareTheSite) {
  // The first consumer decides the mode; a second one joins the same site.
  auto e = Engine::create().value();
  Count a, b;
  ProbeSpec sa = spec(":hp_i3_long", &a);
  sa.force_int3 = true;
  const auto before = e->stats();
  auto ha = e->attach(sa);
  ASSERT_TRUE(ha.ok()) << ha.error().message();
  auto hb = e->attach(spec(":hp_i3_long", &b));
  ASSERT_TRUE(hb.ok()) << hb.error().message();
  EXPECT_EQ(e->stats().sites_int3 - before.sites_int3, 1u);
  EXPECT_EQ(e->stats().sites_jmp - before.sites_jmp, 0u);
  EXPECT_EQ(hp_i3_long(1), 2);
  EXPECT_EQ(a.n, 1);
  EXPECT_EQ(b.n, 1);
  ASSERT_TRUE(e->detach(*ha).ok());
  EXPECT_EQ(hp_i3_long(1), 2);
  EXPECT_EQ(a.n, 1);
  EXPECT_EQ(b.n, 2);
  ASSERT_TRUE(e->detach(*hb).ok());
  EXPECT_EQ(e->stats().sites_int3, before.sites_int3);
}

}  // namespace
