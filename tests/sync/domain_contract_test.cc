// The domain contract of sync/domain.h, one typed suite over every protection scheme of
// the scheme table (sync/schemes.h): read-side nesting and in_reader(), synchronize()
// waiting for pre-existing readers (outermost sections, nested reads while it waits),
// call()/retire()/barrier()/poll(), reader threads that exit while a writer waits, and
// readers never seeing a reclaimed object. What only one scheme promises (per-object
// in_reader(), the index flip, the write side, stall reports, fork) is tested in that
// scheme's own file.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "support/sync_support.h"
#include "sync/schemes.h"

namespace {

using namespace std::chrono_literals;
using hp::sync::Callback;
using hp::sync::GpCookie;
using hp::sync::ReadGuard;
using hp::sync::ReadToken;
using hp::sync::TasksTrace;
using hp::test::eventually;
using hp::test::finish_within;
using hp::test::HeldReader;

// A test's domain: its own object, or the process's one tasks-trace domain.
template <class D>
class DomainContract : public ::testing::Test {
 protected:
  D& domain() {
    if constexpr (std::is_same_v<D, TasksTrace>) {
      return hp::sync::tasks_trace();
    } else {
      return own_;
    }
  }

 private:
  std::conditional_t<std::is_same_v<D, TasksTrace>, char, D> own_{};
};

struct SchemeNames {
  template <class D>
  static std::string GetName(int) {
    return std::string(hp::sync::scheme_label<D>());
  }
};

// Every scheme of the scheme table.
using Schemes = hp::sync::SchemeDomains<::testing::Types>;
TYPED_TEST_SUITE(DomainContract, Schemes, SchemeNames);

TYPED_TEST(DomainContract, NestingAndInReader) {
  TypeParam& d = this->domain();
  EXPECT_FALSE(d.in_reader());
  ReadToken a = d.read_lock();
  EXPECT_TRUE(d.in_reader());
  ReadToken b = d.read_lock();
  ReadToken c = d.read_lock();
  EXPECT_TRUE(d.in_reader());
  d.read_unlock(c);
  d.read_unlock(b);
  EXPECT_TRUE(d.in_reader());
  d.read_unlock(a);
  EXPECT_FALSE(d.in_reader());
  bool other_thread_sees = true;
  {
    ReadGuard g(d);
    EXPECT_TRUE(d.in_reader());
    std::thread([&] { other_thread_sees = d.in_reader(); }).join();
  }
  EXPECT_FALSE(d.in_reader());
  EXPECT_FALSE(other_thread_sees) << "in_reader() is true on a thread outside any section";
}

TYPED_TEST(DomainContract, SynchronizeWithoutReadersReturns) {
  TypeParam& d = this->domain();
  finish_within("synchronize() without readers", [&] {
    d.synchronize();
    d.synchronize();
    { ReadGuard g(d); }  // a finished section does not hold up the next one
    d.synchronize();
  });
}

// synchronize() started while a reader is inside returns only after that reader left.
// The writer records, when it returns, whether the reader had left: a correct domain
// always sees it left; a domain that does not wait is caught whenever its writer got to
// run during the 200 ms the reader stays (almost always).
TYPED_TEST(DomainContract, SynchronizeWaitsForEarlierReader) {
  TypeParam& d = this->domain();
  std::atomic<bool> reader_left{false};
  std::atomic<bool> writer_saw_left{false};
  HeldReader<TypeParam> r(d);
  std::thread w([&] {
    d.synchronize();
    writer_saw_left = reader_left.load();
  });
  std::this_thread::sleep_for(200ms);  // room for the writer to start waiting (not required)
  reader_left = true;
  r.release();
  finish_within("synchronize() after its reader left", [&] { w.join(); });
  EXPECT_TRUE(writer_saw_left.load())
      << "synchronize() returned while an earlier reader was inside";
}

// Only leaving the outermost section ends a reader's section.
TYPED_TEST(DomainContract, SynchronizeWaitsForOutermostSection) {
  TypeParam& d = this->domain();
  hp::test::Event entered, release;
  std::atomic<bool> outer_left{false};
  std::atomic<bool> writer_saw_left{false};
  std::thread r([&] {
    ReadToken outer = d.read_lock();
    { ReadGuard inner(d); }
    entered.set();  // the inner section has ended, the outer one has not
    release.wait();
    outer_left = true;
    d.read_unlock(outer);
  });
  entered.wait();
  std::thread w([&] {
    d.synchronize();
    writer_saw_left = outer_left.load();
  });
  std::this_thread::sleep_for(150ms);  // room for the writer to start waiting (not required)
  release.set();
  finish_within("synchronize() after the outer section ended", [&] {
    r.join();
    w.join();
  });
  EXPECT_TRUE(writer_saw_left.load()) << "synchronize() returned after the inner section "
                                         "ended, while the outer one was still held";
}

// A nested read_lock() while a synchronize() waits for the outer section must not deadlock
// (the rw-lock schemes make new outermost readers wait for a waiting writer, never nested
// ones).
TYPED_TEST(DomainContract, NestedReadWhileWriterWaits) {
  TypeParam& d = this->domain();
  hp::test::Event outer_in, go_nested;
  std::atomic<bool> nested_done{false};
  std::thread r([&] {
    ReadGuard outer(d);
    outer_in.set();
    go_nested.wait();
    { ReadGuard inner(d); }
    nested_done = true;
  });
  outer_in.wait();
  std::thread w([&] { d.synchronize(); });
  std::this_thread::sleep_for(50ms);  // room for the writer to start waiting (not required)
  go_nested.set();
  finish_within("a nested read section while synchronize() waits", [&] {
    r.join();
    w.join();
  });
  EXPECT_TRUE(nested_done.load());
}

struct Flag : Callback {
  std::atomic<int>* runs = nullptr;
  std::atomic<bool>* reader_inside = nullptr;
  bool ran_inside = false;
  static void run(Callback* cb) {
    auto* self = static_cast<Flag*>(cb);
    if (self->reader_inside) self->ran_inside = self->reader_inside->load();
    self->runs->fetch_add(1);
  }
};

// call(cb) runs cb after a grace period: never while the caller's section is open.
TYPED_TEST(DomainContract, CallRunsAfterGracePeriodNotInsideSection) {
  TypeParam& d = this->domain();
  std::atomic<int> runs{0};
  std::atomic<bool> inside{true};
  Flag f;
  f.runs = &runs;
  f.reader_inside = &inside;
  f.fn = &Flag::run;
  ReadToken t = d.read_lock();
  d.call(&f);
  std::this_thread::sleep_for(100ms);  // room for a wrong early run (not required)
  EXPECT_EQ(runs.load(), 0) << "callback ran inside the caller's read section";
  inside = false;
  d.read_unlock(t);
  finish_within("barrier() after call()", [&] { d.barrier(); });
  EXPECT_EQ(runs.load(), 1);
  EXPECT_FALSE(f.ran_inside) << "callback ran inside the caller's read section";
}

TYPED_TEST(DomainContract, BarrierWaitsForAllQueued) {
  TypeParam& d = this->domain();
  std::atomic<int> runs{0};
  constexpr int kN = 100;
  std::vector<Flag> flags(kN);
  for (auto& f : flags) {
    f.runs = &runs;
    f.fn = &Flag::run;
    d.call(&f);
  }
  finish_within("barrier() with queued callbacks", [&] { d.barrier(); });
  EXPECT_EQ(runs.load(), kN);
  finish_within("an idle barrier()", [&] { d.barrier(); });
}

TYPED_TEST(DomainContract, RetireFreesWithDefaultAndOwnDeleter) {
  TypeParam& d = this->domain();
  static std::atomic<int> freed{0};
  static std::atomic<int> deleted_by_own{0};
  freed = 0;
  deleted_by_own = 0;
  struct Obj {
    ~Obj() { freed++; }
  };
  struct OwnDeleter {
    void operator()(Obj* p) const {
      deleted_by_own++;
      delete p;
    }
  };
  hp::sync::retire(d, new Obj);
  hp::sync::retire(d, new Obj);
  hp::sync::retire(d, new Obj, OwnDeleter{});
  finish_within("barrier() after retire()", [&] { d.barrier(); });
  EXPECT_EQ(freed.load(), 3);
  EXPECT_EQ(deleted_by_own.load(), 1);
}

// start_poll()/poll(): not done while a reader that entered before is inside, done after
// it leaves without anyone calling synchronize(); a synchronize() also completes a cookie.
TYPED_TEST(DomainContract, PollCompletesOnlyAfterGracePeriod) {
  TypeParam& d = this->domain();
  GpCookie c0 = d.start_poll();
  EXPECT_TRUE(eventually([&] { return d.poll(c0); })) << "an idle grace period never completed";
  {
    HeldReader<TypeParam> r(d);
    GpCookie c = d.start_poll();
    std::this_thread::sleep_for(100ms);  // room for a wrong early completion (not required)
    EXPECT_FALSE(d.poll(c)) << "grace period completed while an earlier reader was inside";
    r.release();
    EXPECT_TRUE(eventually([&] { return d.poll(c); }))
        << "the grace period never completed after the reader left";
  }
  GpCookie c2 = d.start_poll();
  d.synchronize();
  EXPECT_TRUE(d.poll(c2));
}

// Threads that read and exit: their balanced counts do not hold up synchronize(), and a
// reader that exits right after unlocking while the writer waits for it does not either.
// A lost or unfolded count leaves the domain with a reader forever: the hang detector
// reports it instead of the test hanging.
TYPED_TEST(DomainContract, ReaderThreadsExitWhileWriterWaits) {
  TypeParam& d = this->domain();
  int round = -1;
  finish_within(
      "synchronize() with exited reader threads",
      [&] {
        for (int i = 0; i < 8; ++i) {
          std::thread([&] {
            for (int k = 0; k < 1000; ++k) {
              ReadGuard g(d);
            }
          }).join();
        }
        d.synchronize();
        for (round = 0; round < 20; ++round) {
          std::thread r([&] {
            ReadGuard g(d);
            std::this_thread::yield();
          });
          d.synchronize();
          r.join();
        }
        d.synchronize();
      },
      [&] { return "round " + std::to_string(round) + " of 20 (-1: the 8 exited threads)"; });
}

// Readers check that the object they reach is never reclaimed while a writer replaces it
// as fast as it can, waiting with synchronize() or retiring through call(). Reclaimed
// objects are poisoned and kept (not freed) until the end, so a wrong read is a wrong
// value rather than a use of freed memory.
TYPED_TEST(DomainContract, ReadersNeverSeeReclaimedObjects) {
  TypeParam& d = this->domain();
  constexpr std::uint64_t kLive = 0x600d600d600d600dull, kDead = 0xdeaddeaddeaddeadull;
  struct Obj : Callback {
    std::atomic<std::uint64_t> magic{kLive};
  };
  std::atomic<Obj*> cur{new Obj};
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> bad{0}, reads{0};
  std::vector<std::thread> readers;
  for (int i = 0; i < 2; ++i) {
    readers.emplace_back([&] {
      std::uint64_t n = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        ReadGuard g(d);
        Obj* p = cur.load(std::memory_order_acquire);
        if (p->magic.load(std::memory_order_relaxed) != kLive) bad++;
        {
          ReadGuard nested(d);
          for (int spin = 0; spin < 100; ++spin)
            std::atomic_signal_fence(std::memory_order_seq_cst);
        }
        if (p->magic.load(std::memory_order_relaxed) != kLive) bad++;
        ++n;
      }
      reads += n;
    });
  }
  std::vector<Obj*> graveyard;
  auto end = std::chrono::steady_clock::now() + 300ms;
  for (std::uint64_t gen = 0; std::chrono::steady_clock::now() < end; ++gen) {
    Obj* old = cur.exchange(new Obj, std::memory_order_acq_rel);
    graveyard.push_back(old);
    if (gen & 1) {
      d.synchronize();
      old->magic.store(kDead, std::memory_order_relaxed);
    } else {
      old->fn = [](Callback* cb) {
        static_cast<Obj*>(cb)->magic.store(kDead, std::memory_order_relaxed);
      };
      d.call(old);
    }
  }
  stop = true;
  for (auto& t : readers)
    t.join();
  d.barrier();
  EXPECT_EQ(bad.load(), 0u) << "a reader saw an object reclaimed under it";
  EXPECT_GT(reads.load(), 0u);
  for (Obj* p : graveyard)
    delete p;
  delete cur.load();
}

}  // namespace
