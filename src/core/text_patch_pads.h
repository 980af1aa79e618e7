// Jump pads (text_patch_pads.cc): a site whose first instruction is one byte (push rbp) is
// held on its second instruction, and its jump (E9 EB FE h0 h1) goes through a pad whose
// address keeps that hold in place (docs/design/core.md, "Pads").
#pragma once

#include <atomic>
#include <cstdint>
#include <unordered_map>

#include "core/text_patch.h"

namespace hp::core::patching {

struct Pad {
  std::uintptr_t at = 0;
  std::atomic<std::uintptr_t>* slot = nullptr;
  // The site's bytes while it jumps to the pad: as the caller knows them (its jump to
  // the trampoline) and as they are (the jump to the pad).
  bool jumped = false;
  PatchBytes caller_view, actual;
};

// Under the patcher's mutex; never freed, never destroyed. Site address -> its pad.
extern std::unordered_map<std::uintptr_t, Pad>& g_pads;

// The pad of the site at `addr`, placed now if it has none; null when none can be placed.
Pad* pad_for(std::uintptr_t addr);
// The code of pad regions written in this transaction becomes r-x again.
void seal_pad_regions();
// The site's jump to its pad: E9 EB FE h0 h1, then the caller's bytes.
PatchBytes jump_to_pad(const PatchSite& s, const Pad& pad);
// Where the caller's jump goes (E9 rel32 at addr).
std::uintptr_t jump_target(std::uintptr_t addr, const PatchBytes& b);

}  // namespace hp::core::patching
