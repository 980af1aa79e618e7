// int3 mode: a site patched with one trap byte (where a 5-byte jump cannot be placed,
// or where it was asked for). The SIGTRAP hook finds the site by address in an immutable
// sorted table, runs the site's dispatcher with the trapped registers and resumes at the
// site's relocated copy of the instruction.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "core/site.h"

namespace hp::core {

// The SIGTRAP hook (text_patch's set_int3_hook): the resume address, 0 for a trap that
// is not an int3 site's.
std::uintptr_t int3_hook(std::uintptr_t trap, void* ucv);

// Replaces the table the hook reads with `entries` (patch address, site), which it
// sorts; the old table is freed after a tasks-trace grace period.
void publish_int3_table(std::vector<std::pair<std::uintptr_t, Site*>> entries);

// Whether the table lists exactly `sorted` (the registry's debug check; call it where the
// table cannot change, under the registry's lock).
bool int3_table_lists(const std::vector<std::pair<std::uintptr_t, Site*>>& sorted);

}  // namespace hp::core
