// A tiny x86-64 emitter for the fixed instruction forms trampolines need. Hand-encoded so
// every byte is visible in the golden tests; anything exotic goes through Zydis instead.
#pragma once

#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "arch/x86_64/decode.h"

namespace hp::arch {

// rel32 reach: can a 5-byte jmp/call ending at `from_end` reach `to`?
bool in_rel32_reach(std::uint64_t from_end, std::uint64_t to) noexcept;

// A labelled field of emitted code: where it is and what goes there, so that a copy of the
// code can be filled in again for another site without emitting it again (the entry
// template of core/x86_64/trampoline.h; the kernel's optprobes label the fields of their
// template the same way, optprobe_template_*). Recorded only while an Emitter records.
struct Fixup {
  enum Kind : std::uint8_t {
    rel32_internal,  // rel32 to `target`, an offset in the same code
    rel32,           // rel32 to value `value`
    abs64,           // value `value`, 8 bytes
    abs64_far,       // value `value`, 8 bytes: the long form of a branch, taken because a
                     // rel32 ending at offset `target` would not reach it
  };
  std::uint32_t at = 0;
  std::uint32_t target = 0;
  Kind kind = abs64;
  std::uint8_t value = 0;  // which value: the caller's numbering (arch/x86_64/frame.h)
};

class Emitter {
 public:
  // `address` is where the first emitted byte will live at run time.
  // One allocation for a whole trampoline (they stay under 768 bytes), not one per doubling;
  // bytes are stored through a pointer with one capacity check per instruction, not a
  // push_back per byte (a trampoline is about 600 bytes, emitted for every site of a batch).
  explicit Emitter(std::uint64_t address) : address_(address) { grow(kInitialCapacity); }
  // The same, in the allocation of `buffer` (what an earlier take() returned).
  // Its old bytes are left as they are (overwritten as code is emitted, never read).
  Emitter(std::uint64_t address, std::vector<std::uint8_t>&& buffer)
      : address_(address), bytes_(std::move(buffer)) {
    if (bytes_.size() < kInitialCapacity) bytes_.resize(kInitialCapacity);
  }

  std::uint64_t here() const noexcept { return address_ + size_; }
  std::uint32_t size() const noexcept { return size_; }
  // The buffer: [0, size()) is the code so far; it may be longer (spare capacity), so
  // index it, do not ask its size.
  std::vector<std::uint8_t>& bytes() noexcept { return bytes_; }
  std::vector<std::uint8_t> take() && {
    bytes_.resize(size_);
    return std::move(bytes_);
  }

  void raw(std::span<const std::uint8_t> b) {
    if (!b.empty()) std::memcpy(room(b.size()), b.data(), b.size());
  }
  void u8(std::uint8_t b) { *room(1) = b; }
  void u32(std::uint32_t v) { std::memcpy(room(4), &v, 4); }  // little-endian (x86-64)
  void u64(std::uint64_t v) { std::memcpy(room(8), &v, 8); }
  void patch_u32(std::uint32_t at, std::uint32_t v);
  void patch_u8(std::uint32_t at, std::uint8_t v) { bytes_[at] = v; }

  void push(Gpr r);
  void pop(Gpr r);
  void push_imm8(std::int8_t v);  // 6a ib
  void pushfq() { u8(0x9c); }
  void popfq() { u8(0x9d); }
  void cld() { u8(0xfc); }
  // lea rsp, [rsp+disp]: moves rsp, leaves flags alone
  void lea_rsp(std::int32_t disp) { op_rsp(0x48, 0x8d, 4, disp); }
  // mov [rsp+disp], r
  void mov_to_rsp_mem(std::int32_t disp, Gpr r) { op_rsp(rex_w(r, rsp), 0x89, r, disp); }
  // mov r, [rsp+disp]
  void mov_from_rsp_mem(Gpr r, std::int32_t disp) { op_rsp(rex_w(r, rsp), 0x8b, r, disp); }
  // mov qword [rsp+disp], imm32 (sign-extended)
  void mov_rsp_mem_imm32(std::int32_t disp, std::int32_t imm) {
    op_rsp(0x48, 0xc7, 0, disp);
    u32(static_cast<std::uint32_t>(imm));
  }
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

  // Labelled forms (Fixup): the same bytes, and a label while recording.
  void record_fixups(std::vector<Fixup>* out) noexcept { fixups_ = out; }
  void label(const Fixup& f) {
    if (fixups_) fixups_->push_back(f);
  }
  // The rel32 field at `at` = a branch to offset `target` of this code.
  void rel32_at(std::uint32_t at, std::uint32_t target) {
    patch_u32(at, target - (at + 4));
    label({at, target, Fixup::rel32_internal, 0});
  }
  // jmp rel32 to offset `target` of this code.
  void jmp_rel32_to_offset(std::uint32_t target) {
    jmp_rel32(address_ + target);
    label({size_ - 4, target, Fixup::rel32_internal, 0});
  }
  void movabs(Gpr r, std::uint64_t imm, std::uint8_t value) {
    movabs(r, imm);
    label({size_ - 8, 0, Fixup::abs64, value});
  }
  void jmp_to(std::uint64_t target, std::uint8_t value);
  // call rel32 when in reach, else movabs rax, target; call rax.
  void call_to(std::uint64_t target, std::uint8_t value);

 private:
  static constexpr std::uint32_t kInitialCapacity = 768;
  static constexpr std::uint32_t kMaxInsn = 15;
  // Where the next `n` bytes go (they count as emitted once this returns).
  std::uint8_t* room(std::size_t n) {
    if (bytes_.size() - size_ < n) grow(n);
    std::uint8_t* p = bytes_.data() + size_;
    size_ += static_cast<std::uint32_t>(n);
    return p;
  }
  // Room for one instruction of up to kMaxInsn bytes, which counts once commit()ted.
  std::uint8_t* open() {
    if (bytes_.size() - size_ < kMaxInsn) grow(kMaxInsn);
    return bytes_.data() + size_;
  }
  void commit(unsigned n) { size_ += n; }
  void grow(std::size_t n);

  static std::uint8_t rex_w(Gpr reg, Gpr rm) {
    return static_cast<std::uint8_t>(0x48 | ((reg >= r8) << 2) | (rm >= r8));
  }
  static std::uint8_t modrm(unsigned mod, unsigned reg, unsigned rm) {
    return static_cast<std::uint8_t>((mod << 6) | ((reg & 7) << 3) | (rm & 7));
  }
  // ModRM, SIB 0x24 (no index, base rsp) and the displacement of [rsp+disp], at `p`;
  // returns their length.
  static unsigned rsp_operand(std::uint8_t* p, unsigned reg, std::int32_t disp) {
    p[1] = 0x24;
    if (disp == 0) {
      p[0] = modrm(0, reg, 4);
      return 2;
    }
    if (disp >= -128 && disp <= 127) {
      p[0] = modrm(1, reg, 4);
      p[2] = static_cast<std::uint8_t>(disp);
      return 3;
    }
    p[0] = modrm(2, reg, 4);
    std::memcpy(p + 2, &disp, 4);
    return 6;
  }
  // [prefix] opcode, then a [rsp+disp] operand.
  void op_rsp(std::uint8_t prefix, std::uint8_t opcode, unsigned reg, std::int32_t disp) {
    std::uint8_t* p = open();
    p[0] = prefix;
    p[1] = opcode;
    commit(2 + rsp_operand(p + 2, reg, disp));
  }
  void op_rsp(std::uint8_t opcode, unsigned reg, std::int32_t disp) {
    std::uint8_t* p = open();
    p[0] = opcode;
    commit(1 + rsp_operand(p + 1, reg, disp));
  }
  // REX.W opcode, then a [base+disp] operand (base not rsp/r12).
  void op_base(std::uint8_t rex, std::uint8_t opcode, unsigned reg, Gpr base, std::int32_t disp);

  std::uint64_t address_;
  std::uint32_t size_ = 0;
  std::vector<std::uint8_t> bytes_;
  std::vector<Fixup>* fixups_ = nullptr;
};

}  // namespace hp::arch
