// Displacement plans: boundaries, the 5-byte rule, and every refusal, each with the
// instruction text in the message (funchook's TOO_SHORT_INSTRUCTIONS, FOUND_BACK_JUMP...).
#include "arch/x86_64/plan.h"

#include <gtest/gtest.h>

#include <vector>

namespace hp::arch {
namespace {

using Bytes = std::vector<std::uint8_t>;
constexpr std::uint64_t kFn = 0x401000;

DisplacementPlan must_plan(const Bytes& fn, std::uint64_t offset) {
  auto r = plan_displacement(fn, kFn, offset);
  EXPECT_TRUE(r.ok()) << (r.ok() ? "" : r.error().message());
  return r.ok() ? r.value() : DisplacementPlan{};
}

Error must_refuse(const Bytes& fn, std::uint64_t offset, Errc code) {
  auto r = plan_displacement(fn, kFn, offset);
  EXPECT_FALSE(r.ok());
  if (r.ok()) return {};
  EXPECT_EQ(r.error().code(), code) << r.error().message();
  return r.error();
}

// A typical prologue:
//   +0  55                 push rbp
//   +1  48 89 e5           mov rbp, rsp
//   +4  48 83 ec 10        sub rsp, 0x10
//   +8  89 7d fc           mov [rbp-4], edi
//   +b  c9                 leave
//   +c  c3                 ret
const Bytes kPrologue{0x55, 0x48, 0x89, 0xe5, 0x48, 0x83, 0xec, 0x10, 0x89, 0x7d, 0xfc, 0xc9, 0xc3};

TEST(ArchPlan, WholeInstructionsUntilFiveBytes) {
  DisplacementPlan p = must_plan(kPrologue, 0);
  EXPECT_EQ(p.patch_address, kFn);
  EXPECT_EQ(p.probe_address, kFn);
  EXPECT_EQ(p.length, 8u);  // push + mov + sub: 1 + 3 + 4
  ASSERT_EQ(p.insns.size(), 3u);
  EXPECT_EQ(hp::arch::text_of(p.insns[2]), "sub rsp, 0x10");
  EXPECT_EQ(p.original, Bytes(kPrologue.begin(), kPrologue.begin() + 8));
  EXPECT_TRUE(p.at_entry);
  EXPECT_FALSE(p.flags_live);
}

TEST(ArchPlan, MidFunctionFlagsAreLive) {
  DisplacementPlan p = must_plan(kPrologue, 4);
  EXPECT_EQ(p.patch_offset, 4u);
  EXPECT_EQ(p.length, 7u);  // sub + mov
  EXPECT_FALSE(p.at_entry);
  EXPECT_TRUE(p.flags_live);
}

TEST(ArchPlan, NotOnBoundaryNamesTheInstruction) {
  Error e = must_refuse(kPrologue, 2, Errc::not_on_boundary);
  EXPECT_NE(e.message().find("inside `mov rbp, rsp` at +0x1"), std::string::npos) << e.message();
  EXPECT_TRUE(check_boundary(kPrologue, kFn, 4).ok());
  EXPECT_EQ(check_boundary(kPrologue, kFn, 5).error().code(), Errc::not_on_boundary);
  EXPECT_EQ(check_boundary(kPrologue, kFn, 99).error().code(), Errc::invalid_argument);
}

TEST(ArchPlan, TooShort) {
  // +0 31 c0  xor eax, eax; +2 c3 ret: 3 bytes
  Error e = must_refuse({0x31, 0xc0, 0xc3}, 0, Errc::not_relocatable);
  EXPECT_NE(e.message().find("too short"), std::string::npos) << e.message();
  // From +8 of the prologue: mov (3) + leave (1) + ret (1) = 5 bytes, but ret ends the flow
  // at exactly 5: allowed. From +b: leave + ret = 2 bytes.
  EXPECT_TRUE(plan_displacement(kPrologue, kFn, 8).ok());
  e = must_refuse(kPrologue, 0xb, Errc::not_relocatable);
  EXPECT_NE(e.message().find("`ret`"), std::string::npos) << e.message();
}

TEST(ArchPlan, RetBeforeFiveBytesIsRefused) {
  // +0 31 c0 xor eax, eax; +2 c3 ret; +3 90 x5 (padding that belongs to the symbol)
  Error e = must_refuse({0x31, 0xc0, 0xc3, 0x90, 0x90, 0x90, 0x90, 0x90}, 0, Errc::not_relocatable);
  EXPECT_NE(e.message().find("`ret` at +0x2 ends the flow"), std::string::npos) << e.message();
}

TEST(ArchPlan, IndirectJmpAndInt3BeforeFiveBytesAreRefused) {
  // +0 ff e0 jmp rax; +2 90 x4
  Error e = must_refuse({0xff, 0xe0, 0x90, 0x90, 0x90, 0x90}, 0, Errc::not_relocatable);
  EXPECT_NE(e.message().find("`jmp rax`"), std::string::npos) << e.message();
  // +0 90 nop; +1 cc int3; +2 90 x4
  e = must_refuse({0x90, 0xcc, 0x90, 0x90, 0x90, 0x90}, 0, Errc::not_relocatable);
  EXPECT_NE(e.message().find("`int3` at +0x1"), std::string::npos) << e.message();
}

TEST(ArchPlan, CallInTheMiddleIsRefused) {
  // +0 e8 00 00 00 00 call; +5 c3 ret: call ends at exactly 5 bytes: allowed, it is last
  EXPECT_EQ(must_plan({0xe8, 0x00, 0x00, 0x00, 0x00, 0xc3}, 0).length, 5u);
  // +0 90 nop; +1 ff d0 call rax; +3 90 x4: the range would run past the call
  Error e = must_refuse({0x90, 0xff, 0xd0, 0x90, 0x90, 0x90, 0x90}, 0, Errc::not_relocatable);
  EXPECT_NE(e.message().find("past `call rax` at +0x1"), std::string::npos) << e.message();
  EXPECT_NE(e.message().find("return address"), std::string::npos);
}

TEST(ArchPlan, BackJumpIntoTheDisplacedBytesIsFound) {
  // +0 31 c0       xor eax, eax
  // +2 ff c0       inc eax            <- target, inside [+0, +6)
  // +4 ff c8       dec eax
  // +6 83 f8 0a    cmp eax, 10
  // +9 75 f7       jne +2             (FOUND_BACK_JUMP)
  // +b c3          ret
  const Bytes fn{0x31, 0xc0, 0xff, 0xc0, 0xff, 0xc8, 0x83, 0xf8, 0x0a, 0x75, 0xf7, 0xc3};
  Error e = must_refuse(fn, 0, Errc::not_relocatable);
  EXPECT_NE(e.message().find("`jnz 0x0000000000401002` at +0x9 branches to +0x2"),
            std::string::npos)
      << e.message();
  EXPECT_NE(e.message().find("[+0x0, +0x6)"), std::string::npos) << e.message();
  // A branch to the first displaced byte is fine: it enters the patched jump.
  // +9 75 f5: jne +0
  Bytes to_start = fn;
  to_start[10] = 0xf5;
  EXPECT_TRUE(plan_displacement(to_start, kFn, 0).ok());
}

TEST(ArchPlan, ForwardJumpFromInsideTheRangeIntoItIsFound) {
  // +0 74 01   je +3      (into the displaced range, from inside it)
  // +2 90      nop
  // +3 90      nop
  // +4 90      nop
  // +5 c3      ret
  Error e = must_refuse({0x74, 0x01, 0x90, 0x90, 0x90, 0xc3}, 0, Errc::not_relocatable);
  EXPECT_NE(e.message().find("branches to +0x3"), std::string::npos) << e.message();
}

TEST(ArchPlan, AddressTakenInsideTheRangeIsFound) {
  // +0 48 8d 05 f9 ff ff ff   lea rax, [rip-7]  -> +0: the start, fine
  // +7 ff e0                  jmp rax
  EXPECT_TRUE(
      plan_displacement(Bytes{0x48, 0x8d, 0x05, 0xf9, 0xff, 0xff, 0xff, 0xff, 0xe0}, kFn, 0).ok());
  // +0 90 x6                  nop (the displaced range is +0..+5)
  // +6 48 8d 05 f6 ff ff ff   lea rax, [rip-10] -> +3
  // +d ff e0                  jmp rax
  Error e = must_refuse(
      {0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x48, 0x8d, 0x05, 0xf6, 0xff, 0xff, 0xff, 0xff, 0xe0}, 0,
      Errc::not_relocatable);
  EXPECT_NE(e.message().find("takes the address +0x3"), std::string::npos) << e.message();
}

TEST(ArchPlan, UndecodableBytesInTheFunction) {
  // +0..+7 prologue; +8 06 (invalid): the scan cannot finish
  Bytes fn(kPrologue.begin(), kPrologue.begin() + 8);
  fn.push_back(0x06);
  Error e = must_refuse(fn, 0, Errc::not_relocatable);
  EXPECT_NE(e.message().find("cannot scan the whole function"), std::string::npos) << e.message();
  // A probe past the undecodable byte cannot know its boundary.
  fn.push_back(0x90);
  e = must_refuse(fn, 9, Errc::not_on_boundary);
}

TEST(ArchPlan, Endbr64AtEntryIsKept) {
  // +0 f3 0f 1e fa endbr64; then the prologue
  Bytes fn{0xf3, 0x0f, 0x1e, 0xfa};
  fn.insert(fn.end(), kPrologue.begin(), kPrologue.end());
  DisplacementPlan p = must_plan(fn, 0);
  EXPECT_EQ(p.probe_address, kFn);
  EXPECT_EQ(p.patch_address, kFn + 4);
  EXPECT_EQ(p.patch_offset, 4u);
  EXPECT_EQ(p.length, 8u);
  EXPECT_TRUE(p.at_entry);
  EXPECT_FALSE(p.flags_live);
  // Asking for +4 directly is the same entry state.
  EXPECT_FALSE(must_plan(fn, 4).flags_live);
  // endbr64 alone is too short.
  EXPECT_EQ(plan_displacement(Bytes{0xf3, 0x0f, 0x1e, 0xfa}, kFn, 0).error().code(),
            Errc::not_relocatable);
}

TEST(ArchPlan, Int3ModeTakesAnyBoundary) {
  // +b c9 leave: too short for jmp mode, fine for int3 mode
  auto p = plan_int3(kPrologue, kFn, 0xb);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->original, Bytes{0xc9});
  EXPECT_TRUE(p->flags_live);
  EXPECT_EQ(plan_int3(kPrologue, kFn, 2).error().code(), Errc::not_on_boundary);
  auto held = plan_int3(Bytes{0xcc, 0xc3}, kFn, 0);
  EXPECT_EQ(held.error().code(), Errc::not_relocatable);
  // A function that starts with int3 holds someone else's breakpoint (a kernel uprobe).
  EXPECT_NE(held.error().message().find("kernel uprobe"), std::string::npos)
      << held.error().message();
}

}  // namespace
}  // namespace hp::arch
