// RefcountDomain and RwlockDomain: every operation of the domain concept, the refcount's
// starvation-free synchronize(), and the per-type in_reader() documented in baselines.h.
#include "sync/baselines.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <thread>
#include <vector>

namespace {

using namespace std::chrono_literals;
using hp::sync::Callback;
using hp::sync::GpCookie;
using hp::sync::ReadGuard;
using hp::sync::ReadToken;

template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds bound = 20s) {
  auto end = std::chrono::steady_clock::now() + bound;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

template <class D>
class HeldReader {
 public:
  explicit HeldReader(D& d)
      : t_([this, &d] {
          ReadToken tok = d.read_lock();
          in_.set_value();
          out_.get_future().wait();
          d.read_unlock(tok);
        }) {
    in_.get_future().wait();
  }
  ~HeldReader() { release(); }
  void release() {
    if (t_.joinable()) {
      out_.set_value();
      t_.join();
    }
  }

 private:
  std::promise<void> in_, out_;
  std::thread t_;
};

template <class D>
class BaselineTest : public ::testing::Test {};
using Domains = ::testing::Types<hp::sync::RefcountDomain, hp::sync::RwlockDomain>;
TYPED_TEST_SUITE(BaselineTest, Domains);

TYPED_TEST(BaselineTest, NestingAndInReader) {
  TypeParam d;
  EXPECT_FALSE(d.in_reader());
  ReadToken a = d.read_lock();
  ReadToken b = d.read_lock();
  EXPECT_TRUE(d.in_reader());
  d.read_unlock(b);
  EXPECT_TRUE(d.in_reader());
  d.read_unlock(a);
  EXPECT_FALSE(d.in_reader());
  bool other_thread_sees = true;
  {
    ReadGuard g(d);
    std::thread([&] { other_thread_sees = d.in_reader(); }).join();
  }
  EXPECT_FALSE(other_thread_sees);
}

TYPED_TEST(BaselineTest, InReaderIsPerTypeNotPerObject) {
  // Documented conservative behaviour: any section of the same type counts.
  TypeParam a, b;
  ReadGuard g(a);
  EXPECT_TRUE(a.in_reader());
  EXPECT_TRUE(b.in_reader());
}

TYPED_TEST(BaselineTest, SynchronizeWaitsForEarlierReader) {
  TypeParam d;
  d.synchronize();  // no readers: returns
  HeldReader<TypeParam> r(d);
  std::atomic<bool> done{false};
  std::thread w([&] {
    d.synchronize();
    done = true;
  });
  std::this_thread::sleep_for(200ms);
  EXPECT_FALSE(done.load()) << "synchronize() returned while an earlier reader was inside";
  r.release();
  w.join();
  EXPECT_TRUE(done.load());
}

TYPED_TEST(BaselineTest, NestedReadWhileWriterWaits) {
  // A nested read_lock() while a synchronize() waits for the outer section must not
  // deadlock (shared_mutex: glibc prefers readers; refcount: never blocks).
  TypeParam d;
  std::promise<void> outer_in, go_nested;
  std::atomic<bool> nested_done{false};
  std::thread r([&] {
    ReadGuard outer(d);
    outer_in.set_value();
    go_nested.get_future().wait();
    { ReadGuard inner(d); }
    nested_done = true;
  });
  outer_in.get_future().wait();
  std::thread w([&] { d.synchronize(); });
  std::this_thread::sleep_for(50ms);  // let the writer start waiting (not required)
  go_nested.set_value();
  r.join();
  w.join();
  EXPECT_TRUE(nested_done.load());
}

struct Flag : Callback {
  std::atomic<int>* runs = nullptr;
};

TYPED_TEST(BaselineTest, CallRunsAfterGracePeriodNotInsideSection) {
  TypeParam d;
  std::atomic<int> runs{0};
  Flag f;
  f.runs = &runs;
  f.fn = [](Callback* cb) { static_cast<Flag*>(cb)->runs->fetch_add(1); };
  ReadToken t = d.read_lock();
  d.call(&f);
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(runs.load(), 0) << "callback ran inside the caller's read section";
  d.read_unlock(t);
  d.barrier();
  EXPECT_EQ(runs.load(), 1);
}

TYPED_TEST(BaselineTest, BarrierAndRetire) {
  TypeParam d;
  std::atomic<int> runs{0};
  std::vector<Flag> flags(50);
  for (auto& f : flags) {
    f.runs = &runs;
    f.fn = [](Callback* cb) { static_cast<Flag*>(cb)->runs->fetch_add(1); };
    d.call(&f);
  }
  static std::atomic<int> freed{0};
  freed = 0;
  struct Obj {
    ~Obj() { freed++; }
  };
  hp::sync::retire(d, new Obj);
  d.barrier();
  EXPECT_EQ(runs.load(), 50);
  EXPECT_EQ(freed.load(), 1);
}

TYPED_TEST(BaselineTest, Poll) {
  TypeParam d;
  {
    HeldReader<TypeParam> r(d);
    GpCookie c = d.start_poll();
    std::this_thread::sleep_for(100ms);
    EXPECT_FALSE(d.poll(c));
    r.release();
    EXPECT_TRUE(eventually([&] { return d.poll(c); }));
  }
  GpCookie c2 = d.start_poll();
  d.synchronize();
  EXPECT_TRUE(d.poll(c2));
}

TYPED_TEST(BaselineTest, ProtectsAgainstUseAfterFree) {
  TypeParam d;
  struct Obj {
    std::atomic<int> alive{1};
  };
  std::atomic<Obj*> cur{new Obj};
  std::atomic<bool> stop{false};
  std::atomic<int> bad{0};
  std::vector<std::thread> rs;
  for (int i = 0; i < 2; ++i) {
    rs.emplace_back([&] {
      while (!stop.load(std::memory_order_relaxed)) {
        ReadGuard g(d);
        Obj* p = cur.load(std::memory_order_acquire);
        if (p->alive.load(std::memory_order_relaxed) != 1) bad++;
      }
    });
  }
  auto end = std::chrono::steady_clock::now() + 300ms;
  while (std::chrono::steady_clock::now() < end) {
    Obj* old = cur.exchange(new Obj, std::memory_order_acq_rel);
    d.synchronize();
    old->alive = 0;
    delete old;
  }
  stop = true;
  for (auto& t : rs)
    t.join();
  delete cur.load();
  EXPECT_EQ(bad.load(), 0);
}

TEST(RefcountDomain, CountsReaders) {
  hp::sync::RefcountDomain d;
  EXPECT_EQ(d.readers(), 0);
  ReadToken a = d.read_lock();
  ReadToken b = d.read_lock();
  EXPECT_EQ(d.readers(), 2);
  d.read_unlock(b);
  d.read_unlock(a);
  EXPECT_EQ(d.readers(), 0);
}

template <class D>
void overlapping_readers_do_not_starve(D& d) {
  std::atomic<bool> stop{false};
  std::atomic<int> inside{0};
  auto reader = [&] {
    while (!stop.load()) {
      ReadGuard g(d);
      inside++;
      std::this_thread::sleep_for(2ms);
      inside--;
    }
  };
  std::thread r1(reader);
  std::this_thread::sleep_for(1ms);
  std::thread r2(reader);
  ASSERT_TRUE(eventually([&] { return inside.load() > 0; }));
  std::atomic<bool> done{false};
  std::thread w([&] {
    for (int i = 0; i < 10; ++i)
      d.synchronize();
    done = true;
  });
  bool finished = eventually([&] { return done.load(); });
  stop = true;
  w.join();
  r1.join();
  r2.join();
  EXPECT_TRUE(finished) << "synchronize() starved by overlapping readers";
}

TEST(RwlockDomain, SynchronizeIsNotStarvedByOverlappingReaders) {
  hp::sync::RwlockDomain d;
  overlapping_readers_do_not_starve(d);
}

TEST(RefcountDomain, SynchronizeIsNotStarvedByOverlappingReaders) {
  // Two readers overlap so that some reader is always inside: a single counter would
  // never reach zero. With the index flip, synchronize() waits only for the readers that
  // were inside when it flipped.
  hp::sync::RefcountDomain d;
  std::atomic<bool> stop{false};
  std::atomic<int> inside{0};
  auto reader = [&] {
    while (!stop.load()) {
      ReadGuard g(d);
      inside++;
      std::this_thread::sleep_for(2ms);
      inside--;
    }
  };
  std::thread r1(reader);
  std::this_thread::sleep_for(1ms);
  std::thread r2(reader);
  ASSERT_TRUE(eventually([&] { return inside.load() > 0; }));
  for (int i = 0; i < 10; ++i)
    d.synchronize();  // would hang if starved
  stop = true;
  r1.join();
  r2.join();
}

TEST(RwlockDomain, WriterExcludesReadersDuringSynchronize) {
  // synchronize() takes the exclusive lock: a reader that arrives after it began and
  // before it ended cannot overlap the instant the writer holds the lock, which the
  // writer observes as "no reader inside" once it returns.
  hp::sync::RwlockDomain d;
  std::atomic<int> inside{0};
  std::atomic<bool> stop{false};
  std::thread r([&] {
    while (!stop.load()) {
      ReadGuard g(d);
      inside++;
      inside--;
    }
  });
  for (int i = 0; i < 200; ++i)
    d.synchronize();
  stop = true;
  r.join();
  EXPECT_EQ(inside.load(), 0);
}

}  // namespace
