// Return probes on `ret` instructions (core/ret_probe.h) through the library, forced for
// C functions with EngineOptions::return_mode = ret_instructions: a function with two rets
// (one reached by a branch to the first byte of its run), results computed right before a
// ret, entry and return handlers together, and a ret that a branch reaches inside its run:
// refused.
#include <atomic>
#include <cstdint>
#include <string>

#include <gtest/gtest.h>

#include "hotprobe/probe.h"

// hp_rm_two(x) = x < 10 ? x + 1 : x + 100, two rets:
//   +0 48 83 ff 0a  cmp rdi, 10        +4 7c 08  jl +0xe
//   +6 48 8d 47 64  lea rax, [rdi+100] +a 0f 1f 00  nop   +d c3 ret   run [+6, +d): before it
//   +e 48 8d 47 01  lea rax, [rdi+1]   +12 c3 ret                      run [+e, +13): with it
// hp_rm_bad(x) = x ? x + 1 : 0, whose ret a branch reaches:
//   +0 31 c0  xor eax, eax  +2 48 85 ff  test rdi, rdi  +5 74 04  je +0xb
//   +7 48 8d 47 01  lea rax, [rdi+1]  +b c3 ret
asm(R"(
  .pushsection .text
  .p2align 4
  .globl hp_rm_two
  .type hp_rm_two, @function
hp_rm_two:
  cmpq $10, %rdi
  jl 1f
  leaq 100(%rdi), %rax
  nopl (%rax)
  ret
1:
  leaq 1(%rdi), %rax
  ret
  .size hp_rm_two, .-hp_rm_two

  .p2align 4
  .globl hp_rm_bad
  .type hp_rm_bad, @function
hp_rm_bad:
  xorl %eax, %eax
  testq %rdi, %rdi
  je 1f
  leaq 1(%rdi), %rax
1:
  ret
  .size hp_rm_bad, .-hp_rm_bad

  .p2align 4
  .globl hp_rm_tiny
  .type hp_rm_tiny, @function
hp_rm_tiny:
  movq %rdi, %rax
  addq $1, %rax
  ret
  .size hp_rm_tiny, .-hp_rm_tiny
  .popsection
)");

extern "C" {
long hp_rm_two(long x);
long hp_rm_bad(long x);
long hp_rm_tiny(long x);
}

namespace {

using hotprobe::Engine;
using hotprobe::Hit;
using hotprobe::ProbeSpec;

struct Tally {
  std::atomic<long> entries{0}, returns{0}, ret_sum{0}, probe_address{0}, data_nonzero{0};
};

void on_entry(Hit& h) {
  static_cast<Tally*>(h.cookie)->entries++;
}
void on_return(Hit& h) {
  auto* t = static_cast<Tally*>(h.cookie);
  t->returns++;
  t->ret_sum += static_cast<long>(h.regs->ret());
  t->probe_address = static_cast<long>(h.probe_address);
  if (!h.data || *h.data != 0) t->data_nonzero++;
}

std::unique_ptr<Engine> engine() {
  hotprobe::EngineOptions options;
  options.return_mode = hotprobe::ReturnMode::ret_instructions;
  auto e = Engine::create(options);
  EXPECT_TRUE(e.ok()) << e.error().message();
  return std::move(e.value());
}

long (*volatile g_two)(long) = hp_rm_two;  // calls the compiler cannot fold

TEST(RetMode, BothRetsOfAFunctionWithTheirResults) {
  auto e = engine();
  Tally t;
  ProbeSpec spec;
  spec.target = ":hp_rm_two";
  spec.on_entry = &on_entry;
  spec.on_return = &on_return;
  spec.cookie = &t;
  auto h = e->attach(spec);
  ASSERT_TRUE(h.ok()) << h.error().message();
  EXPECT_EQ(h->size(), 3u);  // the entry and the two rets
  long want = 0;
  constexpr long kCalls = 2000;
  for (long i = 0; i < kCalls; i++)
    want += g_two(i % 20);
  EXPECT_EQ(t.entries.load(), kCalls);
  EXPECT_EQ(t.returns.load(), kCalls);
  EXPECT_EQ(t.ret_sum.load(), want);
  EXPECT_EQ(t.probe_address.load(), reinterpret_cast<long>(&hp_rm_two));
  EXPECT_EQ(t.data_nonzero.load(), 0);
  ASSERT_TRUE(e->detach(*h).ok());
  g_two(3);
  EXPECT_EQ(t.returns.load(), kCalls) << "a return site is still there";
  EXPECT_EQ(g_two(3), 4);
  EXPECT_EQ(e->stats().consumers, 0u);
}

TEST(RetMode, ARetThatABranchReachesIsRefused) {
  auto e = engine();
  Tally t;
  ProbeSpec spec;
  spec.target = ":hp_rm_bad";
  spec.on_return = &on_return;
  spec.cookie = &t;
  auto h = e->attach(spec);
  ASSERT_FALSE(h.ok());
  const std::string msg(h.error().message());
  EXPECT_NE(msg.find("hp_rm_bad: the `ret` at +0xb cannot take a 5-byte jump"), std::string::npos)
      << msg;
  EXPECT_NE(msg.find("a branch goes to it"), std::string::npos) << msg;
  EXPECT_EQ(e->stats().consumers, 0u);
  EXPECT_EQ(hp_rm_bad(4), 5);
}

// In a batch, all or nothing: the refusal of one spec attaches none.
TEST(RetMode, AllOrNothingBatchWithARefusalAttachesNothing) {
  auto e = engine();
  Tally t;
  ProbeSpec good;
  good.target = ":hp_rm_two";
  good.on_return = &on_return;
  good.cookie = &t;
  ProbeSpec bad = good;
  bad.target = ":hp_rm_bad";
  const ProbeSpec specs[] = {good, bad};
  auto r = e->attach(specs, hotprobe::BatchMode::all_or_nothing);
  ASSERT_EQ(r.size(), 2u);
  EXPECT_FALSE(r[0].ok());
  EXPECT_FALSE(r[1].ok());
  EXPECT_EQ(e->stats().consumers, 0u);
  g_two(1);
  EXPECT_EQ(t.returns.load(), 0);
}

// hp_rm_tiny: +0 48 89 f8 mov rax, rdi; +3 48 83 c0 01 add rax, 1; +7 c3 ret. The entry's
// jump displaces [+0, +7) and the ret's run starts at +3: the two cannot both be patched.
TEST(RetMode, EntryAndRetRunsThatOverlapAreRefused) {
  auto e = engine();
  Tally t;
  ProbeSpec spec;
  spec.target = ":hp_rm_tiny";
  spec.on_entry = &on_entry;
  spec.on_return = &on_return;
  spec.cookie = &t;
  auto h = e->attach(spec);
  ASSERT_FALSE(h.ok());
  const std::string msg(h.error().message());
  EXPECT_NE(msg.find("hp_rm_tiny"), std::string::npos) << msg;
  EXPECT_EQ(e->stats().consumers, 0u);
  EXPECT_EQ(hp_rm_tiny(4), 5);
  // The return probe alone takes the ret.
  spec.on_entry = nullptr;
  h = e->attach(spec);
  ASSERT_TRUE(h.ok()) << h.error().message();
  EXPECT_EQ(hp_rm_tiny(41), 42);
  EXPECT_EQ(t.returns.load(), 1);
  EXPECT_EQ(t.ret_sum.load(), 42);
}

}  // namespace
