// Per-thread state of the engine: the recursion guard, the return stack and the hit
// counters. Everything a hit writes lives here, in memory no other thread writes, so a
// hit writes no shared cache line (DESIGN.md hot-path budget).
//
// Records are registered on a thread's first hit (cold path) in a global list that is
// never freed: a record whose thread is gone is folded into the totals and reused, so the
// zombie scan and the statistics may read any record at any time. A thread keeps its
// record to its very end: the hits of its last steps count.
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
  // Hits skipped because they happened in hotprobe's own work (OwnWork below): written by
  // the owner only. On a thread that is hotprobe's for its whole life (own_thread), its
  // misses_recursion are all such skips and are counted here when totals are made.
  std::atomic<std::uint64_t> skipped_own{0};
  std::atomic<bool> own_thread{false};
  // The owner's tid: a record whose thread ended without its key destructor marking it
  // (its first hit came after the key destructors, in glibc's last steps of thread exit)
  // is released by release_records_of_exited_threads(). Under the records' lock.
  int tid = 0;
  // The owner's key destructor ran: it keeps the record for its last steps, and a
  // registration reuses it once that tid is gone. Under the records' lock.
  bool exiting = false;
};

struct ThreadState {
  ThreadRecord* rec;
  bool in_handler;
  // Set when an unwinder put the original return addresses back; the next hit on this
  // thread hijacks the live ones again (dispatch.cc, unhijack_all / rehijack_live). Next
  // to in_handler: the trampoline's fast path tests both with one compare.
  bool rehijack_pending;
  std::uint8_t schemes_ready;  // bit per scheme: this thread has used its domain once
  // This thread is hotprobe's own (a reporter, a grace-period worker, a batch helper):
  // in_handler stays set for its whole life.
  bool own_thread;
  std::uint8_t own_depth;  // OwnWork scopes open on this thread
  // The thread's key destructor (release_record) has run: a record registered from here on
  // is one of its last steps, marked exiting at once.
  bool keys_done;
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

// Frees the records of threads that are gone without their key destructor having released
// them (a first hit after it, in glibc's last steps of thread exit), their counts folded
// into the totals. Not from the dispatcher (it makes system calls through libc's lock);
// the agent calls it when a session starts.
__attribute__((visibility("default"))) void release_records_of_exited_threads() noexcept;

// Every record ever registered (for scans); iterate with ->next.
ThreadRecord* thread_records_head() noexcept;

struct HitTotals {
  std::uint64_t hits = 0, misses_recursion = 0, misses_return_stack = 0;
  // Hits in hotprobe's own work (its threads, the agent's phases): skipped by design,
  // neither a miss nor a lost event.
  std::uint64_t skipped_own = 0;
};
HitTotals hit_totals() noexcept;

// Every site that some return instance of some thread references, sorted (look one up with
// std::binary_search): one scan of every record's stack for a whole reclaim pass, where a
// scan per retired site cost 10,000 x records x 256 loads for a batch of 10,000.
std::vector<const Site*> sites_referenced_by_return_stacks();

// hotprobe's own work: the program cannot tell that hotprobe is there (DESIGN.md), so a
// probe hit caused by hotprobe itself (the agent's start-up, compile, attach, reporting
// and detach; the engine's threads) must run no handler: `uprobe:libc:malloc` counts the
// program's mallocs and nothing else. The mechanism is the recursion guard that already
// skips hits inside handlers (in_handler): OwnWork sets it for a scope, mark_own_thread()
// for the rest of the calling thread's life. Skips are counted apart (skipped_own).
//
// The agent, which links core into itself, uses these past the public API. OwnWork is
// async-signal-safe (it never registers a record); mark_own_thread() registers one, at the start of
// a thread of hotprobe's.
struct OwnWorkToken {
  bool prev_in_handler;
  ThreadRecord* rec;  // the thread's record when the scope began (none: not counted apart)
  std::uint64_t misses_before;
};
__attribute__((visibility("default"))) OwnWorkToken begin_own_work() noexcept;
__attribute__((visibility("default"))) void end_own_work(OwnWorkToken t) noexcept;
__attribute__((visibility("default"))) void mark_own_thread() noexcept;
// mark_own_thread(), and the engine's signal unblocked: the first thing a worker thread of
// hotprobe's does when it was created with every asynchronous signal blocked.
void start_own_worker() noexcept;
// Whether the calling thread is in hotprobe's own work (a scope or an own thread).
__attribute__((visibility("default"))) bool in_own_work() noexcept;
// Whether the calling thread is one of hotprobe's for its whole life (mark_own_thread()),
// not a program thread inside an OwnWork scope. Async-signal-safe.
bool is_own_thread() noexcept;

class OwnWork {
 public:
  OwnWork() noexcept : t_(begin_own_work()) {}
  ~OwnWork() { end_own_work(t_); }
  OwnWork(const OwnWork&) = delete;
  OwnWork& operator=(const OwnWork&) = delete;

 private:
  OwnWorkToken t_;
};

// Recursion misses of threads whose record was being registered.
extern std::atomic<std::uint64_t> g_unregistered_misses;

}  // namespace hp::core
