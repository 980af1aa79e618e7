// Decoder classification: each kind of instruction the planner and relocator care about.
#include "arch/x86_64/decode.h"

#include <gtest/gtest.h>

#include <vector>

namespace hp::arch {
namespace {

constexpr std::uint64_t kAt = 0x401000;

Insn must_decode(std::vector<std::uint8_t> bytes, std::uint64_t at = kAt) {
  auto r = decode(bytes, at);
  EXPECT_TRUE(r.ok()) << (r.ok() ? "" : r.error().message());
  return r.ok() ? r.value() : Insn{};
}

TEST(ArchDecode, LengthTextAndKind) {
  struct Case {
    std::vector<std::uint8_t> bytes;
    std::uint8_t length;
    InsnKind kind;
    const char* text;
  };
  const Case cases[] = {
      {{0x55}, 1, InsnKind::other, "push rbp"},
      {{0x48, 0x89, 0xe5}, 3, InsnKind::other, "mov rbp, rsp"},
      {{0xeb, 0x10}, 2, InsnKind::jmp_rel, "jmp 0x0000000000401012"},
      {{0xe9, 0x00, 0x01, 0x00, 0x00}, 5, InsnKind::jmp_rel, "jmp 0x0000000000401105"},
      {{0x74, 0xfe}, 2, InsnKind::jcc_rel, "jz 0x0000000000401000"},
      {{0x0f, 0x85, 0x10, 0x00, 0x00, 0x00}, 6, InsnKind::jcc_rel, "jnz 0x0000000000401016"},
      {{0xe2, 0x10}, 2, InsnKind::loop_rel, "loop 0x0000000000401012"},
      {{0xe1, 0x10}, 2, InsnKind::loop_rel, "loope 0x0000000000401012"},
      {{0xe0, 0x10}, 2, InsnKind::loop_rel, "loopne 0x0000000000401012"},
      {{0xe3, 0x10}, 2, InsnKind::loop_rel, "jrcxz 0x0000000000401012"},
      {{0x67, 0xe3, 0x10}, 3, InsnKind::loop_rel, "jecxz 0x0000000000401013"},
      {{0xe8, 0x00, 0x00, 0x00, 0x00}, 5, InsnKind::call_rel, "call 0x0000000000401005"},
      {{0xc3}, 1, InsnKind::ret, "ret"},
      {{0xc2, 0x08, 0x00}, 3, InsnKind::ret, "ret 0x08"},
      {{0xff, 0xe0}, 2, InsnKind::jmp_indirect, "jmp rax"},
      {{0xff, 0x25, 0x00, 0x00, 0x00, 0x00}, 6, InsnKind::jmp_indirect, "jmp [0x0000000000401006]"},
      {{0xff, 0xd0}, 2, InsnKind::call_indirect, "call rax"},
      {{0xcc}, 1, InsnKind::int3, "int3"},
      {{0x0f, 0x05}, 2, InsnKind::syscall, "syscall"},
      {{0xf3, 0x0f, 0x1e, 0xfa}, 4, InsnKind::endbr64, "endbr64"},
      {{0x0f, 0x0b}, 2, InsnKind::trap, "ud2"},
      {{0xc7, 0xf8, 0x00, 0x00, 0x00, 0x00}, 6, InsnKind::xbegin, "xbegin 0x0000000000401006"},
  };
  for (const Case& c : cases) {
    Insn insn = must_decode(c.bytes);
    EXPECT_EQ(insn.length, c.length) << c.text;
    EXPECT_EQ(insn.kind, c.kind) << c.text << ": " << to_string(insn.kind);
    EXPECT_EQ(insn.text, c.text);
  }
}

TEST(ArchDecode, RelativeBranchTargetAndImmediatePosition) {
  // 0f 85 10 00 00 00    jnz +0x10: rel32 at byte 2
  Insn jnz = must_decode({0x0f, 0x85, 0x10, 0x00, 0x00, 0x00});
  EXPECT_EQ(jnz.target, kAt + 6 + 0x10);
  EXPECT_EQ(jnz.rel_offset, 2);
  EXPECT_EQ(jnz.rel_size, 4);
  // 74 fe                jz $ (to itself)
  Insn jz = must_decode({0x74, 0xfe});
  EXPECT_EQ(jz.target, kAt);
  EXPECT_EQ(jz.rel_size, 1);
}

TEST(ArchDecode, RipRelativeOperand) {
  // 48 8b 05 00 01 00 00          mov rax, [rip+0x100]
  Insn mov = must_decode({0x48, 0x8b, 0x05, 0x00, 0x01, 0x00, 0x00});
  EXPECT_TRUE(mov.rip_relative);
  EXPECT_EQ(mov.disp_offset, 3);
  EXPECT_EQ(mov.target, kAt + 7 + 0x100);
  EXPECT_TRUE(mov.uses(rax));
  EXPECT_FALSE(mov.uses(rcx));
  // c7 05 00 01 00 00 2a 00 00 00  mov dword [rip+0x100], 42: the immediate follows disp32
  Insn store = must_decode({0xc7, 0x05, 0x00, 0x01, 0x00, 0x00, 0x2a, 0x00, 0x00, 0x00});
  EXPECT_TRUE(store.rip_relative);
  EXPECT_EQ(store.target, kAt + 10 + 0x100);
  // 48 8b 04 24                    mov rax, [rsp]: not RIP-relative
  EXPECT_FALSE(must_decode({0x48, 0x8b, 0x04, 0x24}).rip_relative);
}

TEST(ArchDecode, ImplicitRegistersAreInTheMask) {
  // 50  push rax: rsp implicitly
  EXPECT_TRUE(must_decode({0x50}).uses(rsp));
  EXPECT_FALSE((must_decode({0x50}).explicit_gpr_mask >> rsp) & 1u);
  // 48 0f c7 0d 00 00 00 00    cmpxchg16b [rip]: rdx:rax and rcx:rbx implicitly
  Insn c = must_decode({0x48, 0x0f, 0xc7, 0x0d, 0x00, 0x00, 0x00, 0x00});
  EXPECT_TRUE(c.uses(rax) && c.uses(rdx) && c.uses(rcx) && c.uses(rbx));
  EXPECT_FALSE(c.uses(rsi));
}

TEST(ArchDecode, InvalidAndTruncatedBytesAreErrors) {
  const std::vector<std::vector<std::uint8_t>> bad = {
      {},
      {0x0f},              // truncated two-byte opcode
      {0xe9, 0x00, 0x00},  // truncated rel32
      {0x06},              // push es: invalid in 64-bit mode
  };
  for (const auto& b : bad) {
    auto r = decode(b, kAt);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().code(), Errc::not_relocatable);
    EXPECT_NE(r.error().message().find("cannot decode"), std::string::npos);
  }
}

}  // namespace
}  // namespace hp::arch
