// Displacement plans: which whole instructions a 5-byte jmp rel32 at a probe site would
// overwrite, and whether that is safe. Like funchook's checks, a refusal names the
// instruction and the reason:
//   not_on_boundary   the offset is not an instruction start (linear sweep from the symbol)
//   not_relocatable   too short (fewer than 5 bytes to the end of the function), a call
//                     before the 5th byte (a return would land inside), int3 / ret /
//                     indirect jmp / jmp / trap before the 5th byte (we would displace bytes
//                     that are not reached by falling through), a branch anywhere in the
//                     function into the displaced bytes other than their first byte
//                     (funchook's FOUND_BACK_JUMP), a RIP-relative operand that takes the
//                     address of such a byte (a computed jump could land there), or bytes
//                     the sweep cannot decode.
//
// endbr64 at function entry: a probe at offset 0 of a function that starts with endbr64
// is placed after it (patch_offset 4). The landing pad stays where indirect calls expect
// it (with IBT on, a jmp there would fault), and the state at +4 equals the state at +0:
// endbr64 changes no register and no flag. Regs.rip still reports the probe address.
//
// Branches from outside the function (another function's tail jump to an interior label,
// a jump table read from data) cannot be seen by the sweep; like every user-space
// detour library we assume compilers do not produce them into a function's first bytes.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

#include "arch/x86_64/decode.h"
#include "base/assert.h"
#include "base/error.h"

namespace hp::arch {

inline constexpr std::uint32_t kJmpRel32Length = 5;

// A plan's displaced bytes, inline: whole instructions from below the 5th byte after an
// optional endbr64, so at most 4 + 15 (a batch of 10,000 plans allocates nothing for them).
class DisplacedBytes {
 public:
  static constexpr std::size_t kCapacity = 32;
  template <class It>
  void assign(It first, It last) {
    const auto n = static_cast<std::size_t>(last - first);
    HP_CHECK(n <= kCapacity);
    std::copy(first, last, bytes_);
    size_ = static_cast<std::uint8_t>(n);
  }
  const std::uint8_t* data() const noexcept { return bytes_; }
  const std::uint8_t* begin() const noexcept { return bytes_; }
  const std::uint8_t* end() const noexcept { return bytes_ + size_; }
  std::size_t size() const noexcept { return size_; }
  bool empty() const noexcept { return size_ == 0; }
  std::uint8_t operator[](std::size_t i) const noexcept { return bytes_[i]; }
  operator std::span<const std::uint8_t>() const noexcept { return {bytes_, size_}; }  // NOLINT
  bool operator==(const DisplacedBytes& o) const noexcept {
    return std::equal(begin(), end(), o.begin(), o.end());
  }
  bool operator==(const std::vector<std::uint8_t>& v) const noexcept {
    return std::equal(begin(), end(), v.begin(), v.end());
  }

 private:
  std::uint8_t bytes_[kCapacity] = {};
  std::uint8_t size_ = 0;
};

struct DisplacementPlan {
  std::uint64_t probe_address = 0;  // function + offset: what Regs.rip reports
  std::uint64_t patch_address = 0;  // first displaced byte (probe_address + 4 after endbr64)
  std::uint32_t patch_offset = 0;   // patch_address - function address
  std::uint32_t length = 0;         // displaced bytes, whole instructions, >= 5
  bool at_entry = false;            // the function's entry (possibly after endbr64)
  bool flags_live = true;           // false at entry: no pushfq/popfq needed
  DisplacedBytes original;          // the displaced bytes, for the trampoline and unpatching
  std::vector<Insn> insns;          // the displaced instructions (decode_shape)
};

// Succeeds when `offset` is an instruction start found by a linear sweep of `function`
// (the symbol's bytes, symbol size long) from its first byte.
Result<void> check_boundary(std::span<const std::uint8_t> function, std::uint64_t function_address,
                            std::uint64_t offset);

// The jmp-mode plan for a probe at function_address + offset.
Result<DisplacementPlan> plan_displacement(std::span<const std::uint8_t> function,
                                           std::uint64_t function_address, std::uint64_t offset);

// The plan of a short-jump site (a 2-byte `jmp rel8` to a 5-byte jump in the padding
// nearby, where no 5-byte jump fits at the probe): the one instruction at the probe
// (after endbr64 at offset 0), which must be at least 2 bytes long, so that the jump's
// two bytes lie inside it and no branch can land between them. Refused like
// plan_displacement for a 1-byte first instruction, int3, xbegin and far transfers.
// `function` may end a few bytes after the probe (a function of unknown size): no branch
// scan is needed, since a branch cannot land inside one instruction.
Result<DisplacementPlan> plan_short_displacement(std::span<const std::uint8_t> function,
                                                 std::uint64_t function_address,
                                                 std::uint64_t offset);

// The int3-mode plan: the single instruction at the probe, which the core copies with
// make_int3_copy. Any boundary works; refused for int3, xbegin and far transfers.
struct Int3Plan {
  std::uint64_t probe_address = 0;
  bool flags_live = true;
  std::vector<std::uint8_t> original;  // the whole instruction
  Insn insn;
};
Result<Int3Plan> plan_int3(std::span<const std::uint8_t> function, std::uint64_t function_address,
                           std::uint64_t offset);

}  // namespace hp::arch
