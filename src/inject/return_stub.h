// Where the return stub goes in a target: shared by the injector's calls at a safe point
// (inject.cc) and at a program's start (start.cc). Private to src/inject.
#pragma once

#include <cstdint>

#include "base/error.h"
#include "elf/modules.h"
#include "inject/tracee.h"

namespace hp::inject {

// Writes the return stub (tracee.h) into the zero padding after an executable segment
// (libc's first, then the loader's, the program's and the other modules') and returns its
// address; a copy already there is reused.
Result<std::uintptr_t> place_stub(Tracee& t, const elf::ModuleList& mods);

}  // namespace hp::inject
