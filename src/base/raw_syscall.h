// System calls without libc, for code that runs between a trampoline and the read-side
// section (HP_DISPATCH_SECTION): the trampoline reclaimer tells a thread there by its pc,
// which a libc wrapper would take outside the section (and a libc function may itself be
// probed).
#pragma once

namespace hp {

__attribute__((always_inline)) inline long raw_syscall(long nr, long a = 0, long b = 0, long c = 0,
                                                       long d = 0, long e = 0, long f = 0) {
  long ret;
  register long r10 __asm__("r10") = d;
  register long r8 __asm__("r8") = e;
  register long r9 __asm__("r9") = f;
  __asm__ volatile("syscall"
                   : "=a"(ret)
                   : "a"(nr), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                   : "rcx", "r11", "memory");
  return ret;
}

}  // namespace hp
