#include "core/x86_64/templates.h"

#include <cstddef>
#include <cstring>
#include <string>

#include "arch/x86_64/frame.h"
#include "hotprobe/regs.h"

// The fast path of FastEntry (templates.h), assembled once by the build and copied into
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

# The rest of a Hit {regs, cookie, data, probe_address} at rsp, whose regs the caller
# stored, for the return templates' handler call (rdi = &hit after it): the cookie and the
# probe address loaded from memory, data's address computed, each through `tmp`. The
# placeholder operands and their patch labels are arguments.
.macro HP_HIT_FIELDS tmp, cookie, cookie_label, data, data_label, probe, probe_label
  movq    \cookie, \tmp
\cookie_label:
  movq    \tmp, 8(%rsp)
  leaq    \data, \tmp
\data_label:
  movq    \tmp, 16(%rsp)
  movq    \probe, \tmp
\probe_label:
  movq    \tmp, 24(%rsp)
  movq    %rsp, %rdi
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

# The fast path of FastReturn (templates.h): the return trampoline's common case, the
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
  HP_HIT_FIELDS %rax, 0x7fffff12(%rdx), hp_fr_p18, 0x7fffff13(%r13), hp_fr_p19, 0x7fffff14(%r14), hp_fr_p20
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

# OneReturnEntry (templates.h): the entry side of the common return probe, a routine
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
  HP_HIT_FIELDS %r8, 0x7fffff13(%rdx), hp_or_p19, 0x7fffff14(%r11), hp_or_p20, 0x7fffff15(%rdi), hp_or_p21
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

namespace hp::core {

using arch::Emitter;
using hotprobe::Regs;

namespace {

// A copy of an assembled template in the emitter, whose placeholders get their values: the
// field of label pN is `size` bytes ending `tail` bytes before the label and holds
// 0x7fffffNN (0x7fffffff7fffffNN for 8 bytes, 0x7f for 1), N = n. A placeholder that is
// not where the table says (the assembler encoded something differently) is an error,
// never a silent miscompile.
class TemplateCopy {
 public:
  TemplateCopy(Emitter& e, const std::uint8_t* begin, const std::uint8_t* end,
               const std::uint32_t* offsets, const char* name)
      : e_(e), b_(e.bytes()), base_(e.size()), offsets_(offsets), name_(name) {
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
  // put() of a per-site value, labelled (arch::Fixup) for a copy of the whole trampoline.
  void put_value(unsigned n, std::uint64_t value, arch::FieldValue label) {
    const std::uint32_t at = field(n, 8, 0);
    if (!status_.ok()) return;
    std::memcpy(&b_[at], &value, 8);
    e_.label({at, 0, arch::Fixup::abs64, label});
  }
  void put32(unsigned n, unsigned tail, std::int32_t v) {
    put(n, 4, tail, static_cast<std::uint32_t>(v));
  }
  Result<void> status() const { return status_; }

 private:
  Emitter& e_;
  std::vector<std::uint8_t>& b_;
  std::uint32_t base_;
  const std::uint32_t* offsets_;
  const char* name_;
  Result<void> status_;
};

}  // namespace

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
  t.put_value(7, f.consumers, arch::kValueConsumers);
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
  t.put_value(18, context, arch::kValueContext);
  put(19, 8, 0, f.locked_dispatcher);
  t.put_value(20, context, arch::kValueContext);
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

}  // namespace hp::core
