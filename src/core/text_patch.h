// Live patching of code that other threads of this process are running, for a whole
// batch of sites at once, without a trap: the text_poke_bp protocol of the kernel with a
// spinning `jmp .` where the kernel puts an int3 (docs/design/core.md, "Patching live
// code").
//
//   1. hold every site: `jmp .` (EB FE) over its first two bytes, one atomic store;
//                                                                   sync_core round 1
//   2. show that every other thread is outside the interior of every site, or move it to
//      the equivalent place given by the site's ip map (a thread preempted in the middle
//      of the bytes about to change would otherwise resume in the middle of the new
//      instruction);
//   3. write every byte behind the hold;                            sync_core round 2
//   4. write the first two bytes, one atomic store;                 sync_core round 3
//
// A thread that arrives at a site during the window spins in user mode (no signal, no
// trap: it may block every signal, or be Go code) until step 4 releases it into the new
// code. The hold needs the site's first instruction to be at least 2 bytes long and the
// pair not to cross an 8-byte boundary (or to sit inside an aligned 16-byte block on a
// CPU with AVX). A site that starts with a 1-byte instruction (push rbp) is held on its
// second instruction and jumps through a pad whose address keeps that hold in place
// (E9 EB FE ..); the threads held there are moved once the E9 is written (step 5). Other
// sites get an int3 on their first byte (the trap table sends a thread that hits it to
// the site's trap_target), which a thread that blocks SIGTRAP cannot take. Pages are made
// writable once per run of adjacent pages and restored afterwards. A one-byte patch is a
// single store.
//
// From step 1 to step 4 the patching thread calls no libc function and allocates
// nothing (any of them may be a site of the batch, where it would spin on itself), and
// blocks asynchronous signals (a handler of the program could run into a site).
//
// Finding threads (step 2) reads /proc/self/task/TID/syscall: a thread blocked in a
// system call is at its syscall instruction, which is never displaced, so it is left
// alone (no signal, so no EINTR); a thread sleeping elsewhere shows its pc, and is
// signalled only if that pc is inside a site; a runnable thread (/proc says "running")
// is signalled once, and if it blocks the signal, read again until it is seen outside or
// has run 2 ms of CPU since the holds (it cannot re-enter: arrivals stop at the hold).
// The signal handler (on the thread's alternate signal stack, if it has one: a goroutine's
// stack has no room for the kernel's frame) moves the ip and answers. After 1 s the batch
// is rolled back and fails with an error naming the thread.
#pragma once

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <span>
#include <utility>
#include <vector>

#include "base/error.h"

namespace hp::core {

// The bytes of one patch, held inline (at most one instruction's 15): a batch of 10,000
// sites allocates nothing per site for them.
class PatchBytes {
 public:
  static constexpr std::size_t kCapacity = 15;
  PatchBytes() = default;
  PatchBytes(std::initializer_list<std::uint8_t> b) { assign(b); }
  PatchBytes(std::span<const std::uint8_t> b) { assign(b); }  // NOLINT: from a site's bytes
  PatchBytes(const std::vector<std::uint8_t>& b) : PatchBytes(std::span(b)) {}  // NOLINT

  const std::uint8_t* data() const noexcept { return bytes_; }
  std::size_t size() const noexcept { return size_; }
  bool empty() const noexcept { return size_ == 0; }
  std::uint8_t operator[](std::size_t i) const noexcept { return bytes_[i]; }

 private:
  void assign(std::span<const std::uint8_t> b) noexcept {
    // A longer patch is refused by apply_patches (size kCapacity + 1 is kept as a marker).
    size_ = static_cast<std::uint8_t>(b.size() > kCapacity ? kCapacity + 1 : b.size());
    std::copy_n(b.begin(), std::min(b.size(), kCapacity), bytes_);
  }
  std::uint8_t bytes_[kCapacity] = {};
  std::uint8_t size_ = 0;
};

struct PatchSite {
  std::uintptr_t addr = 0;
  PatchBytes old_bytes;            // what must be there now (checked first)
  PatchBytes new_bytes;            // same length as old_bytes
  std::uintptr_t trap_target = 0;  // where a thread trapped at addr continues
  // For a thread whose ip is addr+off (0 < off < size): continue at the address given.
  // An offset not listed means no instruction starts there (no thread can be there).
  // Not owned: it must outlive the apply_patches() call (the engine points at its site's).
  std::span<const std::pair<std::uint32_t, std::uintptr_t>> ip_map;
  // A short-jump site's pad (core/text_patch_short.h), 0: none. pad_old must be there and
  // becomes pad_new. With pad_first (attaching) the pad is written before the site's
  // bytes, while nothing jumps to it; else (restoring) after them, once no thread is left
  // on the pad (one that is goes on at addr).
  std::uintptr_t pad_at = 0;
  PatchBytes pad_old, pad_new;
  bool pad_first = true;
};

// The signal that moves running threads out of patched bytes (hotprobe::reserved_signal):
// the one installed, or the one choose_move_signal() picks; 0 when the signal asked for
// (EngineOptions::move_signal, which the edge fills from HOTPROBE_SIGNAL) is refused
// (apply_patches() then fails with the reason).
int move_signal_number() noexcept;

// EngineOptions::move_signal (text_patch_threads.cc): the signal to install with the
// first patch, in place of the default choice. Returns the signal already installed (then
// nothing changes), or 0.
int request_move_signal(int sig) noexcept;

// The move signal for a program in its current state, from the signal asked for
// (`requested`, null or empty when none; its refusals name it as HOTPROBE_SIGNAL=N, the
// way a user asks for it): only a real-time signal (SIGRTMIN..SIGRTMAX) the program
// neither handles nor ignores. Unset: SIGRTMAX-3, or the highest free real-time signal
// when the program uses that one.
Result<int> choose_move_signal(const char* requested);

struct PatchStats {
  unsigned sync_core_rounds = 0;
  unsigned protect_calls = 0;  // mprotect calls (two per run of adjacent pages)
  unsigned threads_signalled = 0;
  unsigned threads_moved = 0;
};

// Applies every site's patch as one transaction. On failure nothing is changed.
// Serialized internally: one transaction at a time per process.
Result<PatchStats> apply_patches(std::span<const PatchSite> sites);

// The refusal of code that another tracer changed (an int3 where the file has another
// byte, a byte that differs from the module's file): "the code at ADDR was changed by
// another tracer ...; detach it first".
Error code_changed_by_another_tracer(std::uintptr_t addr);

// Tests: the next apply_patches() fails with Errc::busy before it changes anything (the
// way a batch fails when someone else patched one of its functions meanwhile).
void fail_next_apply_for_testing() noexcept;

// Tests: every multi-byte site gets the int3 hold of the kernel's protocol instead of
// `jmp .` (the variant a thread that blocks SIGTRAP dies of).
void use_trap_heads_for_testing(bool on) noexcept;

// Tests: a short-jump site's head is written before its pad, 2 ms apart (the variant
// where a thread that takes the new jump runs into padding).
void use_head_before_pad_for_testing(bool on) noexcept;

// Tests: step 2 takes the first listing of /proc/self/task as it comes, without showing
// that it is whole (the variant that misses a thread when another one exits while the
// threads are listed, and writes over it while it is inside a site).
void use_partial_thread_listing_for_testing(bool on) noexcept;

// Tests: the other threads of the process as step 2 lists them (all of them; an error
// when threads come and go too fast for 1 s to show a listing whole).
Result<std::vector<int>> list_threads_for_testing();

// Totals since start (statistics and tests).
struct PatchTotals {
  std::uint64_t sync_core_rounds = 0;
  std::uint64_t traps_redirected = 0;
  std::uint64_t threads_moved = 0;
  // Restores of short-jump sites whose pad stayed written: a thread that blocked the
  // move signal stayed on it for 3 s (the pad keeps its jump, claimed for good).
  std::uint64_t short_pads_left = 0;
};
PatchTotals patch_totals() noexcept;

// Whether every other thread of the process is provably outside all of `ranges`
// ([start, end) pairs): threads blocked in a system call or preempted are judged by the
// pc /proc shows; threads shown running are asked with the move signal. false when a
// thread is inside or did not answer. Used before trampoline memory is reused.
Result<bool> threads_outside(std::span<const std::pair<std::uintptr_t, std::uintptr_t>> ranges);

// One core-serializing round over every thread of the process (membarrier SYNC_CORE).
Result<void> sync_core();

// Hook for int3-mode probes (the engine): called from the SIGTRAP handler with the trap
// address (the int3's own address) and the signal context's registers; returns the
// address to continue at, or 0 if the trap is not a probe site. Must be async-signal-safe.
using Int3Hook = std::uintptr_t (*)(std::uintptr_t trap_addr, void* ucontext);
void set_int3_hook(Int3Hook hook) noexcept;

}  // namespace hp::core
