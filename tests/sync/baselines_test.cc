// RefcountDomain and RwlockDomain beyond the domain contract (domain_contract_test.cc):
// synchronize() not starved by overlapping readers, the rwlock's writer exclusion, and
// the per-type in_reader() documented in baselines.h.
#include "sync/baselines.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "support/sync_support.h"

namespace {

using namespace std::chrono_literals;
using hp::sync::ReadGuard;
using hp::sync::ReadToken;
using hp::test::eventually;

template <class D>
class BaselineTest : public ::testing::Test {};
using Domains = ::testing::Types<hp::sync::RefcountDomain, hp::sync::RwlockDomain>;
TYPED_TEST_SUITE(BaselineTest, Domains);

TYPED_TEST(BaselineTest, InReaderIsPerTypeNotPerObject) {
  // Documented conservative behaviour: any section of the same type counts.
  TypeParam a, b;
  ReadGuard g(a);
  EXPECT_TRUE(a.in_reader());
  EXPECT_TRUE(b.in_reader());
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
  int done = 0;
  hp::test::finish_within(
      "10 synchronize() calls among overlapping readers",
      [&] {
        for (; done < 10; ++done)
          d.synchronize();
      },
      [&] {
        return std::to_string(done) + " returned; readers inside: " + std::to_string(d.readers());
      });
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
