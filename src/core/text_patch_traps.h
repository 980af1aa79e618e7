// The in-flight trap table and the SIGTRAP handler (text_patch_traps.cc), for the
// patcher's int3 holds (text_patch.cc): a thread that traps on one continues at its
// site's trap target; a trap that is not the patcher's or a probe's goes to the
// program's previous handler.
#pragma once

#include <cstddef>
#include <cstdint>

#include "base/error.h"
#include "core/text_patch.h"

namespace hp::core::patching {

// Slots of the table: a batch takes at most a quarter of them.
inline constexpr std::size_t kTrapSlots = std::size_t{1} << 18;

// The table and the handler, once (under the patcher's mutex).
Result<void> install_trap_handler();

// The one writer's operations (under the patcher's mutex).
void trap_insert(std::uintptr_t addr, std::uintptr_t target);
void trap_remove(std::uintptr_t addr);
void trap_clear_if_crowded();

std::uint64_t traps_redirected() noexcept;

}  // namespace hp::core::patching
