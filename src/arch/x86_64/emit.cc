#include "arch/x86_64/emit.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "base/assert.h"

namespace hp::arch {
namespace {

bool fits_i8(std::int64_t v) {
  return v >= -128 && v <= 127;
}

}  // namespace

bool in_rel32_reach(std::uint64_t from_end, std::uint64_t to) noexcept {
  const auto d = static_cast<std::int64_t>(to - from_end);
  return d >= std::numeric_limits<std::int32_t>::min() &&
         d <= std::numeric_limits<std::int32_t>::max();
}

void Emitter::grow(std::size_t n) {
  std::size_t want = std::max<std::size_t>(kInitialCapacity, 2 * bytes_.size());
  want = std::max<std::size_t>(want, std::size_t{size_} + n);
  bytes_.resize(want);
}

void Emitter::patch_u32(std::uint32_t at, std::uint32_t v) {
  HP_CHECK(at + 4 <= size_);
  std::memcpy(&bytes_[at], &v, 4);
}

void Emitter::op_base(std::uint8_t rex, std::uint8_t opcode, unsigned reg, Gpr base,
                      std::int32_t disp) {
  HP_CHECK((base & 7) != 4);  // rsp/r12 would need a SIB byte
  std::uint8_t* p = open();
  p[0] = rex;
  p[1] = opcode;
  if (disp == 0 && (base & 7) != 5) {
    p[2] = modrm(0, reg, base);
    commit(3);
  } else if (fits_i8(disp)) {
    p[2] = modrm(1, reg, base);
    p[3] = static_cast<std::uint8_t>(disp);
    commit(4);
  } else {
    p[2] = modrm(2, reg, base);
    std::memcpy(p + 3, &disp, 4);
    commit(7);
  }
}

void Emitter::push(Gpr r) {
  if (r >= r8) u8(0x41);
  u8(static_cast<std::uint8_t>(0x50 + (r & 7)));
}

void Emitter::pop(Gpr r) {
  if (r >= r8) u8(0x41);
  u8(static_cast<std::uint8_t>(0x58 + (r & 7)));
}

void Emitter::push_imm8(std::int8_t v) {
  std::uint8_t* p = room(2);
  p[0] = 0x6a;
  p[1] = static_cast<std::uint8_t>(v);
}

void Emitter::mov_to_mem(Gpr base, std::int32_t disp, Gpr r) {
  op_base(rex_w(r, base), 0x89, r, base, disp);
}

void Emitter::mov_from_mem(Gpr r, Gpr base, std::int32_t disp) {
  op_base(rex_w(r, base), 0x8b, r, base, disp);
}

void Emitter::lea(Gpr r, Gpr base, std::int32_t disp) {
  op_base(rex_w(r, base), 0x8d, r, base, disp);
}

void Emitter::mov_rr(Gpr dst, Gpr src) {
  std::uint8_t* p = room(3);
  p[0] = rex_w(src, dst);
  p[1] = 0x89;
  p[2] = modrm(3, src, dst);
}

void Emitter::movabs(Gpr r, std::uint64_t imm) {
  std::uint8_t* p = room(10);
  p[0] = static_cast<std::uint8_t>(0x48 | (r >= r8));
  p[1] = static_cast<std::uint8_t>(0xb8 + (r & 7));
  std::memcpy(p + 2, &imm, 8);
}

void Emitter::and_rsp_imm8(std::int8_t v) {
  std::uint8_t* p = room(4);
  p[0] = 0x48;
  p[1] = 0x83;
  p[2] = modrm(3, 4, rsp);
  p[3] = static_cast<std::uint8_t>(v);
}

void Emitter::movups_store(std::int32_t disp, unsigned xmm) {
  if (xmm >= 8) u8(0x44);
  op_rsp(0x0f, 0x11, xmm, disp);
}

void Emitter::movups_load(unsigned xmm, std::int32_t disp) {
  if (xmm >= 8) u8(0x44);
  op_rsp(0x0f, 0x10, xmm, disp);
}

void Emitter::call_reg(Gpr r) {
  if (r >= r8) u8(0x41);
  u8(0xff);
  u8(modrm(3, 2, r));
}

void Emitter::jmp_reg(Gpr r) {
  if (r >= r8) u8(0x41);
  u8(0xff);
  u8(modrm(3, 4, r));
}

void Emitter::call_rel32(std::uint64_t target) {
  HP_CHECK(in_rel32_reach(here() + 5, target));
  u8(0xe8);
  u32(static_cast<std::uint32_t>(target - (here() + 4)));
}

void Emitter::jmp_rel32(std::uint64_t target) {
  HP_CHECK(in_rel32_reach(here() + 5, target));
  u8(0xe9);
  u32(static_cast<std::uint32_t>(target - (here() + 4)));
}

void Emitter::jmp_abs(std::uint64_t target) {
  std::uint8_t* p = room(14);
  p[0] = 0xff;
  p[1] = 0x25;
  std::memset(p + 2, 0, 4);
  std::memcpy(p + 6, &target, 8);
}

void Emitter::jmp_to(std::uint64_t target) {
  if (in_rel32_reach(here() + 5, target)) {
    jmp_rel32(target);
  } else {
    jmp_abs(target);
  }
}

void Emitter::jmp_to(std::uint64_t target, std::uint8_t value) {
  const std::uint32_t start = size_;
  jmp_to(target);
  if (size_ - start == 5) {
    label({size_ - 4, 0, Fixup::rel32, value});
  } else {
    label({size_ - 8, start + 5, Fixup::abs64_far, value});
  }
}

void Emitter::call_to(std::uint64_t target, std::uint8_t value) {
  const std::uint32_t start = size_;
  if (in_rel32_reach(here() + 5, target)) {
    call_rel32(target);
    label({size_ - 4, 0, Fixup::rel32, value});
  } else {
    movabs(rax, target);
    label({size_ - 8, start + 5, Fixup::abs64_far, value});
    call_reg(rax);
  }
}

void Emitter::jmp_rsp_mem(std::int32_t disp) {
  op_rsp(0xff, 4, disp);
}

}  // namespace hp::arch
