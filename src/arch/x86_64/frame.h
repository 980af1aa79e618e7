// The pieces every trampoline is built of (core/x86_64/trampoline.h puts them together):
// the hotprobe::Regs frame's save and restore, the switch to the handler stack and back,
// the call of the dispatcher; and the two small pieces of code the core writes for a site:
// the jmp that patches it and the int3-mode copy. Pure functions of their inputs.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "arch/x86_64/emit.h"
#include "arch/x86_64/plan.h"
#include "arch/x86_64/relocate.h"
#include "base/error.h"

namespace hp::arch {

inline constexpr std::int32_t kRedZone = 128;
// [M] flags, [M+8] rax, M = S - kRedZone - 16: the head the save pushes below the site's rsp S.
inline constexpr std::int32_t kHead = kRedZone + 16;

// The per-site values in a trampoline's fields, as its labels (Fixup::value) name them:
// what a copy of the code gets anew for another site.
enum FieldValue : std::uint8_t {
  kValueContext,     // the dispatcher's first argument
  kValueDispatcher,  // the dispatcher, where called rel32 (or far)
  kValueRip,         // Regs.rip: the probe address
  kValueBack,        // where the relocated instructions go on: the patch's end
  kValueLanding,     // where a landing jumps
  kValueConsumers,   // a fast path's &site->consumers
  kValueCount
};

// Offset of the way-back pointer M from the frame (rsp after the frame is built).
std::int32_t way_back_offset(bool save_vector);

// Saves everything into a Regs frame at rsp (then emit_call() or a template's fast path).
// Where flags are dead, their slot [M] holds rax instead ([M+8] is not written) and
// Regs.rflags is 0: two stores and a load fewer on every hit.
void emit_save(Emitter& e, bool flags_live, bool save_vector, std::uint64_t rip_value);

// The switch to the handler stack (handler_stack.h), after emit_save(): rsp = the frame.
// Leaves r15 = the frame, rsp = the handler stack's top; returns the rel32 field of the
// branch to the out-of-line call (emit_no_handler_stack()).
std::uint32_t emit_switch_in(Emitter& e);
// Back to the frame (rsp = r15), then the handler stack is free again: in this order, so a
// signal between the two never finds it free while rsp is on it. rax survives.
void emit_switch_out(Emitter& e);
// The dispatcher through hp_handler_stack_call() (rsp = the frame): the thread's first hit,
// or a hit nested in a handler's (a signal). `landing_exit` is where to go after its
// switch-out when the dispatcher returns true (0: none); `back` where the trampoline goes
// on otherwise.
void emit_no_handler_stack(Emitter& e, std::uint32_t je_field, std::uint64_t context,
                           std::uint64_t dispatcher, std::uint32_t landing_exit,
                           std::uint32_t back);
// dispatcher(context, frame): call rel32 when in reach, else movabs rax; call rax.
void emit_call(Emitter& e, std::uint64_t context, std::uint64_t dispatcher, Gpr frame);

// xmm0-15 from the vector area (rsp = the frame): once, right after the dispatcher (and the
// switch back), before the exits branch, so a trampoline with a landing exit has one copy.
void emit_vector_restore(Emitter& e, bool save_vector);
// Restores every general register (from the frame); leaves rsp = M.
void emit_restore(Emitter& e, bool save_vector);

// The unlikely half of a restore's alignment branch (emit_restore_to_site()), emitted
// after the rest of the trampoline by emit_rare_exits().
struct RareExit {
  std::uint32_t jcc_field;  // the rel32 of the branch to it
  std::int32_t lea;         // rsp += lea
  std::uint32_t back;       // where it continues
};
// Restores every general register and sets rsp = the site's rsp + `extra` without loading
// rsp from memory; `likely_moved` picks the fall-through of the alignment branch (frame.cc).
void emit_restore_to_site(Emitter& e, bool save_vector, std::int32_t extra, bool likely_moved,
                          std::vector<RareExit>& rare);
void emit_rare_exits(Emitter& e, const std::vector<RareExit>& rare);

// The int3-mode copy: the relocated single instruction followed by a jmp back.
Result<Relocation> make_int3_copy(const Int3Plan& plan, std::uint64_t address);

// The bytes that replace the displaced ones: jmp rel32 to the trampoline, then int3 for
// the rest (a stray jump into them traps instead of running half an instruction).
// Written into `out` (at least `length` bytes): no allocation, for a batch's sites.
Result<void> write_jmp_patch_bytes(std::uint64_t patch_address, std::uint32_t length,
                                   std::uint64_t trampoline, std::span<std::uint8_t> out);

}  // namespace hp::arch
