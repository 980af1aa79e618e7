// Baselines of the protection-scheme debate (DESIGN.md), behind the same ReclaimingDomain
// concept so the dispatcher and the benchmarks can be instantiated with them:
//
//  - RefcountDomain: every reader does an atomic increment and decrement of one shared
//    counter, the scheme whose cache-line bouncing made bpftime's 8 threads cost 1.3-2 us
//    per call (REFERENCES.md). Measured here: 5.3 ns per pair alone, 16.8 ns with two
//    threads (median). synchronize() is starvation-free: two counters and an index, as
//    SRCU, so readers arriving during a grace period count on the other counter and the
//    writer only waits for the readers that were there.
//  - RwlockDomain: std::shared_mutex read lock (the original tree lock); synchronize()
//    takes and releases the exclusive lock. Measured here: 9.8 ns per pair alone, 28 ns
//    with two readers (median). Nested read locks work because glibc's rwlock prefers
//    readers by default; so that a steady stream of overlapping readers cannot starve
//    synchronize(), outermost readers (per-thread, per-type depth 0) wait while a writer
//    is pending.
//
// Example
//   hp::sync::RefcountDomain d;
//   { hp::sync::ReadGuard g(d); use(p.load()); }
//   hp::sync::retire(d, old);
//
// in_reader() of both is per thread and per type, not per object: true if the calling
// thread is inside a read section of any RefcountDomain (respectively RwlockDomain). That
// is conservative for HP_ASSERT(d.in_reader()) lifetime checks, and it cannot detect a
// synchronize() called inside another object's section (which is harmless for these).
#pragma once

#include <atomic>
#include <cstdint>
#include <shared_mutex>

#include "base/assert.h"
#include "base/compiler.h"
#include "base/thread_annotations.h"
#include "sync/deferred.h"
#include "sync/domain.h"
#include "sync/gp_seq.h"

namespace hp::sync {

namespace detail {
extern __thread std::uint32_t tls_refcount_depth __attribute__((tls_model("initial-exec")));
extern __thread std::uint32_t tls_rwlock_depth __attribute__((tls_model("initial-exec")));
}  // namespace detail

class RefcountDomain {
 public:
  RefcountDomain();
  ~RefcountDomain();
  RefcountDomain(const RefcountDomain&) = delete;
  RefcountDomain& operator=(const RefcountDomain&) = delete;

  HP_ALWAYS_INLINE ReadToken read_lock() noexcept {
    std::uint32_t idx = idx_.load(std::memory_order_relaxed) & 1;
    // B: seq_cst RMW, a full fence; pairs with the writer's seq_cst flip and loads (A).
    count_[idx].v.fetch_add(1, std::memory_order_seq_cst);
    ++detail::tls_refcount_depth;
    return ReadToken{idx};
  }
  HP_ALWAYS_INLINE void read_unlock(ReadToken t) noexcept {
    --detail::tls_refcount_depth;
    // C: seq_cst RMW, a full fence; the section happens before the writer sees zero.
    count_[t.idx & 1].v.fetch_sub(1, std::memory_order_seq_cst);
  }
  // Per thread and per type (see the top of this file).
  bool in_reader() const noexcept { return detail::tls_refcount_depth != 0; }

  HP_COLD void synchronize();
  void call(Callback* cb) { deferred_.call(cb); }
  void barrier() { deferred_.barrier(); }
  GpCookie start_poll() { return deferred_.start_poll(); }
  bool poll(GpCookie c) const noexcept { return deferred_.poll(c); }

  // Readers currently counted (tests).
  std::int64_t readers() const noexcept {
    return count_[0].v.load(std::memory_order_relaxed) +
           count_[1].v.load(std::memory_order_relaxed);
  }

 private:
  void wait_zero(unsigned idx);
  static void sync_thunk(void* self) { static_cast<RefcountDomain*>(self)->synchronize(); }

  struct alignas(kCacheLine) Counter {
    std::atomic<std::int64_t> v{0};
  };
  alignas(kCacheLine) std::atomic<std::uint32_t> idx_{0};
  Counter count_[2];
  hp::Mutex gp_mu_;
  GpSequence seq_;
  Deferred deferred_;  // last: destroyed first, while the rest is still valid
};

class RwlockDomain {
 public:
  RwlockDomain();
  ~RwlockDomain();
  RwlockDomain(const RwlockDomain&) = delete;
  RwlockDomain& operator=(const RwlockDomain&) = delete;

  HP_ALWAYS_INLINE ReadToken read_lock() noexcept {
    // Writer fairness: an outermost reader waits while a synchronize() is pending, so a
    // stream of overlapping readers cannot starve it (glibc's rwlock prefers readers).
    // Nested readers never wait: that would deadlock against the pending writer.
    if (HP_UNLIKELY(writers_pending_.load(std::memory_order_relaxed) != 0) &&
        detail::tls_rwlock_depth == 0) {
      wait_for_writers();
    }
    mu_.lock_shared();  // acquire; pairs with unlock() of synchronize()
    ++detail::tls_rwlock_depth;
    return ReadToken{};
  }
  HP_ALWAYS_INLINE void read_unlock(ReadToken) noexcept {
    --detail::tls_rwlock_depth;
    mu_.unlock_shared();  // release; pairs with lock() of synchronize()
  }
  // Per thread and per type (see the top of this file).
  bool in_reader() const noexcept { return detail::tls_rwlock_depth != 0; }

  HP_COLD void synchronize();
  void call(Callback* cb) { deferred_.call(cb); }
  void barrier() { deferred_.barrier(); }
  GpCookie start_poll() { return deferred_.start_poll(); }
  bool poll(GpCookie c) const noexcept { return deferred_.poll(c); }

 private:
  static void sync_thunk(void* self) { static_cast<RwlockDomain*>(self)->synchronize(); }
  HP_COLD void wait_for_writers() noexcept;

  std::shared_mutex mu_;
  std::atomic<std::uint32_t> writers_pending_{0};
  hp::Mutex gp_mu_;
  GpSequence seq_;
  Deferred deferred_;  // last
};

static_assert(ReclaimingDomain<RefcountDomain>);
static_assert(ReclaimingDomain<RwlockDomain>);

}  // namespace hp::sync
