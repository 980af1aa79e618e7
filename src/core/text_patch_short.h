// Short-jump sites (text_patch_short.cc): where no 5-byte jump fits at a probe (a short
// function, a neighbour that jumps to the probed instruction's successor, such as glibc's
// mempcpy jumping to memcpy+3), the site gets a 2-byte `jmp rel8` to a 5-byte `jmp rel32`
// written in the padding between two functions within 127 bytes, which goes to the
// site's trampoline (docs/design/core.md, "Short jumps"). The trampoline relocates the
// one instruction the 2 bytes lie in, or a 1-byte `ret` whose next byte is padding that
// nothing executes (the 2 bytes cover the `ret` and that byte).
#pragma once

#include <cstdint>
#include <optional>

#include "arch/x86_64/plan.h"
#include "core/text_patch.h"

namespace hp::elf {
class ElfFile;
}

namespace hp::core {

inline constexpr std::size_t kShortPadLength = 5;  // jmp rel32

// A short-jump site's pad: 5 bytes of padding claimed for one site while the site
// exists, so that no other site of the process writes its pad there. Released when the
// site is destroyed (unpatched, or its module unmapped). A site whose head covers a
// padding byte (after a 1-byte `ret`) claims that byte too (take_also).
class PadClaim {
 public:
  PadClaim() = default;
  ~PadClaim() { release(); }
  PadClaim(const PadClaim&) = delete;
  PadClaim& operator=(const PadClaim&) = delete;
  PadClaim(PadClaim&& o) noexcept { *this = std::move(o); }
  PadClaim& operator=(PadClaim&& o) noexcept;

  // Claims [at, at + length); nullopt when another site holds one of its bytes. A claim
  // with an `owner` (a site's address) shares the same bytes with other claims of that
  // owner: the sites at one address, one of which is being replaced.
  static std::optional<PadClaim> claim(std::uintptr_t at, std::size_t length = kShortPadLength,
                                       std::uintptr_t owner = 0);
  // This claim also holds `other`'s bytes (released with it).
  void take_also(PadClaim&& other);

  explicit operator bool() const { return at_ != 0; }
  std::uintptr_t at() const { return at_; }
  // The padding as it is in the module's file, and the jump to the trampoline.
  PatchBytes original, jump;

 private:
  void release() noexcept;
  std::uintptr_t at_ = 0, also_at_ = 0;
};

// The pad at `at` stays claimed for the life of the process (a restore that could not
// move a thread off it left it in place).
void keep_pad_claimed(std::uintptr_t at);

// Tests: whether [at, at + 5) is claimed by some site.
bool pad_claimed_for_testing(std::uintptr_t at);

// Where a short jump's pad can go: 5 bytes of fill (nop or int3 instructions) in a gap
// between two functions of `file` (loaded at `bias`: address = file offset + bias),
// reached by a `jmp rel8` that ends at `from` (pad - from in [-128, 127]) and claimed for
// the caller; nearest first. The gap's extent comes from the functions' FDEs (then sized
// symbols); the fill is decoded from the end of the function before the gap, whose last
// instruction must end the flow (a function that falls through its padding into the
// next one, as glibc's __memmove_chk does into memmove, executes it). nullopt when
// there is none.
std::optional<PadClaim> find_short_pad(const elf::ElfFile& file, std::uintptr_t bias,
                                       std::uintptr_t from);

// The plan of a short-jump site whose instruction at the probe (after `endbr64` at a
// function's entry) is a 1-byte `ret` (`_dl_debug_state`), when the byte after it is
// padding: outside every function of `file` (loaded at `bias`), decoded as fill (int3 or
// nop, as find_short_pad reads it) up to the next function. No code executes that byte
// or jumps to it, so the 2-byte head may cover it: the plan relocates the `ret` alone
// (length 1) and `head_byte` holds the claim on the padding byte. An error says why not.
Result<arch::DisplacementPlan> plan_ret_over_padding(const elf::ElfFile& file, std::uintptr_t bias,
                                                     std::uintptr_t function, std::uint64_t offset,
                                                     std::optional<PadClaim>& head_byte);

// Whether a 1-byte `ret` before padding takes a short jump (plan_ret_over_padding); on
// by default. Off (tests), the site is an int3 (the variant whose callers that block
// SIGTRAP are killed).
void use_ret_short_jumps(bool on);
bool ret_short_jumps_enabled();

}  // namespace hp::core
