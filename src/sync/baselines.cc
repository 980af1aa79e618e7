#include "sync/baselines.h"

#include <mutex>

#include "sync/percpu.h"

namespace hp::sync {

namespace detail {
__thread std::uint32_t tls_refcount_depth __attribute__((tls_model("initial-exec"))) = 0;
__thread std::uint32_t tls_rwlock_depth __attribute__((tls_model("initial-exec"))) = 0;
}  // namespace detail

// ---------------------------------------------------------------------------------------
// RefcountDomain

RefcountDomain::RefcountDomain() : deferred_(this, &RefcountDomain::sync_thunk, seq_, "refcount") {}
RefcountDomain::~RefcountDomain() = default;

void RefcountDomain::wait_zero(unsigned idx) {
  detail::Backoff backoff;
  // A: seq_cst load; pairs with B and C. A reader whose increment this load does not see
  // comes later in the single total order, so it sees everything before the grace period.
  while (count_[idx].v.load(std::memory_order_seq_cst) != 0)
    backoff.wait();
}

void RefcountDomain::synchronize() {
  GpCookie cookie = seq_.snap();
  MutexLock l(gp_mu_);
  if (seq_.done(cookie)) return;
  seq_.start();
  // As SRCU: stragglers on the inactive counter (readers that read idx_ before the last
  // flip), flip, then the readers of the old counter. New readers use the new counter,
  // so the writer cannot be starved.
  unsigned cur = idx_.load(std::memory_order_relaxed) & 1;
  wait_zero(cur ^ 1);
  idx_.store(cur ^ 1, std::memory_order_seq_cst);  // flip; ordered with A, B, C by seq_cst
  wait_zero(cur);
  seq_.end();
}

// ---------------------------------------------------------------------------------------
// RwlockDomain

RwlockDomain::RwlockDomain() : deferred_(this, &RwlockDomain::sync_thunk, seq_, "rwlock") {}
RwlockDomain::~RwlockDomain() = default;

void RwlockDomain::synchronize() {
  GpCookie cookie = seq_.snap();
  MutexLock l(gp_mu_);
  if (seq_.done(cookie)) return;
  seq_.start();
  writers_pending_.fetch_add(1, std::memory_order_relaxed);
  // Every reader that held the lock before has released it once we get it exclusively.
  mu_.lock();
  mu_.unlock();
  writers_pending_.fetch_sub(1, std::memory_order_release);
  writers_pending_.notify_all();
  seq_.end();
}

void RwlockDomain::wait_for_writers() noexcept {
  for (std::uint32_t v; (v = writers_pending_.load(std::memory_order_acquire)) != 0;) {
    writers_pending_.wait(v, std::memory_order_acquire);
  }
}

}  // namespace hp::sync
