// The registers a probe handler sees. The entry trampoline builds this frame on the stack
// (below the 128-byte red zone) in exactly this layout; src/arch/x86_64 generates the code
// that fills it and tests/arch checks the offsets.
#pragma once

#include <cstddef>
#include <cstdint>

namespace hotprobe {

struct Regs {
  // Caller-saved registers: the System V argument and scratch registers.
  std::uint64_t rax, rcx, rdx, rsi, rdi, r8, r9, r10, r11;
  // Callee-saved registers, saved too so handlers can read them and clobber tests can
  // check them.
  std::uint64_t rbx, rbp, r12, r13, r14, r15;
  std::uint64_t rflags;  // valid where the site's flags are live (not at function entry)
  std::uint64_t rsp;     // the stack pointer at the probed instruction
  std::uint64_t rip;     // the probed instruction's address

  // System V integer arguments 0..5 (valid at a function's entry).
  std::uint64_t arg(unsigned i) const noexcept {
    switch (i) {
      case 0:
        return rdi;
      case 1:
        return rsi;
      case 2:
        return rdx;
      case 3:
        return rcx;
      case 4:
        return r8;
      case 5:
        return r9;
      default:
        return 0;
    }
  }
  // The integer return value (valid in a return handler).
  std::uint64_t ret() const noexcept { return rax; }
  std::uint64_t ip() const noexcept { return rip; }
  std::uint64_t sp() const noexcept { return rsp; }
};

namespace regs_layout {
inline constexpr std::size_t kRax = offsetof(Regs, rax);
inline constexpr std::size_t kRflags = offsetof(Regs, rflags);
inline constexpr std::size_t kRsp = offsetof(Regs, rsp);
inline constexpr std::size_t kRip = offsetof(Regs, rip);
inline constexpr std::size_t kSize = sizeof(Regs);
}  // namespace regs_layout

static_assert(sizeof(Regs) == 18 * 8, "trampolines depend on this layout");

}  // namespace hotprobe
