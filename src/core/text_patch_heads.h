// Heads (text_patch_heads.cc): how a site's first bytes hold the threads that arrive while
// its other bytes change, chosen per site from its first instruction, and the single
// stores that write and release them (docs/design/core.md, "Heads").
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/text_patch.h"

namespace hp::core::patching {

enum class Head : std::uint8_t {
  whole,      // a one-byte patch: written at once
  spin,       // EB FE over the first two bytes, one 2-byte store
  spin_wide,  // EB FE, one 16-byte store (the pair crosses an 8-byte boundary)
  pad,        // first instruction 1 byte: EB FE over the second one, then a jump pad
  trap,       // int3 on the first byte: a thread that arrives takes SIGTRAP
};

// Whether an instruction of the site's interior can run for long where it is (a
// rep-prefixed string instruction).
bool interior_may_run_long(const PatchSite& s);
// The head a site gets, before pads are placed (a pad site without a pad traps).
Head head_for(const PatchSite& s);
// The first byte step 3 writes.
std::size_t tail_start(Head h);
// Step 1: arriving threads stop (spin, or trap).
void write_hold(std::uintptr_t addr, Head h);
// Undoes write_hold with the site's bytes `b` (old or, at the end, new): held threads go on.
void release_hold(std::uintptr_t addr, Head h, const std::uint8_t* b);
// Step 4: the first bytes of the new code, in one store.
void write_final(std::uintptr_t addr, Head h, const std::uint8_t* b);
// Back from step 4 to step 3's state (a failed pad batch): the hold again.
void unwrite_final(std::uintptr_t addr, Head h, const std::uint8_t* old);
// use_trap_heads_for_testing().
void set_trap_heads_for_testing(bool on) noexcept;

}  // namespace hp::core::patching
