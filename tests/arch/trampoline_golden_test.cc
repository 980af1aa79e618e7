// Golden bytes for the patch plans and the fixed parts of the generated trampolines,
// annotated with assembly (STYLE.md item 9).
#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

#include "arch/x86_64/fuzz.h"
#include "arch/x86_64/trampoline.h"
#include "hotprobe/regs.h"

namespace hp::arch {
namespace {

using Bytes = std::vector<std::uint8_t>;
constexpr std::uint64_t kFn = 0x1000'0000;

// +0 55 push rbp; +1 48 89 e5 mov rbp, rsp; +4 48 83 ec 10 sub rsp, 16; +8 c9 leave; +9 c3 ret
const Bytes kFnBytes{0x55, 0x48, 0x89, 0xe5, 0x48, 0x83, 0xec, 0x10, 0xc9, 0xc3};

DisplacementPlan plan_at(std::uint64_t offset) {
  auto p = plan_displacement(kFnBytes, kFn, offset);
  EXPECT_TRUE(p.ok());
  return p.value();
}

TEST(ArchRegsLayout, MatchesWhatTheTrampolinesWrite) {
  using hotprobe::Regs;
  EXPECT_EQ(offsetof(Regs, rax), 0u);
  EXPECT_EQ(offsetof(Regs, rcx), 8u);
  EXPECT_EQ(offsetof(Regs, r11), 64u);
  EXPECT_EQ(offsetof(Regs, rbx), 72u);
  EXPECT_EQ(offsetof(Regs, r15), 112u);
  EXPECT_EQ(offsetof(Regs, rflags), 120u);
  EXPECT_EQ(offsetof(Regs, rsp), 128u);
  EXPECT_EQ(offsetof(Regs, rip), 136u);
  EXPECT_EQ(sizeof(Regs) % 16, 0u);  // the frame keeps the call 16-byte aligned
}

TEST(ArchPatchGolden, JmpPatchBytesAndSteps) {
  DisplacementPlan p = plan_at(0);  // 8 bytes: push, mov, sub
  // kFn: e9 fb 0f 00 00       jmp kFn+0x1000
  //      cc cc cc             int3 padding
  auto bytes = make_jmp_patch_bytes(p.patch_address, p.length, kFn + 0x1000);
  ASSERT_TRUE(bytes.ok());
  EXPECT_EQ(bytes.value(), (Bytes{0xe9, 0xfb, 0x0f, 0x00, 0x00, 0xcc, 0xcc, 0xcc}));

  auto plan = make_jmp_patch_plan(p, kFn + 0x1000);
  ASSERT_TRUE(plan.ok());
  ASSERT_EQ(plan->steps.size(), 3u);
  // 1: int3 on the first byte
  EXPECT_EQ(plan->steps[0].writes, (std::vector<PatchWrite>{{kFn, {0xcc}}}));
  // 2: the tail: rel32 and padding
  EXPECT_EQ(plan->steps[1].writes,
            (std::vector<PatchWrite>{{kFn + 1, {0xfb, 0x0f, 0x00, 0x00, 0xcc, 0xcc, 0xcc}}}));
  // 3: the opcode
  EXPECT_EQ(plan->steps[2].writes, (std::vector<PatchWrite>{{kFn, {0xe9}}}));

  PatchPlan undo = make_jmp_unpatch_plan(p);
  ASSERT_EQ(undo.steps.size(), 3u);
  EXPECT_EQ(undo.steps[0].writes, (std::vector<PatchWrite>{{kFn, {0xcc}}}));
  EXPECT_EQ(undo.steps[1].writes,
            (std::vector<PatchWrite>{{kFn + 1, {0x48, 0x89, 0xe5, 0x48, 0x83, 0xec, 0x10}}}));
  EXPECT_EQ(undo.steps[2].writes, (std::vector<PatchWrite>{{kFn, {0x55}}}));
}

TEST(ArchPatchGolden, OutOfReachTrampolineIsRefused) {
  auto r = make_jmp_patch_plan(plan_at(0), kFn + 0x1'0000'0000ULL);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), Errc::no_memory_in_reach);
}

TEST(ArchPatchGolden, Int3Plans) {
  auto p = plan_int3(kFnBytes, kFn, 8);  // c9 leave
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(make_int3_patch_plan(p.value()).steps[0].writes,
            (std::vector<PatchWrite>{{kFn + 8, {0xcc}}}));
  EXPECT_EQ(make_int3_unpatch_plan(p.value()).steps[0].writes,
            (std::vector<PatchWrite>{{kFn + 8, {0xc9}}}));
  // The copy at kFn+0x1000: c9 leave; e9 03 f0 ff ff jmp kFn+9
  auto copy = make_int3_copy(p.value(), kFn + 0x1000);
  ASSERT_TRUE(copy.ok());
  EXPECT_EQ(copy->code, (Bytes{0xc9, 0xe9, 0x03, 0xf0, 0xff, 0xff}));
}

TEST(ArchPatchGolden, MergeIsStepwiseAndSortedByAddress) {
  PatchPlan a{{{{{0x2000, {0xcc}}}}, {{{0x2001, {1, 2, 3, 4}}}}, {{{0x2000, {0xe9}}}}}};
  PatchPlan b{{{{{0x1000, {0xcc}}}}}};
  const PatchPlan plans[] = {a, b};
  PatchPlan m = merge_patch_plans(plans);
  ASSERT_EQ(m.steps.size(), 3u);
  EXPECT_EQ(m.steps[0].writes, (std::vector<PatchWrite>{{0x1000, {0xcc}}, {0x2000, {0xcc}}}));
  EXPECT_EQ(m.steps[1].writes, (std::vector<PatchWrite>{{0x2001, {1, 2, 3, 4}}}));
}

std::int32_t rel32_in(const Bytes& c, std::size_t i) {
  return static_cast<std::int32_t>(c[i] | c[i + 1] << 8 | c[i + 2] << 16 |
                                   static_cast<std::uint32_t>(c[i + 3]) << 24);
}

// 58 59 5a 5e 5f 41 58 41 59 41 5a 41 5b 5b 5d 41 5c 41 5d 41 5e 41 5f
// pop rax, rcx, rdx, rsi, rdi, r8, r9, r10, r11, rbx, rbp, r12, r13, r14, r15 (Regs order)
const Bytes kPops{0x58, 0x59, 0x5a, 0x5e, 0x5f, 0x41, 0x58, 0x41, 0x59, 0x41, 0x5a, 0x41,
                  0x5b, 0x5b, 0x5d, 0x41, 0x5c, 0x41, 0x5d, 0x41, 0x5e, 0x41, 0x5f};

// The restore of a site at an entry, from `at` in `c`: kPops; f6 44 24 18 08  test byte
// [rsp+24], 8 (bit 3 of the way-back pointer: did the save's `and` move rsp?); 0f 84 rel32
// je -> the unlikely case; 48 8d a4 24 c0 00 00 00  lea rsp, [rsp+192] (the site's rsp:
// 24 + 16 + 144 + 8). Returns where it ends; the unlikely case, at the je's target, is
// 48 8d a4 24 b8 00 00 00  lea rsp, [rsp+184]; e9 rel32 jmp back to that end.
std::size_t expect_entry_restore(const Bytes& c, std::size_t at, std::uint64_t base) {
  EXPECT_EQ(Bytes(c.begin() + at, c.begin() + at + kPops.size()), kPops);
  at += kPops.size();
  EXPECT_EQ(Bytes(c.begin() + at, c.begin() + at + 7),
            (Bytes{0xf6, 0x44, 0x24, 0x18, 0x08, 0x0f, 0x84}));
  const std::size_t rare = at + 11 + rel32_in(c, at + 7);
  at += 11;
  EXPECT_EQ(Bytes(c.begin() + at, c.begin() + at + 8),
            (Bytes{0x48, 0x8d, 0xa4, 0x24, 0xc0, 0x00, 0x00, 0x00}));
  at += 8;
  EXPECT_LE(rare + 13, c.size());
  EXPECT_EQ(Bytes(c.begin() + rare, c.begin() + rare + 9),
            (Bytes{0x48, 0x8d, 0xa4, 0x24, 0xb8, 0x00, 0x00, 0x00, 0xe9}));
  EXPECT_EQ(base + rare + 13 + rel32_in(c, rare + 9), base + at);
  return at;
}

TEST(ArchEntryTrampolineGolden, AtEntryHeadAndTail) {
  DisplacementPlan p = plan_at(0);
  const std::uint64_t at = kFn + 0x10000;
  auto t = make_entry_trampoline({at, 0x1122334455667788, kFn + 0x20000, false}, p);
  ASSERT_TRUE(t.ok());
  const Bytes& c = t->code;
  // 48 8d a4 24 78 ff ff ff  lea rsp, [rsp-136]   the red zone, and no flags slot: they are
  // 50                       push rax              dead at an entry
  // 48 89 e0                 mov rax, rsp          the way back, M
  // 48 83 e4 f0              and rsp, -16
  // 48 8d 64 24 f8           lea rsp, [rsp-8]      padding
  // 50                       push rax              M
  EXPECT_EQ(Bytes(c.begin(), c.begin() + 22),
            (Bytes{0x48, 0x8d, 0xa4, 0x24, 0x78, 0xff, 0xff, 0xff, 0x50, 0x48, 0x89,
                   0xe0, 0x48, 0x83, 0xe4, 0xf0, 0x48, 0x8d, 0x64, 0x24, 0xf8, 0x50}));
  // The tail: the displaced instructions, copied, then jmp kFn+8, then the restore's
  // unlikely case (13 bytes).
  const std::size_t jmp_back = t->relocated_offset + 8;
  EXPECT_EQ(Bytes(c.begin() + t->relocated_offset, c.begin() + jmp_back + 1),
            (Bytes{0x55, 0x48, 0x89, 0xe5, 0x48, 0x83, 0xec, 0x10, 0xe9}));
  EXPECT_EQ(at + jmp_back + 5 + rel32_in(c, jmp_back + 1), kFn + 8);
  EXPECT_EQ(jmp_back + 5 + 13, c.size());
  // Right before the tail: the restore to the site's rsp.
  const std::size_t restore = t->relocated_offset - kPops.size() - 11 - 8;
  EXPECT_EQ(expect_entry_restore(c, restore, at), t->relocated_offset);
  check_decodes(t->code, at);
}

// With a landing: the dispatcher's bool picks the landing exit, which restores the same
// way and calls over the landing, so the landing is on the return stack buffer.
TEST(ArchEntryTrampolineGolden, LandingExitCallsOverTheLanding) {
  const std::uint64_t at = kFn + 0x10000, target = kFn + 0x30000;
  EntryTrampolineSpec spec{at, 0x11, kFn + 0x20000, false};
  spec.landing_target = target;
  auto t = make_entry_trampoline(spec, plan_at(0));
  ASSERT_TRUE(t.ok());
  ASSERT_GT(t->landing_offset, t->relocated_offset);
  const Bytes& c = t->code;
  // After the call rel32: 84 c0 test al, al; 0f 85 jnz rel32 -> the exit.
  const Bytes call_seq{0x48, 0x89, 0xe6, 0xe8};  // mov rsi, rsp; call rel32
  auto call = std::search(c.begin(), c.end(), call_seq.begin(), call_seq.end());
  ASSERT_NE(call, c.end());
  const std::size_t test = static_cast<std::size_t>(call - c.begin()) + 8;
  EXPECT_EQ(Bytes(c.begin() + test, c.begin() + test + 4), (Bytes{0x84, 0xc0, 0x0f, 0x85}));
  const std::size_t exit = test + 8 + rel32_in(c, test + 4);
  // The exit: the restore; e8 call rel32 (over the landing).
  const std::size_t call_at = expect_entry_restore(c, exit, at);
  EXPECT_EQ(c[call_at], 0xe8);
  EXPECT_EQ(call_at + 5, t->landing_offset);  // the call's return address is the landing
  // The landing: e9 jmp rel32 -> target.
  EXPECT_EQ(c[t->landing_offset], 0xe9);
  EXPECT_EQ(at + t->landing_offset + 5 + rel32_in(c, t->landing_offset + 1), target);
  // The call's target: 48 8d 64 24 08  lea rsp, [rsp+8]; e9 jmp rel32 -> the relocated copy.
  const std::size_t callee = call_at + 5 + rel32_in(c, call_at + 1);
  EXPECT_EQ(callee, t->landing_offset + 5);
  EXPECT_EQ(Bytes(c.begin() + callee, c.begin() + callee + 6),
            (Bytes{0x48, 0x8d, 0x64, 0x24, 0x08, 0xe9}));
  EXPECT_EQ(callee + 10 + rel32_in(c, callee + 6), t->relocated_offset);
  EXPECT_EQ(callee + 10 + 2 * 13, c.size());  // then the two restores' unlikely cases
  check_decodes(t->code, at);
}

TEST(ArchEntryTrampolineGolden, LandingOnlyAtAnEntry) {
  EntryTrampolineSpec spec{kFn + 0x10000, 0x11, kFn + 0x20000, false};
  spec.landing_target = kFn + 0x30000;
  auto t = make_entry_trampoline(spec, plan_at(4));
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.error().code(), Errc::invalid_argument);
}

TEST(ArchEntryTrampolineGolden, FlagsLiveSavesFlagsAndClearsDF) {
  DisplacementPlan p = plan_at(4);
  auto t = make_entry_trampoline({kFn + 0x10000, 0, kFn + 0x20000, true}, p);
  ASSERT_TRUE(t.ok());
  // 48 8d 64 24 80  lea rsp, [rsp-128]; 50 push rax; 9c pushfq; fc cld
  EXPECT_EQ(Bytes(t->code.begin(), t->code.begin() + 8),
            (Bytes{0x48, 0x8d, 0x64, 0x24, 0x80, 0x50, 0x9c, 0xfc}));
  // ...; 9d popfq; 48 8d a4 24 88 00 00 00  lea rsp, [rsp+136]
  EXPECT_EQ(Bytes(t->code.begin() + t->relocated_offset - 9, t->code.begin() + t->relocated_offset),
            (Bytes{0x9d, 0x48, 0x8d, 0xa4, 0x24, 0x88, 0x00, 0x00, 0x00}));
}

TEST(ArchEntryTrampolineGolden, DispatcherCallNearAndFar) {
  DisplacementPlan p = plan_at(0);
  auto find = [](const Bytes& code, const Bytes& needle) {
    return std::search(code.begin(), code.end(), needle.begin(), needle.end()) != code.end();
  };
  // In reach: movabs rdi, ctx; mov rsi, rsp (48 89 e6); call rel32 (e8)
  auto near = make_entry_trampoline({kFn + 0x10000, 0x42, kFn + 0x20000, false}, p);
  ASSERT_TRUE(near.ok());
  EXPECT_TRUE(find(near->code, {0x48, 0xbf, 0x42, 0, 0, 0, 0, 0, 0, 0, 0x48, 0x89, 0xe6, 0xe8}));
  // Out of reach: movabs rax, dispatcher (48 b8 ...); call rax (ff d0)
  auto far = make_entry_trampoline({kFn + 0x10000, 0x42, 0x7f00'0000'0000, false}, p);
  ASSERT_TRUE(far.ok());
  EXPECT_TRUE(find(far->code, {0x48, 0xb8, 0, 0, 0, 0, 0, 0x7f, 0, 0, 0xff, 0xd0}));
}

// After a ret rsp is 16-byte aligned, so the save's `and` did not move it: the restore's
// likely case is jne-not-taken, lea rsp, [rsp+440] (24 + 256 + 16 + 144, with the vector
// area) for the jmp through the red zone slot, [rsp+432] for the ret; the unlikely case (8
// more) follows the exit.
TEST(ArchReturnTrampolineGolden, EndsWithAJumpThroughTheRedZoneSlot) {
  auto code = make_return_trampoline({0x2000'0000, 1, 0x2000'1000, true});
  ASSERT_TRUE(code.ok());
  const Bytes& c = code.value();
  // 0f 85 rel32  jne; 48 8d a4 24 b8 01 00 00  lea rsp, [rsp+440]; ff 64 24 f8  jmp [rsp-8];
  // 48 8d a4 24 c0 01 00 00  lea rsp, [rsp+448]; e9 rel32  jmp back to the jmp [rsp-8]
  const Bytes tail(c.end() - 31, c.end());
  EXPECT_EQ(Bytes(tail.begin(), tail.begin() + 2), (Bytes{0x0f, 0x85}));
  EXPECT_EQ(Bytes(tail.begin() + 6, tail.begin() + 27),
            (Bytes{0x48, 0x8d, 0xa4, 0x24, 0xb8, 0x01, 0x00, 0x00, 0xff, 0x64, 0x24,
                   0xf8, 0x48, 0x8d, 0xa4, 0x24, 0xc0, 0x01, 0x00, 0x00, 0xe9}));
  EXPECT_EQ(rel32_in(tail, 2), 12);        // jne -> the unlikely case
  EXPECT_EQ(rel32_in(tail, 27), 14 - 31);  // and back to jmp [rsp-8]
  check_decodes(c, 0x2000'0000);
}

TEST(ArchReturnTrampolineGolden, ExitByRetPopsTheParkedAddress) {
  ReturnTrampolineSpec spec{0x2000'0000, 1, 0x2000'1000, true};
  spec.exit_by_ret = true;
  auto code = make_return_trampoline(spec);
  ASSERT_TRUE(code.ok());
  // ...; 48 8d a4 24 b0 01 00 00  lea rsp, [rsp+432] (= the slot holding it); c3 ret; then
  // the unlikely case: lea rsp, [rsp+440]; e9 rel32 jmp back to the ret (-14)
  const Bytes tail(code->end() - 22, code->end());
  EXPECT_EQ(tail, (Bytes{0x48, 0x8d, 0xa4, 0x24, 0xb0, 0x01, 0x00, 0x00, 0xc3, 0x48, 0x8d,
                         0xa4, 0x24, 0xb8, 0x01, 0x00, 0x00, 0xe9, 0xf2, 0xff, 0xff, 0xff}));
  check_decodes(code.value(), 0x2000'0000);
}

}  // namespace
}  // namespace hp::arch
