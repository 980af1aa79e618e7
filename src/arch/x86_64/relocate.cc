#include "arch/x86_64/relocate.h"

#include <cinttypes>
#include <cstdio>
#include <string>

#include "arch/x86_64/decode.h"

namespace hp::arch {
namespace {

Error refuse(const Insn& insn, std::uint32_t offset, const char* reason) {
  char where[48];
  std::snprintf(where, sizeof where, " at +0x%" PRIx32 ": ", offset);
  return Error(Errc::not_relocatable, "`" + text_of(insn) + "`" + where + reason);
}

std::uint32_t lo32(std::uint64_t v) {
  return static_cast<std::uint32_t>(v);
}

// Scratch registers for the far RIP-relative case, in order of preference. rsp and r12
// need a SIB byte as a base and rsp is the stack; both are never chosen.
constexpr Gpr kScratchOrder[] = {rax, rcx, rdx, rbx, rsi, rdi, rbp,
                                 r8,  r9,  r10, r11, r13, r14, r15};

void emit_push_return_address(Emitter& e, std::uint64_t ret) {
  if (ret <= 0x7fffffffu) {
    e.u8(0x68);  // push imm32 (sign-extended; fits)
    e.u32(lo32(ret));
    return;
  }
  e.lea_rsp(-8);
  const std::uint8_t lo[] = {0xc7, 0x04, 0x24};  // mov dword [rsp], imm32
  e.raw(lo);
  e.u32(lo32(ret));
  const std::uint8_t hi[] = {0xc7, 0x44, 0x24, 0x04};  // mov dword [rsp+4], imm32
  e.raw(hi);
  e.u32(lo32(ret >> 32));
}

void emit_jcc(Emitter& e, std::uint8_t cc, std::uint64_t target) {
  if (in_rel32_reach(e.here() + 6, target)) {
    e.u8(0x0f);
    e.u8(static_cast<std::uint8_t>(0x80 | cc));
    e.u32(lo32(target - (e.here() + 4)));
  } else {
    e.u8(static_cast<std::uint8_t>(0x70 | (cc ^ 1)));  // inverted condition skips the far jump
    e.u8(14);
    e.jmp_abs(target);
  }
}

// lea r64, [rip+X] with only a REX.W prefix: the common far case, done without the stack.
bool is_plain_lea64(std::span<const std::uint8_t> b, const Insn& insn) {
  return insn.length == 7 && (b[0] & 0xf8) == 0x48 && b[1] == 0x8d && insn.disp_offset == 3;
}

Result<void> relocate_rip_relative(Emitter& e, std::span<const std::uint8_t> b, const Insn& insn,
                                   std::uint32_t offset) {
  const std::uint64_t new_end = e.here() + insn.length;
  if (in_rel32_reach(new_end, insn.target)) {
    const std::uint32_t at = e.size() + insn.disp_offset;
    e.raw(b);
    e.patch_u32(at, lo32(insn.target - new_end));
    return {};
  }
  if (insn.kind == InsnKind::jmp_indirect || insn.kind == InsnKind::call_indirect) {
    return refuse(insn, offset,
                  "RIP-relative control transfer whose operand is out of reach of the trampoline");
  }
  if (is_plain_lea64(b, insn)) {
    const auto dst = static_cast<Gpr>(((b[0] >> 2) & 1) << 3 | ((b[2] >> 3) & 7));
    e.movabs(dst, insn.target);
    return {};
  }
  if (insn.uses(rsp)) {
    return refuse(insn, offset, "RIP-relative operand out of reach and the instruction uses rsp");
  }
  Gpr scratch = rsp;
  for (Gpr r : kScratchOrder) {
    if (!insn.uses(r)) {
      scratch = r;
      break;
    }
  }
  if (scratch == rsp)
    return refuse(insn, offset, "no scratch register for the far RIP-relative case");
  auto rebased = detail::rebase_rip_operand(b, insn.address, scratch);
  if (!rebased.ok()) return refuse(insn, offset, rebased.error().message().c_str());
  e.lea_rsp(-128);
  e.push(scratch);
  e.movabs(scratch, insn.target);
  e.raw(rebased.value());
  e.pop(scratch);
  e.lea_rsp(128);
  return {};
}

}  // namespace

std::optional<std::uint32_t> Relocation::relocated_offset(std::uint32_t original_offset) const {
  for (const OffsetPair& p : map) {
    if (p.original == original_offset) return p.relocated;
  }
  return std::nullopt;
}

Result<void> relocate_into(Emitter& e, std::span<const std::uint8_t> original,
                           std::uint64_t original_address, std::vector<OffsetPair>& map) {
  std::uint32_t off = 0;
  const auto total = static_cast<std::uint32_t>(original.size());
  map.reserve(map.size() + total + 1);  // at most one pair per byte, plus the end
  while (off < total) {
    // The shape first; the registers only where they are used (an indirect call, a far
    // RIP-relative operand, which decode_shape fully decodes anyway). No text: refuse()
    // formats it only when it is needed.
    auto decoded = decode_shape(original.subspan(off), original_address + off);
    if (decoded.ok() && decoded->kind == InsnKind::call_indirect && !decoded->rip_relative) {
      decoded = decode(original.subspan(off), original_address + off, /*with_text=*/false);
    }
    if (!decoded.ok()) return decoded.error();
    const Insn& insn = decoded.value();
    const auto b = original.subspan(off, insn.length);
    const std::uint32_t next = off + insn.length;
    map.push_back({off, e.size()});

    if (insn.kind == InsnKind::call_indirect) {
      // call r/m -> push the original return address; jmp r/m (ModRM /2 -> /4).
      if (next != total) {
        return refuse(insn, off,
                      "call before the end of the displaced bytes: its return would land "
                      "inside them");
      }
      if ((insn.explicit_gpr_mask >> rsp) & 1u) {
        return refuse(insn, off, "indirect call through an rsp-relative operand");
      }
      if (insn.modrm_offset == 0 || b[insn.modrm_offset - 1] != 0xff) {
        return refuse(insn, off, "unexpected encoding of an indirect call");
      }
      emit_push_return_address(e, original_address + next);
      std::vector<std::uint8_t> as_jmp(b.begin(), b.end());
      as_jmp[insn.modrm_offset] =
          static_cast<std::uint8_t>((as_jmp[insn.modrm_offset] & 0xc7) | (4 << 3));
      Insn jmp = insn;
      jmp.kind = InsnKind::jmp_indirect;
      if (jmp.rip_relative) {
        HP_TRY(relocate_rip_relative(e, as_jmp, jmp, off));
      } else {
        e.raw(as_jmp);
      }
      off = next;
      continue;
    }
    if (insn.rip_relative) {
      HP_TRY(relocate_rip_relative(e, b, insn, off));
      off = next;
      continue;
    }
    switch (insn.kind) {
      case InsnKind::int3:
        return refuse(insn, off, "a breakpoint (someone else's int3) cannot be moved");
      case InsnKind::xbegin:
        return refuse(insn, off, "relative instruction that cannot be re-encoded");
      case InsnKind::far_transfer:
        return refuse(insn, off, "far control transfer");
      case InsnKind::jmp_rel:
        e.jmp_to(insn.target);
        break;
      case InsnKind::jcc_rel: {
        const std::uint8_t opcode = b[insn.rel_offset - 1];
        emit_jcc(e, opcode & 0x0f, insn.target);
        break;
      }
      case InsnKind::loop_rel: {
        // loopcc taken -> the jump to the target; not taken -> over it.
        e.raw(b.first(insn.rel_offset));
        e.u8(2);
        e.u8(0xeb);
        const std::uint32_t skip_at = e.size();
        e.u8(0);
        const std::uint32_t taken = e.size();
        e.jmp_to(insn.target);
        e.patch_u8(skip_at, static_cast<std::uint8_t>(e.size() - taken));
        break;
      }
      case InsnKind::call_rel:
        if (next != total) {
          return refuse(insn, off,
                        "call before the end of the displaced bytes: its return would land "
                        "inside them");
        }
        emit_push_return_address(e, original_address + next);
        e.jmp_to(insn.target);
        break;
      default:
        e.raw(b);
        break;
    }
    off = next;
  }
  map.push_back({total, e.size()});
  return {};
}

Result<Relocation> relocate(std::span<const std::uint8_t> original, std::uint64_t original_address,
                            std::uint64_t new_address) {
  Emitter e(new_address);
  Relocation r;
  HP_TRY(relocate_into(e, original, original_address, r.map));
  r.original_length = static_cast<std::uint32_t>(original.size());
  r.code = std::move(e).take();
  return r;
}

Result<Relocation> relocate_with_jmp_back(std::span<const std::uint8_t> original,
                                          std::uint64_t original_address,
                                          std::uint64_t new_address) {
  Emitter e(new_address);
  Relocation r;
  HP_TRY(relocate_into(e, original, original_address, r.map));
  e.jmp_to(original_address + original.size());
  r.original_length = static_cast<std::uint32_t>(original.size());
  r.code = std::move(e).take();
  return r;
}

}  // namespace hp::arch
