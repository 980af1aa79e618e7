// The probed function of probe_bench, in assembly so that its bytes never depend on the
// compiler or the build type:
//
//   hp_probe_target:            // uint64_t hp_probe_target(uint64_t x) { return x + 1; }
//     55                 push   %rbp            <- kernel uprobes emulate push (no single-step)
//     48 89 e5           mov    %rsp,%rbp
//     48 8d 47 01        lea    0x1(%rdi),%rax   hotprobe displaces these 8 bytes
//     5d                 pop    %rbp
//     c3                 ret
//
// hp_probe_twin is the same code at another address: never probed, it is the unprobed
// baseline that probe_bench measures side by side with each probed row.
        .text

        .p2align 6
        .globl  hp_probe_target
        .type   hp_probe_target, @function
hp_probe_target:
        push    %rbp
        mov     %rsp, %rbp
        lea     0x1(%rdi), %rax
        pop     %rbp
        ret
        .size   hp_probe_target, .-hp_probe_target

        .p2align 6
        .globl  hp_probe_twin
        .type   hp_probe_twin, @function
hp_probe_twin:
        push    %rbp
        mov     %rsp, %rbp
        lea     0x1(%rdi), %rax
        pop     %rbp
        ret
        .size   hp_probe_twin, .-hp_probe_twin

        .section .note.GNU-stack,"",@progbits
