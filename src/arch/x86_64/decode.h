// Decoding and classification of one x86-64 instruction (Zydis stays inside decode.cc).
//
// Everything above this layer reasons about instructions through Insn: its length, its
// text for error messages, what kind of control transfer it is, where its relative
// immediate or RIP-relative displacement lives in its bytes, and which general registers
// it touches (so the relocator can pick a scratch register the instruction does not use).
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "base/error.h"

namespace hp::arch {

enum class InsnKind : std::uint8_t {
  other,          // falls through to the next instruction
  jmp_rel,        // jmp rel8 / rel32
  jcc_rel,        // jcc rel8 / rel32
  loop_rel,       // loop, loope, loopne, jrcxz, jecxz (rel8 only)
  call_rel,       // call rel32
  xbegin,         // xbegin rel32: relative, but its abort path cannot be re-encoded safely
  ret,            // ret, ret imm16
  jmp_indirect,   // jmp r/m64
  call_indirect,  // call r/m64
  int3,           // int3 (0xCC)
  syscall,        // syscall (writes the next rip to rcx)
  endbr64,        // CET landing pad
  trap,           // ud2, hlt, int n, into, int1: never falls through normally
  far_transfer,   // jmp/call/ret far, iret, sysret, ...
};

std::string_view to_string(InsnKind kind) noexcept;

// Bits of Insn::gpr_mask, one per 64-bit general register in encoding order.
enum Gpr : std::uint8_t {
  rax,
  rcx,
  rdx,
  rbx,
  rsp,
  rbp,
  rsi,
  rdi,
  r8,
  r9,
  r10,
  r11,
  r12,
  r13,
  r14,
  r15,
};

struct Insn {
  std::uint64_t address = 0;  // runtime address the bytes were decoded for
  std::uint8_t length = 0;
  InsnKind kind = InsnKind::other;
  // Relative branch (jmp_rel ... xbegin): the immediate's position and width in bytes.
  std::uint8_t rel_offset = 0, rel_size = 0;
  // RIP-relative memory operand: the disp32's position in the bytes (size is always 4).
  bool rip_relative = false;
  std::uint8_t disp_offset = 0;
  // Branch target for relative branches, effective address for RIP-relative operands.
  std::uint64_t target = 0;
  // General registers read or written, explicitly or implicitly (rsp for push/pop/call).
  std::uint16_t gpr_mask = 0;
  // The same, for explicit operands only (call [rsp+8] uses rsp explicitly; push rax not).
  std::uint16_t explicit_gpr_mask = 0;
  // Offset of the ModRM byte, 0 when there is none.
  std::uint8_t modrm_offset = 0;
  // Intel syntax, e.g. "jne 0x401020", for messages and golden tests. Empty when decoded
  // without text (the whole-function sweep): text_of() formats it on demand.
  std::string text;
  std::array<std::uint8_t, 15> raw{};  // the instruction's bytes

  std::uint64_t end() const noexcept { return address + length; }
  bool is_relative_branch() const noexcept {
    return kind == InsnKind::jmp_rel || kind == InsnKind::jcc_rel || kind == InsnKind::loop_rel ||
           kind == InsnKind::call_rel || kind == InsnKind::xbegin;
  }
  // Control never reaches the next instruction by falling through.
  bool ends_flow() const noexcept {
    return kind == InsnKind::jmp_rel || kind == InsnKind::ret || kind == InsnKind::jmp_indirect ||
           kind == InsnKind::trap || kind == InsnKind::far_transfer;
  }
  bool uses(Gpr r) const noexcept { return (gpr_mask >> r) & 1u; }
};

// Decodes the instruction at the start of `bytes`, which sit at runtime address `address`.
// Fails with Errc::not_relocatable ("cannot decode ...") on invalid or truncated bytes.
// Formatting the text costs more than decoding; the sweep over a whole function decodes
// without it (with_text = false).
Result<Insn> decode(std::span<const std::uint8_t> bytes, std::uint64_t address,
                    bool with_text = true);

// The instruction's shape only: length, kind, raw bytes, ModRM offset and, for relative
// branches and RIP-relative operands, their offsets and target. The register masks are
// left 0 for every other instruction. About half the cost of decode(): operands are
// decoded only for an instruction with a relative operand (which gets decode()'s full
// answer). For sweeps over whole functions; the relocator asks decode() where it needs
// registers.
Result<Insn> decode_shape(std::span<const std::uint8_t> bytes, std::uint64_t address);

// Remembers `insns` (from decode_shape() or decode()) on this thread: decode_shape() of
// the same bytes at the same address answers from them, without decoding, until another
// instruction takes their slot (a few slots, by address). The planner remembers the
// displaced instructions, which the relocator decodes again right after.
void remember_shapes(std::span<const Insn> insns);

// The instruction's text, formatted now if it was decoded without.
std::string text_of(const Insn& insn);

// Maximum x86 instruction length.
inline constexpr unsigned kMaxInsnLength = 15;

}  // namespace hp::arch

namespace hp::arch::detail {
// decode_shape()'s own decoder for the most common instructions (no Zydis): true with
// `insn` filled as decode_shape() would, or false (not one of them; Zydis decides).
bool quick_shape(std::span<const std::uint8_t> bytes, std::uint64_t address, Insn& insn);

// Re-encodes `insn_bytes` (one instruction with a RIP-relative memory operand) with that
// operand's base replaced by `base` and its displacement by 0: [rip+X] -> [base]. Used by
// the relocator's far case; lives here so Zydis stays in one file.
Result<std::vector<std::uint8_t>> rebase_rip_operand(std::span<const std::uint8_t> insn_bytes,
                                                     std::uint64_t address, Gpr base);
}  // namespace hp::arch::detail
