// Per-thread state of the engine: the recursion guard, the return stack and the hit
// counters. Everything a hit writes lives here, in memory no other thread writes, so a
// hit writes no shared cache line (DESIGN.md hot-path budget).
//
// Records are registered on a thread's first hit (cold path) in a global list that is
// never freed: a record whose thread exited is folded into the totals and reused, so the
// zombie scan and the statistics may read any record at any time.
#pragma once

#include <atomic>
#include <cstdint>
#include <vector>

#include "base/compiler.h"

namespace hp::core {

struct Site;

inline constexpr unsigned kMaxReturnConsumers = 4;
inline constexpr unsigned kMaxReturnDepth = 256;

struct ReturnConsumerData {
  std::uint64_t consumer_id;
  std::uint64_t data;
};

struct ReturnInstance {
  std::uint64_t orig_ret;   // the original return address
  std::uint64_t slot;       // where it was on the stack
  std::uint64_t tramp;      // what was written there (the scheme's return trampoline)
  bool hijacked;            // *slot == tramp (false while an unwinder walks the stack)
  std::atomic<Site*> site;  // read by the zombie scan
  std::uint32_t n;          // consumers that asked for the return
  ReturnConsumerData cd[kMaxReturnConsumers];
};

struct ThreadRecord {
  // Written by the owner only; read by statistics (relaxed).
  std::atomic<std::uint64_t> hits{0};
  std::atomic<std::uint64_t> misses_recursion{0};
  std::atomic<std::uint64_t> misses_return_stack{0};
  // Return stack: entries [0, depth) are pushed by the owner (stores to an entry, then
  // depth with release: R1 matches R2 in the zombie scan).
  std::atomic<std::uint32_t> depth{0};
  ReturnInstance stack[kMaxReturnDepth];

  ThreadRecord* next = nullptr;  // global list, never unlinked
  std::atomic<bool> in_use{false};
};

struct ThreadState {
  ThreadRecord* rec;
  bool in_handler;
  // Set when an unwinder put the original return addresses back; the next hit on this
  // thread hijacks the live ones again (dispatch.cc, unhijack_all / rehijack_live). Next
  // to in_handler: the trampoline's fast path tests both with one compare.
  bool rehijack_pending;
  std::uint8_t schemes_ready;  // bit per scheme: this thread has used its domain once
};
// initial-exec: a plain %fs access even inside libhotprobe.so (no __tls_get_addr call on
// the hot path); the library is loaded at start-up or by dlopen with static TLS to spare.
extern constinit thread_local ThreadState tls_state __attribute__((tls_model("initial-exec")));

// The calling thread's record, registering it on first use.
HP_ALWAYS_INLINE ThreadRecord& thread_record() {
  extern HP_COLD ThreadRecord& register_thread_record();
  ThreadRecord* r = tls_state.rec;
  if (HP_UNLIKELY(r == nullptr)) return register_thread_record();
  return *r;
}

// Every record ever registered (for scans); iterate with ->next.
ThreadRecord* thread_records_head() noexcept;

struct HitTotals {
  std::uint64_t hits = 0, misses_recursion = 0, misses_return_stack = 0;
};
HitTotals hit_totals() noexcept;

// Every site that some return instance of some thread references, sorted (look one up with
// std::binary_search): one scan of every record's stack for a whole reclaim pass, where a
// scan per retired site cost 10,000 x records x 256 loads for a batch of 10,000.
std::vector<const Site*> sites_referenced_by_return_stacks();

// Recursion misses of threads whose record was being registered.
extern std::atomic<std::uint64_t> g_unregistered_misses;

}  // namespace hp::core
