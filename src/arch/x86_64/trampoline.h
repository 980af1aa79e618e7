// Code generation for the engine (src/core): entry trampolines, return trampolines, the
// int3-mode copy, and the jmp that patches a site. Everything here is a pure function of its inputs
// and returns bytes for a given address; nothing writes live code.
//
// Entry trampoline (site rsp = S; every offset below is from S):
//
//     lea   rsp, [rsp-128]           skip the red zone; lea leaves flags alone
//     push  rax                      [S-136] rax
//     pushfq | push 0                [S-144] flags (push 0 when flags are not live)
//     [cld]                          only when flags are live (DF=0 for the dispatcher)
//     mov   rax, rsp                 rax = M = S-144, the way back
//     and   rsp, -16                 align (flags already saved)
//     push  rax; push rax            the way back, twice to keep 16-byte alignment
//     [lea rsp,[rsp-256]; movups [rsp+16*i], xmm_i  for i in 0..15]   save_vector only
//     lea   rsp, [rsp-144]           the hotprobe::Regs frame, 16-byte aligned
//     mov   [rsp+off(reg)], reg      rcx, rdx, ..., r15
//     rax, rflags from [M+8], [M]; rsp = M+144 = S; rip = probe address
//     movabs rdi, context; mov rsi, rsp
//     call  dispatcher               call rel32 when in reach, else movabs rax; call rax
//     restore xmm (if saved); rcx..r15, rax from the frame (handlers may change them)
//     mov   rsp, [rsp+144+vec]       rsp = M
//     popfq | lea rsp,[rsp+8]
//     lea   rsp, [rsp+136]           rsp = S
//     <relocated displaced instructions>
//     jmp   patch_address + length   (rel32, or jmp [rip+0]; .quad)
//   and, with a return landing (spec.landing_target, sites at a function's entry):
//     exit: the same restore; lea rsp, [rsp+144]     reached when the dispatcher returns
//     call  1f                                        true: it hijacked the return address
//   landing:                                          with `landing`, so the function's ret
//     jmp   landing_target                            comes here, as the return stack
//   1:  lea rsp, [rsp+8]                              buffer predicts (the call pushed it)
//     jmp   <relocated displaced instructions>
//
// The dispatcher is `bool (*)(void* context, hotprobe::Regs*)`: true when it replaced the
// function's return address with the landing (the trampoline then leaves by the exit
// above); every register is restored from the frame either way.
//
// Vector registers: with save_vector xmm0-15 are saved and restored; the upper halves of
// ymm/zmm are not (the dispatcher must not use AVX; see docs/design/arch.md). The engine
// asks for it only in ThreadSanitizer builds: elsewhere its dispatcher saves them itself,
// around the handlers that may write one (core/dispatch.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "arch/x86_64/plan.h"
#include "arch/x86_64/relocate.h"
#include "base/error.h"

// Runs fn(context, regs) on the calling thread's handler stack (hp::arch::HandlerStack),
// allocating it on the thread's first use; on the current stack while it is in use. What a
// trampoline calls when it finds no free handler stack; also for callers that are not
// trampolines (a signal handler's dispatch). Returns what fn returns.
extern "C" std::uint64_t hp_handler_stack_call(void* context, void* regs, std::uint64_t fn);

namespace hp::arch {

// The handler stack: a per-thread stack of hotprobe's on which every trampoline runs the
// dispatcher and the handlers (DESIGN.md "Handlers run on hotprobe's stack"). Only the
// red-zone skip and the register frame go on the program's stack: goroutine stacks, small
// thread stacks, sigaltstacks and coroutine stacks cannot take a dispatcher and a script.
//
// `next` is where the next switch puts rsp: the stack's top while it is free, 0 while it is
// in use (or not yet allocated). A trampoline, after building its frame:
//
//     mov   rax, fs:next ; test rax, rax ; je nostack   0: first use, or in use
//     mov   qword fs:next, 0                           in use from here
//     mov   r15, rsp ; mov rsp, rax                    r15 = the frame (callee-saved)
//     ... dispatcher, handlers ...
//     mov   rcx, rsp ; mov rsp, r15 ; mov fs:next, rcx  leave first, then free it
//   nostack (out of line):
//     hp_handler_stack_call(context, frame, dispatcher) on the program's stack: it
//     allocates the thread's stack on first use and switches there; in use (a signal's
//     hit on a thread inside a handler, which the recursion guard turns into a counted
//     miss) it calls the dispatcher where it is.
//
// A signal that interrupts a handler and hits a probe finds `next` = 0 and stays on its
// stack (the handler stack itself, or its sigaltstack): nothing resets rsp to a top that
// is in use. The order of the exit (rsp back before `next` is given back) keeps a signal
// between the two instructions off the stack it is about to free.
// Size: kHandlerStackSize plus a PROT_NONE guard page below; freed at thread exit (a
// pthread key's destructor). The program's unwinders never see it: no code of the program
// runs on it, and the trampoline's frame on the program's stack is gone before the
// probed code goes on.
inline constexpr std::size_t kHandlerStackSize = 64 * 1024;
struct HandlerStack {
  std::uint64_t next;        // rsp for the next switch; 0 in use or none
  std::uint64_t base;        // lowest usable byte; 0 none yet
  std::uint32_t allocating;  // 1 while mapping it, 2 when that failed (not tried again)
};
extern constinit thread_local HandlerStack tls_handler_stack
    __attribute__((tls_model("initial-exec")));
// True when the calling thread is not on its handler stack and could move there: it is
// free, or not allocated yet (and not failed). For callers that are not trampolines (the
// SIGTRAP hook's dispatch), which then go through hp_handler_stack_call().
inline bool handler_stack_available() noexcept {
  const HandlerStack& hs = tls_handler_stack;
  return hs.next != 0 || (hs.base == 0 && hs.allocating == 0);
}
// %fs-relative offset of the calling thread's HandlerStack::next (initial-exec TLS: the
// same in every thread).
std::int32_t handler_stack_tls() noexcept;
// The calling thread's handler stack: [lo, hi), or {0, 0} before its first hit.
struct HandlerStackBounds {
  std::uint64_t lo = 0, hi = 0;
};
HandlerStackBounds handler_stack_bounds() noexcept;

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

struct EntryTrampolineSpec {
  std::uint64_t address = 0;        // where the trampoline will live
  std::uint64_t context = 0;        // first argument to the dispatcher
  std::uint64_t dispatcher = 0;     // bool dispatcher(void* context, hotprobe::Regs*)
  bool save_vector = true;          // xmm0-15
  const FastEntry* fast = nullptr;  // the inline fast path, or none
  // Where the landing jumps (a return trampoline with exit_by_ret), or 0 for no landing.
  // Only for a plan at a function's entry.
  std::uint64_t landing_target = 0;
  // Run the dispatcher on the thread's handler stack (HandlerStack above).
  bool handler_stack = true;
  // A return site (core/ret_probe.h): the plan's displaced bytes end with a one-byte `ret`,
  // or right before one (the caller checked). The trampoline runs the instructions before
  // the ret first, then the dispatcher with the registers of the moment the ret would run
  // (Regs.rip = the ret's address), then a ret of its own: the return address on the stack
  // is never touched. No landing.
  //     <relocated displaced instructions but the ret>
  //     save, switch, dispatcher, switch back, restore (flags dead: a ret ends a call)
  //     ret
  // A thread moved from inside the displaced bytes lands in the copy; one at the ret
  // itself lands on the save (the map says so), so its return is not missed.
  bool run_at_ret = false;
};

struct Trampoline {
  std::vector<std::uint8_t> code;
  std::uint32_t relocated_offset = 0;  // start of the relocated displaced instructions
  std::uint32_t landing_offset = 0;    // the landing (0: none)
  // original offset (from plan.patch_address) -> offset in `code`, see Relocation::map.
  std::vector<OffsetPair> map;
};

Result<Trampoline> make_entry_trampoline(const EntryTrampolineSpec& spec,
                                         const DisplacementPlan& plan);

// Entry trampolines for many sites (a batch): the same bytes as make_entry_trampoline(),
// built from a prototype instead of instruction by instruction. Sites that share
// everything but their addresses (the trampoline's, the probe's, the jump back's, the
// landing's), their context, their consumer array and their displaced instructions have
// the same trampoline but for a few fields. The first site of such a kind builds its
// prototype: make_entry_trampoline() of that site with dummy displaced instructions, and
// again with each of those values moved in turn, which shows every byte that depends on
// each value (an absolute 8-byte field, or a rel32 whose value moves with it); then two
// builds that move all of them at once must come out the same both ways, or the kind
// keeps the instruction-by-instruction path. A site then costs a copy, its relocated
// instructions and a few fixed-up fields. A rel32 that would not reach (where
// make_entry_trampoline() picks a longer form) takes the full path too.
// Not thread-safe: one builder per thread (the engine's is under its registry lock).
class EntryTrampolineBuilder {
 public:
  EntryTrampolineBuilder();
  ~EntryTrampolineBuilder();
  EntryTrampolineBuilder(const EntryTrampolineBuilder&) = delete;
  EntryTrampolineBuilder& operator=(const EntryTrampolineBuilder&) = delete;

  Result<Trampoline> build(const EntryTrampolineSpec& spec, const DisplacementPlan& plan);
  // Takes back a trampoline's buffers (once its code is written), for the next build():
  // a batch then allocates none per site.
  void recycle(Trampoline&& t);

  // Trampolines built from a prototype so far (tests, statistics).
  std::uint64_t from_prototype() const noexcept { return from_prototype_; }

 private:
  struct Prototype;
  Prototype* prototype_for(const EntryTrampolineSpec& spec, const DisplacementPlan& plan);
  std::vector<Prototype*> prototypes_;  // owned
  std::vector<std::uint8_t> spare_code_;
  std::vector<OffsetPair> spare_map_;
  std::uint64_t from_prototype_ = 0;
};

// The return trampoline: the probed function's return address is replaced by its address.
// It saves every general register and xmm0-15 (rax/rdx/xmm0/xmm1 carry return values;
// the others are saved so that nothing depends on which registers the dispatcher uses),
// builds a Regs frame (rsp = the stack pointer after the ret, rip = the trampoline's own
// address), calls `uint64_t dispatcher(void* context, hotprobe::Regs*)`, which returns the
// original return address, restores every register and jumps there through the red zone
// slot [rsp-8] (a signal cannot clobber it; the kernel skips the red zone).
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
// trampoline.cc), which does what the dispatcher's entry_one_return() does for one return
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

struct ReturnTrampolineSpec {
  std::uint64_t address = 0;
  std::uint64_t context = 0;
  std::uint64_t dispatcher = 0;
  bool save_vector = true;
  const FastReturn* fast = nullptr;
  // Leave by `ret` (the return stack buffer's top is the caller's entry: the function was
  // entered through a landing, which pushed one entry more) instead of `jmp [rsp-8]`.
  bool exit_by_ret = false;
  bool handler_stack = true;  // as EntryTrampolineSpec's
};
Result<std::vector<std::uint8_t>> make_return_trampoline(const ReturnTrampolineSpec& spec);

// The int3-mode copy: the relocated single instruction followed by a jmp back.
Result<Relocation> make_int3_copy(const Int3Plan& plan, std::uint64_t address);

// The bytes that replace the displaced ones: jmp rel32 to the trampoline, then int3 for
// the rest (a stray jump into them traps instead of running half an instruction).
// Written into `out` (at least `length` bytes): no allocation, for a batch's sites.
Result<void> write_jmp_patch_bytes(std::uint64_t patch_address, std::uint32_t length,
                                   std::uint64_t trampoline, std::span<std::uint8_t> out);

}  // namespace hp::arch
