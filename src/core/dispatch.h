// The dispatcher: what a trampoline calls on every hit. Instantiated once per protection
// scheme, so the schemes are compared in the real hot path.
//
// Entry (jmp mode: called by the site's trampoline, on the thread's handler stack,
// arch::HandlerStack; int3 mode: by the SIGTRAP hook, on the signal's stack):
//   recursion guard -> read_lock(scheme) -> load the site's consumer array (P2) ->
//   for each consumer whose filter passes: its entry handler, and a return instance when
//   it has a return handler -> read_unlock.
// No atomic read-modify-write, no fence (for tasks-trace), and the only writes are to
// the thread's own record.
//
// Return (the return trampoline, when a probed function returns): pop the thread's
// return instance whose slot matches the stack pointer (dropping instances that a
// longjmp skipped), run the return handlers of the consumers recorded at entry that are
// still attached, and hand the original return address back to the trampoline.
#pragma once

#include <cstdint>

#include "arch/x86_64/handler_stack.h"
#include "core/site.h"
#include "core/x86_64/templates.h"
#include "hotprobe/probe.h"
#include "hotprobe/regs.h"
#include "sync/schemes.h"  // the schemes: per-scheme arrays are kSchemeCount long

namespace hp::core {

// True when it pointed the return address at the site's landing (core/x86_64/trampoline.h).
using EntryDispatcher = bool (*)(void* site, hotprobe::Regs* regs);
using ReturnDispatcher = std::uint64_t (*)(void* unused, hotprobe::Regs* regs);

EntryDispatcher entry_dispatcher(hotprobe::Scheme s) noexcept;

// The entry trampoline's inline fast path for a tasks-trace site (the other schemes have
// none; int3 mode has no trampoline): false when the site gets none. site.probe_address
// and site.scheme must be set.
bool fast_entry_for(const Site& site, FastEntry& out) noexcept;
// The routine that fast entry paths call for the entry side of the common return probe
// (OneReturnEntry); false where there is none (ThreadSanitizer builds). Once the
// engine has written it, set_one_return_entry() makes fast_entry_for() use it.
bool one_return_entry_for(OneReturnEntry& out) noexcept;
void set_one_return_entry(std::uintptr_t address) noexcept;
// The return trampoline's inline fast path for a scheme (tasks-trace only).
bool fast_return_for(hotprobe::Scheme s, FastReturn& out) noexcept;
ReturnDispatcher return_dispatcher(hotprobe::Scheme s) noexcept;

// Where hijacked return addresses point, per scheme (set by the engine once the return
// trampolines exist).
void set_return_trampoline(hotprobe::Scheme s, std::uintptr_t address) noexcept;
std::uintptr_t return_trampoline(hotprobe::Scheme s) noexcept;

// Vector registers. The dispatcher is built for general registers only (CMakeLists.txt),
// so only handlers can write a vector register: the dispatcher saves xmm0-15 around the
// handlers of a consumer array with saves_vectors, and trampolines save none. Except under
// ThreadSanitizer, whose runtime (called from the instrumented dispatcher) uses them: there
// every trampoline saves them, and the dispatcher does not.
#if defined(__SANITIZE_THREAD__)
inline constexpr bool kTrampolinesSaveVectors = true;
#else
inline constexpr bool kTrampolinesSaveVectors = false;
#endif

// Whether the dispatcher must save the vector registers around this spec's handlers:
// spec.vector_registers, unless arch::may_write_vector_registers() shows that none of its
// handlers (entry, return, filter) can write one. Cached per function address.
bool handlers_need_vector_saves(const hotprobe::ProbeSpec& spec);

// Unwinders (C++ exceptions, backtrace(), thread cancellation) walk the stack through
// return addresses, and a hijacked one points at a trampoline without unwind tables.
// Internal probes on the unwinder's entry points call unhijack_all(): every return
// address goes back to the original (the instances stay). rehijack_live() (at
// __cxa_begin_catch, and lazily at the thread's next hit) drops the instances whose
// frames the unwinder removed (slot at or below rsp) and hijacks the live ones again.
void unhijack_all() noexcept;
void rehijack_live(std::uint64_t rsp) noexcept;

// Grace periods of a scheme's domain.
void synchronize(hotprobe::Scheme s);
std::uint64_t grace_periods_waited() noexcept;  // by synchronize() above
// Runs fn after a grace period of the scheme (never inside a read section).
void call_after_grace_period(hotprobe::Scheme s, void (*fn)(void*), void* arg);

}  // namespace hp::core
