// Live patching of code that other threads of this process are running: the kernel's
// text_poke_bp protocol for a whole batch of sites at once.
//
//   1. write int3 on the first byte of every site;                 sync_core round 1
//   2. move every thread whose ip lies strictly inside a site to the equivalent place
//      given by the site's ip map (a thread preempted in the middle of the bytes that
//      are about to change would otherwise resume in the middle of the new instruction);
//   3. write every byte but the first;                              sync_core round 2
//   4. write the first bytes;                                       sync_core round 3
//
// A thread that executes a site's int3 while the batch is in flight is sent by the
// SIGTRAP handler to the site's trap_target (where the old or the new code would have
// taken it; both are correct during the window). Pages are made writable once per run of
// adjacent pages and restored afterwards. A single-byte patch takes step 1 only.
//
// Finding threads (step 2) reads /proc/self/task/TID/syscall: a thread blocked in a
// system call is at its syscall instruction, which is never displaced, so it is left
// alone (no signal, so no EINTR); a thread preempted in user mode shows its pc, and is
// signalled only if that pc is inside a site; a thread shown "running" is signalled.
// The signal handler moves the ip and acknowledges. Limitation: a thread reported
// "running" that enters a non-restartable blocking call (nanosleep, epoll_wait, ...)
// in the microseconds before the signal arrives sees EINTR; see docs/design/core.md.
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
};

// The signal that moves running threads out of patched bytes (hotprobe::reserved_signal).
int move_signal_number() noexcept;

struct PatchStats {
  unsigned sync_core_rounds = 0;
  unsigned protect_calls = 0;  // mprotect calls (two per run of adjacent pages)
  unsigned threads_signalled = 0;
  unsigned threads_moved = 0;
};

// Applies every site's patch as one transaction. On failure nothing is changed.
// Serialized internally: one transaction at a time per process.
Result<PatchStats> apply_patches(std::span<const PatchSite> sites);

// Tests: the next apply_patches() fails with Errc::busy before it changes anything (the
// way a batch fails when someone else patched one of its functions meanwhile).
void fail_next_apply_for_testing() noexcept;

// Totals since start (statistics and tests).
struct PatchTotals {
  std::uint64_t sync_core_rounds = 0;
  std::uint64_t traps_redirected = 0;
  std::uint64_t threads_moved = 0;
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
