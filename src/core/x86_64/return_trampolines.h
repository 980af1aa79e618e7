// A scheme's return side, set up by one function: the code that hijacked return addresses
// and landings reach, built from the templates, written, and published to the dispatcher.
#pragma once

#include <cstdint>

#include "arch/x86_64/code_memory.h"
#include "base/error.h"
#include "core/x86_64/trampoline.h"
#include "hotprobe/probe.h"

namespace hp::core {

struct ReturnTrampolines {
  std::uintptr_t hijack = 0;   // where hijacked return addresses point (leaves by jmp)
  std::uintptr_t landing = 0;  // where entry trampolines' landings jump (leaves by ret)
};

// Builds the scheme's two return trampolines (with the inline fast path where the
// dispatcher has one) and, for tasks-trace, the routine fast entry paths call for the entry
// side of the common return probe; writes each into `code` (slots anywhere: they are
// reached through absolute addresses; `near` is a hint) and only then publishes them:
// set_one_return_entry(), then set_return_trampoline(), whose nonzero value says that all
// of it is there. Call once per scheme, under the engine's lock.
// The spec of the scheme's return trampoline at `address` (by_ret: the landings' one);
// `fast` holds its fast path when it has one.
ReturnTrampolineSpec return_trampoline_spec(hotprobe::Scheme s, std::uint64_t address, bool by_ret,
                                            FastReturn& fast);

Result<ReturnTrampolines> install_return_trampolines(arch::CodeMemory& code, hotprobe::Scheme s,
                                                     std::uint64_t near);

}  // namespace hp::core
