// The handler stack: where every trampoline runs the dispatcher and the handlers.
#pragma once

#include <cstddef>
#include <cstdint>

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
// Size: kHandlerStackSize plus a PROT_NONE guard page below. The program's unwinders never
// see it: no code of the program runs on it, and the trampoline's frame on the program's
// stack is gone before the probed code goes on.
//
// Thread exit: a pthread key's destructor unmaps the stack and marks the thread exited, so
// a later hit (glibc frees its thread state in __libc_thread_freeres, after every key
// destructor) gets no new one: it runs where it is, where the engine's guard, set by its
// own exit hook, makes it a counted miss. A thread whose first hit comes after the key
// destructors gets a stack that no destructor frees: every stack is in a table with its
// owner's tid, and an allocation takes over (reuses) a few stacks of threads that no
// longer exist, so such stacks are bounded by the threads that make them, not by time.
inline constexpr std::size_t kHandlerStackSize = 64 * 1024;
struct HandlerStack {
  std::uint64_t next;        // rsp for the next switch; 0 in use or none
  std::uint64_t base;        // lowest usable byte; 0 none yet
  std::uint32_t allocating;  // kStackAllocating, kStackFailed or kStackExited; 0 otherwise
  void* slot;                // its entry in the table of stacks (handler_stack.cc)
};
inline constexpr std::uint32_t kStackAllocating = 1;  // being mapped
inline constexpr std::uint32_t kStackFailed = 2;      // mapping failed: not tried again
inline constexpr std::uint32_t kStackExited = 3;      // freed at thread exit: none again
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

}  // namespace hp::arch
