// Tests of the torture framework itself, on the reference flavours of torture.h: the
// correct one passes, and each way of breaking a domain is caught by the path of the
// torture run that checks it. Short runs (unit tier); the long runs are in
// torture_stress_test.cc.
#include <gtest/gtest.h>

#include <memory>
#include <utility>
#include <vector>

#include "torture.h"

namespace hp::torture {
namespace {

Options short_options(double seconds = 0.5) {
  Options o = default_options();
  o.seconds = seconds;
  return o;
}

Options expect_failure_options(double seconds = 1.0) {
  Options o = short_options(seconds);
  o.free_during_run = false;  // a reader may hold any poisoned object: never free early
  o.stop_after_errors = 200;
  return o;
}

// A domain whose read side is correct between threads but not against a signal handler
// on the same thread, the way the first slot counters (b500e3b) were: the outermost
// read_lock() counts itself with a load and a store, and a handler's whole section can
// run in between, so its lock count is lost while its unlock count is kept. From then on
// the writer's "unlocks reached the lock count" test passes while that thread is still
// inside a section: grace periods end early. (The unlock side is a single atomic add, so
// the failure is early reclamation, which the torture catches, not a hang.) A pause
// between the load and the store widens the window so a 1 s run hits it.
//
// Grace period: snapshot every thread's lock count, then wait until its unlock count
// reaches it. Only outermost sections count, so a nested section cannot make the
// counts meet early.
struct UnsafeSlot {
  std::atomic<std::uint64_t> lock{0}, unlock{0};
};
struct UnsafeTls {
  const void* owner = nullptr;
  UnsafeSlot* slot = nullptr;
  int depth = 0;
};
thread_local UnsafeTls tls_unsafe;

class SignalUnsafeDomain {
 public:
  SignalUnsafeDomain() : deferred_(this, &sync_thunk, seq_, "torture-unsafe") {}
  SignalUnsafeDomain(const SignalUnsafeDomain&) = delete;
  SignalUnsafeDomain& operator=(const SignalUnsafeDomain&) = delete;

  sync::ReadToken read_lock() noexcept {
    if (tls_unsafe.depth == 0) {
      Slot* s = slot();
      std::uint64_t v = s->lock.load(std::memory_order_relaxed);
      for (int i = 0; i < 20; i++)
        asm volatile("pause" ::: "memory");  // the window
      s->lock.store(v + 1, std::memory_order_relaxed);
      asm volatile("mfence" ::: "memory");  // pairs with the writer's mfence
    }
    tls_unsafe.depth++;
    return {};
  }
  void read_unlock(sync::ReadToken) noexcept {
    if (--tls_unsafe.depth == 0) tls_unsafe.slot->unlock.fetch_add(1, std::memory_order_release);
  }
  bool in_reader() const noexcept { return tls_unsafe.depth > 0; }

  void synchronize() {
    std::lock_guard g(mu_);
    seq_.start();
    asm volatile("mfence" ::: "memory");
    std::vector<std::pair<Slot*, std::uint64_t>> snap;
    for (auto& s : slots_)
      snap.emplace_back(s.get(), s->lock.load(std::memory_order_relaxed));
    for (auto& [s, l] : snap) {
      while (s->unlock.load(std::memory_order_acquire) < l)
        std::this_thread::yield();
    }
    seq_.end();
  }
  void call(sync::Callback* cb) { deferred_.call(cb); }
  void barrier() { deferred_.barrier(); }
  sync::GpCookie start_poll() { return deferred_.start_poll(); }
  bool poll(sync::GpCookie c) const noexcept { return seq_.done(c); }

 private:
  using Slot = UnsafeSlot;
  // A thread's first section registers it (under the mutex: not from a signal handler;
  // the torture lets a reader be signalled only after its first section).
  Slot* slot() {
    if (tls_unsafe.owner != this) {
      std::lock_guard g(mu_);
      slots_.push_back(std::make_unique<Slot>());
      tls_unsafe.slot = slots_.back().get();
      tls_unsafe.owner = this;
    }
    return tls_unsafe.slot;
  }
  static void sync_thunk(void* self) { static_cast<SignalUnsafeDomain*>(self)->synchronize(); }

  std::mutex mu_;  // slots_ and grace periods
  std::vector<std::unique_ptr<Slot>> slots_;
  sync::GpSequence seq_;
  sync::Deferred deferred_;  // last: destroyed first
};
static_assert(sync::ReclaimingDomain<SignalUnsafeDomain>);

std::string rerun_hint(const Report& r) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "HOTPROBE_TORTURE_SEED=0x%llx",
                static_cast<unsigned long long>(r.seed));
  return std::string(buf) + "\n" + r.format();
}

TEST(TortureSelftest, ReferenceDomainPasses) {
  SharedMutexDomain d;
  Report r = run_torture(d, "selftest_reference", short_options());
  EXPECT_EQ(r.errors(), 0u) << rerun_hint(r);
  EXPECT_GT(r.reads, 0u);
  EXPECT_GT(r.updates, 0u);
  EXPECT_GT(r.syncs, 0u);
  EXPECT_GT(r.callbacks, 0u);
  EXPECT_GT(r.polls, 0u);
  EXPECT_GT(r.barriers, 0u);
  EXPECT_GT(r.churn_threads, 0u);
  EXPECT_GT(r.lingers, 0u);
  EXPECT_GT(r.nested, 0u);
  EXPECT_FALSE(r.writer_stalled()) << r.format();
  // Everything retired was reclaimed by the end.
  EXPECT_EQ(r.poisoned_objects, r.updates + 1) << r.format();
  // A correct domain never lets a reader see a retired object age.
  for (unsigned i = 1; i <= kPipeLen; i++)
    EXPECT_EQ(r.pipe[i], 0u) << "bucket " << i;
}

TEST(TortureSelftest, BrokenDomainIsCaught) {
  BrokenDomain d;
  Report r = run_torture(d, "selftest_broken", expect_failure_options());
  EXPECT_GT(r.bad_reads(), 0u) << rerun_hint(r);
  EXPECT_GT(r.pipe[kPipeLen] + r.pipe[2] + r.pipe[3], 0u) << r.format();
}

TEST(TortureSelftest, SynchronizeThatDoesNotWaitIsCaught) {
  ReferenceDomain<kBreakSync> d;
  Report r = run_torture(d, "selftest_break_sync", expect_failure_options());
  EXPECT_GT(r.bad_reads(), 0u) << rerun_hint(r);
}

TEST(TortureSelftest, CallThatRunsAtOnceIsCaught) {
  ReferenceDomain<kBreakCall> d;
  Report r = run_torture(d, "selftest_break_call", expect_failure_options());
  EXPECT_GT(r.bad_reads(), 0u) << rerun_hint(r);
  // Some callbacks are queued from inside a read section: run in place, they run there.
  EXPECT_GT(r.err_cb_in_reader, 0u) << rerun_hint(r);
}

TEST(TortureSelftest, PollThatIsDoneAtOnceIsCaught) {
  ReferenceDomain<kBreakPoll> d;
  Report r = run_torture(d, "selftest_break_poll", expect_failure_options());
  EXPECT_GT(r.bad_reads(), 0u) << rerun_hint(r);
}

TEST(TortureSelftest, BarrierThatDoesNotWaitIsCaught) {
  ReferenceDomain<kBreakBarrier> d;
  Report r = run_torture(d, "selftest_break_barrier", expect_failure_options());
  EXPECT_GT(r.err_barrier, 0u) << rerun_hint(r);
}

// Correct between threads: passes without signal readers...
TEST(TortureSelftest, SignalUnsafeDomainPassesWithoutSignals) {
  SignalUnsafeDomain d;
  Report r = run_torture(d, "selftest_signal_unsafe_nosig", short_options());
  EXPECT_EQ(r.errors(), 0u) << rerun_hint(r);
  EXPECT_EQ(r.signals, 0u);
}

// ...and the signal readers catch it: the proof that the signal rows can fail.
TEST(TortureSelftest, SignalUnsafeDomainIsCaughtWithSignals) {
#if defined(HOTPROBE_TSAN)
  GTEST_SKIP() << "TSan delivers asynchronous signals only at its own safe points, never "
                  "halfway through read_lock()";
#endif
  SignalUnsafeDomain d;
  Options o = expect_failure_options(2.0);
  o.signal_readers = true;
  Report r = run_torture(d, "selftest_signal_unsafe", o);
  EXPECT_GT(r.signal_reads, 0u) << r.format();
  EXPECT_GT(r.bad_reads(), 0u) << rerun_hint(r);
}

TEST(TortureSelftest, ReportPrintsThePipeHistogram) {
  Report r;
  r.flavour = "x";
  r.pipe = {10, 0, 3, 0, 1};
  r.err_stale = 3;
  r.err_poisoned = 1;
  std::string s = r.format();
  EXPECT_NE(s.find("Reader Pipe:  10 0 3 0 1"), std::string::npos) << s;
  EXPECT_NE(s.find("!!!"), std::string::npos) << s;
  EXPECT_NE(s.find("FAILURE"), std::string::npos) << s;
  EXPECT_EQ(r.errors(), 4u);
  EXPECT_EQ(r.bad_reads(), 4u);
}

}  // namespace
}  // namespace hp::torture
