// Golden bytes for the patch jmp, the int3 copy and the fixed parts of the generated trampolines,
// annotated with assembly (STYLE.md item 9).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <vector>

#include "arch/x86_64/frame.h"
#include "arch/x86_64/fuzz.h"
#include "arch/x86_64/handler_stack.h"
#include "core/x86_64/trampoline.h"
#include "hotprobe/regs.h"

namespace hp::core {
namespace {

using namespace arch;  // NOLINT: the pieces and plans the trampolines are made from

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

TEST(ArchPatchGolden, JmpPatchBytes) {
  DisplacementPlan p = plan_at(0);  // 8 bytes: push, mov, sub
  // kFn: e9 fb 0f 00 00       jmp kFn+0x1000
  //      cc cc cc             int3 padding
  Bytes bytes(p.length);
  ASSERT_TRUE(write_jmp_patch_bytes(p.patch_address, p.length, kFn + 0x1000, bytes).ok());
  EXPECT_EQ(bytes, (Bytes{0xe9, 0xfb, 0x0f, 0x00, 0x00, 0xcc, 0xcc, 0xcc}));
}

TEST(ArchPatchGolden, OutOfReachTrampolineIsRefused) {
  DisplacementPlan p = plan_at(0);
  Bytes bytes(p.length);
  auto r = write_jmp_patch_bytes(p.patch_address, p.length, kFn + 0x1'0000'0000ULL, bytes);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), Errc::no_memory_in_reach);
}

TEST(ArchPatchGolden, Int3Copy) {
  auto p = plan_int3(kFnBytes, kFn, 8);  // c9 leave
  ASSERT_TRUE(p.ok());
  // The copy at kFn+0x1000: c9 leave; e9 03 f0 ff ff jmp kFn+9
  auto copy = make_int3_copy(p.value(), kFn + 0x1000);
  ASSERT_TRUE(copy.ok());
  EXPECT_EQ(copy->code, (Bytes{0xc9, 0xe9, 0x03, 0xf0, 0xff, 0xff}));
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

// The switch to the handler stack (trampoline.h, HandlerStack), TLS = the %fs offset of
// HandlerStack::next:
// 64 48 8b 04 25 TLS       mov rax, fs:[next]
// 48 85 c0; 0f 84 rel32    test rax, rax; je -> the call without a free handler stack
// 64 48 c7 04 25 TLS 0     mov qword fs:[next], 0     in use
// 49 89 e7; 48 89 c4       mov r15, rsp; mov rsp, rax r15 = the frame
// Returns where the je goes.
std::uint32_t tls_le() {
  return static_cast<std::uint32_t>(handler_stack_tls());
}
// The frame ends with 48 89 8c 24 88 00 00 00  mov [rsp+136], rcx (Regs.rip): the switch
// follows it.
std::size_t after_frame(const Bytes& c) {
  const Bytes rip_store{0x48, 0x89, 0x8c, 0x24, 0x88, 0x00, 0x00, 0x00};
  auto it = std::search(c.begin(), c.end(), rip_store.begin(), rip_store.end());
  EXPECT_NE(it, c.end());
  return static_cast<std::size_t>(it - c.begin()) + rip_store.size();
}
Bytes with_tls(Bytes head, const Bytes& tail) {
  const std::uint32_t tls = tls_le();
  for (int i = 0; i < 4; i++)
    head.push_back(static_cast<std::uint8_t>(tls >> (8 * i)));
  head.insert(head.end(), tail.begin(), tail.end());
  return head;
}
std::size_t expect_switch_in(const Bytes& c, std::size_t at) {
  EXPECT_EQ(Bytes(c.begin() + at, c.begin() + at + 14),
            with_tls({0x64, 0x48, 0x8b, 0x04, 0x25}, {0x48, 0x85, 0xc0, 0x0f, 0x84}));
  const std::size_t nostack = at + 18 + rel32_in(c, at + 14);
  EXPECT_EQ(Bytes(c.begin() + at + 18, c.begin() + at + 37),
            with_tls({0x64, 0x48, 0xc7, 0x04, 0x25},
                     {0x00, 0x00, 0x00, 0x00, 0x49, 0x89, 0xe7, 0x48, 0x89, 0xc4}));
  return nostack;
}
// And back: 48 89 e1 mov rcx, rsp; 4c 89 fc mov rsp, r15; 64 48 89 0c 25 TLS mov fs:[next],
// rcx (rsp leaves the handler stack before it is free again).
const std::size_t kSwitchOut = 15;
void expect_switch_out(const Bytes& c, std::size_t at) {
  EXPECT_EQ(Bytes(c.begin() + at, c.begin() + at + kSwitchOut),
            with_tls({0x48, 0x89, 0xe1, 0x4c, 0x89, 0xfc, 0x64, 0x48, 0x89, 0x0c, 0x25}, {}));
}
// Without a free handler stack (first hit of a thread, or nested in a handler by a signal):
// 48 bf ctx movabs rdi, ctx; 48 89 e6 mov rsi, rsp; 48 ba disp movabs rdx, dispatcher;
// 48 b8 fn movabs rax, hp_handler_stack_call; ff d0 call rax; [84 c0 test al, al; 0f 85
// rel32 jnz -> the landing exit's restore: the fast path only]; e9 rel32 jmp -> the exit's
// restore (the plain call's test of al, with a landing).
constexpr std::size_t kNoStack = 40;
void expect_no_stack(const Bytes& c, std::size_t at, std::uint64_t ctx, std::uint64_t disp,
                     std::size_t landing_restore, std::size_t restore) {
  auto u64 = [](std::uint64_t v) {
    Bytes b;
    for (int i = 0; i < 8; i++)
      b.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
    return b;
  };
  Bytes want{0x48, 0xbf};
  auto add = [&want](const Bytes& b) { want.insert(want.end(), b.begin(), b.end()); };
  add(u64(ctx));
  add({0x48, 0x89, 0xe6, 0x48, 0xba});
  add(u64(disp));
  add({0x48, 0xb8});
  add(u64(reinterpret_cast<std::uint64_t>(&hp_handler_stack_call)));
  add({0xff, 0xd0});
  EXPECT_EQ(Bytes(c.begin() + at, c.begin() + at + want.size()), want);
  at += want.size();
  if (landing_restore) {
    EXPECT_EQ(Bytes(c.begin() + at, c.begin() + at + 4), (Bytes{0x84, 0xc0, 0x0f, 0x85}));
    EXPECT_EQ(at + 8 + rel32_in(c, at + 4), landing_restore);
    at += 8;
  }
  EXPECT_EQ(c[at], 0xe9);
  EXPECT_EQ(at + 5 + rel32_in(c, at + 1), restore);
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
  // The tail: the displaced instructions, copied, then jmp kFn+8, then the call without a
  // handler stack, then the restore's unlikely case (13 bytes).
  const std::size_t jmp_back = t->relocated_offset + 8;
  EXPECT_EQ(Bytes(c.begin() + t->relocated_offset, c.begin() + jmp_back + 1),
            (Bytes{0x55, 0x48, 0x89, 0xe5, 0x48, 0x83, 0xec, 0x10, 0xe9}));
  EXPECT_EQ(at + jmp_back + 5 + rel32_in(c, jmp_back + 1), kFn + 8);
  EXPECT_EQ(jmp_back + 5 + kNoStack + 13, c.size());
  // Right before the tail: the switch back, then the restore to the site's rsp.
  const std::size_t restore = t->relocated_offset - kPops.size() - 11 - 8;
  EXPECT_EQ(expect_entry_restore(c, restore, at), t->relocated_offset);
  expect_switch_out(c, restore - kSwitchOut);
  // After the frame the switch, whose je goes to the call without a handler stack, which
  // goes on at the restore.
  const std::size_t sw = after_frame(c);
  EXPECT_EQ(expect_switch_in(c, sw), jmp_back + 5);
  expect_no_stack(c, jmp_back + 5, 0x1122334455667788, kFn + 0x20000, 0, restore);
  // With the switch: movabs rdi, ctx; mov rsi, r15 (4c 89 fe); call rel32.
  EXPECT_EQ(Bytes(c.begin() + sw + 37 + 10, c.begin() + sw + 37 + 14),
            (Bytes{0x4c, 0x89, 0xfe, 0xe8}));
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
  // After the call rel32 and the switch back: 84 c0 test al, al; 0f 85 jnz rel32 -> the
  // landing exit.
  const Bytes call_seq{0x4c, 0x89, 0xfe, 0xe8};  // mov rsi, r15 (the frame); call rel32
  auto call = std::search(c.begin(), c.end(), call_seq.begin(), call_seq.end());
  ASSERT_NE(call, c.end());
  const std::size_t back = static_cast<std::size_t>(call - c.begin()) + 8;
  expect_switch_out(c, back);
  const std::size_t test = back + kSwitchOut;
  EXPECT_EQ(Bytes(c.begin() + test, c.begin() + test + 4), (Bytes{0x84, 0xc0, 0x0f, 0x85}));
  const std::size_t exit = test + 8 + rel32_in(c, test + 4);
  // The landing exit: the restore; e8 call rel32 (over the landing).
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
  // Then the call without a handler stack, and the two restores' unlikely cases.
  // It goes on at the test of al, as the call above does.
  EXPECT_EQ(callee + 10 + kNoStack + 2 * 13, c.size());
  const std::size_t switch_in = static_cast<std::size_t>(call - c.begin()) - 10 - 37;
  EXPECT_EQ(expect_switch_in(c, switch_in), callee + 10);
  expect_no_stack(c, callee + 10, 0x11, kFn + 0x20000, 0, test);
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
  // In reach: movabs rdi, ctx; mov rsi, r15 (4c 89 fe); call rel32 (e8)
  auto near = make_entry_trampoline({kFn + 0x10000, 0x42, kFn + 0x20000, false}, p);
  ASSERT_TRUE(near.ok());
  EXPECT_TRUE(find(near->code, {0x48, 0xbf, 0x42, 0, 0, 0, 0, 0, 0, 0, 0x4c, 0x89, 0xfe, 0xe8}));
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
  // the call without a handler stack (kNoStack bytes);
  // 48 8d a4 24 c0 01 00 00  lea rsp, [rsp+448]; e9 rel32  jmp back to the jmp [rsp-8]
  const std::size_t exit_end = c.size() - 13 - kNoStack;
  const Bytes tail(c.begin() + exit_end - 18, c.begin() + exit_end);
  EXPECT_EQ(Bytes(tail.begin(), tail.begin() + 2), (Bytes{0x0f, 0x85}));
  EXPECT_EQ(Bytes(tail.begin() + 6, tail.end()),
            (Bytes{0x48, 0x8d, 0xa4, 0x24, 0xb8, 0x01, 0x00, 0x00, 0xff, 0x64, 0x24, 0xf8}));
  const Bytes rare(c.end() - 13, c.end());
  EXPECT_EQ(Bytes(rare.begin(), rare.begin() + 9),
            (Bytes{0x48, 0x8d, 0xa4, 0x24, 0xc0, 0x01, 0x00, 0x00, 0xe9}));
  EXPECT_EQ(exit_end - 18 + 6 + rel32_in(tail, 2), c.size() - 13);  // jne -> the unlikely case
  EXPECT_EQ(c.size() + rel32_in(rare, 9), exit_end - 4);            // and back to jmp [rsp-8]
  check_decodes(c, 0x2000'0000);
}

TEST(ArchReturnTrampolineGolden, ExitByRetPopsTheParkedAddress) {
  ReturnTrampolineSpec spec{0x2000'0000, 1, 0x2000'1000, true};
  spec.exit_by_ret = true;
  auto code = make_return_trampoline(spec);
  ASSERT_TRUE(code.ok());
  // ...; 48 8d a4 24 b0 01 00 00  lea rsp, [rsp+432] (= the slot holding it); c3 ret; the
  // call without a handler stack; then the unlikely case: lea rsp, [rsp+440]; e9 rel32 jmp
  // back to the ret
  const Bytes& c = code.value();
  EXPECT_EQ(Bytes(c.end() - 13 - kNoStack - 9, c.end() - 13 - kNoStack),
            (Bytes{0x48, 0x8d, 0xa4, 0x24, 0xb0, 0x01, 0x00, 0x00, 0xc3}));
  EXPECT_EQ(Bytes(c.end() - 13, c.end() - 4),
            (Bytes{0x48, 0x8d, 0xa4, 0x24, 0xb8, 0x01, 0x00, 0x00, 0xe9}));
  EXPECT_EQ(rel32_in(c, c.size() - 4), -static_cast<std::int32_t>(13 + kNoStack + 1));
  check_decodes(code.value(), 0x2000'0000);
}

// The return trampoline switches to the handler stack after its frame, and the call
// without one goes on where the switch back ends: at the parking of the return address.
TEST(ArchReturnTrampolineGolden, RunsTheDispatcherOnTheHandlerStack) {
  ReturnTrampolineSpec spec{0x2000'0000, 7, 0x2000'1000, false};
  auto code = make_return_trampoline(spec);
  ASSERT_TRUE(code.ok());
  const Bytes& c = code.value();
  // The head and the frame as at an entry.
  const std::size_t sw = after_frame(c);
  const std::size_t nostack = expect_switch_in(c, sw);
  EXPECT_EQ(nostack, c.size() - 13 - kNoStack);
  // movabs rdi, 7; mov rsi, r15; call rel32; then the switch back.
  const std::size_t call = sw + 37;
  EXPECT_EQ(Bytes(c.begin() + call + 10, c.begin() + call + 14), (Bytes{0x4c, 0x89, 0xfe, 0xe8}));
  expect_switch_out(c, call + 18);
  expect_no_stack(c, nostack, 7, 0x2000'1000, 0, call + 18 + kSwitchOut);
  check_decodes(c, 0x2000'0000);
}

// Without the handler stack (a spec for callers that switch themselves): no switch, the
// frame is the dispatcher's argument; the fast paths refuse it.
TEST(ArchEntryTrampolineGolden, WithoutTheHandlerStack) {
  EntryTrampolineSpec spec{kFn + 0x10000, 0x42, kFn + 0x20000, false};
  spec.handler_stack = false;
  auto t = make_entry_trampoline(spec, plan_at(0));
  ASSERT_TRUE(t.ok());
  // The frame, then movabs rdi, ctx; mov rsi, rsp (48 89 e6); call rel32.
  const std::size_t sw = after_frame(t->code);
  EXPECT_EQ(Bytes(t->code.begin() + sw + 10, t->code.begin() + sw + 14),
            (Bytes{0x48, 0x89, 0xe6, 0xe8}));
  EXPECT_EQ(t->relocated_offset + 8 + 5 + 13, t->code.size());
  FastEntry fast;
  spec.fast = &fast;
  EXPECT_EQ(make_entry_trampoline(spec, plan_at(0)).error().code(), Errc::invalid_argument);
}

}  // namespace
}  // namespace hp::core

namespace hp::core {
namespace {

using namespace arch;  // NOLINT: the pieces and plans the trampolines are made from

// The engine's slots are 768 bytes: the fast entry path with a landing, the switch, the
// call without a handler stack and long displaced instructions still fit one.
TEST(ArchEntryTrampolineGolden, TrampolinesFitASlot) {
  // +0 48 8b 05 rel32 mov rax, [rip+X]; +7 48 8b 80 disp32 mov rax, [rax+Y]; +e c3 ret
  const Bytes fn{0x48, 0x8b, 0x05, 0x00, 0x10, 0x00, 0x00, 0x48,
                 0x8b, 0x80, 0x00, 0x01, 0x00, 0x00, 0xc3};
  auto plan = plan_displacement(fn, kFn, 0);
  ASSERT_TRUE(plan.ok());
  FastEntry fast;
  fast.consumers = 0x5555'0000'1000;
  EntryTrampolineSpec spec{kFn + 0x10000, 0x42, kFn + 0x20000, false};
  spec.fast = &fast;
  spec.landing_target = kFn + 0x30000;
  auto t = make_entry_trampoline(spec, *plan);
  ASSERT_TRUE(t.ok()) << t.error().message();
  EXPECT_LE(t->code.size(), 768u);
  check_decodes(t->code, spec.address);
  ReturnTrampolineSpec rs{0x2000'0000, 1, 0x2000'1000, false};
  FastReturn fr;
  rs.fast = &fr;
  auto r = make_return_trampoline(rs);
  ASSERT_TRUE(r.ok());
  EXPECT_LE(r->size(), 768u);
  // With the vector saves (TSan builds: no fast path), a landing and the same displaced
  // instructions: xmm0-15 are restored once, before the exits branch.
  EntryTrampolineSpec vec{kFn + 0x10000, 0x42, kFn + 0x20000, true};
  vec.landing_target = kFn + 0x30000;
  auto v = make_entry_trampoline(vec, *plan);
  ASSERT_TRUE(v.ok()) << v.error().message();
  EXPECT_LE(v->code.size(), 768u);
  ReturnTrampolineSpec rv{0x2000'0000, 1, 0x2000'1000, true};
  auto vr = make_return_trampoline(rv);
  ASSERT_TRUE(vr.ok());
  EXPECT_LE(vr->size(), 768u);
  std::printf(
      "fast entry with landing: %zu bytes; fast return: %zu bytes; with vector saves: %zu and "
      "%zu\n",
      t->code.size(), r->size(), v->code.size(), vr->size());
}

}  // namespace
}  // namespace hp::core

namespace hp::core {
namespace {

using namespace arch;  // NOLINT: the pieces and plans the trampolines are made from

// A return site (run_at_ret): the displaced instructions but the ret first, then the frame
// with Regs.rip = the ret's address, the switch and the call, the restore, and a ret.
TEST(ArchReturnSiteGolden, RunsTheDisplacedInstructionsThenTheHandlersThenRet) {
  // +0 48 8d 47 64  lea rax, [rdi+100]; +4 0f 1f 00  nop; +7 c3 ret
  const Bytes fn{0x48, 0x8d, 0x47, 0x64, 0x0f, 0x1f, 0x00, 0xc3};
  for (std::uint64_t off : {0u, 4u}) {  // before the ret (7 bytes), with it (+4: nop, ret... )
    auto plan = plan_displacement(fn, kFn, off);
    if (off == 4) {
      ASSERT_FALSE(plan.ok());  // nop + ret are 4 bytes: too short
      continue;
    }
    ASSERT_TRUE(plan.ok()) << plan.error().message();
    EntryTrampolineSpec spec{kFn + 0x10000, 0x42, kFn + 0x20000, false};
    spec.run_at_ret = true;
    auto t = make_entry_trampoline(spec, *plan);
    ASSERT_TRUE(t.ok()) << t.error().message();
    const Bytes& c = t->code;
    EXPECT_EQ(t->relocated_offset, 0u);
    EXPECT_EQ(Bytes(c.begin(), c.begin() + 7), Bytes(fn.begin(), fn.begin() + 7));
    // Then the head of the save: lea rsp, [rsp-136]; push rax; ...
    EXPECT_EQ(Bytes(c.begin() + 7, c.begin() + 9), (Bytes{0x48, 0x8d}));
    // Regs.rip = the ret: 48 b9 imm64  movabs rcx, kFn + 7 before the rip store.
    const std::size_t sw = after_frame(c);
    EXPECT_EQ(Bytes(c.begin() + sw - 18, c.begin() + sw - 16), (Bytes{0x48, 0xb9}));
    std::uint64_t rip = 0;
    std::memcpy(&rip, &c[sw - 16], 8);
    EXPECT_EQ(rip, kFn + 7);
    const std::size_t nostack = expect_switch_in(c, sw);
    // The exit's ret right before the nostack call; the map: each instruction, then the end
    // of the displaced bytes (the ret's offset) -> the save.
    EXPECT_EQ(c[nostack - 1], 0xc3);
    EXPECT_EQ(nostack + kNoStack + 13, c.size());
    ASSERT_EQ(t->map.size(), 3u);
    EXPECT_EQ(t->map[1], (OffsetPair{4, 4}));
    EXPECT_EQ(t->map[2], (OffsetPair{7, 7}));
    check_decodes(c, spec.address);
  }
}

TEST(ArchReturnSiteGolden, WithTheRetInsideTheMapSendsItToTheSave) {
  // +0 48 8d 47 01  lea rax, [rdi+1]; +4 c3 ret: five bytes with the ret
  const Bytes fn{0x48, 0x8d, 0x47, 0x01, 0xc3};
  auto plan = plan_displacement(fn, kFn, 0);
  ASSERT_TRUE(plan.ok()) << plan.error().message();
  ASSERT_EQ(plan->length, 5u);
  EntryTrampolineSpec spec{kFn + 0x10000, 0x42, kFn + 0x20000, false};
  spec.run_at_ret = true;
  auto t = make_entry_trampoline(spec, *plan);
  ASSERT_TRUE(t.ok()) << t.error().message();
  // lea copied, then the save at +4, which the ret's offset maps to.
  EXPECT_EQ(Bytes(t->code.begin(), t->code.begin() + 4), Bytes(fn.begin(), fn.begin() + 4));
  ASSERT_GE(t->map.size(), 2u);
  EXPECT_EQ(t->map[1], (OffsetPair{4, 4}));
  // A landing is refused for a return site.
  spec.landing_target = kFn + 0x30000;
  EXPECT_FALSE(make_entry_trampoline(spec, *plan).ok());
}

}  // namespace
}  // namespace hp::core
