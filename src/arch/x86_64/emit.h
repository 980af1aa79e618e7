// A tiny x86-64 emitter for the fixed instruction forms trampolines need. Hand-encoded so
// every byte is visible in the golden tests; anything exotic goes through Zydis instead.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "arch/x86_64/decode.h"

namespace hp::arch {

// rel32 reach: can a 5-byte jmp/call ending at `from_end` reach `to`?
bool in_rel32_reach(std::uint64_t from_end, std::uint64_t to) noexcept;

class Emitter {
 public:
  // `address` is where the first emitted byte will live at run time.
  // One allocation for a whole trampoline (they stay under 768 bytes), not one per doubling.
  explicit Emitter(std::uint64_t address) : address_(address) { bytes_.reserve(768); }

  std::uint64_t here() const noexcept { return address_ + bytes_.size(); }
  std::uint32_t size() const noexcept { return static_cast<std::uint32_t>(bytes_.size()); }
  std::vector<std::uint8_t>& bytes() noexcept { return bytes_; }
  std::vector<std::uint8_t> take() && { return std::move(bytes_); }

  void raw(std::span<const std::uint8_t> b) { bytes_.insert(bytes_.end(), b.begin(), b.end()); }
  void u8(std::uint8_t b) { bytes_.push_back(b); }
  void u32(std::uint32_t v);
  void u64(std::uint64_t v);
  void patch_u32(std::uint32_t at, std::uint32_t v);
  void patch_u8(std::uint32_t at, std::uint8_t v) { bytes_[at] = v; }

  void push(Gpr r);
  void pop(Gpr r);
  void push_imm8(std::int8_t v);  // 6a ib
  void pushfq() { u8(0x9c); }
  void popfq() { u8(0x9d); }
  void cld() { u8(0xfc); }
  void lea_rsp(std::int32_t disp);  // lea rsp, [rsp+disp]: moves rsp, leaves flags alone
  void mov_to_rsp_mem(std::int32_t disp, Gpr r);          // mov [rsp+disp], r
  void mov_from_rsp_mem(Gpr r, std::int32_t disp);        // mov r, [rsp+disp]
  void mov_to_mem(Gpr base, std::int32_t disp, Gpr r);    // mov [base+disp], r (base != rsp/r12)
  void mov_from_mem(Gpr r, Gpr base, std::int32_t disp);  // mov r, [base+disp] (base != rsp/r12)
  void lea(Gpr r, Gpr base, std::int32_t disp);           // base != rsp/r12
  void mov_rr(Gpr dst, Gpr src);                          // mov dst, src (64-bit)
  void movabs(Gpr r, std::uint64_t imm);                  // mov r, imm64
  void and_rsp_imm8(std::int8_t v);                       // and rsp, imm8 (writes flags)
  void movups_store(std::int32_t disp, unsigned xmm);     // movups [rsp+disp], xmmN
  void movups_load(unsigned xmm, std::int32_t disp);      // movups xmmN, [rsp+disp]
  void call_reg(Gpr r);
  void jmp_reg(Gpr r);
  void call_rel32(std::uint64_t target);  // caller checked reach
  void jmp_rel32(std::uint64_t target);   // caller checked reach
  // jmp [rip+0]; .quad target: 14 bytes, reaches anything, clobbers nothing.
  void jmp_abs(std::uint64_t target);
  // jmp rel32 when in reach, else jmp_abs.
  void jmp_to(std::uint64_t target);
  // jmp qword [rsp+disp]
  void jmp_rsp_mem(std::int32_t disp);
  void int3() { u8(0xcc); }

 private:
  void rex_w(Gpr reg, Gpr rm);
  void modrm_rsp(std::uint8_t reg, std::int32_t disp);
  void modrm_base(std::uint8_t reg, Gpr base, std::int32_t disp);

  std::uint64_t address_;
  std::vector<std::uint8_t> bytes_;
};

}  // namespace hp::arch
