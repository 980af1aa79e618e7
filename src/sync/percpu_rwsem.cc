#include "sync/percpu_rwsem.h"

namespace hp::sync {

PercpuRwsem::PercpuRwsem() : deferred_(this, &PercpuRwsem::sync_thunk, seq_, "rwsem") {
  id_.set_fork_child_hook(&PercpuRwsem::fork_child, this);
}

void PercpuRwsem::fork_child(void* self) HP_NO_THREAD_SAFETY_ANALYSIS {
  auto* s = static_cast<PercpuRwsem*>(self);
  if (s->seq_.in_progress()) s->seq_.end();
  // The forking thread holds the write side: it will unlock it here as in the parent.
  if (pthread_equal(s->writer_owner_.load(std::memory_order_relaxed), pthread_self())) return;
  // Otherwise every writer (holding, waiting, or mid grace period) is gone.
  s->sync_mu_.reinit_after_fork();
  s->gate_mu_.reinit_after_fork();
  s->writer_mu_.reinit_after_fork();
  s->writers_ = 0;
  s->writer_owner_.store(pthread_t{}, std::memory_order_relaxed);
  s->block_.store(0, std::memory_order_relaxed);
  s->gate_.store(0, std::memory_order_relaxed);
}
PercpuRwsem::~PercpuRwsem() = default;

bool PercpuRwsem::lock_shared_slow(detail::ThreadSlot* s, bool wait) noexcept {
  for (;;) {
    // F: pairs with W. Either the writer's sum (after W) counts our increment, or we
    // (after F) see its block_ = 1: never neither (store-buffering, both sides fenced).
    full_fence();
    // Acquire: a block_ = 0 stored by unlock() (release) makes that writer's changes
    // visible to this section.
    if (block_.load(std::memory_order_acquire) == 0) return true;
    // Nested: this thread already holds this read side, so the writer is waiting for us
    // (it cannot hold the lock). Backing off would deadlock; our count keeps it waiting.
    if (detail::slot_open_sections(s, 1) > 1) return true;
    // Back off: undo the increment so the writer can drain, wait for it, retry.
    detail::slot_inc(s->unlock[0], std::memory_order_release);
    if (!wait) return false;
    while (block_.load(std::memory_order_acquire) != 0)
      block_.wait(1, std::memory_order_acquire);
    detail::slot_inc(s->lock[0], std::memory_order_relaxed);
    compiler_barrier();  // R: as in lock_shared().
    if (gate_.load(std::memory_order_acquire) == 0) return true;
  }
}

void PercpuRwsem::gate_enter() {
  MutexLock l(gate_mu_);
  if (writers_++ == 0) {
    gate_.store(1, std::memory_order_relaxed);
    // G: pairs with R. membarrier is a full fence in every running reader: a reader
    // whose gate_ load came before it has its increment (program-ordered before the
    // load) visible to our sums after it; a reader whose load comes after sees gate_ = 1
    // and takes the fenced slow path. A reader that was not running passed a context
    // switch (a full fence) and is in one of the two cases as well.
    membarrier_all();
  }
}

void PercpuRwsem::gate_exit() {
  MutexLock l(gate_mu_);
  if (--writers_ == 0) {
    // Release: pairs with the readers' acquire load of gate_ (see lock_shared()).
    gate_.store(0, std::memory_order_release);
  }
}

bool PercpuRwsem::readers_gone() {
  std::uint64_t unlocks = id_.sum_unlocks(0);
  // A: as in SRCU's readers_gone: every counted unlock has its lock counted (the unlock
  // is a release store after the lock; the sums are acquire), so locks >= unlocks, and
  // equality means nobody was inside when the unlocks were summed.
  full_fence();
  std::uint64_t locks = id_.sum_locks(0);
  return locks == unlocks;
}

void PercpuRwsem::lock() {
  HP_ASSERT_MSG(!in_reader(), "PercpuRwsem::lock() inside this thread's read section");
  gate_enter();  // readers now take the slow path
  writer_mu_.lock();
  writer_owner_.store(pthread_self(), std::memory_order_relaxed);
  block_.store(1, std::memory_order_relaxed);
  full_fence();  // W: pairs with F (see lock_shared_slow).
  detail::Backoff backoff;
  while (!readers_gone())
    backoff.wait();
}

void PercpuRwsem::unlock() {
  writer_owner_.store(pthread_t{}, std::memory_order_relaxed);
  // Release: pairs with the acquire load of block_ in lock_shared_slow().
  block_.store(0, std::memory_order_release);
  block_.notify_all();
  writer_mu_.unlock();
  gate_exit();
}

void PercpuRwsem::synchronize() {
  HP_ASSERT_MSG(!in_reader(), "synchronize() inside a read section of the same PercpuRwsem");
  GpCookie cookie = seq_.snap();
  MutexLock l(sync_mu_);
  if (seq_.done(cookie)) return;
  seq_.start();
  lock();
  unlock();
  seq_.end();
}

}  // namespace hp::sync
