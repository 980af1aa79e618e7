// The in-flight trap table and the SIGTRAP handler of the patcher (text_patch.cc): where
// a thread that traps on an int3 hold, or on an int3-mode probe, continues.
#include "core/text_patch_traps.h"

#include <signal.h>
#include <sys/mman.h>

#include <atomic>

#include "arch/x86_64/handler_stack.h"
#include "base/compiler.h"
#include "core/text_patch_raw.h"

namespace hp::core {

namespace patching {

namespace {
std::atomic<std::uint64_t> g_traps_redirected{0};
}  // namespace

std::atomic<Int3Hook> g_int3_hook{nullptr};

// In-flight trap table: int3 address -> where to continue. Open addressing over a fixed
// mapping that is never freed, so the SIGTRAP handler can read it at any time without a
// grace period. One writer (under g_patch_mutex). A reader that misses (the entry was
// just removed, or a clear raced it) falls back to re-executing the trap address, which
// by then holds the final byte or traps again and finds the entry.
struct TrapEntry {
  std::atomic<std::uintptr_t> addr;    // 0 empty, kTomb removed
  std::atomic<std::uintptr_t> target;  // written before addr (T1: matches T2)
};
constexpr std::uintptr_t kTomb = 1;
TrapEntry* g_traps = nullptr;  // the writer's (under g_patch_mutex)
// The SIGTRAP handler's: published once the table exists (T3: matches T4).
std::atomic<TrapEntry*> g_traps_published{nullptr};
std::size_t g_trap_used = 0;  // live + tombstones, writer only

// Linear within each 1 MiB of address space (a slot per 4 bytes), at a place picked by a
// hash of the MiB: a batch of sites in one library touches a few pages of the table, not
// all 1,024 of them (first touches cost a page fault each), and sites closer than 4 bytes
// (int3 sites only) share a slot and probe the next.
std::size_t trap_hash(std::uintptr_t a) {
  const std::uint64_t region = ((a >> 20) * 0x9E3779B97F4A7C15ull) >> (64 - 18);
  return ((a >> 2) + region) & (kTrapSlots - 1);
}

std::uintptr_t trap_lookup(std::uintptr_t addr) {
  TrapEntry* t = g_traps_published.load(std::memory_order_acquire);  // T4: matches T3
  if (!t) return 0;
  for (std::size_t i = trap_hash(addr), n = 0; n < kTrapSlots;
       i = (i + 1) & (kTrapSlots - 1), n++) {
    std::uintptr_t a = t[i].addr.load(std::memory_order_acquire);  // T2: matches T1
    if (a == 0) return 0;
    if (a == addr) return t[i].target.load(std::memory_order_relaxed);
  }
  return 0;
}

void trap_insert(std::uintptr_t addr, std::uintptr_t target) {
  for (std::size_t i = trap_hash(addr);; i = (i + 1) & (kTrapSlots - 1)) {
    std::uintptr_t a = g_traps[i].addr.load(std::memory_order_relaxed);
    if (a == 0 || a == kTomb || a == addr) {
      g_traps[i].target.store(target, std::memory_order_relaxed);
      g_traps[i].addr.store(addr, std::memory_order_release);  // T1: matches T2
      if (a == 0) g_trap_used++;
      return;
    }
  }
}

// A removed entry at the end of its chain (the next slot empty) becomes empty, and so do
// the tombstones before it: no entry lies behind an empty slot that its own chain needs
// (its chain runs from its hash slot to it without a gap), so readers stay correct, and a
// batch removed last-in first-out (apply_patches) leaves no run of tombstones for later
// lookups to walk through.
void trap_remove(std::uintptr_t addr) {
  constexpr std::size_t kMask = kTrapSlots - 1;
  for (std::size_t i = trap_hash(addr), n = 0; n < kTrapSlots; i = (i + 1) & kMask, n++) {
    std::uintptr_t a = g_traps[i].addr.load(std::memory_order_relaxed);
    if (a == 0) return;
    if (a != addr) continue;
    if (g_traps[(i + 1) & kMask].addr.load(std::memory_order_relaxed) != 0) {
      g_traps[i].addr.store(kTomb, std::memory_order_release);
      return;
    }
    for (std::size_t j = i;; j = (j - 1) & kMask) {
      g_traps[j].addr.store(0, std::memory_order_release);
      g_trap_used--;
      if (g_traps[(j - 1) & kMask].addr.load(std::memory_order_relaxed) != kTomb) return;
    }
  }
}

void trap_clear_if_crowded() {
  if (g_trap_used < kTrapSlots / 2) return;
  for (std::size_t i = 0; i < kTrapSlots; i++)
    g_traps[i].addr.store(0, std::memory_order_release);
  g_trap_used = 0;
}

namespace {

struct sigaction g_prev_trap_action;

// The trap's own work: true (1) when the int3 was ours and the context now says where the
// thread goes on. On the thread's handler stack where it is free (trap_handler).
HP_DISPATCH_SECTION std::uint64_t handle_trap(void* ucv, void* /*unused*/) {
  CtxRip rip = ctx_rip(ucv);
  const std::uintptr_t trap = rip - 1;
  if (Int3Hook hook = g_int3_hook.load(std::memory_order_acquire)) {
    if (std::uintptr_t to = hook(trap, ucv)) {
      rip = to;
      return 1;
    }
  }
  if (std::uintptr_t to = trap_lookup(trap)) {
    rip = to;
    g_traps_redirected.fetch_add(1, std::memory_order_relaxed);
    return 1;
  }
  // The int3 was ours but the transaction has finished: run what is there now.
  if (read_code_byte(trap) != kInt3) {
    rip = trap;
    return 1;
  }
  return 0;
}

// Moves to hotprobe's handler stack first (arch/x86_64/handler_stack.h), so that a trap
// takes of the program's stack (a small sigaltstack, a coroutine's) only this frame and
// the switch's, whatever the int3 hook, the dispatcher and the first hit's allocation
// need; a trap that is not ours goes to the program's handler back on its own stack.
// Not instrumented by ASan: its frame stays a few words.
HP_DISPATCH_SECTION __attribute__((no_sanitize("address", "thread"))) void trap_handler(
    int sig, siginfo_t* info, void* uc) {
  if (info->si_code == SI_KERNEL) {  // an int3 (not kill(2), not a debugger's step)
    const std::uint64_t ours =
        arch::handler_stack_available()
            ? hp_handler_stack_call(uc, nullptr, reinterpret_cast<std::uint64_t>(&handle_trap))
            : handle_trap(uc, nullptr);
    if (ours) return;
  }
  // Not ours: behave as if we were not here.
  if (g_prev_trap_action.sa_flags & SA_SIGINFO) {
    if (g_prev_trap_action.sa_sigaction) return g_prev_trap_action.sa_sigaction(sig, info, uc);
  } else if (g_prev_trap_action.sa_handler != SIG_DFL && g_prev_trap_action.sa_handler != SIG_IGN) {
    return g_prev_trap_action.sa_handler(sig);
  }
  // Default action: uninstall ourselves and re-execute the int3, so the process dies of
  // SIGTRAP as it would have without hotprobe.
  if (info->si_code == SI_KERNEL) ctx_rip(uc) = ctx_rip(uc) - 1;
  signal(SIGTRAP, SIG_DFL);
}

}  // namespace

Result<void> install_trap_handler() {
  if (!g_traps) {
    void* mem = mmap(nullptr, kTrapSlots * sizeof(TrapEntry), PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mem == MAP_FAILED) return sys_error("mmap of the trap table");
    g_traps = static_cast<TrapEntry*>(mem);
    g_traps_published.store(g_traps, std::memory_order_release);  // T3: matches T4
  }
  struct sigaction sa {};
  sa.sa_sigaction = trap_handler;
  // Not SA_ONSTACK, unlike the move signal: this handler runs the probe's handlers on
  // hotprobe's own stack, and a signal that arrives there while this frame is on the
  // alternate stack would be put at that stack's top by the kernel (the stack pointer is
  // not on it), over this frame (docs/design/arch.md, "Goroutine stacks and signal
  // frames").
  sa.sa_flags = SA_SIGINFO | SA_RESTART | SA_NODEFER;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGTRAP, &sa, &g_prev_trap_action) != 0) return sys_error("sigaction(SIGTRAP)");
  return {};
}

std::uint64_t traps_redirected() noexcept {
  return g_traps_redirected.load(std::memory_order_relaxed);
}

}  // namespace patching

void set_int3_hook(Int3Hook hook) noexcept {
  patching::g_int3_hook.store(hook, std::memory_order_release);
}

}  // namespace hp::core
