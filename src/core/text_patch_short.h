// Short-jump sites (text_patch_short.cc): where no 5-byte jump fits at a probe (a short
// function, a neighbour that jumps to the probed instruction's successor, such as glibc's
// mempcpy jumping to memcpy+3), the site gets a 2-byte `jmp rel8` to a 5-byte `jmp rel32`
// written in the padding between two functions within 127 bytes, which goes to the
// site's trampoline (docs/design/core.md, "Short jumps"). The trampoline relocates the
// one instruction the 2 bytes lie in.
#pragma once

#include <cstdint>
#include <optional>

#include "core/text_patch.h"

namespace hp::elf {
class ElfFile;
}

namespace hp::core {

inline constexpr std::size_t kShortPadLength = 5;  // jmp rel32

// A short-jump site's pad: 5 bytes of padding claimed for one site while the site
// exists, so that no other site of the process writes its pad there. Released when the
// site is destroyed (unpatched, or its module unmapped).
class PadClaim {
 public:
  PadClaim() = default;
  ~PadClaim() { release(); }
  PadClaim(const PadClaim&) = delete;
  PadClaim& operator=(const PadClaim&) = delete;
  PadClaim(PadClaim&& o) noexcept { *this = std::move(o); }
  PadClaim& operator=(PadClaim&& o) noexcept;

  // Claims [at, at + 5); nullopt when another site holds one of its bytes.
  static std::optional<PadClaim> claim(std::uintptr_t at);

  explicit operator bool() const { return at_ != 0; }
  std::uintptr_t at() const { return at_; }
  // The padding as it is in the module's file, and the jump to the trampoline.
  PatchBytes original, jump;

 private:
  void release() noexcept;
  std::uintptr_t at_ = 0;
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

}  // namespace hp::core
