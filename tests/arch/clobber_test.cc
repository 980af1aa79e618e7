// The vector-register walk (arch/x86_64/clobber.h): each assembly function below is a
// case the walk must see through, or must give up on. A wrong "no" here would let a
// handler corrupt the probed program's xmm registers, so every way a vector register can
// be written, reached or hidden has a case.
#include "arch/x86_64/clobber.h"

#include <sys/mman.h>

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>

extern "C" {
void hp_cw_gpr_leaf();
void hp_cw_xmm_leaf();
void hp_cw_vzeroupper();
void hp_cw_x87();
void hp_cw_mmx();
void hp_cw_ldmxcsr();
void hp_cw_branchy();
void hp_cw_loop();
void hp_cw_calls_gpr();
void hp_cw_calls_chain();
void hp_cw_jumps_to_xmm();
void hp_cw_indirect_call();
void hp_cw_indirect_jmp();
void hp_cw_implicit_fpu();
}

// clang-format off
asm(R"(
  .text
  .p2align 4
hp_cw_gpr_leaf:           # general registers only
  mov %rdi, %rax
  add $1, %rax
  cmp $5, %rax
  cmovb %rsi, %rax
  ret
  .p2align 4
hp_cw_xmm_leaf:
  pxor %xmm3, %xmm3
  ret
  .p2align 4
hp_cw_vzeroupper:         # no register operand, but zeroes every ymm upper half
  vzeroupper
  ret
  .p2align 4
hp_cw_x87:
  fld1
  fstp %st(0)
  ret
  .p2align 4
hp_cw_mmx:
  movq %rdi, %mm0
  emms
  ret
  .p2align 4
hp_cw_ldmxcsr:
  ldmxcsr (%rdi)
  ret
  .p2align 4
hp_cw_branchy:            # the vector write is on the taken side of a branch
  test %rdi, %rdi
  jz 1f
  mov %rdi, %rax
  ret
1:
  movq %rsi, %xmm0
  ret
  .p2align 4
hp_cw_loop:               # a loop back into itself: the walk must end
  xor %eax, %eax
2:
  add $1, %rax
  cmp %rdi, %rax
  jb 2b
  ret
  .p2align 4
hp_cw_calls_gpr:          # a direct call into general-register code
  push %rbx
  call hp_cw_gpr_leaf
  call hp_cw_loop
  pop %rbx
  ret
  .p2align 4
hp_cw_calls_chain:        # two calls deep, then a vector write
  call hp_cw_calls_gpr
  call hp_cw_branchy
  ret
  .p2align 4
hp_cw_jumps_to_xmm:       # a tail call (direct jmp) into vector code
  add $1, %rdi
  jmp hp_cw_xmm_leaf
  .p2align 4
hp_cw_indirect_call:      # a call the walk cannot follow
  push %rbx
  call *%rdi
  pop %rbx
  ret
  .p2align 4
hp_cw_indirect_jmp:       # a PLT stub has this shape
  jmp *hp_cw_slot(%rip)
  .p2align 4
hp_cw_implicit_fpu:       # fxrstor: no vector operand shown, all of them written
  fxrstor (%rdi)
  ret
  .data
  .p2align 3
hp_cw_slot:
  .quad 0
  .text
)");
// clang-format on

namespace hp::arch {
namespace {

std::uint64_t addr(void (*f)()) {
  return reinterpret_cast<std::uint64_t>(f);
}

TEST(VectorRegisterWalk, GeneralRegisterCodeWritesNone) {
  EXPECT_FALSE(may_write_vector_registers(addr(hp_cw_gpr_leaf)));
  EXPECT_FALSE(may_write_vector_registers(addr(hp_cw_loop)));
  EXPECT_FALSE(may_write_vector_registers(addr(hp_cw_calls_gpr)));
}

TEST(VectorRegisterWalk, EveryKindOfVectorWriteIsSeen) {
  EXPECT_TRUE(may_write_vector_registers(addr(hp_cw_xmm_leaf))) << "pxor xmm3";
  EXPECT_TRUE(may_write_vector_registers(addr(hp_cw_vzeroupper))) << "vzeroupper";
  EXPECT_TRUE(may_write_vector_registers(addr(hp_cw_x87))) << "fld1";
  EXPECT_TRUE(may_write_vector_registers(addr(hp_cw_mmx))) << "movq mm0";
  EXPECT_TRUE(may_write_vector_registers(addr(hp_cw_ldmxcsr))) << "ldmxcsr";
  EXPECT_TRUE(may_write_vector_registers(addr(hp_cw_implicit_fpu))) << "fxrstor";
}

TEST(VectorRegisterWalk, FollowsBranchesCallsAndTailCalls) {
  EXPECT_TRUE(may_write_vector_registers(addr(hp_cw_branchy))) << "on the taken side of jz";
  EXPECT_TRUE(may_write_vector_registers(addr(hp_cw_calls_chain))) << "two calls deep";
  EXPECT_TRUE(may_write_vector_registers(addr(hp_cw_jumps_to_xmm))) << "through a jmp";
}

TEST(VectorRegisterWalk, GivesUpOnWhatItCannotSee) {
  EXPECT_TRUE(may_write_vector_registers(addr(hp_cw_indirect_call)));
  EXPECT_TRUE(may_write_vector_registers(addr(hp_cw_indirect_jmp)));
  // Unmapped and unreadable code: "may write", never a fault.
  void* page = ::mmap(nullptr, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(page, MAP_FAILED);
  EXPECT_TRUE(may_write_vector_registers(reinterpret_cast<std::uint64_t>(page)));
  ::munmap(page, 4096);
  EXPECT_TRUE(may_write_vector_registers(reinterpret_cast<std::uint64_t>(page) + 16));
}

TEST(VectorRegisterWalk, AnswersAreCachedUntilForgotten) {
  // Code written at run time: first general registers only, then (same address) a vector
  // write, as when a library is unloaded and another is loaded in its place.
  auto* p = static_cast<std::uint8_t*>(
      ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(p, MAP_FAILED);
  const std::uint8_t gpr[] = {0x48, 0x89, 0xf8, 0xc3};        // mov rax, rdi; ret
  const std::uint8_t xmm[] = {0x66, 0x0f, 0xef, 0xc0, 0xc3};  // pxor xmm0, xmm0; ret
  std::memcpy(p, gpr, sizeof gpr);
  const auto a = reinterpret_cast<std::uint64_t>(p);
  EXPECT_FALSE(may_write_vector_registers(a));
  std::memcpy(p, xmm, sizeof xmm);
  EXPECT_FALSE(may_write_vector_registers(a)) << "the first answer is cached";
  forget_vector_register_walks();
  EXPECT_TRUE(may_write_vector_registers(a)) << "walked again after forget";
  ::munmap(p, 4096);
  forget_vector_register_walks();
}

TEST(VectorRegisterWalk, NullIsNoHandler) {
  EXPECT_FALSE(may_write_vector_registers(0));
}

}  // namespace
}  // namespace hp::arch
