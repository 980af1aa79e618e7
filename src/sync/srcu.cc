#include "sync/srcu.h"

namespace hp::sync {

template <bool kFast>
BasicSrcu<kFast>::BasicSrcu()
    : deferred_(this, &BasicSrcu::sync_thunk, seq_, kFast ? "srcu-fast" : "srcu") {
  id_.set_fork_child_hook(&BasicSrcu::fork_child, this);
}

// In a fork child (one thread): a thread that held gp_mu_ in the parent, in the middle of
// a grace period, does not exist here. The forking thread itself cannot hold it
// (synchronize() runs no user code under it).
template <bool kFast>
void BasicSrcu<kFast>::fork_child(void* self) {
  auto* d = static_cast<BasicSrcu*>(self);
  d->gp_mu_.reinit_after_fork();
  if (d->seq_.in_progress()) d->seq_.end();  // abandoned: the next one starts afresh
}

template <bool kFast>
BasicSrcu<kFast>::~BasicSrcu() = default;

template <bool kFast>
void BasicSrcu<kFast>::writer_fence_paired_with_readers() {
  if constexpr (kFast) {
    membarrier_all();
  } else {
    full_fence();
  }
}

// srcu_readers_active_idx_check(): true if no reader is inside on `idx`.
template <bool kFast>
bool BasicSrcu<kFast>::readers_gone(unsigned idx) {
  std::uint64_t unlocks = id_.sum_unlocks(idx);
  // A: pairs with B (a reader whose lock we do not count below sees everything before
  // this grace period) and with C (a reader whose unlock we counted above has finished
  // its section). Fast flavour: membarrier makes every running reader execute B/C here.
  writer_fence_paired_with_readers();
  std::uint64_t locks = id_.sum_locks(idx);
  // Counts only grow and every counted unlock's lock is counted, so locks >= unlocks.
  return locks == unlocks;
}

template <bool kFast>
void BasicSrcu<kFast>::wait_readers_gone(unsigned idx) {
  detail::Backoff backoff;
  while (!readers_gone(idx))
    backoff.wait();
}

template <bool kFast>
void BasicSrcu<kFast>::synchronize() {
  HP_ASSERT_MSG(!in_reader(), "synchronize() inside a read section of the same domain");
  GpCookie cookie = seq_.snap();
  MutexLock l(gp_mu_);
  // A grace period that began after our snap() and has ended serves us too.
  if (seq_.done(cookie)) return;
  seq_.start();
  // G: orders the caller's earlier stores (the unpublish) before the scans; the scans'
  // own fences (A) also do so.
  full_fence();

  // 1. Stragglers on the inactive index: readers that read idx_ before the previous flip
  // and incremented after that grace period's scan.
  unsigned cur = idx_.load(std::memory_order_relaxed) & 1;
  wait_readers_gone(cur ^ 1);

  // 2. srcu_flip().
  // E: pairs with B and C: the scans above happen before readers see the new index, so
  // a reader that sees the new index was not needed by those scans.
  writer_fence_paired_with_readers();
  idx_.store(cur ^ 1, std::memory_order_relaxed);
  // D: pairs with C: a reader that sees the new index at lock has its earlier unlocks on
  // the old index ordered before the scans below.
  writer_fence_paired_with_readers();

  // 3. The readers that were on the old current index.
  wait_readers_gone(cur);

  // H: the end of the grace period happens after every counted unlock (acquire sums and
  // A already order it; kept as the kernel's end-of-GP barrier).
  full_fence();
  seq_.end();
}

template class BasicSrcu<false>;
template class BasicSrcu<true>;

}  // namespace hp::sync
