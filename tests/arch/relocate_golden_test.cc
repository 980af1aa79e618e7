// Golden byte tests for the relocator, annotated with assembly (STYLE.md item 9). O is
// where the instructions came from, N a trampoline 256 MiB above (rel32 reach), F one far
// away (no rel32 reach), OH/NH a pair at high addresses (return addresses above 2^31).
#include <gtest/gtest.h>

#include <vector>

#include "arch/x86_64/relocate.h"

namespace hp::arch {
namespace {

using Bytes = std::vector<std::uint8_t>;
constexpr std::uint64_t O = 0x1000'0000;
constexpr std::uint64_t N = 0x2000'0000;
constexpr std::uint64_t F = 0x7f00'0000'0000;
constexpr std::uint64_t OH = 0x7f00'1000'0000;
constexpr std::uint64_t NH = 0x7f00'2000'0000;

Bytes reloc(const Bytes& in, std::uint64_t from, std::uint64_t to) {
  auto r = relocate(in, from, to);
  EXPECT_TRUE(r.ok()) << (r.ok() ? "" : r.error().message());
  return r.ok() ? r->code : Bytes{};
}

std::string refusal(const Bytes& in, std::uint64_t from, std::uint64_t to) {
  auto r = relocate(in, from, to);
  EXPECT_FALSE(r.ok());
  if (r.ok()) return "";
  EXPECT_EQ(r.error().code(), Errc::not_relocatable);
  return r.error().message();
}

TEST(ArchRelocateGolden, JmpRel8BecomesRel32) {
  // O: eb 10                 jmp O+0x12
  // N: e9 0d 00 00 f0        jmp O+0x12
  EXPECT_EQ(reloc({0xeb, 0x10}, O, N), (Bytes{0xe9, 0x0d, 0x00, 0x00, 0xf0}));
}

TEST(ArchRelocateGolden, JmpRel32) {
  // O: e9 00 01 00 00        jmp O+0x105
  // N: e9 00 01 00 f0        jmp O+0x105
  EXPECT_EQ(reloc({0xe9, 0x00, 0x01, 0x00, 0x00}, O, N), (Bytes{0xe9, 0x00, 0x01, 0x00, 0xf0}));
}

TEST(ArchRelocateGolden, JmpFar) {
  // F: ff 25 00 00 00 00     jmp [rip+0]
  //    12 00 00 10 00 00 00 00  .quad O+0x12
  EXPECT_EQ(reloc({0xeb, 0x10}, O, F),
            (Bytes{0xff, 0x25, 0, 0, 0, 0, 0x12, 0x00, 0x00, 0x10, 0, 0, 0, 0}));
}

TEST(ArchRelocateGolden, JccRel8BecomesRel32) {
  // O: 74 10                 je O+0x12
  // N: 0f 84 0c 00 00 f0     je O+0x12
  EXPECT_EQ(reloc({0x74, 0x10}, O, N), (Bytes{0x0f, 0x84, 0x0c, 0x00, 0x00, 0xf0}));
}

TEST(ArchRelocateGolden, JccRel32) {
  // O: 0f 85 00 01 00 00     jne O+0x106
  // N: 0f 85 00 01 00 f0     jne O+0x106
  EXPECT_EQ(reloc({0x0f, 0x85, 0x00, 0x01, 0x00, 0x00}, O, N),
            (Bytes{0x0f, 0x85, 0x00, 0x01, 0x00, 0xf0}));
}

TEST(ArchRelocateGolden, JccFarInvertsTheCondition) {
  // O: 74 10                 je O+0x12
  // F: 75 0e                 jne +14 (over the far jump)
  //    ff 25 00 00 00 00     jmp [rip+0]
  //    12 00 00 10 00 00 00 00  .quad O+0x12
  EXPECT_EQ(reloc({0x74, 0x10}, O, F),
            (Bytes{0x75, 0x0e, 0xff, 0x25, 0, 0, 0, 0, 0x12, 0x00, 0x00, 0x10, 0, 0, 0, 0}));
}

TEST(ArchRelocateGolden, Loop) {
  // O: e2 10                 loop O+0x12
  // N: e2 02                 loop N+4 (taken: to the jump below)
  //    eb 05                 jmp N+9  (not taken: past it)
  //    e9 09 00 00 f0        jmp O+0x12
  EXPECT_EQ(reloc({0xe2, 0x10}, O, N),
            (Bytes{0xe2, 0x02, 0xeb, 0x05, 0xe9, 0x09, 0x00, 0x00, 0xf0}));
}

TEST(ArchRelocateGolden, LoopneAndLoope) {
  // O: e0 10 / e1 10         loopne / loope O+0x12, same shape as loop
  EXPECT_EQ(reloc({0xe0, 0x10}, O, N),
            (Bytes{0xe0, 0x02, 0xeb, 0x05, 0xe9, 0x09, 0x00, 0x00, 0xf0}));
  EXPECT_EQ(reloc({0xe1, 0x10}, O, N),
            (Bytes{0xe1, 0x02, 0xeb, 0x05, 0xe9, 0x09, 0x00, 0x00, 0xf0}));
}

TEST(ArchRelocateGolden, Jrcxz) {
  // O: e3 10                 jrcxz O+0x12
  // N: e3 02                 jrcxz N+4
  //    eb 05                 jmp N+9
  //    e9 09 00 00 f0        jmp O+0x12
  EXPECT_EQ(reloc({0xe3, 0x10}, O, N),
            (Bytes{0xe3, 0x02, 0xeb, 0x05, 0xe9, 0x09, 0x00, 0x00, 0xf0}));
}

TEST(ArchRelocateGolden, JecxzKeepsTheAddressSizePrefix) {
  // O: 67 e3 10              jecxz O+0x13
  // N: 67 e3 02              jecxz N+5
  //    eb 05                 jmp N+10
  //    e9 09 00 00 f0        jmp O+0x13
  EXPECT_EQ(reloc({0x67, 0xe3, 0x10}, O, N),
            (Bytes{0x67, 0xe3, 0x02, 0xeb, 0x05, 0xe9, 0x09, 0x00, 0x00, 0xf0}));
}

TEST(ArchRelocateGolden, LoopFar) {
  // F: e2 02                 loop F+4
  //    eb 0e                 jmp F+0x12
  //    ff 25 00 00 00 00     jmp [rip+0]
  //    12 00 00 10 00 00 00 00  .quad O+0x12
  EXPECT_EQ(reloc({0xe2, 0x10}, O, F), (Bytes{0xe2, 0x02, 0xeb, 0x0e, 0xff, 0x25, 0, 0, 0, 0, 0x12,
                                              0x00, 0x00, 0x10, 0, 0, 0, 0}));
}

TEST(ArchRelocateGolden, CallLowReturnAddress) {
  // O: e8 00 01 00 00        call O+0x105
  // N: 68 05 00 00 10        push O+5 (the original return address: fits imm32)
  //    e9 fb 00 00 f0        jmp O+0x105
  EXPECT_EQ(reloc({0xe8, 0x00, 0x01, 0x00, 0x00}, O, N),
            (Bytes{0x68, 0x05, 0x00, 0x00, 0x10, 0xe9, 0xfb, 0x00, 0x00, 0xf0}));
}

TEST(ArchRelocateGolden, CallHighReturnAddress) {
  // OH: e8 00 01 00 00       call OH+0x105
  // NH: 48 8d 64 24 f8       lea rsp, [rsp-8]        (flags untouched)
  //     c7 04 24 05 00 00 10 mov dword [rsp], 0x10000005
  //     c7 44 24 04 00 7f 00 00  mov dword [rsp+4], 0x7f00
  //     e9 ec 00 00 f0       jmp OH+0x105
  EXPECT_EQ(reloc({0xe8, 0x00, 0x01, 0x00, 0x00}, OH, NH),
            (Bytes{0x48, 0x8d, 0x64, 0x24, 0xf8, 0xc7, 0x04, 0x24, 0x05, 0x00, 0x00, 0x10, 0xc7,
                   0x44, 0x24, 0x04, 0x00, 0x7f, 0x00, 0x00, 0xe9, 0xec, 0x00, 0x00, 0xf0}));
}

TEST(ArchRelocateGolden, CallIndirectBecomesPushAndJmp) {
  // O: ff 10                 call [rax]
  // N: 68 02 00 00 10        push O+2
  //    ff 20                 jmp [rax]
  EXPECT_EQ(reloc({0xff, 0x10}, O, N), (Bytes{0x68, 0x02, 0x00, 0x00, 0x10, 0xff, 0x20}));
  // O: ff 15 00 01 00 00     call [rip+0x100]   (reads O+0x106)
  // N: 68 06 00 00 10        push O+6
  //    ff 25 fb 00 00 f0     jmp [rip-0xfffff05] (still reads O+0x106)
  EXPECT_EQ(reloc({0xff, 0x15, 0x00, 0x01, 0x00, 0x00}, O, N),
            (Bytes{0x68, 0x06, 0x00, 0x00, 0x10, 0xff, 0x25, 0xfb, 0x00, 0x00, 0xf0}));
}

TEST(ArchRelocateGolden, RipRelativeNear) {
  // O: 48 8b 05 00 01 00 00  mov rax, [rip+0x100]     (O+0x107)
  // N: 48 8b 05 00 01 00 f0  mov rax, [rip-0xfffff00] (O+0x107)
  EXPECT_EQ(reloc({0x48, 0x8b, 0x05, 0x00, 0x01, 0x00, 0x00}, O, N),
            (Bytes{0x48, 0x8b, 0x05, 0x00, 0x01, 0x00, 0xf0}));
  // O: c7 05 00 01 00 00 2a 00 00 00   mov dword [rip+0x100], 42  (disp is from the end,
  // N: c7 05 00 01 00 f0 2a 00 00 00   after the immediate)
  EXPECT_EQ(reloc({0xc7, 0x05, 0x00, 0x01, 0x00, 0x00, 0x2a, 0x00, 0x00, 0x00}, O, N),
            (Bytes{0xc7, 0x05, 0x00, 0x01, 0x00, 0xf0, 0x2a, 0x00, 0x00, 0x00}));
}

TEST(ArchRelocateGolden, RipRelativeFarUsesAScratchRegisterBelowTheRedZone) {
  // O: 48 8b 05 00 01 00 00  mov rax, [rip+0x100]
  // F: 48 8d 64 24 80        lea rsp, [rsp-128]     skip the red zone, flags untouched
  //    51                    push rcx               rax is the operand: rcx is free
  //    48 b9 07 01 00 10 00 00 00 00  movabs rcx, O+0x107
  //    48 8b 01              mov rax, [rcx]
  //    59                    pop rcx
  //    48 8d a4 24 80 00 00 00  lea rsp, [rsp+128]
  EXPECT_EQ(
      reloc({0x48, 0x8b, 0x05, 0x00, 0x01, 0x00, 0x00}, O, F),
      (Bytes{0x48, 0x8d, 0x64, 0x24, 0x80, 0x51, 0x48, 0xb9, 0x07, 0x01, 0x00, 0x10, 0x00, 0x00,
             0x00, 0x00, 0x48, 0x8b, 0x01, 0x59, 0x48, 0x8d, 0xa4, 0x24, 0x80, 0x00, 0x00, 0x00}));
}

TEST(ArchRelocateGolden, RipRelativeFarAvoidsEveryRegisterTheInstructionUses) {
  // O: 48 0f c7 0d 00 01 00 00  cmpxchg16b [rip+0x100]: uses rax, rcx, rdx, rbx
  // F: 48 8d 64 24 80        lea rsp, [rsp-128]
  //    56                    push rsi
  //    48 be 08 01 00 10 00 00 00 00  movabs rsi, O+0x108
  //    48 0f c7 0e           cmpxchg16b [rsi]
  //    5e                    pop rsi
  //    48 8d a4 24 80 00 00 00  lea rsp, [rsp+128]
  EXPECT_EQ(reloc({0x48, 0x0f, 0xc7, 0x0d, 0x00, 0x01, 0x00, 0x00}, O, F),
            (Bytes{0x48, 0x8d, 0x64, 0x24, 0x80, 0x56, 0x48, 0xbe, 0x08, 0x01,
                   0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x48, 0x0f, 0xc7, 0x0e,
                   0x5e, 0x48, 0x8d, 0xa4, 0x24, 0x80, 0x00, 0x00, 0x00}));
}

TEST(ArchRelocateGolden, LeaFarBecomesMovabs) {
  // O: 48 8d 05 00 01 00 00  lea rax, [rip+0x100]
  // F: 48 b8 07 01 00 10 00 00 00 00  movabs rax, O+0x107
  EXPECT_EQ(reloc({0x48, 0x8d, 0x05, 0x00, 0x01, 0x00, 0x00}, O, F),
            (Bytes{0x48, 0xb8, 0x07, 0x01, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00}));
  // O: 4c 8d 0d 00 01 00 00  lea r9, [rip+0x100]
  // F: 49 b9 07 01 00 10 00 00 00 00  movabs r9, O+0x107
  EXPECT_EQ(reloc({0x4c, 0x8d, 0x0d, 0x00, 0x01, 0x00, 0x00}, O, F),
            (Bytes{0x49, 0xb9, 0x07, 0x01, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00}));
}

TEST(ArchRelocateGolden, OtherInstructionsAreCopied) {
  // 55 push rbp; 48 89 e5 mov rbp, rsp; 0f 05 syscall; f3 0f 1e fa endbr64; c3 ret
  const Bytes b{0x55, 0x48, 0x89, 0xe5, 0x0f, 0x05, 0xf3, 0x0f, 0x1e, 0xfa, 0xc3};
  EXPECT_EQ(reloc(b, O, N), b);
  EXPECT_EQ(reloc(b, O, F), b);
}

TEST(ArchRelocateGolden, OffsetMapFollowsEachInstruction) {
  // O: 55                    push rbp            -> N+0
  //    48 89 e5              mov rbp, rsp        -> N+1
  //    74 10                 je O+0x16           -> N+4: 0f 84 rel32
  //    90                    nop                 -> N+10
  //    (end)                                     -> N+11, then the jump back
  const Bytes in{0x55, 0x48, 0x89, 0xe5, 0x74, 0x10, 0x90};
  auto r = relocate_with_jmp_back(in, O, N);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->map, (std::vector<OffsetPair>{{0, 0}, {1, 1}, {4, 4}, {6, 10}, {7, 11}}));
  EXPECT_EQ(r->relocated_offset(6), 10u);
  EXPECT_FALSE(r->relocated_offset(5).has_value());
  // 55 / 48 89 e5 / 0f 84 0c 00 00 f0 / 90 / e9 f7 ff ff ef: jmp O+7
  EXPECT_EQ(r->code, (Bytes{0x55, 0x48, 0x89, 0xe5, 0x0f, 0x84, 0x0c, 0x00, 0x00, 0xf0, 0x90, 0xe9,
                            0xf7, 0xff, 0xff, 0xef}));
}

TEST(ArchRelocateGolden, Refusals) {
  // e8 00 00 00 00 / 90: call in the middle
  EXPECT_NE(refusal({0xe8, 0x00, 0x00, 0x00, 0x00, 0x90}, O, N).find("call"), std::string::npos);
  // cc: int3
  EXPECT_NE(refusal({0xcc}, O, N).find("`int3`"), std::string::npos);
  // c7 f8 00 00 00 00: xbegin
  EXPECT_NE(refusal({0xc7, 0xf8, 0x00, 0x00, 0x00, 0x00}, O, N).find("xbegin"), std::string::npos);
  // ff 35 00 01 00 00: push [rip+0x100], far: uses rsp
  EXPECT_NE(refusal({0xff, 0x35, 0x00, 0x01, 0x00, 0x00}, O, F).find("rsp"), std::string::npos);
  // ff 25 00 01 00 00: jmp [rip+0x100], far
  EXPECT_NE(refusal({0xff, 0x25, 0x00, 0x01, 0x00, 0x00}, O, F).find("control transfer"),
            std::string::npos);
  // ff 54 24 08: call [rsp+8]
  EXPECT_NE(refusal({0xff, 0x54, 0x24, 0x08}, O, N).find("rsp"), std::string::npos);
  // e9 00: truncated
  EXPECT_NE(refusal({0xe9, 0x00}, O, N).find("cannot decode"), std::string::npos);
}

}  // namespace
}  // namespace hp::arch
