// Functions with known bytes and behaviour, in assembly so that the relocator sees the
// same instructions under every compiler and sanitizer, and a register harness for the
// clobber tests (STYLE.md item 10). Include from exactly one file per test program.
#pragma once

#include <cstdint>

extern "C" {
// long f(long x) { return hp_value + x; }      mov rax, [rip+hp_value]; add rax, rdi; ret
long hp_fn_riprel(long x);
// long f(long n) { sum n..1 } with jrcxz and loop
long hp_fn_loop(long n);
// the same as hp_fn_riprel, keeping x in the red zone across the RIP-relative load
long hp_fn_redzone(long x);
// long f(long x) { return x == hp_value; }  cmp [rip+hp_value], rdi; sete; the flags
// must survive the far RIP-relative rewrite
long hp_fn_cmp(long x);
// long f(long x) { return 2 * x + 1; }  sub rsp, 8; call hp_double; add rsp, 8; inc rax
long hp_fn_call(long x);
extern const std::uint8_t hp_fn_riprel_end[], hp_fn_loop_end[], hp_fn_redzone_end[],
    hp_fn_cmp_end[], hp_fn_call_end[];
extern long hp_value;

// The register harness. hp_in holds 16 GPR values indexed by hp::arch::Gpr (slot 4, rsp,
// is ignored), hp_in_flags the flags, hp_in_xmm 16 xmm values. hp_run_call loads them all
// and calls `target` (as if calling a function); hp_run_jmp jumps to it (as if returning
// into it). Whatever path runs must end at hp_landing, which stores every register into
// hp_out / hp_out_flags / hp_out_xmm (hp_out[4] = rsp there) and returns from hp_run_*.
// hp_adjust (a multiple of 8) is subtracted from rsp first, to vary the alignment.
extern std::uint64_t hp_in[16], hp_in_flags, hp_in_xmm[32];
extern std::uint64_t hp_out[16], hp_out_flags, hp_out_xmm[32];
extern std::uint64_t hp_adjust, hp_saved_rsp;
// The 128-byte red zone below the target's rsp: hp_run_* fill the red zone a called
// target will see with 0x5a5a0000 + 15 - j (qword j, from the bottom); hp_landing copies
// the red zone below its rsp into hp_out_redzone before touching the stack.
extern std::uint64_t hp_out_redzone[16];
void hp_run_call(std::uint64_t target);
void hp_run_jmp(std::uint64_t target);
extern const std::uint8_t hp_landing[];
// A probe site: lea rax, [rax+1]; lea rbx, [rbx+2]; then jmp hp_landing.
extern const std::uint8_t hp_fake_site[], hp_fake_site_after[], hp_fake_site_end[];
}

// clang-format off
asm(R"(
.intel_syntax noprefix
.data
.balign 16
.globl hp_out_redzone
.hidden hp_out_redzone
.globl hp_value, hp_in, hp_in_flags, hp_in_xmm, hp_out, hp_out_flags, hp_out_xmm, hp_adjust, hp_saved_rsp
.hidden hp_value, hp_in, hp_in_flags, hp_in_xmm, hp_out, hp_out_flags, hp_out_xmm, hp_adjust, hp_saved_rsp
hp_value: .quad 1000
.balign 16
hp_in: .zero 128
hp_in_flags: .quad 0
.balign 16
hp_in_xmm: .zero 256
hp_out: .zero 128
hp_out_flags: .quad 0
.balign 16
hp_out_xmm: .zero 256
hp_out_redzone: .zero 128
hp_adjust: .quad 0
hp_saved_rsp: .quad 0
hp_target: .quad 0

.text
.globl hp_fn_riprel, hp_fn_riprel_end, hp_fn_loop, hp_fn_loop_end, hp_fn_redzone, hp_fn_redzone_end
.globl hp_fn_cmp, hp_fn_cmp_end, hp_fn_call, hp_fn_call_end
.hidden hp_fn_riprel, hp_fn_riprel_end, hp_fn_loop, hp_fn_loop_end, hp_fn_redzone, hp_fn_redzone_end
.hidden hp_fn_cmp, hp_fn_cmp_end, hp_fn_call, hp_fn_call_end
.balign 16
hp_fn_riprel:
  mov rax, qword ptr [rip + hp_value]
  add rax, rdi
  ret
hp_fn_riprel_end:
.balign 16
hp_fn_loop:
  xor eax, eax
  mov rcx, rdi
  jrcxz 2f
1:
  add rax, rcx
  loop 1b
2:
  ret
hp_fn_loop_end:
.balign 16
hp_fn_redzone:
  mov qword ptr [rsp - 8], rdi
  mov rax, qword ptr [rip + hp_value]
  add rax, qword ptr [rsp - 8]
  ret
hp_fn_redzone_end:
.balign 16
hp_fn_cmp:
  xor eax, eax
  cmp qword ptr [rip + hp_value], rdi
  sete al
  ret
hp_fn_cmp_end:
.balign 16
hp_fn_call:
  sub rsp, 8
  call hp_double
  add rsp, 8
  inc rax
  ret
hp_fn_call_end:
hp_double:
  lea rax, [rdi + rdi]
  ret

.globl hp_run_call, hp_run_jmp, hp_landing, hp_fake_site, hp_fake_site_after, hp_fake_site_end
.hidden hp_run_call, hp_run_jmp, hp_landing, hp_fake_site, hp_fake_site_after, hp_fake_site_end
.macro HP_LOAD_ALL
  mov [rip + hp_target], rdi
  push rbx
  push rbp
  push r12
  push r13
  push r14
  push r15
  mov [rip + hp_saved_rsp], rsp
  sub rsp, [rip + hp_adjust]
  mov qword ptr [rsp - 16], 1515847680
  mov qword ptr [rsp - 24], 1515847681
  mov qword ptr [rsp - 32], 1515847682
  mov qword ptr [rsp - 40], 1515847683
  mov qword ptr [rsp - 48], 1515847684
  mov qword ptr [rsp - 56], 1515847685
  mov qword ptr [rsp - 64], 1515847686
  mov qword ptr [rsp - 72], 1515847687
  mov qword ptr [rsp - 80], 1515847688
  mov qword ptr [rsp - 88], 1515847689
  mov qword ptr [rsp - 96], 1515847690
  mov qword ptr [rsp - 104], 1515847691
  mov qword ptr [rsp - 112], 1515847692
  mov qword ptr [rsp - 120], 1515847693
  mov qword ptr [rsp - 128], 1515847694
  mov qword ptr [rsp - 136], 1515847695
  movups xmm0, [rip + hp_in_xmm + 0]
  movups xmm1, [rip + hp_in_xmm + 16]
  movups xmm2, [rip + hp_in_xmm + 32]
  movups xmm3, [rip + hp_in_xmm + 48]
  movups xmm4, [rip + hp_in_xmm + 64]
  movups xmm5, [rip + hp_in_xmm + 80]
  movups xmm6, [rip + hp_in_xmm + 96]
  movups xmm7, [rip + hp_in_xmm + 112]
  movups xmm8, [rip + hp_in_xmm + 128]
  movups xmm9, [rip + hp_in_xmm + 144]
  movups xmm10, [rip + hp_in_xmm + 160]
  movups xmm11, [rip + hp_in_xmm + 176]
  movups xmm12, [rip + hp_in_xmm + 192]
  movups xmm13, [rip + hp_in_xmm + 208]
  movups xmm14, [rip + hp_in_xmm + 224]
  movups xmm15, [rip + hp_in_xmm + 240]
  mov rax, [rip + hp_in + 0]
  mov rcx, [rip + hp_in + 8]
  mov rdx, [rip + hp_in + 16]
  mov rbx, [rip + hp_in + 24]
  mov rbp, [rip + hp_in + 40]
  mov rsi, [rip + hp_in + 48]
  mov rdi, [rip + hp_in + 56]
  mov r8, [rip + hp_in + 64]
  mov r9, [rip + hp_in + 72]
  mov r10, [rip + hp_in + 80]
  mov r11, [rip + hp_in + 88]
  mov r12, [rip + hp_in + 96]
  mov r13, [rip + hp_in + 104]
  mov r14, [rip + hp_in + 112]
  mov r15, [rip + hp_in + 120]
  push qword ptr [rip + hp_in_flags]
  popfq
.endm
hp_run_call:
  HP_LOAD_ALL
  call qword ptr [rip + hp_target]
  ud2
hp_run_jmp:
  HP_LOAD_ALL
  jmp qword ptr [rip + hp_target]
hp_landing:
  mov [rip + hp_out + 32], rsp
  mov [rip + hp_out + 0], rax
  mov [rip + hp_out + 8], rcx
  mov [rip + hp_out + 16], rdx
  mov [rip + hp_out + 24], rbx
  mov [rip + hp_out + 40], rbp
  mov [rip + hp_out + 48], rsi
  mov [rip + hp_out + 56], rdi
  mov [rip + hp_out + 64], r8
  mov [rip + hp_out + 72], r9
  mov [rip + hp_out + 80], r10
  mov [rip + hp_out + 88], r11
  mov [rip + hp_out + 96], r12
  mov [rip + hp_out + 104], r13
  mov [rip + hp_out + 112], r14
  mov [rip + hp_out + 120], r15
  movups [rip + hp_out_xmm + 0], xmm0
  movups [rip + hp_out_xmm + 16], xmm1
  movups [rip + hp_out_xmm + 32], xmm2
  movups [rip + hp_out_xmm + 48], xmm3
  movups [rip + hp_out_xmm + 64], xmm4
  movups [rip + hp_out_xmm + 80], xmm5
  movups [rip + hp_out_xmm + 96], xmm6
  movups [rip + hp_out_xmm + 112], xmm7
  movups [rip + hp_out_xmm + 128], xmm8
  movups [rip + hp_out_xmm + 144], xmm9
  movups [rip + hp_out_xmm + 160], xmm10
  movups [rip + hp_out_xmm + 176], xmm11
  movups [rip + hp_out_xmm + 192], xmm12
  movups [rip + hp_out_xmm + 208], xmm13
  movups [rip + hp_out_xmm + 224], xmm14
  movups [rip + hp_out_xmm + 240], xmm15
  movups xmm0, [rsp - 128]
  movups [rip + hp_out_redzone + 0], xmm0
  movups xmm0, [rsp - 112]
  movups [rip + hp_out_redzone + 16], xmm0
  movups xmm0, [rsp - 96]
  movups [rip + hp_out_redzone + 32], xmm0
  movups xmm0, [rsp - 80]
  movups [rip + hp_out_redzone + 48], xmm0
  movups xmm0, [rsp - 64]
  movups [rip + hp_out_redzone + 64], xmm0
  movups xmm0, [rsp - 48]
  movups [rip + hp_out_redzone + 80], xmm0
  movups xmm0, [rsp - 32]
  movups [rip + hp_out_redzone + 96], xmm0
  movups xmm0, [rsp - 16]
  movups [rip + hp_out_redzone + 112], xmm0
  pushfq
  pop qword ptr [rip + hp_out_flags]
  cld
  mov rsp, [rip + hp_saved_rsp]
  pop r15
  pop r14
  pop r13
  pop r12
  pop rbp
  pop rbx
  ret
.balign 16
hp_fake_site:
  lea rax, [rax + 1]
  lea rbx, [rbx + 2]
hp_fake_site_after:
  jmp hp_landing
hp_fake_site_end:
.att_syntax prefix
)");
// clang-format on
