#include "arch/x86_64/emit.h"

#include <limits>

#include "base/assert.h"

namespace hp::arch {
namespace {

bool fits_i8(std::int64_t v) {
  return v >= -128 && v <= 127;
}

std::uint8_t modrm(std::uint8_t mod, std::uint8_t reg, std::uint8_t rm) {
  return static_cast<std::uint8_t>((mod << 6) | ((reg & 7) << 3) | (rm & 7));
}

}  // namespace

bool in_rel32_reach(std::uint64_t from_end, std::uint64_t to) noexcept {
  const auto d = static_cast<std::int64_t>(to - from_end);
  return d >= std::numeric_limits<std::int32_t>::min() &&
         d <= std::numeric_limits<std::int32_t>::max();
}

void Emitter::u32(std::uint32_t v) {
  for (int i = 0; i < 4; ++i)
    u8(static_cast<std::uint8_t>(v >> (8 * i)));
}

void Emitter::u64(std::uint64_t v) {
  for (int i = 0; i < 8; ++i)
    u8(static_cast<std::uint8_t>(v >> (8 * i)));
}

void Emitter::patch_u32(std::uint32_t at, std::uint32_t v) {
  HP_CHECK(at + 4 <= bytes_.size());
  for (int i = 0; i < 4; ++i)
    bytes_[at + i] = static_cast<std::uint8_t>(v >> (8 * i));
}

void Emitter::rex_w(Gpr reg, Gpr rm) {
  u8(static_cast<std::uint8_t>(0x48 | ((reg >= r8) << 2) | (rm >= r8)));
}

// [rsp+disp] needs a SIB byte (0x24: no index, base rsp).
void Emitter::modrm_rsp(std::uint8_t reg, std::int32_t disp) {
  if (disp == 0) {
    u8(modrm(0, reg, 4));
    u8(0x24);
  } else if (fits_i8(disp)) {
    u8(modrm(1, reg, 4));
    u8(0x24);
    u8(static_cast<std::uint8_t>(disp));
  } else {
    u8(modrm(2, reg, 4));
    u8(0x24);
    u32(static_cast<std::uint32_t>(disp));
  }
}

void Emitter::modrm_base(std::uint8_t reg, Gpr base, std::int32_t disp) {
  HP_CHECK((base & 7) != 4);  // rsp/r12 would need a SIB byte
  if (disp == 0 && (base & 7) != 5) {
    u8(modrm(0, reg, base));
  } else if (fits_i8(disp)) {
    u8(modrm(1, reg, base));
    u8(static_cast<std::uint8_t>(disp));
  } else {
    u8(modrm(2, reg, base));
    u32(static_cast<std::uint32_t>(disp));
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
  u8(0x6a);
  u8(static_cast<std::uint8_t>(v));
}

void Emitter::lea_rsp(std::int32_t disp) {
  u8(0x48);
  u8(0x8d);
  modrm_rsp(4, disp);
}

void Emitter::mov_to_rsp_mem(std::int32_t disp, Gpr r) {
  rex_w(r, rsp);
  u8(0x89);
  modrm_rsp(r, disp);
}

void Emitter::mov_from_rsp_mem(Gpr r, std::int32_t disp) {
  rex_w(r, rsp);
  u8(0x8b);
  modrm_rsp(r, disp);
}

void Emitter::mov_to_mem(Gpr base, std::int32_t disp, Gpr r) {
  rex_w(r, base);
  u8(0x89);
  modrm_base(r, base, disp);
}

void Emitter::mov_from_mem(Gpr r, Gpr base, std::int32_t disp) {
  rex_w(r, base);
  u8(0x8b);
  modrm_base(r, base, disp);
}

void Emitter::lea(Gpr r, Gpr base, std::int32_t disp) {
  rex_w(r, base);
  u8(0x8d);
  modrm_base(r, base, disp);
}

void Emitter::mov_rr(Gpr dst, Gpr src) {
  rex_w(src, dst);
  u8(0x89);
  u8(modrm(3, src, dst));
}

void Emitter::movabs(Gpr r, std::uint64_t imm) {
  u8(static_cast<std::uint8_t>(0x48 | (r >= r8)));
  u8(static_cast<std::uint8_t>(0xb8 + (r & 7)));
  u64(imm);
}

void Emitter::and_rsp_imm8(std::int8_t v) {
  u8(0x48);
  u8(0x83);
  u8(modrm(3, 4, rsp));
  u8(static_cast<std::uint8_t>(v));
}

void Emitter::movups_store(std::int32_t disp, unsigned xmm) {
  if (xmm >= 8) u8(0x44);
  u8(0x0f);
  u8(0x11);
  modrm_rsp(static_cast<std::uint8_t>(xmm), disp);
}

void Emitter::movups_load(unsigned xmm, std::int32_t disp) {
  if (xmm >= 8) u8(0x44);
  u8(0x0f);
  u8(0x10);
  modrm_rsp(static_cast<std::uint8_t>(xmm), disp);
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
  u8(0xff);
  u8(0x25);
  u32(0);
  u64(target);
}

void Emitter::jmp_to(std::uint64_t target) {
  if (in_rel32_reach(here() + 5, target)) {
    jmp_rel32(target);
  } else {
    jmp_abs(target);
  }
}

void Emitter::jmp_rsp_mem(std::int32_t disp) {
  u8(0xff);
  modrm_rsp(4, disp);
}

}  // namespace hp::arch
