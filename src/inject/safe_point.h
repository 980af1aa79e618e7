// Safe points for the injector's call (safe_point.cc; docs/design/inject.md): whether a
// thread stopped by ptrace may call into the dynamic loader now.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "elf/modules.h"
#include "inject/frames.h"
#include "inject/tracee.h"

namespace hp::inject {

// The address of the dynamic loader's _dl_load_lock in the target (0: unknown), found
// from this process's own ld.so when the target maps the same file.
std::uintptr_t target_load_lock(const elf::ModuleList& mods);

// Module names of the dynamic loader and of libc.
bool is_loader(std::string_view module_name);
bool is_libc(std::string_view module_name);

// Why calling into the loader from this stop could deadlock or corrupt state, or "" when
// it is safe. `load_lock`: target_load_lock(mods); `unwinder`: may be null.
std::string unsafe_reason(Tracee& t, const elf::ModuleList& mods, std::uintptr_t load_lock,
                          Unwinder* unwinder);

}  // namespace hp::inject
