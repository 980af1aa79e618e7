#include "arch/x86_64/trampoline.h"

#include <algorithm>
#include <cinttypes>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <string>

#include <pthread.h>
#include <sys/mman.h>

#include "base/assert.h"
#include "base/compiler.h"
#include "hotprobe/regs.h"

// The fast path of FastEntry (trampoline.h), assembled once by the build and copied into
// each trampoline, where the placeholders (0x7fff_ffXX, patch points at the hp_fe_pN
// labels) get the engine's addresses and offsets. On entry r15 = the Regs frame (on the
// program's stack), rsp = the top of the thread's handler stack (16-byte aligned), and
// every register is saved in the frame, so any register but r15 may be used.
// The hit seen by the handler is a hotprobe::Hit {regs, cookie, data, probe_address}
// built below the frame (core/dispatch.cc checks that layout).
// clang-format off
asm(R"(
  .pushsection .rodata.hp_fast_entry, "a"
  .globl hp_fe_begin, hp_fe_end, hp_fe_offsets, hp_fr_begin, hp_fr_end, hp_fr_offsets
  .hidden hp_fe_begin, hp_fe_end, hp_fe_offsets, hp_fr_begin, hp_fr_end, hp_fr_offsets
  .globl hp_or_begin, hp_or_end, hp_or_offsets
  .hidden hp_or_begin, hp_or_end, hp_or_offsets

# read_unlock() and the guard's release, for the three places the templates leave a
# section: word -= 1 (R2), then F2's gp_futex load (to `wake` while a writer sleeps), then
# in_handler = 0 at `unlocked`. The placeholders and their patch labels are arguments.
.macro HP_LEAVE_SECTION word, word_label, futex, futex_label, wake, unlocked, guard, guard_label
  decq    %fs:\word
\word_label:
  movabsq $\futex, %rax
\futex_label:
  cmpl    $-1, (%rax)
  je      \wake
\unlocked:
  movb    $0, %fs:\guard
\guard_label:
.endm

# wake_writer(), inline, for both templates (rax = &gp_futex): a thread preempted in the
# futex call has its pc in the trampoline, where the reclaimer looks (not inside libc).
# `field` is the SYS_futex placeholder, `label` its patch label, `back` where to go on.
.macro HP_WAKE_WRITER back, field, label
  movq    %rax, %rdi
  xorl    %eax, %eax
  xchgl   %eax, (%rdi)                # gp_futex = 0; was it still -1?
  cmpl    $-1, %eax
  jne     \back
  movl    $\field, %eax              # SYS_futex
\label:
  movl    $129, %esi                  # FUTEX_WAKE_PRIVATE
  movl    $1, %edx                    # one waiter
  syscall
  jmp     \back
.endm

hp_fe_begin:
  cmpw    $0, %fs:0x7fffff01          # in a handler (the dispatcher counts a miss), or a
hp_fe_p1:                             # rehijack pending: the dispatcher
  jne     hp_fe_slow
  testb   $0x7f, %fs:0x7fffff02       # this scheme not ready on this thread yet
hp_fe_p2:
  je      hp_fe_slow
  movq    %fs:0x7fffff03, %rax        # the reader word (registered: the scheme is ready)
hp_fe_p3:
  testl   %eax, %eax                  # nested in a section: the dispatcher
  jne     hp_fe_slow
  movabsq $0x7fffffff7fffff04, %rdx   # read_lock(): word += entry increment + 1 (R0)
hp_fe_p4:
  addq    %rdx, %rax
  movq    %rax, %fs:0x7fffff05
hp_fe_p5:
  movb    $1, %fs:0x7fffff06          # in_handler = 1
hp_fe_p6:
  movabsq $0x7fffffff7fffff07, %rdx   # &site->consumers
hp_fe_p7:
  movq    (%rdx), %rdx                # the array (P2: a plain load is acquire on x86)
  testq   %rdx, %rdx
  je      hp_fe_unlock
  cmpb    $0, 0x7fffff08(%rdx)        # not one plain entry handler: the dispatcher's
hp_fe_p8:                             # loop (or the return-probe routine), section held
  je      hp_fe_locked
  movq    %r15, %rsi                  # Hit {regs, cookie, data, probe_address} pushed,
  pushq   %rcx                        # 16-byte aligned; rcx = Regs.rip, the probe address
  pushq   $0                          # (the save's last value)
  pushq   0x7fffff09(%rdx)            # cookie
hp_fe_p9:
  pushq   %rsi
  movq    %rsp, %rdi
  call    *0x7fffff0a(%rdx)           # the handler
hp_fe_p10:
  addq    $32, %rsp
  movq    %fs:0x7fffff0b, %rax        # the thread's record
hp_fe_p11:
  addq    $1, 0x7fffff0c(%rax)        # one hit, on the thread's own counter
hp_fe_p12:
hp_fe_unlock:
  HP_LEAVE_SECTION 0x7fffff0d, hp_fe_p13, 0x7fffffff7fffff0e, hp_fe_p14, hp_fe_wake, hp_fe_unlocked, 0x7fffff0f, hp_fe_p15
  jmp     hp_fe_end
hp_fe_wake:
  HP_WAKE_WRITER hp_fe_unlocked, 0x7fffff10, hp_fe_p16
hp_fe_locked:
  movq    %r15, %rsi                  # locked_dispatcher(context, regs, array, record)
  movq    %fs:0x7fffff11, %rcx
hp_fe_p17:
  movabsq $0x7fffffff7fffff12, %rdi   # context
hp_fe_p18:
  movabsq $0x7fffffff7fffff13, %rax   # locked_dispatcher
hp_fe_p19:
  call    *%rax
  movl    %eax, %ebx                  # it hijacked the return through the landing (rbx is
                                      # restored from the frame)
  HP_LEAVE_SECTION 0x7fffff16, hp_fe_p22, 0x7fffffff7fffff17, hp_fe_p23, hp_fe_lwake, hp_fe_lunlocked, 0x7fffff18, hp_fe_p24
  testb   %bl, %bl
  .byte   0x0f, 0x85                  # jnz rel32: the landing exit (the emitter's fixup)
  .long   0x7fffff19
hp_fe_p25:
  jmp     hp_fe_end
hp_fe_lwake:
  HP_WAKE_WRITER hp_fe_lunlocked, 0x7fffff1a, hp_fe_p26
hp_fe_slow:
  movq    %r15, %rsi                  # dispatcher(context, regs)
  movabsq $0x7fffffff7fffff14, %rdi   # context
hp_fe_p20:
  movabsq $0x7fffffff7fffff15, %rax   # dispatcher
hp_fe_p21:
  call    *%rax
  testb   %al, %al                    # it hijacked the return through the landing
  .byte   0x0f, 0x85                  # jnz rel32: the landing exit (the emitter's fixup)
  .long   0x7fffff1b
hp_fe_p27:
hp_fe_end:
  .p2align 2
hp_fe_offsets:                        # where each label hp_fe_pN is
  .long   hp_fe_p1 - hp_fe_begin
  .long   hp_fe_p2 - hp_fe_begin
  .long   hp_fe_p3 - hp_fe_begin
  .long   hp_fe_p4 - hp_fe_begin
  .long   hp_fe_p5 - hp_fe_begin
  .long   hp_fe_p6 - hp_fe_begin
  .long   hp_fe_p7 - hp_fe_begin
  .long   hp_fe_p8 - hp_fe_begin
  .long   hp_fe_p9 - hp_fe_begin
  .long   hp_fe_p10 - hp_fe_begin
  .long   hp_fe_p11 - hp_fe_begin
  .long   hp_fe_p12 - hp_fe_begin
  .long   hp_fe_p13 - hp_fe_begin
  .long   hp_fe_p14 - hp_fe_begin
  .long   hp_fe_p15 - hp_fe_begin
  .long   hp_fe_p16 - hp_fe_begin
  .long   hp_fe_p17 - hp_fe_begin
  .long   hp_fe_p18 - hp_fe_begin
  .long   hp_fe_p19 - hp_fe_begin
  .long   hp_fe_p20 - hp_fe_begin
  .long   hp_fe_p21 - hp_fe_begin
  .long   hp_fe_p22 - hp_fe_begin
  .long   hp_fe_p23 - hp_fe_begin
  .long   hp_fe_p24 - hp_fe_begin
  .long   hp_fe_p25 - hp_fe_begin
  .long   hp_fe_p26 - hp_fe_begin
  .long   hp_fe_p27 - hp_fe_begin

# The fast path of FastReturn (trampoline.h): the return trampoline's common case, the
# same way. On entry r15 = the Regs frame and rsp = the handler stack's top, as above;
# rbx, r12, r13, r14 carry the record, the
# depth below ours, our instance and its site across the handler call (all restored from
# the frame afterwards). It leaves the original return address in rax, as the
# dispatcher does.
  .p2align 4
hp_fr_begin:
  cmpw    $0, %fs:0x7fffff01          # in a handler, or a rehijack pending
hp_fr_p1:
  jne     hp_fr_slow
  movq    %fs:0x7fffff02, %rbx        # the thread's record
hp_fr_p2:
  testq   %rbx, %rbx
  je      hp_fr_slow
  movl    0x7fffff03(%rbx), %eax      # depth
hp_fr_p3:
  testl   %eax, %eax
  je      hp_fr_slow
  leal    -1(%rax), %r12d
  imulq   $0x7fffff04, %r12, %r13     # the top instance: stack[depth - 1]
hp_fr_p4:
  leaq    0x7fffff05(%rbx,%r13), %r13
hp_fr_p5:
  movq    128(%r15), %rdi             # Regs.rsp - 8: the slot the ret popped
  subq    $8, %rdi
  cmpq    %rdi, 0x7fffff06(%r13)      # not ours (a longjmp left instances above)
hp_fr_p6:
  jne     hp_fr_slow
  cmpl    $1, %eax
  je      1f
  cmpq    %rdi, 0x7fffff07(%r13)      # the one below shares the slot (a tail call)
hp_fr_p7:
  je      hp_fr_slow
1:
  movq    0x7fffff08(%r13), %r14      # its site (detached and gone: the dispatcher)
hp_fr_p8:
  testq   %r14, %r14
  je      hp_fr_slow
  cmpl    $1, 0x7fffff09(%r13)        # one consumer recorded
hp_fr_p9:
  jne     hp_fr_slow
  movq    %fs:0x7fffff0a, %rax        # the reader word: outermost and registered
hp_fr_p10:
  testl   %eax, %eax
  jne     hp_fr_slow
  testq   %rax, %rax
  je      hp_fr_slow
  movabsq $0x7fffffff7fffff0b, %rdx   # read_lock() (R0)
hp_fr_p11:
  addq    %rdx, %rax
  movq    %rax, %fs:0x7fffff0c
hp_fr_p12:
  movb    $1, %fs:0x7fffff0d          # in_handler = 1
hp_fr_p13:
  movq    0x7fffff0e(%r14), %rdx      # the site's array (P2)
hp_fr_p14:
  testq   %rdx, %rdx
  je      hp_fr_unlock                # no consumer left: nothing to run
  cmpb    $0, 0x7fffff0f(%rdx)        # not the one-return-consumer case
hp_fr_p15:
  je      hp_fr_bail
  movq    0x7fffff10(%rdx), %rax      # the same consumer as at entry
hp_fr_p16:
  cmpq    %rax, 0x7fffff11(%r13)
hp_fr_p17:
  jne     hp_fr_bail
  movq    %r15, %rcx                  # Hit {regs, cookie, &data, probe_address}
  subq    $32, %rsp
  movq    %rcx, (%rsp)
  movq    0x7fffff12(%rdx), %rax
hp_fr_p18:
  movq    %rax, 8(%rsp)
  leaq    0x7fffff13(%r13), %rax
hp_fr_p19:
  movq    %rax, 16(%rsp)
  movq    0x7fffff14(%r14), %rax
hp_fr_p20:
  movq    %rax, 24(%rsp)
  movq    %rsp, %rdi
  call    *0x7fffff15(%rdx)           # the return handler
hp_fr_p21:
  addq    $32, %rsp
  addq    $1, 0x7fffff16(%rbx)        # one hit
hp_fr_p22:
hp_fr_unlock:
  HP_LEAVE_SECTION 0x7fffff17, hp_fr_p23, 0x7fffffff7fffff18, hp_fr_p24, hp_fr_wake, hp_fr_unlocked, 0x7fffff19, hp_fr_p25
  movq    0x7fffff1a(%r13), %rax      # the original return address
hp_fr_p26:
  movq    $0, 0x7fffff1b(%r13)        # site = null (release): the zombie scan may let go
hp_fr_p27:
  movl    %r12d, 0x7fffff1c(%rbx)     # depth - 1 (release)
hp_fr_p28:
  jmp     hp_fr_end
hp_fr_wake:
  HP_WAKE_WRITER hp_fr_unlocked, 0x7fffff1d, hp_fr_p29
hp_fr_bail:                           # leave the section; the dispatcher enters its own
  decq    %fs:0x7fffff1e              # (and wakes a sleeping writer when it leaves)
hp_fr_p30:
  movb    $0, %fs:0x7fffff1f
hp_fr_p31:
hp_fr_slow:
  movq    %r15, %rsi                  # dispatcher(context, regs)
  movabsq $0x7fffffff7fffff20, %rdi
hp_fr_p32:
  movabsq $0x7fffffff7fffff21, %rax
hp_fr_p33:
  call    *%rax
hp_fr_end:
  .p2align 2
hp_fr_offsets:
  .long   hp_fr_p1 - hp_fr_begin
  .long   hp_fr_p2 - hp_fr_begin
  .long   hp_fr_p3 - hp_fr_begin
  .long   hp_fr_p4 - hp_fr_begin
  .long   hp_fr_p5 - hp_fr_begin
  .long   hp_fr_p6 - hp_fr_begin
  .long   hp_fr_p7 - hp_fr_begin
  .long   hp_fr_p8 - hp_fr_begin
  .long   hp_fr_p9 - hp_fr_begin
  .long   hp_fr_p10 - hp_fr_begin
  .long   hp_fr_p11 - hp_fr_begin
  .long   hp_fr_p12 - hp_fr_begin
  .long   hp_fr_p13 - hp_fr_begin
  .long   hp_fr_p14 - hp_fr_begin
  .long   hp_fr_p15 - hp_fr_begin
  .long   hp_fr_p16 - hp_fr_begin
  .long   hp_fr_p17 - hp_fr_begin
  .long   hp_fr_p18 - hp_fr_begin
  .long   hp_fr_p19 - hp_fr_begin
  .long   hp_fr_p20 - hp_fr_begin
  .long   hp_fr_p21 - hp_fr_begin
  .long   hp_fr_p22 - hp_fr_begin
  .long   hp_fr_p23 - hp_fr_begin
  .long   hp_fr_p24 - hp_fr_begin
  .long   hp_fr_p25 - hp_fr_begin
  .long   hp_fr_p26 - hp_fr_begin
  .long   hp_fr_p27 - hp_fr_begin
  .long   hp_fr_p28 - hp_fr_begin
  .long   hp_fr_p29 - hp_fr_begin
  .long   hp_fr_p30 - hp_fr_begin
  .long   hp_fr_p31 - hp_fr_begin
  .long   hp_fr_p32 - hp_fr_begin
  .long   hp_fr_p33 - hp_fr_begin

# OneReturnEntry (trampoline.h): the entry side of the common return probe, a routine
# shared by every site, which a fast entry path calls as its locked_dispatcher (rdi = site,
# rsi = the Regs frame, rdx = the array, rcx = the record; the section held, the guard
# set). The dispatcher's entry_one_return(): one return consumer at an entry with a
# landing, room on the stack, the call nested in the frames there (no longjmp leftovers,
# no tail call): it pushes the instance and points the return address at the landing,
# returning true. Anything else jumps to the dispatcher's entry_locked_tasks_trace().
  .p2align 4
hp_or_begin:
  cmpb    $0, 0x7fffff01(%rdx)        # not one return consumer
hp_or_p1:
  je      hp_or_fallback
  movq    0x7fffff02(%rdi), %r8       # the site's landing (0: none)
hp_or_p2:
  testq   %r8, %r8
  je      hp_or_fallback
  movl    0x7fffff03(%rcx), %r9d      # depth
hp_or_p3:
  cmpl    0x7fffff04(%rdi), %r9d      # the site's cap: the dispatcher counts the miss
hp_or_p4:
  jae     hp_or_fallback
  movq    128(%rsi), %r10             # Regs.rsp: the return slot
  imulq   $0x7fffff05, %r9, %r11      # r11 = &stack[depth]
hp_or_p5:
  leaq    0x7fffff06(%rcx,%r11), %r11
hp_or_p6:
  testl   %r9d, %r9d
  je      1f
  cmpq    %r10, 0x7fffff07(%r11)      # stack[depth - 1].slot at or below ours
hp_or_p7:
  jbe     hp_or_fallback
1:
  movl    $1, 0x7fffff08(%r11)        # n = 1, cd[0] = {the consumer's id, 0}
hp_or_p8:
  movq    0x7fffff09(%rdx), %rax
hp_or_p9:
  movq    %rax, 0x7fffff0a(%r11)
hp_or_p10:
  movq    $0, 0x7fffff0b(%r11)
hp_or_p11:
  movq    0x7fffff0c(%rdx), %rax      # its entry handler, if any
hp_or_p12:
  testq   %rax, %rax
  jne     hp_or_handler
hp_or_hijack:                         # hijack_return(): the instance, then depth (R1:
  movq    (%r10), %rax                # release, a plain store), then the return address
  movq    %rax, 0x7fffff0d(%r11)      # orig_ret
hp_or_p13:
  movq    %r10, 0x7fffff0e(%r11)      # slot
hp_or_p14:
  movq    %r8, 0x7fffff0f(%r11)       # tramp
hp_or_p15:
  movb    $1, 0x7fffff10(%r11)        # hijacked
hp_or_p16:
  movq    %rdi, 0x7fffff11(%r11)      # site
hp_or_p17:
  leal    1(%r9), %eax
  movl    %eax, 0x7fffff12(%rcx)      # depth + 1
hp_or_p18:
  movq    %r8, (%r10)
  movl    $1, %eax                    # through the landing
  ret
hp_or_handler:                        # rsp = 8 mod 16 here
  pushq   %rdi                        # site, record, depth, instance across the call
  pushq   %rcx
  pushq   %r9
  pushq   %r11
  subq    $40, %rsp                   # Hit {regs, cookie, &cd[0].data, probe_address}, regs
  movq    %rsi, (%rsp)
  movq    %rsi, 32(%rsp)
  movq    0x7fffff13(%rdx), %r8
hp_or_p19:
  movq    %r8, 8(%rsp)
  leaq    0x7fffff14(%r11), %r8
hp_or_p20:
  movq    %r8, 16(%rsp)
  movq    0x7fffff15(%rdi), %r8       # the site's probe address
hp_or_p21:
  movq    %r8, 24(%rsp)
  movq    %rsp, %rdi
  call    *%rax
  movq    32(%rsp), %rsi
  addq    $40, %rsp
  popq    %r11
  popq    %r9
  popq    %rcx
  popq    %rdi
  addq    $1, 0x7fffff16(%rcx)        # one hit
hp_or_p22:
  movq    0x7fffff17(%rdi), %r8       # the landing
hp_or_p23:
  movq    128(%rsi), %r10
  jmp     hp_or_hijack
hp_or_fallback:
  movabsq $0x7fffffff7fffff18, %rax   # entry_locked_tasks_trace(), same arguments
hp_or_p24:
  jmp     *%rax
hp_or_end:
  .p2align 2
hp_or_offsets:
  .long   hp_or_p1 - hp_or_begin
  .long   hp_or_p2 - hp_or_begin
  .long   hp_or_p3 - hp_or_begin
  .long   hp_or_p4 - hp_or_begin
  .long   hp_or_p5 - hp_or_begin
  .long   hp_or_p6 - hp_or_begin
  .long   hp_or_p7 - hp_or_begin
  .long   hp_or_p8 - hp_or_begin
  .long   hp_or_p9 - hp_or_begin
  .long   hp_or_p10 - hp_or_begin
  .long   hp_or_p11 - hp_or_begin
  .long   hp_or_p12 - hp_or_begin
  .long   hp_or_p13 - hp_or_begin
  .long   hp_or_p14 - hp_or_begin
  .long   hp_or_p15 - hp_or_begin
  .long   hp_or_p16 - hp_or_begin
  .long   hp_or_p17 - hp_or_begin
  .long   hp_or_p18 - hp_or_begin
  .long   hp_or_p19 - hp_or_begin
  .long   hp_or_p20 - hp_or_begin
  .long   hp_or_p21 - hp_or_begin
  .long   hp_or_p22 - hp_or_begin
  .long   hp_or_p23 - hp_or_begin
  .long   hp_or_p24 - hp_or_begin
  .popsection
)");
// clang-format on

extern "C" {
__attribute__((visibility("hidden"))) extern const std::uint8_t hp_fe_begin[], hp_fe_end[];
__attribute__((visibility("hidden"))) extern const std::uint32_t hp_fe_offsets[27];
__attribute__((visibility("hidden"))) extern const std::uint8_t hp_fr_begin[], hp_fr_end[];
__attribute__((visibility("hidden"))) extern const std::uint32_t hp_fr_offsets[33];
__attribute__((visibility("hidden"))) extern const std::uint8_t hp_or_begin[], hp_or_end[];
__attribute__((visibility("hidden"))) extern const std::uint32_t hp_or_offsets[24];
}

// The handler stack's switch outside a trampoline (hp_handler_stack_call() below, for a
// thread's first hit and for code that is not a trampoline): the same protocol as the
// trampolines' (trampoline.h, HandlerStack). rdi, rsi = the arguments of fn (rdx); rcx =
// &HandlerStack::next, nonzero. In the dispatch section: a thread preempted here is about
// to return into a trampoline.
// clang-format off
asm(R"(
  .pushsection hp_dispatch, "ax", @progbits
  .globl hp_handler_stack_switch
  .hidden hp_handler_stack_switch
  .type hp_handler_stack_switch, @function
hp_handler_stack_switch:
  .cfi_startproc
  pushq   %rbx
  .cfi_adjust_cfa_offset 8
  .cfi_rel_offset %rbx, 0
  pushq   %r12
  .cfi_adjust_cfa_offset 8
  .cfi_rel_offset %r12, 0
  movq    %rsp, %rbx                  # the way back
  .cfi_def_cfa_register %rbx
  movq    %rcx, %r12
  movq    (%rcx), %rax
  movq    $0, (%rcx)                  # in use: a nested switch (a signal) stays where it is
  movq    %rax, %rsp
  call    *%rdx
  movq    %rsp, %rcx                  # leave the stack before giving it back (a signal
  movq    %rbx, %rsp                  # between the two would otherwise run on it)
  .cfi_def_cfa_register %rsp
  movq    %rcx, (%r12)
  popq    %r12
  .cfi_adjust_cfa_offset -8
  popq    %rbx
  .cfi_adjust_cfa_offset -8
  ret
  .cfi_endproc
  .size hp_handler_stack_switch, . - hp_handler_stack_switch
  .popsection
)");
// clang-format on

extern "C" std::uint64_t hp_handler_stack_switch(void* context, void* regs, std::uint64_t fn,
                                                 std::uint64_t* next);

namespace hp::arch {

constinit thread_local HandlerStack tls_handler_stack
    __attribute__((tls_model("initial-exec"))) = {};

namespace {

constexpr std::size_t kGuard = 4096;
pthread_key_t g_stack_key;
bool g_stack_key_ok = false;

// Thread exit (a pthread key's destructor): unmaps the calling thread's handler stack. A
// later hit of the same thread (another key's destructor) allocates again and sets the
// key again, which glibc runs destructors for again (PTHREAD_DESTRUCTOR_ITERATIONS).
void free_handler_stack(void* base) {
  HandlerStack& hs = tls_handler_stack;
  if (hs.base != reinterpret_cast<std::uint64_t>(base) || hs.next == 0) return;  // in use
  hs.next = 0;
  hs.base = 0;
  munmap(static_cast<char*>(base) - kGuard, kHandlerStackSize + kGuard);
}

// Made at load time: a first hit may come from a signal handler, where pthread_once is
// not safe. Without a key (none left), stacks of exited threads are not unmapped.
__attribute__((constructor)) void make_handler_stack_key() {
  g_stack_key_ok = pthread_key_create(&g_stack_key, free_handler_stack) == 0;
}

// The calling thread's handler stack, allocated: mmap with a guard page below (a handler
// that overflows it faults there instead of writing into other memory).
HP_COLD bool allocate_handler_stack(HandlerStack& hs) {
  hs.allocating = 1;  // a signal's hit meanwhile stays on its own stack
  void* m = mmap(nullptr, kHandlerStackSize + kGuard, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
  if (m == MAP_FAILED) {
    hs.allocating = 2;  // not again: every hit would try
    return false;
  }
  (void)mprotect(m, kGuard, PROT_NONE);
  char* base = static_cast<char*>(m) + kGuard;
  if (g_stack_key_ok) (void)pthread_setspecific(g_stack_key, base);
  hs.base = reinterpret_cast<std::uint64_t>(base);
  hs.next = hs.base + kHandlerStackSize;
  hs.allocating = 0;
  return true;
}

}  // namespace

std::int32_t handler_stack_tls() noexcept {
  std::uintptr_t tp;
  __asm__("mov %%fs:0, %0" : "=r"(tp));
  return static_cast<std::int32_t>(reinterpret_cast<std::intptr_t>(&tls_handler_stack.next) -
                                   static_cast<std::intptr_t>(tp));
}

HandlerStackBounds handler_stack_bounds() noexcept {
  const HandlerStack& hs = tls_handler_stack;
  return {hs.base, hs.base ? hs.base + kHandlerStackSize : 0};
}

}  // namespace hp::arch

extern "C" HP_DISPATCH_SECTION std::uint64_t hp_handler_stack_call(void* context, void* regs,
                                                                   std::uint64_t fn) {
  hp::arch::HandlerStack& hs = hp::arch::tls_handler_stack;
  if (HP_UNLIKELY(hs.base == 0 && hs.allocating == 0)) (void)hp::arch::allocate_handler_stack(hs);
  if (HP_LIKELY(hs.next != 0)) return hp_handler_stack_switch(context, regs, fn, &hs.next);
  // In use (a signal's hit while the thread runs a handler: the dispatcher counts a
  // recursion miss), or no memory: here, on the current stack.
  return reinterpret_cast<std::uint64_t (*)(void*, void*)>(fn)(context, regs);
}

namespace hp::arch {
namespace {

using hotprobe::Regs;

// A copy of an assembled template in the emitter, whose placeholders get their values: the
// field of label pN is `size` bytes ending `tail` bytes before the label and holds
// 0x7fffffNN (0x7fffffff7fffffNN for 8 bytes, 0x7f for 1), N = n. A placeholder that is
// not where the table says (the assembler encoded something differently) is an error,
// never a silent miscompile.
class TemplateCopy {
 public:
  TemplateCopy(Emitter& e, const std::uint8_t* begin, const std::uint8_t* end,
               const std::uint32_t* offsets, const char* name)
      : b_(e.bytes()), base_(e.size()), offsets_(offsets), name_(name) {
    e.raw({begin, static_cast<std::size_t>(end - begin)});
  }
  void put(unsigned n, unsigned size, unsigned tail, std::uint64_t value) {
    const std::uint32_t at = field(n, size, tail);
    if (status_.ok()) std::memcpy(&b_[at], &value, size);
  }
  // Where field n is in the emitter's bytes (checked like put(): for a later fixup).
  std::uint32_t field(unsigned n, unsigned size, unsigned tail) {
    const std::uint32_t at = base_ + offsets_[n - 1] - tail - size;
    std::uint64_t want = size == 1 ? 0x7f : size == 4 ? 0x7fffff00u + n : 0x7fffffff7fffff00u + n;
    std::uint64_t have = 0;
    std::memcpy(&have, &b_[at], size);
    if (have != want) {
      status_ =
          Error(Errc::internal, std::string("the ") + name_ + " template's field " +
                                    std::to_string(n) + " is not where expected: rebuild hotprobe");
    }
    return at;
  }
  void put32(unsigned n, unsigned tail, std::int32_t v) {
    put(n, 4, tail, static_cast<std::uint32_t>(v));
  }
  Result<void> status() const { return status_; }

 private:
  std::vector<std::uint8_t>& b_;
  std::uint32_t base_;
  const std::uint32_t* offsets_;
  const char* name_;
  Result<void> status_;
};

// The rel32 fields of jumps to the landing exit (make_entry_trampoline() fixes them up).
struct LandingJumps {
  std::uint32_t at[2] = {0, 0};
  unsigned n = 0;
};

Result<void> emit_fast_entry(Emitter& e, const FastEntry& f, std::uint64_t context,
                             std::uint64_t dispatcher, LandingJumps& jumps) {
  TemplateCopy t(e, hp_fe_begin, hp_fe_end, hp_fe_offsets, "fast-entry");
  auto put = [&t](unsigned n, unsigned size, unsigned tail, std::uint64_t v) {
    t.put(n, size, tail, v);
  };
  auto i32 = [](std::int32_t v) {
    return static_cast<std::uint64_t>(static_cast<std::uint32_t>(v));
  };
  put(1, 4, 1, i32(f.ts_in_handler));  // cmpw: in_handler and rehijack_pending
  put(2, 4, 1, i32(f.ts_ready));
  put(2, 1, 0, f.ready_bit);
  put(3, 4, 0, i32(f.tt_word));
  put(4, 8, 0, f.tt_enter + 1);
  put(5, 4, 0, i32(f.tt_word));
  put(6, 4, 1, i32(f.ts_in_handler));
  put(7, 8, 0, f.consumers);
  put(8, 4, 1, i32(f.arr_one_entry));
  put(9, 4, 0, i32(f.arr_cookie));
  put(10, 4, 0, i32(f.arr_handler));
  put(11, 4, 0, i32(f.ts_rec));
  put(12, 4, 1, i32(f.rec_hits));
  put(13, 4, 0, i32(f.tt_word));
  put(14, 8, 0, f.gp_futex);
  put(15, 4, 1, i32(f.ts_in_handler));
  put(16, 4, 0, f.sys_futex);
  put(17, 4, 0, i32(f.ts_rec));
  put(18, 8, 0, context);
  put(19, 8, 0, f.locked_dispatcher);
  put(20, 8, 0, context);
  put(21, 8, 0, dispatcher);
  put(22, 4, 0, i32(f.tt_word));
  put(23, 8, 0, f.gp_futex);
  put(24, 4, 1, i32(f.ts_in_handler));
  put(26, 4, 0, f.sys_futex);
  jumps.at[jumps.n++] = t.field(25, 4, 0);
  jumps.at[jumps.n++] = t.field(27, 4, 0);
  for (unsigned i = 0; i < jumps.n; i++)
    e.patch_u32(jumps.at[i], 0);  // to the next instruction until fixed up
  return t.status();
}

static_assert(offsetof(Regs, rsp) == 128, "the fast-return template reads Regs.rsp at 128");

Result<void> emit_fast_return(Emitter& e, const FastReturn& f, std::uint64_t context,
                              std::uint64_t dispatcher) {
  TemplateCopy t(e, hp_fr_begin, hp_fr_end, hp_fr_offsets, "fast-return");
  t.put32(1, 1, f.ts_in_handler);
  t.put32(2, 0, f.ts_rec);
  t.put32(3, 0, f.rs.rec_depth);
  t.put32(4, 0, f.rs.ri_size);
  t.put32(5, 0, f.rs.rec_stack);
  t.put32(6, 0, f.rs.ri_slot);
  t.put32(7, 0, f.rs.ri_slot - f.rs.ri_size);
  t.put32(8, 0, f.rs.ri_site);
  t.put32(9, 1, f.rs.ri_n);
  t.put32(10, 0, f.tt_word);
  t.put(11, 8, 0, f.tt_enter + 1);
  t.put32(12, 0, f.tt_word);
  t.put32(13, 1, f.ts_in_handler);
  t.put32(14, 0, f.site_consumers);
  t.put32(15, 1, f.arr_one_return);
  t.put32(16, 0, f.arr_id);
  t.put32(17, 0, f.rs.ri_consumer_id);
  t.put32(18, 0, f.arr_cookie);
  t.put32(19, 0, f.rs.ri_data);
  t.put32(20, 0, f.site_probe_address);
  t.put32(21, 0, f.arr_handler);
  t.put32(22, 1, f.rs.rec_hits);
  t.put32(23, 0, f.tt_word);
  t.put(24, 8, 0, f.gp_futex);
  t.put32(25, 1, f.ts_in_handler);
  t.put32(26, 0, f.rs.ri_orig);
  t.put32(27, 4, f.rs.ri_site);
  t.put32(28, 0, f.rs.rec_depth);
  t.put(29, 4, 0, f.sys_futex);
  t.put32(30, 0, f.tt_word);
  t.put32(31, 1, f.ts_in_handler);
  t.put(32, 8, 0, context);
  t.put(33, 8, 0, dispatcher);
  return t.status();
}

}  // namespace

Result<std::vector<std::uint8_t>> make_one_return_entry(const OneReturnEntry& f,
                                                        std::uint64_t address) {
  Emitter e(address);
  TemplateCopy t(e, hp_or_begin, hp_or_end, hp_or_offsets, "one-return-entry");
  t.put32(1, 1, f.arr_one_return);
  t.put32(2, 0, f.site_landing);
  t.put32(3, 0, f.rs.rec_depth);
  t.put32(4, 0, f.site_return_depth);
  t.put32(5, 0, f.rs.ri_size);
  t.put32(6, 0, f.rs.rec_stack);
  t.put32(7, 0, f.rs.ri_slot - f.rs.ri_size);
  t.put32(8, 4, f.rs.ri_n);
  t.put32(9, 0, f.arr_id);
  t.put32(10, 0, f.rs.ri_consumer_id);
  t.put32(11, 4, f.rs.ri_data);
  t.put32(12, 0, f.arr_handler);
  t.put32(13, 0, f.rs.ri_orig);
  t.put32(14, 0, f.rs.ri_slot);
  t.put32(15, 0, f.rs.ri_tramp);
  t.put32(16, 1, f.rs.ri_hijacked);
  t.put32(17, 0, f.rs.ri_site);
  t.put32(18, 0, f.rs.rec_depth);
  t.put32(19, 0, f.arr_cookie);
  t.put32(20, 0, f.rs.ri_data);
  t.put32(21, 0, f.site_probe_address);
  t.put32(22, 1, f.rs.rec_hits);
  t.put32(23, 0, f.site_landing);
  t.put(24, 8, 0, f.fallback);
  HP_TRY(t.status());
  return std::move(e).take();
}

namespace {

constexpr std::int32_t kRedZone = 128;
constexpr std::int32_t kFrame = static_cast<std::int32_t>(sizeof(Regs));
constexpr std::int32_t kVectorArea = 16 * 16;
// [M] flags, [M+8] rax, M = S - kRedZone - 16.
constexpr std::int32_t kHead = kRedZone + 16;

struct SavedGpr {
  Gpr reg;
  std::int32_t offset;
};
// Every register but rax, which is the way-back pointer while the frame is built.
constexpr SavedGpr kSaved[] = {
    {rcx, offsetof(Regs, rcx)}, {rdx, offsetof(Regs, rdx)}, {rsi, offsetof(Regs, rsi)},
    {rdi, offsetof(Regs, rdi)}, {r8, offsetof(Regs, r8)},   {r9, offsetof(Regs, r9)},
    {r10, offsetof(Regs, r10)}, {r11, offsetof(Regs, r11)}, {rbx, offsetof(Regs, rbx)},
    {rbp, offsetof(Regs, rbp)}, {r12, offsetof(Regs, r12)}, {r13, offsetof(Regs, r13)},
    {r14, offsetof(Regs, r14)}, {r15, offsetof(Regs, r15)},
};

std::int32_t vector_area(bool save_vector) {
  return save_vector ? kVectorArea : 0;
}

// Offset of the way-back pointer M from the frame (rsp after the frame is built).
std::int32_t way_back_offset(bool save_vector) {
  return kFrame + vector_area(save_vector);
}

// Saves everything into a Regs frame at rsp (then emit_call() or emit_fast_entry()).
// Where flags are dead, their slot [M] holds rax instead ([M+8] is not written) and
// Regs.rflags is 0: two stores and a load fewer on every hit.
void emit_save(Emitter& e, bool flags_live, bool save_vector, std::uint64_t rip_value) {
  if (flags_live) {
    e.lea_rsp(-kRedZone);
    e.push(rax);
    e.pushfq();
    e.cld();
  } else {
    e.lea_rsp(-kRedZone - 8);
    e.push(rax);
  }
  e.mov_rr(rax, rsp);
  e.and_rsp_imm8(-16);
  e.lea_rsp(-8);  // padding: 16-byte alignment below
  e.push(rax);
  if (save_vector) {
    e.lea_rsp(-kVectorArea);
    for (unsigned i = 0; i < 16; ++i)
      e.movups_store(static_cast<std::int32_t>(16 * i), i);
  }
  e.lea_rsp(-kFrame);
  for (const SavedGpr& s : kSaved)
    e.mov_to_rsp_mem(s.offset, s.reg);
  e.mov_from_mem(rcx, rax, flags_live ? 8 : 0);
  e.mov_to_rsp_mem(offsetof(Regs, rax), rcx);
  if (flags_live) {
    e.mov_from_mem(rcx, rax, 0);
    e.mov_to_rsp_mem(offsetof(Regs, rflags), rcx);
  }
  e.lea(rcx, rax, kHead);
  e.mov_to_rsp_mem(offsetof(Regs, rsp), rcx);
  e.movabs(rcx, rip_value);
  e.mov_to_rsp_mem(offsetof(Regs, rip), rcx);
}

// The switch to the handler stack (trampoline.h, HandlerStack), after emit_save(): rsp =
// the frame. Leaves r15 = the frame, rsp = the handler stack's top; returns the rel32
// field of the branch to the out-of-line call (emit_no_handler_stack()).
std::uint32_t emit_switch_in(Emitter& e) {
  const auto tls = static_cast<std::uint32_t>(handler_stack_tls());
  for (std::uint8_t b : {0x64, 0x48, 0x8b, 0x04, 0x25})  // mov rax, fs:[next]
    e.u8(b);
  e.u32(tls);
  for (std::uint8_t b : {0x48, 0x85, 0xc0, 0x0f, 0x84})  // test rax, rax; je rel32
    e.u8(b);
  const std::uint32_t field = e.size();
  e.u32(0);
  for (std::uint8_t b : {0x64, 0x48, 0xc7, 0x04, 0x25})  // mov qword fs:[next], 0
    e.u8(b);
  e.u32(tls);
  e.u32(0);
  e.mov_rr(r15, rsp);
  e.mov_rr(rsp, rax);
  return field;
}

// Back to the frame (rsp = r15), then the handler stack is free again: in this order, so a
// signal between the two never finds it free while rsp is on it. rax survives.
void emit_switch_out(Emitter& e) {
  e.mov_rr(rcx, rsp);
  e.mov_rr(rsp, r15);
  for (std::uint8_t b : {0x64, 0x48, 0x89, 0x0c, 0x25})  // mov fs:[next], rcx
    e.u8(b);
  e.u32(static_cast<std::uint32_t>(handler_stack_tls()));
}

// The dispatcher through hp_handler_stack_call() (rsp = the frame): the thread's first hit,
// or a hit nested in a handler's (a signal). `landing` is the rel32 field to fix up to the
// landing exit after its switch-out when the dispatcher returns true (0: none); `back`
// where the trampoline goes on otherwise.
void emit_no_handler_stack(Emitter& e, std::uint32_t je_field, std::uint64_t context,
                           std::uint64_t dispatcher, std::uint32_t landing_exit,
                           std::uint32_t back) {
  e.patch_u32(je_field, e.size() - (je_field + 4));
  e.movabs(rdi, context);
  e.mov_rr(rsi, rsp);
  e.movabs(rdx, dispatcher);
  e.movabs(rax, reinterpret_cast<std::uint64_t>(&hp_handler_stack_call));
  e.call_reg(rax);
  if (landing_exit) {
    for (std::uint8_t b : {0x84, 0xc0, 0x0f, 0x85})  // test al, al; jnz rel32
      e.u8(b);
    e.u32(landing_exit - (e.size() + 4));
  }
  e.jmp_rel32(e.here() - e.size() + back);
}

void emit_call(Emitter& e, std::uint64_t context, std::uint64_t dispatcher, Gpr frame) {
  e.movabs(rdi, context);
  e.mov_rr(rsi, frame);
  if (in_rel32_reach(e.here() + 5, dispatcher)) {
    e.call_rel32(dispatcher);
  } else {
    e.movabs(rax, dispatcher);
    e.call_reg(rax);
  }
}

// Regs from rax to r15, in memory order: what emit_restore() pops.
constexpr Gpr kPopped[] = {rax, rcx, rdx, rsi, rdi, r8, r9, r10, r11, rbx, rbp, r12, r13, r14, r15};
static_assert(offsetof(Regs, rax) == 0 && offsetof(Regs, r15) == 14 * 8 &&
              offsetof(Regs, rbx) == 9 * 8 && offsetof(Regs, r11) == 8 * 8);

// xmm0-15 from the vector area (rsp = the frame): once, right after the dispatcher (and the
// switch back), before the exits branch, so a trampoline with a landing exit has one copy.
void emit_vector_restore(Emitter& e, bool save_vector) {
  if (!save_vector) return;
  for (unsigned i = 0; i < 16; ++i)
    e.movups_load(i, kFrame + static_cast<std::int32_t>(16 * i));
}

// Restores every general register (from the frame); leaves rsp = M. Pops, 23 bytes where
// movs take 75: a trampoline with a landing exit restores twice in its slot.
void emit_restore(Emitter& e, bool save_vector) {
  for (Gpr r : kPopped)
    e.pop(r);
  e.mov_from_rsp_mem(rsp, way_back_offset(save_vector) - 15 * 8);
}

// The unlikely half of a restore's alignment branch (emit_restore_to_site()), emitted
// after the rest of the trampoline.
struct RareExit {
  std::uint32_t jcc_field;  // the rel32 of the branch to it
  std::int32_t lea;         // rsp += lea
  std::uint32_t back;       // where it continues
};

// Restores every general register and sets rsp = the site's rsp + `extra`
// without loading rsp from memory: a loaded rsp puts the store-to-load latency in front
// of every later stack access of the thread (the displaced push, the function's ret, the
// caller's next call), measured at 0.3-0.5 ns a hit. Whether the save's `and` moved rsp
// (bit 3 of the way-back pointer M) is instead a branch, which the predictor learns per
// site; `likely_moved` picks the fall-through (at a function's entry rsp is 8 mod 16, so
// the save moved it; after a ret it is 0 mod 16).
void emit_restore_to_site(Emitter& e, bool save_vector, std::int32_t extra, bool likely_moved,
                          std::vector<RareExit>& rare) {
  for (Gpr r : kPopped)
    e.pop(r);
  // M's slot, from rsp after the pops; the padding and M sit below A = M & -16.
  const std::int32_t way = way_back_offset(save_vector) - 15 * 8;
  const std::int32_t unmoved = way + 16 + kHead + extra;  // S + extra - rsp, when M = A
  // test byte [rsp+way], 8
  e.u8(0xf6);
  if (way < 128) {
    e.u8(0x44);
    e.u8(0x24);
    e.u8(static_cast<std::uint8_t>(way));
  } else {
    e.u8(0x84);
    e.u8(0x24);
    e.u32(static_cast<std::uint32_t>(way));
  }
  e.u8(0x08);
  e.u8(0x0f);
  e.u8(likely_moved ? 0x84 : 0x85);  // je / jne rel32: to the unlikely case
  const std::uint32_t field = e.size();
  e.u32(0);
  e.lea_rsp(unmoved + (likely_moved ? 8 : 0));
  rare.push_back({field, unmoved + (likely_moved ? 0 : 8), e.size()});
}

void emit_rare_exits(Emitter& e, std::uint64_t address, const std::vector<RareExit>& rare) {
  for (const RareExit& r : rare) {
    e.patch_u32(r.jcc_field, e.size() - (r.jcc_field + 4));
    e.lea_rsp(r.lea);
    e.jmp_rel32(address + r.back);
  }
}

std::string hex(std::uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%" PRIx64, v);
  return buf;
}

}  // namespace

namespace {

// EntryTrampolineSpec::run_at_ret (trampoline.h).
Result<Trampoline> make_ret_site_trampoline(const EntryTrampolineSpec& spec,
                                            const DisplacementPlan& plan) {
  const bool ret_inside = !plan.insns.empty() && plan.insns.back().kind == InsnKind::ret;
  if ((ret_inside && (plan.insns.back().length != 1 || plan.length < 2)) || spec.landing_target) {
    return Error(Errc::invalid_argument,
                 "a return site's displaced bytes end with a one-byte `ret` or right before "
                 "one, and it has no landing");
  }
  Emitter e(spec.address);
  Trampoline t;
  t.relocated_offset = 0;
  const std::uint32_t before = ret_inside ? plan.length - 1 : plan.length;
  // One pair per instruction before the ret, and {the ret's offset, here}: the save.
  HP_TRY(relocate_into(e, {plan.original.data(), before}, plan.patch_address, t.map));
  emit_save(e, /*flags_live=*/false, spec.save_vector, plan.patch_address + before);
  const std::uint32_t no_stack = spec.handler_stack ? emit_switch_in(e) : 0;
  LandingJumps unused;
  if (spec.fast) {
    HP_TRY(emit_fast_entry(e, *spec.fast, spec.context, spec.dispatcher, unused));
  } else {
    emit_call(e, spec.context, spec.dispatcher, spec.handler_stack ? r15 : rsp);
  }
  if (spec.handler_stack) emit_switch_out(e);
  const std::uint32_t exit_restore = e.size();
  emit_vector_restore(e, spec.save_vector);
  std::vector<RareExit> rare;
  // At a ret rsp is 8 mod 16 (the return address on top), as at an entry.
  emit_restore_to_site(e, spec.save_vector, 0, /*likely_moved=*/true, rare);
  e.u8(0xc3);  // the ret (the original one, or the same byte right after the displaced ones)
  if (ret_inside) t.map.push_back({plan.length, e.size()});
  if (spec.handler_stack) {
    emit_no_handler_stack(e, no_stack, spec.context, spec.dispatcher, 0, exit_restore);
  }
  emit_rare_exits(e, spec.address, rare);
  t.code = std::move(e).take();
  return t;
}

}  // namespace

Result<Trampoline> make_entry_trampoline(const EntryTrampolineSpec& spec,
                                         const DisplacementPlan& plan) {
  if (spec.fast && (!spec.handler_stack || spec.save_vector)) {
    return Error(Errc::invalid_argument,
                 "the fast entry path runs on the handler stack only, without vector saves");
  }
  if (spec.run_at_ret) return make_ret_site_trampoline(spec, plan);
  const bool landing = spec.landing_target != 0;
  if (landing && (plan.flags_live || !plan.at_entry)) {
    return Error(Errc::invalid_argument,
                 "a return landing needs a site at a function's entry with dead flags");
  }
  Emitter e(spec.address);
  emit_save(e, plan.flags_live, spec.save_vector, plan.probe_address);
  const std::uint32_t no_stack = spec.handler_stack ? emit_switch_in(e) : 0;
  LandingJumps jumps;
  if (spec.fast) {
    HP_TRY(emit_fast_entry(e, *spec.fast, spec.context, spec.dispatcher, jumps));
  } else {
    emit_call(e, spec.context, spec.dispatcher, spec.handler_stack ? r15 : rsp);
  }
  if (spec.handler_stack) emit_switch_out(e);
  // Where the call without a handler stack goes on (the plain call's case: it tests al
  // here as the call above does; the fast path's test is in its template).
  const std::uint32_t exit_restore = e.size();
  emit_vector_restore(e, spec.save_vector);
  std::uint32_t plain_landing_jump = 0;
  if (!spec.fast && landing) {
    e.u8(0x84);  // test al, al: the dispatcher hijacked the return through the landing
    e.u8(0xc0);
    e.u8(0x0f);  // jnz rel32
    e.u8(0x85);
    plain_landing_jump = e.size();
    e.u32(0);
  }
  std::vector<RareExit> rare;
  if (plan.flags_live) {
    emit_restore(e, spec.save_vector);
    e.popfq();
    e.lea_rsp(kHead - 8);
  } else {
    emit_restore_to_site(e, spec.save_vector, 0, plan.at_entry, rare);
  }
  Trampoline t;
  t.relocated_offset = e.size();
  HP_TRY(relocate_into(e, plan.original, plan.patch_address, t.map));
  e.jmp_to(plan.patch_address + plan.length);
  std::uint32_t landing_restore = 0;
  if (landing) {
    // The landing exit: the same restore, then a call whose return address is the landing,
    // so the return stack buffer predicts the function's ret into it; the callee drops
    // the pushed copy (written below the function's return slot, which holds the landing
    // already) and runs the displaced instructions.
    // The fast path's jumps come from the handler stack: the switch back first.
    const std::uint32_t exit = e.size();
    for (unsigned i = 0; i < jumps.n; i++)
      e.patch_u32(jumps.at[i], exit - (jumps.at[i] + 4));
    if (spec.fast && spec.handler_stack) emit_switch_out(e);
    landing_restore = e.size();
    if (plain_landing_jump)
      e.patch_u32(plain_landing_jump, landing_restore - (plain_landing_jump + 4));
    emit_restore_to_site(e, spec.save_vector, 0, true, rare);
    e.u8(0xe8);  // call rel32 (fixed up below)
    const std::uint32_t call_field = e.size();
    e.u32(0);
    t.landing_offset = e.size();
    e.jmp_to(spec.landing_target);
    e.patch_u32(call_field, e.size() - (call_field + 4));
    e.lea_rsp(8);
    e.jmp_rel32(spec.address + t.relocated_offset);
  }
  if (spec.handler_stack) {
    emit_no_handler_stack(e, no_stack, spec.context, spec.dispatcher,
                          spec.fast ? landing_restore : 0, exit_restore);
  }
  emit_rare_exits(e, spec.address, rare);
  t.code = std::move(e).take();
  return t;
}

Result<std::vector<std::uint8_t>> make_return_trampoline(const ReturnTrampolineSpec& spec) {
  if (spec.fast && (!spec.handler_stack || spec.save_vector)) {
    return Error(Errc::invalid_argument,
                 "the fast return path runs on the handler stack only, without vector saves");
  }
  Emitter e(spec.address);
  emit_save(e, /*flags_live=*/false, spec.save_vector, spec.address);
  const std::uint32_t no_stack = spec.handler_stack ? emit_switch_in(e) : 0;
  if (spec.fast) {
    HP_TRY(emit_fast_return(e, *spec.fast, spec.context, spec.dispatcher));
  } else {
    emit_call(e, spec.context, spec.dispatcher, spec.handler_stack ? r15 : rsp);
  }
  if (spec.handler_stack) emit_switch_out(e);
  const std::uint32_t exit_restore = e.size();
  emit_vector_restore(e, spec.save_vector);
  // rax = the original return address: park it at [S-8] (the slot the ret popped), below
  // the caller's rsp but in the red zone, so the way there needs no register.
  e.mov_from_rsp_mem(rcx, way_back_offset(spec.save_vector));
  e.mov_to_mem(rcx, kHead - 8, rax);
  std::vector<RareExit> rare;
  if (spec.exit_by_ret) {
    emit_restore_to_site(e, spec.save_vector, -8, false, rare);
    e.u8(0xc3);  // ret: pops the caller's entry of the return stack buffer
  } else {
    emit_restore_to_site(e, spec.save_vector, 0, false, rare);
    e.jmp_rsp_mem(-8);
  }
  if (spec.handler_stack) {
    emit_no_handler_stack(e, no_stack, spec.context, spec.dispatcher, 0, exit_restore);
  }
  emit_rare_exits(e, spec.address, rare);
  return std::move(e).take();
}

Result<Relocation> make_int3_copy(const Int3Plan& plan, std::uint64_t address) {
  return relocate_with_jmp_back(plan.original, plan.probe_address, address);
}

Result<void> write_jmp_patch_bytes(std::uint64_t patch_address, std::uint32_t length,
                                   std::uint64_t trampoline, std::span<std::uint8_t> out) {
  if (length < kJmpRel32Length) {
    return Error(Errc::invalid_argument,
                 "a jmp rel32 needs 5 bytes, the plan has " + std::to_string(length));
  }
  if (!in_rel32_reach(patch_address + kJmpRel32Length, trampoline)) {
    return Error(Errc::no_memory_in_reach, "trampoline " + hex(trampoline) +
                                               " is out of rel32 reach of the site " +
                                               hex(patch_address));
  }
  HP_CHECK(out.size() >= length);
  // By hand, not through an Emitter (which reserves a trampoline's 768 bytes): one per site.
  std::memset(out.data(), 0xcc, length);
  out[0] = 0xe9;
  const auto rel = static_cast<std::uint32_t>(trampoline - (patch_address + kJmpRel32Length));
  std::memcpy(&out[1], &rel, 4);
  return {};
}

// ---------------------------------------------------------------------------------------
// EntryTrampolineBuilder: the prototype (see trampoline.h).

namespace {

// The values a trampoline's bytes may depend on, besides its kind. `relocated` is the
// length of the relocated displaced instructions (the tail moves with it).
enum ProtoParam : unsigned {
  kAddress,
  kContext,
  kConsumers,
  kProbe,
  kBack,  // plan.patch_address + plan.length: where the relocated code jumps back to
  kLanding,
  kRelocated,
  kParamCount
};
// An absolute value lives in an 8-byte field; the others move rel32 fields.
constexpr bool kParamIsAbsolute[kParamCount] = {false, true, true, true, false, false, false};
// How far each value moves in the discovery builds: the low byte of each is nonzero, so the
// first byte that differs is a field's first byte; small, so every rel32 still reaches.
constexpr std::uint64_t kParamDelta[kParamCount] = {
    0x1230, 0x0101010101010101, 0x0202020202020202, 0x0303030303030303, 0x2340, 0x3450, 1};

// Dummy displaced instructions of three lengths (multi-byte nops, copied as they are).
constexpr std::uint8_t kNop5[] = {0x0f, 0x1f, 0x44, 0x00, 0x00};
constexpr std::uint8_t kNop6[] = {0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00};
constexpr std::uint8_t kNop7[] = {0x0f, 0x1f, 0x80, 0x00, 0x00, 0x00, 0x00};

struct ProtoValues {
  std::uint64_t v[kParamCount] = {};
};

ProtoValues values_of(const EntryTrampolineSpec& spec, const DisplacementPlan& plan,
                      std::uint64_t relocated) {
  ProtoValues p;
  p.v[kAddress] = spec.address;
  p.v[kContext] = spec.context;
  p.v[kConsumers] = spec.fast ? spec.fast->consumers : 0;
  p.v[kProbe] = plan.probe_address;
  p.v[kBack] = plan.patch_address + plan.length;
  p.v[kLanding] = spec.landing_target;
  p.v[kRelocated] = relocated;
  return p;
}

// One discovery build: the site's spec and plan with the values of `p` and dummy displaced
// instructions of p.v[kRelocated] bytes.
struct ProtoBuild {
  EntryTrampolineSpec spec;
  FastEntry fast;
  DisplacementPlan plan;
};

ProtoBuild dummy_build(const EntryTrampolineSpec& spec, const DisplacementPlan& plan,
                       const ProtoValues& p) {
  ProtoBuild b;
  b.spec = spec;
  if (spec.fast) {
    b.fast = *spec.fast;
    b.fast.consumers = p.v[kConsumers];
    b.spec.fast = &b.fast;
  }
  b.spec.address = p.v[kAddress];
  b.spec.context = p.v[kContext];
  b.spec.landing_target = p.v[kLanding];
  b.plan.probe_address = p.v[kProbe];
  b.plan.at_entry = plan.at_entry;
  b.plan.flags_live = plan.flags_live;
  using Bytes = std::span<const std::uint8_t>;
  const Bytes nop = p.v[kRelocated] == 5   ? Bytes(kNop5)
                    : p.v[kRelocated] == 6 ? Bytes(kNop6)
                                           : Bytes(kNop7);
  b.plan.original.assign(nop.begin(), nop.end());
  b.plan.length = static_cast<std::uint32_t>(nop.size());
  b.plan.patch_address = p.v[kBack] - b.plan.length;
  b.plan.patch_offset = plan.patch_offset;
  return b;
}

// The end of the relocated instructions in a trampoline (its map's last pair).
std::uint32_t relocated_end(const Trampoline& t) {
  return t.map.empty() ? t.relocated_offset : t.map.back().relocated;
}

}  // namespace

struct EntryTrampolineBuilder::Prototype {
  // The kind: everything but the ProtoParam values.
  bool flags_live = false, at_entry = false, save_vector = false, landing = false;
  bool has_fast = false;
  FastEntry fast;  // consumers = 0
  std::uint64_t dispatcher = 0;
  bool usable = false;  // false: the kind takes make_entry_trampoline()

  // A field: `width` bytes at `at` (in the head, or from the tail's start), whose value is
  // its value in the base build plus the sum of coeff[i] * (value i - base value i).
  struct Field {
    std::uint32_t at = 0;
    bool in_tail = false;
    std::uint8_t width = 0;
    std::int8_t coeff[kParamCount] = {};
    // The nonzero coefficients, listed (most fields move with one or two values).
    std::uint8_t terms = 0;
    std::uint8_t term_param[kParamCount] = {};
  };
  ProtoValues base;
  std::vector<std::uint8_t> head;  // [0, relocated_offset)
  std::vector<std::uint8_t> tail;  // after the relocated instructions
  std::uint32_t landing_in_tail = 0;
  bool has_landing_offset = false;
  std::vector<Field> fields;

  bool same_kind(const EntryTrampolineSpec& spec, const DisplacementPlan& plan) const {
    if (flags_live != plan.flags_live || at_entry != plan.at_entry ||
        save_vector != spec.save_vector || landing != (spec.landing_target != 0) ||
        has_fast != (spec.fast != nullptr) || dispatcher != spec.dispatcher) {
      return false;
    }
    if (!has_fast) return true;
    FastEntry f = *spec.fast;
    f.consumers = 0;
    return f == fast;
  }

  // The trampoline for `spec` and `plan` from this prototype; false where a rel32 would not
  // reach (make_entry_trampoline() picks another form there).
  Result<bool> build(const EntryTrampolineSpec& spec, const DisplacementPlan& plan, Trampoline& t,
                     std::vector<std::uint8_t>&& buffer) const {
    Emitter e(spec.address, std::move(buffer));
    e.raw(head);
    t.relocated_offset = e.size();
    t.map.clear();
    HP_TRY(relocate_into(e, plan.original, plan.patch_address, t.map));
    const std::uint32_t tail_at = e.size();
    e.raw(tail);
    const ProtoValues site = values_of(spec, plan, tail_at - t.relocated_offset);
    std::int64_t delta[kParamCount];
    for (unsigned i = 0; i < kParamCount; i++)
      delta[i] = static_cast<std::int64_t>(site.v[i] - base.v[i]);
    std::uint8_t* b = e.bytes().data();
    for (const Field& f : fields) {
      std::uint8_t* at = b + f.at + (f.in_tail ? tail_at : 0);
      if (f.width == 8) {
        std::uint64_t v;
        std::memcpy(&v, at, 8);
        for (unsigned k = 0; k < f.terms; k++)
          v += static_cast<std::uint64_t>(f.coeff[f.term_param[k]] * delta[f.term_param[k]]);
        std::memcpy(at, &v, 8);
      } else {
        std::int32_t v32;
        std::memcpy(&v32, at, 4);
        std::int64_t v = v32;
        for (unsigned k = 0; k < f.terms; k++)
          v += f.coeff[f.term_param[k]] * delta[f.term_param[k]];
        if (v < INT32_MIN || v > INT32_MAX) return false;
        v32 = static_cast<std::int32_t>(v);
        std::memcpy(at, &v32, 4);
      }
    }
    t.landing_offset = has_landing_offset ? tail_at + landing_in_tail : 0;
    t.code = std::move(e).take();
    return true;
  }

  // Records the fields of one region that param `i` moves: `a` is the base build's bytes,
  // `b` the build with value i moved by its delta. False when a difference is not a
  // field of the expected form.
  bool discover(std::span<const std::uint8_t> a, std::span<const std::uint8_t> b, bool in_tail,
                unsigned i) {
    const unsigned width = kParamIsAbsolute[i] ? 8 : 4;
    for (std::uint32_t pos = 0; pos < a.size(); pos++) {
      if (a[pos] == b[pos]) continue;
      if (pos + width > a.size()) return false;
      std::uint64_t va = 0, vb = 0;
      std::memcpy(&va, &a[pos], width);
      std::memcpy(&vb, &b[pos], width);
      const std::uint64_t mask = width == 8 ? ~std::uint64_t{0} : 0xffffffffu;
      const std::uint64_t d = (vb - va) & mask;
      std::int8_t c = 0;
      if (d == (kParamDelta[i] & mask)) c = 1;
      if (d == ((0 - kParamDelta[i]) & mask)) c = -1;
      if (c == 0) return false;
      Field* f = nullptr;
      for (Field& g : fields) {
        if (g.in_tail == in_tail && g.at == pos) f = &g;
      }
      if (!f) {
        fields.push_back({pos, in_tail, static_cast<std::uint8_t>(width), {}});
        f = &fields.back();
      }
      if (f->width != width) return false;
      f->coeff[i] = c;
      pos += width - 1;
    }
    return true;
  }

  // Fields must not overlap, and each must be one of: an absolute value (8 bytes, one
  // absolute value, coefficient 1); a rel32 to a fixed or moving target (the trampoline's
  // address -1, at most one target +1, the relocated length +-1) or between the head and
  // the tail (the relocated length +-1 only).
  bool fields_make_sense() const {
    for (const Field& f : fields) {
      for (const Field& g : fields) {
        if (&f == &g || f.in_tail != g.in_tail) continue;
        if (f.at < g.at + g.width && g.at < f.at + f.width) return false;
      }
      unsigned absolutes = 0, targets = 0;
      for (unsigned i = 0; i < kParamCount; i++) {
        if (f.coeff[i] == 0) continue;
        if (kParamIsAbsolute[i]) {
          if (f.width != 8 || f.coeff[i] != 1) return false;
          absolutes++;
        } else if (i == kBack || i == kLanding) {
          if (f.coeff[i] != 1) return false;
          targets++;
        } else if (i == kAddress && f.coeff[i] != -1) {
          return false;
        }
      }
      if (f.width == 8 && (absolutes != 1 || f.coeff[kAddress] || f.coeff[kBack] ||
                           f.coeff[kLanding] || f.coeff[kRelocated])) {
        return false;
      }
      if (f.width == 4 && (targets > 1 || (targets == 1 && f.coeff[kAddress] != -1))) return false;
    }
    return true;
  }
};

EntryTrampolineBuilder::EntryTrampolineBuilder() = default;

EntryTrampolineBuilder::~EntryTrampolineBuilder() {
  for (Prototype* p : prototypes_)
    delete p;
}

EntryTrampolineBuilder::Prototype* EntryTrampolineBuilder::prototype_for(
    const EntryTrampolineSpec& spec, const DisplacementPlan& plan) {
  for (Prototype* p : prototypes_) {
    if (p->same_kind(spec, plan)) return p;
  }
  constexpr std::size_t kMaxKinds = 16;  // a handful in practice (per scheme, flags, landing)
  if (prototypes_.size() >= kMaxKinds) return nullptr;
  auto* p = new Prototype;
  prototypes_.push_back(p);
  p->flags_live = plan.flags_live;
  p->at_entry = plan.at_entry;
  p->save_vector = spec.save_vector;
  p->landing = spec.landing_target != 0;
  p->has_fast = spec.fast != nullptr;
  if (p->has_fast) {
    p->fast = *spec.fast;
    p->fast.consumers = 0;
  }
  p->dispatcher = spec.dispatcher;

  // The base build: this site's values, 5 bytes of dummy displaced instructions.
  ProtoValues base = values_of(spec, plan, 5);
  auto build_with = [&](const ProtoValues& v) {
    ProtoBuild b = dummy_build(spec, plan, v);
    return make_entry_trampoline(b.spec, b.plan);
  };
  auto a = build_with(base);
  if (!a.ok() || relocated_end(*a) != a->relocated_offset + 5) return p;
  const std::uint32_t head = a->relocated_offset;
  const std::uint32_t tail_at = relocated_end(*a);
  p->base = base;
  p->head.assign(a->code.begin(), a->code.begin() + head);
  p->tail.assign(a->code.begin() + tail_at, a->code.end());
  p->has_landing_offset = a->landing_offset != 0;
  if (p->has_landing_offset) {
    if (a->landing_offset < tail_at) return p;
    p->landing_in_tail = a->landing_offset - tail_at;
  }
  for (unsigned i = 0; i < kParamCount; i++) {
    if ((i == kConsumers && !spec.fast) || (i == kLanding && !spec.landing_target)) continue;
    ProtoValues moved = base;
    moved.v[i] += kParamDelta[i];
    auto b = build_with(moved);
    if (!b.ok() || b->relocated_offset != head || relocated_end(*b) != head + moved.v[kRelocated] ||
        b->code.size() - relocated_end(*b) != p->tail.size() ||
        (b->landing_offset != 0) != p->has_landing_offset ||
        (p->has_landing_offset && b->landing_offset - relocated_end(*b) != p->landing_in_tail)) {
      return p;
    }
    const std::span<const std::uint8_t> bb(b->code);
    if (!p->discover(p->head, bb.first(head), false, i) ||
        !p->discover(p->tail, bb.subspan(relocated_end(*b)), true, i)) {
      return p;
    }
  }
  if (!p->fields_make_sense()) return p;
  for (Prototype::Field& f : p->fields) {
    for (unsigned i = 0; i < kParamCount; i++) {
      if (f.coeff[i] != 0) f.term_param[f.terms++] = static_cast<std::uint8_t>(i);
    }
  }
  // The proof: every value moved at once, two ways, with other displaced lengths.
  for (std::uint64_t k : {2u, 3u}) {
    ProtoValues check = base;
    for (unsigned i = 0; i < kParamCount; i++) {
      if ((i == kConsumers && !spec.fast) || (i == kLanding && !spec.landing_target)) continue;
      check.v[i] += k * kParamDelta[i] + (kParamIsAbsolute[i] ? 0x10 * k : 0);
    }
    check.v[kRelocated] = 4 + k;  // 6 and 7 bytes
    ProtoBuild cb = dummy_build(spec, plan, check);
    auto want = make_entry_trampoline(cb.spec, cb.plan);
    Trampoline got;
    auto built = p->build(cb.spec, cb.plan, got, {});
    if (!want.ok() || !built.ok() || !*built || got.code != want->code ||
        got.relocated_offset != want->relocated_offset ||
        got.landing_offset != want->landing_offset || got.map != want->map) {
      return p;
    }
  }
  p->usable = true;
  return p;
}

Result<Trampoline> EntryTrampolineBuilder::build(const EntryTrampolineSpec& spec,
                                                 const DisplacementPlan& plan) {
  const bool landing = spec.landing_target != 0;
  if (landing && (plan.flags_live || !plan.at_entry)) return make_entry_trampoline(spec, plan);
  if (spec.run_at_ret) return make_entry_trampoline(spec, plan);  // few: no prototype
  Prototype* p = prototype_for(spec, plan);
  if (!p || !p->usable) return make_entry_trampoline(spec, plan);
  Trampoline t;
  t.map = std::move(spare_map_);
  auto built = p->build(spec, plan, t, std::move(spare_code_));
  if (!built.ok()) return built.error();
  if (!*built) return make_entry_trampoline(spec, plan);
  from_prototype_++;
  return t;
}

void EntryTrampolineBuilder::recycle(Trampoline&& t) {
  spare_code_ = std::move(t.code);
  spare_map_ = std::move(t.map);
}

}  // namespace hp::arch
