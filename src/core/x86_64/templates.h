// The assembled templates (templates.cc): the fast entry and fast return paths of a
// tasks-trace site and the shared one-return-entry routine. They encode tasks-trace's reader
// word (read_lock/read_unlock, the writer's futex wake) and the return-instance protocol of
// core/ret_probe.h, so they are core's: the only layer that combines memory ordering with
// code. Each is assembled once by the build; a copy gets its values at labelled fields.
#pragma once

#include <cstdint>
#include <vector>

#include "arch/x86_64/emit.h"
#include "base/error.h"

namespace hp::core {

// The inline fast path (optional): the common hit of a tasks-trace site, compiled into
// the trampoline itself in place of the call to the dispatcher, as kprobes' optprobes
// splice values into a pre-assembled template. When the thread is not inside a handler,
// its reader word is at depth 0 and registered, and the site's consumer array holds one
// entry handler with no filter, no return handler and no vector saves, the trampoline:
//   - enters the read-side section (word += enter; in_handler = 1),
//   - calls that handler with a hotprobe::Hit built on its stack, counts the hit,
//   - leaves the section (word -= 1; wakes a waiting writer, like read_unlock(), with the
//     futex system call made from the trampoline, where the reclaimer samples pcs).
// Anything else calls the dispatcher, which decides again from scratch; an array that
// is not the one-handler case calls locked_dispatcher with the section held. Every
// address and offset comes from the engine (core/dispatch.cc fills this), so this layer
// knows no engine type.
struct FastEntry {
  // The thread's ThreadState, %fs-relative (initial-exec TLS: the same for every thread).
  std::int32_t ts_rec = 0;  // ThreadRecord* (set once the thread is ready)
  // Byte, the recursion guard, followed by a byte that is nonzero while a rehijack of the
  // return stack is pending (one 16-bit compare tests both).
  std::int32_t ts_in_handler = 0;
  std::int32_t ts_ready = 0;  // byte of per-scheme ready bits
  std::uint8_t ready_bit = 0;
  std::int32_t rec_hits = 0;  // in the ThreadRecord: u64 hits, written by its thread only
  // The tasks-trace reader word, %fs-relative, and what an outermost entry adds to it.
  std::int32_t tt_word = 0;
  std::uint64_t tt_enter = 0;
  // The site's consumer-array pointer, and offsets in an array.
  std::uint64_t consumers = 0;
  std::int32_t arr_one_entry = 0;  // byte: one entry handler, nothing else (the case here)
  std::int32_t arr_cookie = 0;     // entry 0's cookie
  std::int32_t arr_handler = 0;    // entry 0's entry handler
  // Hit::probe_address is Regs.rip, the plan's probe address.
  // i32, -1 while a writer sleeps: leaving the section then swaps it to 0 and wakes one
  // waiter (FUTEX_WAKE_PRIVATE), as tasks-trace's wake_writer() does, but inline.
  std::uint64_t gp_futex = 0;
  std::uint32_t sys_futex = 202;
  // bool locked_dispatcher(void* context, hotprobe::Regs*, const void* array, void* record),
  // true like the dispatcher's.
  std::uint64_t locked_dispatcher = 0;

  bool operator==(const FastEntry&) const = default;  // EntryTrampolineBuilder's key
};

// The return trampoline's inline fast path (optional), built like FastEntry: when the
// thread is not in a handler and has no rehijack pending, the top instance of its return
// stack is the one this ret popped (no longjmp leftovers, no tail-call chain), its site
// is alive with a consumer array of one return consumer, the same consumer the instance
// recorded, and the reader word is outermost: the trampoline enters the section, calls
// the return handler, leaves (waking a sleeping writer), pops the instance (site = null,
// then depth - 1, as the dispatcher does) and continues with the original return
// address. Anything else calls the dispatcher. Offsets are from the engine.
// A thread's record and return stack (the engine's ThreadRecord and ReturnInstance), for
// the templates that push and pop return instances.
struct ReturnStackLayout {
  std::int32_t rec_depth = 0;                                        // u32
  std::int32_t rec_stack = 0;                                        // the ReturnInstance array
  std::int32_t rec_hits = 0;                                         // u64
  std::int32_t ri_size = 0;                                          // sizeof(ReturnInstance)
  std::int32_t ri_orig = 0, ri_slot = 0, ri_tramp = 0, ri_site = 0;  // u64
  std::int32_t ri_hijacked = 0;                                      // byte
  std::int32_t ri_n = 0;                                             // u32
  std::int32_t ri_consumer_id = 0, ri_data = 0;  // its first consumer's id and data
};

struct FastReturn {
  std::int32_t ts_in_handler = 0;  // %fs-relative; the byte after it: rehijack pending
  std::int32_t ts_rec = 0;         // %fs-relative ThreadRecord*
  ReturnStackLayout rs;
  std::int32_t tt_word = 0;  // %fs-relative
  std::uint64_t tt_enter = 0;
  std::int32_t site_consumers = 0, site_probe_address = 0;
  std::int32_t arr_one_return = 0, arr_id = 0, arr_cookie = 0, arr_handler = 0;
  std::uint64_t gp_futex = 0;
  std::uint32_t sys_futex = 202;
};

// The entry side of the common return probe, shared by the fast entry paths of every
// tasks-trace site: FastEntry::locked_dispatcher may be this routine (see the template in
// templates.cc), which does what the dispatcher's entry_one_return() does for one return
// consumer at a site with a landing, and jumps to `fallback` (the dispatcher's locked
// entry, same arguments) for anything else. Offsets are from the engine.
struct OneReturnEntry {
  std::int32_t arr_one_return = 0, arr_id = 0, arr_handler = 0, arr_cookie = 0;
  std::int32_t site_landing = 0, site_return_depth = 0, site_probe_address = 0;
  ReturnStackLayout rs;
  std::uint64_t fallback = 0;
};
Result<std::vector<std::uint8_t>> make_one_return_entry(const OneReturnEntry& spec,
                                                        std::uint64_t address);

// The rel32 fields of jumps to the landing exit (make_entry_trampoline() fixes them up).
struct LandingJumps {
  std::uint32_t at[2] = {0, 0};
  unsigned n = 0;
};
// The fast paths, copied into a trampoline being emitted (r15 = the frame, rsp = the
// handler stack's top): the entry's leaves the rel32 fields of its jumps to the landing
// exit in `jumps`.
Result<void> emit_fast_entry(arch::Emitter& e, const FastEntry& f, std::uint64_t context,
                             std::uint64_t dispatcher, LandingJumps& jumps);
Result<void> emit_fast_return(arch::Emitter& e, const FastReturn& f, std::uint64_t context,
                              std::uint64_t dispatcher);

}  // namespace hp::core
