// SRCU: sleepable RCU with local scope. Each Srcu/SrcuFast object is an independent
// domain: its synchronize() waits only for its own readers, never for readers of another
// domain or of the tasks-trace domain (the return-probe scope of DESIGN.md uses this).
//
// Example
//   hp::sync::SrcuFast ret_scope;
//   {
//     hp::sync::ReadGuard g(ret_scope);       // or: auto t = ret_scope.read_lock();
//     const Probe* p = slot.load(std::memory_order_acquire);
//     ...                                     // may block
//   }
//   old = slot.exchange(nullptr);
//   ret_scope.synchronize();                  // or hp::sync::retire(ret_scope, old)
//   delete old;
//
// How it works (the kernel's kernel/rcu/srcutree.c, with per-thread instead of per-CPU
// counters)
//   A domain has an index `idx_` (0 or 1, the kernel's srcu_idx) and, in every thread that
//   used it, a ThreadSlot (percpu.h) with lock[2] and unlock[2] counts. A reader reads
//   idx_, increments lock[idx] in its own slot and later unlock[idx] (the same idx, from
//   the token), each with one non-locked `addq`: no atomic read-modify-write, no shared
//   write, and safe against a signal handler that reads on the same thread.
//   The writer:
//     1. waits until index !idx_ has no readers (stragglers of an earlier flip),
//     2. flips idx_, so new readers use the other index,
//     3. waits until the old index has no readers.
//   "No readers on idx" is the kernel's srcu_readers_active_idx_check: sum the unlocks of
//   idx over all threads, fence (A), sum the locks, and compare. Counts only grow, and every
//   counted unlock's lock is counted too, so equal sums mean no reader was inside on idx
//   when the unlocks were summed. Readers arriving later use the new index, so the writer
//   waits for a bounded set of readers and cannot be starved by new ones.
//   Separate lock and unlock counts (rather than one nesting count) also make an unlock on
//   another thread correct, as srcu_down_read/srcu_up_read allow: up_read() counts it in
//   the calling thread's own slot. read_unlock(), like the kernel's srcu_read_unlock, is
//   for the locking thread only, so it needs no check (one `addq` through the token).
//
// Flavours
//   Srcu (classic): a full fence after the lock increment (B) and before the unlock
//     increment (C), as srcu_read_lock/srcu_read_unlock. Writer fences are cheap.
//   SrcuFast: no fence on the read side (srcu_read_lock_fast); the writer pays
//     membarrier(PRIVATE_EXPEDITED) where the classic writer has a plain fence paired
//     with B/C, which makes every running reader execute that fence for it.
//   The fence pairs are listed in docs/design/sync-srcu-rwsem.md.
//
// Why per-thread slots and not per-CPU counters
//   in_reader() must be exact per domain for the current thread, which needs per-thread
//   per-domain state anyway (the same lookup a per-thread counter costs). With per-CPU
//   counters (percpu_add, an rseq add with no lock prefix: 1.1 ns per +1/-1 pair) a read
//   pair would pay both that and the per-thread nesting update; per-thread counters pay
//   only the latter and need neither rseq (absent when glibc's registration is disabled)
//   nor anything ThreadSanitizer cannot see. The writer's scan is O(threads that used the
//   domain) instead of O(CPUs); it already pays membarrier, itself O(running threads).
//
// Measured read pairs (2-core AMD EPYC VM, Linux 6.18, g++ 12 -O2, loaded machine:
// minimum of 20-40 interleaved rounds of 2M pairs; details in the design doc):
//   plain TLS counter ++/-- ........ 0.54 ns
//   TasksTrace (tasks_trace.h) ...... 0.81 ns
//   SrcuFast ........................ 1.12 ns   (1.38x TasksTrace; 1.29 ns with 2 threads)
//   PercpuRwsem (percpu_rwsem.h) ... 1.15 ns
//   rseq percpu_add +1/-1 ........... 1.10 ns
//   Srcu (classic, two lock-add fences)  5.6 ns
//   RefcountDomain 5.3 ns (16.8 ns with 2 threads); RwlockDomain 9.8 ns (28 ns)
//
// Limits
//   - synchronize() inside a read section of the same domain deadlocks (HP_ASSERTed).
//   - A domain must outlive its readers; destroying it with readers inside is a bug.
//   - fork(): in the child, the sections of threads that are not there are dropped, a
//     grace period the parent had in progress is abandoned and the grace-period lock is
//     reinitialized, so synchronize()/call()/barrier() work in the child.
//   - Read sections may block and nest; a read section held forever stalls writers (the
//     return-probe lease timeout of DESIGN.md bounds that one level up).
//   - Read sections may run in signal handlers (int3 mode); see percpu.h, Limits, for the
//     one case that allocates (first use in a thread of a domain with id >= 4).
//   - in_reader() is exact for the current thread unless its sections are unlocked on
//     other threads (then it stays true in the locking thread until that thread exits).
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>

#include "base/assert.h"
#include "base/compiler.h"
#include "base/thread_annotations.h"
#include "sync/deferred.h"
#include "sync/domain.h"
#include "sync/gp_seq.h"
#include "sync/percpu.h"

namespace hp::sync {

template <bool kFast>
class BasicSrcu {
 public:
  BasicSrcu();
  ~BasicSrcu();
  BasicSrcu(const BasicSrcu&) = delete;
  BasicSrcu& operator=(const BasicSrcu&) = delete;

  // srcu_read_lock(): nests; returns the index to pass to read_unlock.
  HP_ALWAYS_INLINE ReadToken read_lock() noexcept {
    detail::ThreadSlot* s = detail::thread_slot(id_.get());
    std::uint32_t idx = idx_.load(std::memory_order_relaxed) & 1;
    detail::slot_inc(s->lock[idx], std::memory_order_relaxed);
    if constexpr (kFast) {
      compiler_barrier();  // B(fast): the writer's membarrier at A/E stands in for B.
    } else {
      full_fence();  // B: pairs with A (srcu_check_zero) and E (flip).
    }
    return ReadToken{idx, s};
  }

  // srcu_read_unlock(): `t` from the matching read_lock(), on the same thread (as the
  // kernel's srcu_read_unlock; checked in debug builds). A section that ends on another
  // thread uses up_read().
  HP_ALWAYS_INLINE void read_unlock(ReadToken t) noexcept {
    if constexpr (kFast) {
      compiler_barrier();  // C(fast): the writer's membarrier at A/D stands in for C.
    } else {
      full_fence();  // C: pairs with A and D: the section happens before a counted unlock.
    }
    // The slot read_lock() found: a thread's slots never move while it lives (percpu.cc).
    auto* s = static_cast<detail::ThreadSlot*>(t.slot);
    HP_ASSERT_MSG(detail::slot_is_mine(s),
                  "SRCU read_unlock() on another thread than read_lock(): use up_read()");
    // Release: on its own enough for the C++ model (and ThreadSanitizer); C/membarrier
    // is what the kernel's argument (and weaker CPUs) rely on.
    detail::slot_inc(s->unlock[t.idx & 1], std::memory_order_release);
  }

  // srcu_down_read()/srcu_up_read(): a section that may end on another thread (a
  // semaphore-like hand-off). up_read() counts the unlock in the calling thread's own
  // slot (only a slot's owner writes it; separate lock and unlock counts keep the sums
  // balanced), found from the token's slot address without touching the domain.
  HP_ALWAYS_INLINE ReadToken down_read() noexcept { return read_lock(); }
  void up_read(ReadToken t) noexcept {
    if constexpr (kFast) {
      compiler_barrier();
    } else {
      full_fence();  // C, as in read_unlock()
    }
    auto* s = static_cast<detail::ThreadSlot*>(t.slot);
    if (!detail::slot_is_mine(s)) s = detail::thread_slot(detail::slot_id(s));
    detail::slot_inc(s->unlock[t.idx & 1], std::memory_order_release);
  }

  // Exact for this thread and this domain (sections locked by this thread and not yet
  // unlocked; an unlock done for another thread's section counts for neither).
  bool in_reader() const noexcept {
    const detail::ThreadSlot* s = detail::thread_slot_if_present(id_.get());
    return s && detail::slot_open_sections(s, 2) > 0;
  }

  // Waits for every read section that began before the call. Concurrent callers share
  // grace periods (GpSequence).
  HP_COLD void synchronize();

  void call(Callback* cb) { deferred_.call(cb); }
  void barrier() { deferred_.barrier(); }
  GpCookie start_poll() { return deferred_.start_poll(); }
  bool poll(GpCookie c) const noexcept { return deferred_.poll(c); }

  // Number of completed grace periods (tests, statistics).
  std::uint64_t completed() const noexcept { return seq_.completed(); }
  // Current index (tests): readers starting now use it.
  std::uint32_t current_index() const noexcept { return idx_.load(std::memory_order_relaxed) & 1; }

 private:
  // The writer-side fence paired with the read side's B/C: a plain fence for the
  // classic flavour, a membarrier (a fence on every running thread) for the fast one.
  void writer_fence_paired_with_readers();
  bool readers_gone(unsigned idx);
  void wait_readers_gone(unsigned idx);
  static void sync_thunk(void* self) { static_cast<BasicSrcu*>(self)->synchronize(); }
  static void fork_child(void* self);

  detail::SlotId id_;  // first: destroyed after the Deferred worker has stopped
  alignas(kCacheLine) std::atomic<std::uint32_t> idx_{0};  // read-mostly by readers
  alignas(kCacheLine) hp::Mutex gp_mu_;                    // serializes grace periods
  GpSequence seq_;
  Deferred deferred_;  // last: its worker calls synchronize() until it is destroyed
};

using Srcu = BasicSrcu<false>;
using SrcuFast = BasicSrcu<true>;

extern template class BasicSrcu<false>;
extern template class BasicSrcu<true>;

static_assert(ReclaimingDomain<Srcu>);
static_assert(ReclaimingDomain<SrcuFast>);

}  // namespace hp::sync
