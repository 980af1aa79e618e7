#include "arch/x86_64/decode.h"

#include <algorithm>

#include <Zydis/Zydis.h>

#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <tuple>

namespace hp::arch {
namespace {

struct Decoder {
  ZydisDecoder decoder;
  ZydisFormatter formatter;
  Decoder() {
    ZydisDecoderInit(&decoder, ZYDIS_MACHINE_MODE_LONG_64, ZYDIS_STACK_WIDTH_64);
    ZydisFormatterInit(&formatter, ZYDIS_FORMATTER_STYLE_INTEL);
    ZydisFormatterSetProperty(&formatter, ZYDIS_FORMATTER_PROP_FORCE_SIZE, ZYAN_FALSE);
  }
};

const Decoder& decoder() {
  static const Decoder d;
  return d;
}

std::string hex_bytes(std::span<const std::uint8_t> bytes) {
  std::string out;
  char buf[4];
  for (std::size_t i = 0; i < bytes.size() && i < kMaxInsnLength; ++i) {
    std::snprintf(buf, sizeof buf, i ? " %02x" : "%02x", bytes[i]);
    out += buf;
  }
  return out;
}

int gpr_index(ZydisRegister reg) {
  if (reg == ZYDIS_REGISTER_NONE) return -1;
  ZydisRegister full = ZydisRegisterGetLargestEnclosing(ZYDIS_MACHINE_MODE_LONG_64, reg);
  if (full >= ZYDIS_REGISTER_RAX && full <= ZYDIS_REGISTER_R15) return full - ZYDIS_REGISTER_RAX;
  return -1;
}

std::uint16_t gpr_mask_of(unsigned count, const ZydisDecodedOperand* ops) {
  std::uint16_t mask = 0;
  auto add = [&](ZydisRegister r) {
    int i = gpr_index(r);
    if (i >= 0) mask |= static_cast<std::uint16_t>(1u << i);
  };
  for (unsigned i = 0; i < count; ++i) {
    const ZydisDecodedOperand& op = ops[i];
    if (op.type == ZYDIS_OPERAND_TYPE_REGISTER) add(op.reg.value);
    if (op.type == ZYDIS_OPERAND_TYPE_MEMORY) {
      add(op.mem.base);
      add(op.mem.index);
    }
  }
  return mask;
}

InsnKind classify(const ZydisDecodedInstruction& in) {
  // ZYDIS_ATTRIB_IS_RELATIVE also covers [rip+X]; a relative branch has a relative immediate.
  const bool relative = in.raw.imm[0].is_relative || in.raw.imm[1].is_relative;
  switch (in.mnemonic) {
    case ZYDIS_MNEMONIC_ENDBR64:
      return InsnKind::endbr64;
    case ZYDIS_MNEMONIC_INT3:
      return InsnKind::int3;
    case ZYDIS_MNEMONIC_SYSCALL:
      return InsnKind::syscall;
    case ZYDIS_MNEMONIC_UD0:
    case ZYDIS_MNEMONIC_UD1:
    case ZYDIS_MNEMONIC_UD2:
    case ZYDIS_MNEMONIC_HLT:
    case ZYDIS_MNEMONIC_INT:
    case ZYDIS_MNEMONIC_INT1:
    case ZYDIS_MNEMONIC_INTO:
      return InsnKind::trap;
    case ZYDIS_MNEMONIC_IRET:
    case ZYDIS_MNEMONIC_IRETD:
    case ZYDIS_MNEMONIC_IRETQ:
    case ZYDIS_MNEMONIC_SYSRET:
    case ZYDIS_MNEMONIC_SYSEXIT:
    case ZYDIS_MNEMONIC_SYSENTER:
      return InsnKind::far_transfer;
    case ZYDIS_MNEMONIC_RET:
      return in.meta.branch_type == ZYDIS_BRANCH_TYPE_FAR ? InsnKind::far_transfer : InsnKind::ret;
    case ZYDIS_MNEMONIC_JMP:
      if (in.meta.branch_type == ZYDIS_BRANCH_TYPE_FAR) return InsnKind::far_transfer;
      return relative ? InsnKind::jmp_rel : InsnKind::jmp_indirect;
    case ZYDIS_MNEMONIC_CALL:
      if (in.meta.branch_type == ZYDIS_BRANCH_TYPE_FAR) return InsnKind::far_transfer;
      return relative ? InsnKind::call_rel : InsnKind::call_indirect;
    case ZYDIS_MNEMONIC_LOOP:
    case ZYDIS_MNEMONIC_LOOPE:
    case ZYDIS_MNEMONIC_LOOPNE:
    case ZYDIS_MNEMONIC_JRCXZ:
    case ZYDIS_MNEMONIC_JECXZ:
    case ZYDIS_MNEMONIC_JCXZ:
      return InsnKind::loop_rel;
    case ZYDIS_MNEMONIC_XBEGIN:
      return InsnKind::xbegin;
    default:
      break;
  }
  if (in.meta.category == ZYDIS_CATEGORY_COND_BR && relative) return InsnKind::jcc_rel;
  if (relative) return InsnKind::xbegin;  // any other relative form: treat as unrelocatable
  return InsnKind::other;
}

}  // namespace

std::string_view to_string(InsnKind kind) noexcept {
  switch (kind) {
    case InsnKind::other:
      return "other";
    case InsnKind::jmp_rel:
      return "jmp_rel";
    case InsnKind::jcc_rel:
      return "jcc_rel";
    case InsnKind::loop_rel:
      return "loop_rel";
    case InsnKind::call_rel:
      return "call_rel";
    case InsnKind::xbegin:
      return "xbegin";
    case InsnKind::ret:
      return "ret";
    case InsnKind::jmp_indirect:
      return "jmp_indirect";
    case InsnKind::call_indirect:
      return "call_indirect";
    case InsnKind::int3:
      return "int3";
    case InsnKind::syscall:
      return "syscall";
    case InsnKind::endbr64:
      return "endbr64";
    case InsnKind::trap:
      return "trap";
    case InsnKind::far_transfer:
      return "far_transfer";
  }
  return "?";
}

Result<Insn> decode(std::span<const std::uint8_t> bytes, std::uint64_t address, bool with_text) {
  const Decoder& d = decoder();
  ZydisDecodedInstruction in;
  ZydisDecodedOperand ops[ZYDIS_MAX_OPERAND_COUNT];
  if (bytes.empty() ||
      ZYAN_FAILED(ZydisDecoderDecodeFull(&d.decoder, bytes.data(), bytes.size(), &in, ops))) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "cannot decode the bytes at 0x%" PRIx64 " (", address);
    return Error(Errc::not_relocatable, buf + hex_bytes(bytes) + ")");
  }
  Insn insn;
  insn.address = address;
  insn.length = in.length;
  insn.kind = classify(in);
  insn.gpr_mask = gpr_mask_of(in.operand_count, ops);
  insn.explicit_gpr_mask = gpr_mask_of(in.operand_count_visible, ops);
  if (in.attributes & ZYDIS_ATTRIB_HAS_MODRM) insn.modrm_offset = in.raw.modrm.offset;

  if (insn.is_relative_branch()) {
    for (unsigned i = 0; i < 2; ++i) {
      if (in.raw.imm[i].is_relative) {
        insn.rel_offset = in.raw.imm[i].offset;
        insn.rel_size = in.raw.imm[i].size / 8;
        insn.target = address + in.length + static_cast<std::uint64_t>(in.raw.imm[i].value.s);
        break;
      }
    }
    if (insn.rel_size == 0) insn.kind = InsnKind::xbegin;  // defensive: no immediate found
  }
  for (unsigned i = 0; i < in.operand_count; ++i) {
    const ZydisDecodedOperand& op = ops[i];
    if (op.type == ZYDIS_OPERAND_TYPE_MEMORY && op.mem.base == ZYDIS_REGISTER_RIP) {
      insn.rip_relative = true;
      insn.disp_offset = in.raw.disp.offset;
      insn.target = address + in.length + static_cast<std::uint64_t>(op.mem.disp.value);
      break;
    }
  }
  if (insn.rip_relative && in.raw.disp.size != 32) {
    insn.rip_relative = false;  // impossible in 64-bit mode; keep the invariant simple
    insn.kind = InsnKind::xbegin;
  }

  std::copy_n(bytes.begin(), in.length, insn.raw.begin());
  if (!with_text) return insn;
  char text[96];
  if (ZYAN_SUCCESS(ZydisFormatterFormatInstruction(&d.formatter, &in, ops, in.operand_count_visible,
                                                   text, sizeof text, address, ZYAN_NULL))) {
    insn.text = text;
  } else {
    insn.text = hex_bytes(bytes.first(in.length));
  }
  return insn;
}

namespace detail {

// The common instructions of compiled code, by hand: one optional REX prefix, then a one-
// or two-byte opcode from a short list, its ModRM/SIB/displacement and immediate. What
// Zydis would say about them is fixed by the encoding; tests/arch/decode_shape_test.cc
// checks every opcode, ModRM and REX combination of this list against decode(). Anything
// else (other prefixes, relative operands, [rip+X], truncated bytes) goes to Zydis.
bool quick_shape(std::span<const std::uint8_t> b, std::uint64_t address, Insn& insn) {
  const std::size_t n = b.size();
  std::size_t i = 0;
  InsnKind kind = InsnKind::other;
  if (n >= 4 && b[0] == 0xf3 && b[1] == 0x0f && b[2] == 0x1e && b[3] == 0xfa) {
    insn.address = address;
    insn.length = 4;
    insn.kind = InsnKind::endbr64;
    insn.modrm_offset = 3;
    std::copy_n(b.begin(), 4, insn.raw.begin());
    return true;
  }
  std::uint8_t rex = 0;
  if (n > 0 && (b[0] & 0xf0) == 0x40) rex = b[i++];
  if (i >= n) return false;
  const std::uint8_t op = b[i++];
  // The operands' shape: a ModRM (with SIB and displacement), then `imm` bytes.
  bool modrm = false;
  unsigned imm = 0;
  int reg_only = -1;               // the ModRM reg field this opcode requires (-1: any)
  std::uint8_t reg_forbidden = 0;  // bit r: reg field r refused (aliases Zydis may treat apart)
  bool memory_only = false;
  if (op == 0x0f) {
    if (i >= n) return false;
    const std::uint8_t op2 = b[i++];
    if (op2 == 0x1f) {
      modrm = true, reg_only = 0;  // nop r/m
    } else if ((op2 & 0xf0) == 0x40 || op2 == 0xaf || op2 == 0xb6 || op2 == 0xb7 || op2 == 0xbe ||
               op2 == 0xbf) {
      modrm = true;  // cmovcc, imul, movzx, movsx
    } else {
      return false;
    }
  } else if (op >= 0x50 && op <= 0x5f) {
    // push/pop r64
  } else if (op >= 0xb8 && op <= 0xbf) {
    imm = (rex & 8) ? 8 : 4;  // mov r, imm32 / imm64
  } else if (op >= 0xb0 && op <= 0xb7) {
    imm = 1;
  } else if (rex == 0 && (op == 0xc3 || op == 0xc9 || op == 0x90)) {
    kind = op == 0xc3 ? InsnKind::ret : InsnKind::other;  // ret, leave, nop
  } else if ((op < 0x40 && (op & 7) < 4) || (op >= 0x84 && op <= 0x8b) || op == 0x63) {
    modrm = true;  // add/or/adc/sbb/and/sub/xor/cmp r/m forms, test, xchg, mov, movsxd
  } else if (op == 0x8d) {
    modrm = true, memory_only = true;  // lea
  } else if (op == 0x80 || op == 0x83 || op == 0x6b) {
    modrm = true, imm = 1;
  } else if (op == 0x81 || op == 0x69) {
    modrm = true, imm = 4;
  } else if (op == 0xc0 || op == 0xc1) {
    modrm = true, imm = 1, reg_forbidden = 1u << 6;
  } else if (op >= 0xd0 && op <= 0xd3) {
    modrm = true, reg_forbidden = 1u << 6;
  } else if (op == 0xc6) {
    modrm = true, imm = 1, reg_only = 0;
  } else if (op == 0xc7) {
    modrm = true, imm = 4, reg_only = 0;
  } else if (op == 0xf6 || op == 0xf7) {
    modrm = true, reg_forbidden = 1u << 1;  // test imm (/0) or not/neg/mul/imul/div/idiv
  } else if (op == 0xff) {
    modrm = true, reg_forbidden = (1u << 2) | (1u << 3) | (1u << 4) | (1u << 5) | (1u << 7);
  } else {
    return false;
  }
  std::uint8_t modrm_offset = 0;
  if (modrm) {
    if (i >= n) return false;
    const std::uint8_t m = b[i];
    modrm_offset = static_cast<std::uint8_t>(i++);
    const unsigned mod = m >> 6, reg = (m >> 3) & 7, rm = m & 7;
    if (reg_only >= 0 && reg != static_cast<unsigned>(reg_only)) return false;
    if ((reg_forbidden >> reg) & 1u) return false;
    if (memory_only && mod == 3) return false;
    if ((op == 0xf6 || op == 0xf7) && reg == 0) imm = op == 0xf6 ? 1 : 4;
    if (mod != 3) {
      if (rm == 4) {
        if (i >= n) return false;
        const std::uint8_t sib = b[i++];
        if (mod == 0 && (sib & 7) == 5) i += 4;
      } else if (mod == 0 && rm == 5) {
        return false;  // [rip+X]: Zydis, for the target
      }
      if (mod == 1) i += 1;
      if (mod == 2) i += 4;
    }
  }
  i += imm;
  if (i > n) return false;  // truncated: Zydis's refusal and message
  insn.address = address;
  insn.length = static_cast<std::uint8_t>(i);
  insn.kind = kind;
  insn.modrm_offset = modrm_offset;
  std::copy_n(b.begin(), i, insn.raw.begin());
  return true;
}

}  // namespace detail

namespace {

// An instruction's shape: every field of Insn but its text, of an Insn or a memo entry
// (`shape_of(to) = shape_of(from)` copies it).
template <class T>
auto shape_of(T& insn) {
  return std::tie(insn.address, insn.length, insn.kind, insn.rel_offset, insn.rel_size,
                  insn.rip_relative, insn.disp_offset, insn.target, insn.gpr_mask,
                  insn.explicit_gpr_mask, insn.modrm_offset, insn.raw);
}

// Shapes remembered by remember_shapes(), per thread, one slot per address modulo kSize:
// the planner's displaced instructions, which the relocator decodes again a moment
// later. An instruction's decode depends only on its own bytes and its address, so a hit
// compares both. Kept without the text (which shapes do not have).
struct ShapeMemo {
  static constexpr unsigned kSize = 8;
  struct Entry {
    std::uint64_t address = 0;
    std::uint64_t target = 0;
    std::uint8_t length = 0;  // 0: empty
    InsnKind kind = InsnKind::other;
    std::uint8_t rel_offset = 0, rel_size = 0;
    bool rip_relative = false;
    std::uint8_t disp_offset = 0;
    std::uint16_t gpr_mask = 0, explicit_gpr_mask = 0;
    std::uint8_t modrm_offset = 0;
    std::array<std::uint8_t, 15> raw{};
  };
  Entry slots[kSize];

  const Entry* find(std::span<const std::uint8_t> bytes, std::uint64_t address) const {
    const Entry& e = slots[address % kSize];
    if (e.length != 0 && e.address == address && bytes.size() >= e.length &&
        std::memcmp(e.raw.data(), bytes.data(), e.length) == 0) {
      return &e;
    }
    return nullptr;
  }
};

thread_local ShapeMemo t_shapes;

Result<Insn> decode_shape_uncached(std::span<const std::uint8_t> bytes, std::uint64_t address) {
  Insn quick;
  if (detail::quick_shape(bytes, address, quick)) return quick;
  const Decoder& d = decoder();
  ZydisDecodedInstruction in;
  if (bytes.empty() || ZYAN_FAILED(ZydisDecoderDecodeInstruction(&d.decoder, nullptr, bytes.data(),
                                                                 bytes.size(), &in))) {
    return decode(bytes, address, /*with_text=*/false);  // the same refusal, with its message
  }
  // Zydis sets IS_RELATIVE for relative immediates and for [rip+X] operands alike: those
  // need the operands (target, displacement), so they take the full path.
  if (in.attributes & ZYDIS_ATTRIB_IS_RELATIVE) return decode(bytes, address, /*with_text=*/false);
  Insn insn;
  insn.address = address;
  insn.length = in.length;
  insn.kind = classify(in);
  if (in.attributes & ZYDIS_ATTRIB_HAS_MODRM) insn.modrm_offset = in.raw.modrm.offset;
  std::copy_n(bytes.begin(), in.length, insn.raw.begin());
  return insn;
}

}  // namespace

Result<Insn> decode_shape(std::span<const std::uint8_t> bytes, std::uint64_t address) {
  if (const ShapeMemo::Entry* e = t_shapes.find(bytes, address)) {
    Insn insn;
    shape_of(insn) = shape_of(*e);
    return insn;
  }
  return decode_shape_uncached(bytes, address);
}

void remember_shapes(std::span<const Insn> insns) {
  for (const Insn& insn : insns) {
    if (insn.length == 0) continue;
    shape_of(t_shapes.slots[insn.address % ShapeMemo::kSize]) = shape_of(insn);
  }
}

std::string text_of(const Insn& insn) {
  if (!insn.text.empty() || insn.length == 0) return insn.text;
  auto again =
      decode(std::span<const std::uint8_t>(insn.raw.data(), insn.length), insn.address, true);
  return again.ok() ? again->text : std::string("(undecodable)");
}

namespace detail {

Result<std::vector<std::uint8_t>> rebase_rip_operand(std::span<const std::uint8_t> insn_bytes,
                                                     std::uint64_t address, Gpr base) {
  const Decoder& d = decoder();
  ZydisDecodedInstruction in;
  ZydisDecodedOperand ops[ZYDIS_MAX_OPERAND_COUNT];
  if (ZYAN_FAILED(
          ZydisDecoderDecodeFull(&d.decoder, insn_bytes.data(), insn_bytes.size(), &in, ops))) {
    return Error(Errc::internal, "rebase_rip_operand: cannot decode");
  }
  ZydisEncoderRequest req;
  if (ZYAN_FAILED(ZydisEncoderDecodedInstructionToEncoderRequest(&in, ops, in.operand_count_visible,
                                                                 &req))) {
    return Error(Errc::not_relocatable, "the encoder cannot represent it");
  }
  bool found = false;
  for (unsigned i = 0; i < req.operand_count; ++i) {
    ZydisEncoderOperand& op = req.operands[i];
    if (op.type == ZYDIS_OPERAND_TYPE_MEMORY && op.mem.base == ZYDIS_REGISTER_RIP) {
      op.mem.base =
          static_cast<ZydisRegister>(static_cast<int>(ZYDIS_REGISTER_RAX) + static_cast<int>(base));
      op.mem.displacement = 0;
      found = true;
    }
  }
  if (!found) return Error(Errc::internal, "rebase_rip_operand: no RIP-relative operand");
  std::uint8_t out[ZYDIS_MAX_INSTRUCTION_LENGTH];
  ZyanUSize len = sizeof out;
  if (ZYAN_FAILED(ZydisEncoderEncodeInstruction(&req, out, &len))) {
    return Error(Errc::not_relocatable, "the encoder cannot re-encode it with a base register");
  }
  (void)address;
  return std::vector<std::uint8_t>(out, out + len);
}

}  // namespace detail
}  // namespace hp::arch
