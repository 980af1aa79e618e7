// A site's original bytes come from the module's file: code that another tracer changed
// in memory (a kernel uprobe's or a debugger's int3, any other byte) is refused with the
// "changed by another tracer" message instead of being copied into a trampoline, in jmp,
// short-jump and int3 mode alike. The fixture's bytes are changed with mprotect and a
// write, as a debugger's poke would.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <string>

#include <gtest/gtest.h>

#include "../api/internal_probes.h"
#include "hotprobe/probe.h"

// hp_fb_long:  b8 44 33 22 11  mov eax, 0x11223344    +0 (a 5-byte jump fits)
//              83 c0 01        add eax, 1             +5
//              c3              ret                    +8
// hp_fb_short: 66 90           xchg ax, ax            +0 (too short for 5 bytes)
//              31 c0           xor eax, eax           +2
//              c3              ret                    +4
// hp_fb_pair:  66 90           xchg ax, ax            +0 (a 5-byte jump takes two)
//              83 c0 01        add eax, 1             +2
//              83 c0 01        add eax, 1             +5
//              c3              ret                    +8
asm(R"(
  .pushsection .text
  .p2align 4
  .globl hp_fb_long
  .type hp_fb_long, @function
hp_fb_long:
  .cfi_startproc
  movl $0x11223344, %eax
  addl $1, %eax
  ret
  .cfi_endproc
  .size hp_fb_long, .-hp_fb_long

  .p2align 4
  .globl hp_fb_short
  .type hp_fb_short, @function
hp_fb_short:
  .cfi_startproc
  xchgw %ax, %ax
  xorl %eax, %eax
  ret
  .cfi_endproc
  .size hp_fb_short, .-hp_fb_short

  .p2align 4
  .globl hp_fb_pair
  .type hp_fb_pair, @function
hp_fb_pair:
  .cfi_startproc
  xchgw %ax, %ax
  addl $1, %eax
  addl $1, %eax
  ret
  .cfi_endproc
  .size hp_fb_pair, .-hp_fb_pair
  .popsection
)");

extern "C" {
long hp_fb_long();
long hp_fb_short();
long hp_fb_pair();
}

namespace {

[[maybe_unused]] ::testing::Environment* const g_install_internal_probes =
    ::testing::AddGlobalTestEnvironment(new hp_test::InternalProbesEnvironment(":hp_fb_long"));

using hotprobe::Engine;
using hotprobe::Hit;
using hotprobe::ProbeSpec;

long g_hits = 0;

ProbeSpec spec(std::string target, bool int3 = false) {
  ProbeSpec s;
  s.target = std::move(target);
  s.on_entry = [](Hit&) { g_hits++; };
  if (int3) s.patch = hotprobe::PatchMode::int3;
  return s;
}

// Writes `b` at `at` in this program's code, as a debugger pokes it; gives the old byte.
// Not instrumented by TSan: code has no shadow to write.
__attribute__((no_sanitize("thread"))) std::uint8_t poke(const void* at, std::uint8_t b) {
  const auto a = reinterpret_cast<std::uintptr_t>(at);
  const long page = sysconf(_SC_PAGESIZE);
  void* p = reinterpret_cast<void*>(a & ~static_cast<std::uintptr_t>(page - 1));
  EXPECT_EQ(mprotect(p, static_cast<std::size_t>(page), PROT_READ | PROT_WRITE | PROT_EXEC), 0);
  auto* q = reinterpret_cast<volatile std::uint8_t*>(a);
  const std::uint8_t old = *q;
  *q = b;
  EXPECT_EQ(mprotect(p, static_cast<std::size_t>(page), PROT_READ | PROT_EXEC), 0);
  __builtin___clear_cache(reinterpret_cast<char*>(a), reinterpret_cast<char*>(a + 1));
  return old;
}

const std::uint8_t* bytes(long (*f)()) {
  return reinterpret_cast<const std::uint8_t*>(f);
}

// Attaching `target` (in `mode`) with the byte at `f + off` changed to `b` is refused
// with the message, and the code keeps the changed byte; with the file's byte back it
// attaches.
void refused_while_changed(long (*f)(), const std::string& target, unsigned off, std::uint8_t b,
                           bool int3) {
  auto e = Engine::create().value();
  const auto before = e->stats();
  const std::uint8_t old = poke(bytes(f) + off, b);
  auto h = e->attach(spec(target, int3));
  ASSERT_FALSE(h.ok()) << target << " attached over a changed byte";
  const std::string& m = h.error().message();
  EXPECT_NE(m.find("changed by another tracer"), std::string::npos) << m;
  EXPECT_NE(m.find("detach it first"), std::string::npos) << m;
  EXPECT_EQ(e->stats().sites_jmp, before.sites_jmp);
  EXPECT_EQ(e->stats().sites_int3, before.sites_int3);
  EXPECT_EQ(bytes(f)[off], b) << "hotprobe wrote over the other tracer's byte";
  poke(bytes(f) + off, old);
  auto again = e->attach(spec(target, int3));
  ASSERT_TRUE(again.ok()) << again.error().message();
  ASSERT_TRUE(e->detach(*again).ok());
}

TEST(FileBytes, InstructionLayoutIsWhatTheTestsAssume) {
  EXPECT_EQ(bytes(&hp_fb_long)[0], 0xb8);
  EXPECT_EQ(bytes(&hp_fb_long)[5], 0x83);
  EXPECT_EQ(bytes(&hp_fb_short)[0], 0x66);
  EXPECT_EQ(bytes(&hp_fb_short)[2], 0x31);
  EXPECT_EQ(hp_fb_long(), 0x11223345);
  EXPECT_EQ(hp_fb_short(), 0);
}

// The debugger changed an immediate (no int3 anywhere): only the file shows it.
TEST(FileBytes, AChangedImmediateIsRefusedInJmpMode) {
  refused_while_changed(&hp_fb_long, ":hp_fb_long", 2, 0x99, false);
}

TEST(FileBytes, AKernelUprobesInt3IsRefusedInJmpMode) {
  refused_while_changed(&hp_fb_long, ":hp_fb_long", 0, 0xCC, false);
}

TEST(FileBytes, AChangedByteIsRefusedInInt3Mode) {
  refused_while_changed(&hp_fb_long, ":hp_fb_long", 1, 0x45, true);
}

TEST(FileBytes, AChangedByteIsRefusedForAShortJump) {
  refused_while_changed(&hp_fb_short, ":hp_fb_short", 1, 0x91, false);
}

// Another tracer's int3 on the second instruction: a 5-byte jump that would copy it is
// not placed; the short jump relocates only the first instruction (the file's bytes)
// and leaves the other tracer's breakpoint where it is. Where the 5-byte jump's bytes
// are all the file's, it is placed as usual.
TEST(FileBytes, AnotherTracersInt3AfterTheCopiedBytesStaysInPlace) {
  auto e = Engine::create().value();
  auto before = e->stats();
  std::uint8_t old = poke(bytes(&hp_fb_pair) + 2, 0xCC);
  auto h = e->attach(spec(":hp_fb_pair"));
  ASSERT_TRUE(h.ok()) << h.error().message();
  EXPECT_EQ(e->stats().sites_jmp - before.sites_jmp, 1u);
  EXPECT_EQ(bytes(&hp_fb_pair)[0], 0xEB) << "a 2-byte jump over the first instruction only";
  EXPECT_EQ(bytes(&hp_fb_pair)[2], 0xCC);
  ASSERT_TRUE(e->detach(*h).ok());
  poke(bytes(&hp_fb_pair) + 2, old);
  (void)hp_fb_pair();  // runs as before (returns its eax + 2)

  before = e->stats();
  old = poke(bytes(&hp_fb_long) + 5, 0xCC);
  h = e->attach(spec(":hp_fb_long"));
  ASSERT_TRUE(h.ok()) << h.error().message();
  EXPECT_EQ(bytes(&hp_fb_long)[0], 0xE9) << "the 5-byte jump takes only the first instruction";
  EXPECT_EQ(bytes(&hp_fb_long)[5], 0xCC);
  ASSERT_TRUE(e->detach(*h).ok());
  poke(bytes(&hp_fb_long) + 5, old);
  EXPECT_EQ(hp_fb_long(), 0x11223345);
}

}  // namespace
