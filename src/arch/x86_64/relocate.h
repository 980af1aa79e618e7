// The relocator: re-encodes whole instructions taken from one address so that they behave
// the same at another address (a trampoline), as Frida's gumx86relocator and funchook do.
//
//   jmp rel8/rel32        -> jmp rel32 to the same target, or jmp [rip+0]; .quad target
//   jcc rel8/rel32        -> jcc rel32, or j!cc +14; jmp [rip+0]; .quad target
//   loop/loopcc/jrcxz     -> loopcc +2; jmp short over; jmp (rel32 | abs) target
//   call rel32 (last)     -> push return address (push imm32, or lea rsp,[rsp-8] and two
//                            dword stores); jmp target. The return address is the ORIGINAL
//                            next instruction, so the callee returns into the original code
//                            and never into the trampoline.
//   call r/m (last)       -> push return address; jmp r/m (refused when r/m uses rsp)
//   [rip+X] in reach      -> same bytes with a new disp32
//   [rip+X] out of reach  -> lea r64,[rip+X] becomes movabs r64, X; anything else becomes
//                              lea rsp,[rsp-128]; push S; movabs S, X; insn with [S]; pop S;
//                              lea rsp,[rsp+128]
//                            where S is a general register the instruction does not use.
//                            The lea steps over the red zone and leaves flags alone.
//                            Refused for instructions that use rsp and for jmp/call [rip+X].
//   everything else       -> copied as is (ret, syscall, endbr64, jmp/call reg, ...)
// Refused (Errc::not_relocatable): int3, xbegin, far transfers, a call that is not the last
// instruction (its return would land in the trampoline or the patched bytes).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "arch/x86_64/emit.h"
#include "base/error.h"

namespace hp::arch {

struct OffsetPair {
  std::uint32_t original;   // offset of an instruction start in the original bytes
  std::uint32_t relocated;  // offset of its replacement in the relocated code
  bool operator==(const OffsetPair&) const = default;
};

struct Relocation {
  std::vector<std::uint8_t> code;
  // One pair per original instruction, ascending, then {original length, end of the
  // relocated instructions}. A thread whose ip is at original+k (k an instruction start)
  // resumes at relocated code + relocated_offset(k).
  std::vector<OffsetPair> map;
  std::uint32_t original_length = 0;

  std::optional<std::uint32_t> relocated_offset(std::uint32_t original_offset) const;
};

// Appends the relocated form of `original` (whole instructions that lived at
// `original_address`) to `out`; map offsets are relative to `out`'s start.
Result<void> relocate_into(Emitter& out, std::span<const std::uint8_t> original,
                           std::uint64_t original_address, std::vector<OffsetPair>& map);

// Relocates `original` for `new_address`; no jump back.
Result<Relocation> relocate(std::span<const std::uint8_t> original, std::uint64_t original_address,
                            std::uint64_t new_address);

// Relocates and appends a jump back to original_address + original.size(): the int3-mode
// copy (one instruction) and the tail of an entry trampoline.
Result<Relocation> relocate_with_jmp_back(std::span<const std::uint8_t> original,
                                          std::uint64_t original_address,
                                          std::uint64_t new_address);

}  // namespace hp::arch
