// PercpuRwsem beyond the domain contract (domain_contract_test.cc): per-object in_reader(),
// reader/writer and writer/writer exclusion (checked on plain data, so ThreadSanitizer
// sees the happens-before edges), try_lock_shared, the gate, blocked readers, nesting
// while a writer waits in lock(), fork.
#include "sync/percpu_rwsem.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <future>
#include <mutex>
#include <shared_mutex>
#include <thread>
#include <vector>

#include "support/sync_support.h"

namespace {

using namespace std::chrono_literals;
using hp::sync::PercpuRwsem;
using hp::sync::ReadGuard;
using hp::sync::ReadToken;
using hp::test::eventually;
using HeldReader = hp::test::HeldReader<PercpuRwsem>;

TEST(PercpuRwsem, NestingAndInReaderExactPerObjectAndThread) {
  PercpuRwsem a, b;
  EXPECT_FALSE(a.in_reader());
  ReadToken t1 = a.read_lock();
  ReadToken t2 = a.read_lock();
  EXPECT_TRUE(a.in_reader());
  EXPECT_FALSE(b.in_reader());
  bool other = true;
  std::thread([&] { other = a.in_reader(); }).join();
  EXPECT_FALSE(other);
  a.read_unlock(t2);
  EXPECT_TRUE(a.in_reader());
  a.read_unlock(t1);
  EXPECT_FALSE(a.in_reader());
}

TEST(PercpuRwsem, StdLockAdapters) {
  PercpuRwsem s;
  {
    std::shared_lock l(s);
    EXPECT_TRUE(s.in_reader());
  }
  {
    std::unique_lock l(s);
    EXPECT_TRUE(s.writer_active());
  }
  EXPECT_FALSE(s.writer_active());
  EXPECT_TRUE(s.try_lock_shared());
  s.unlock_shared();
}

TEST(PercpuRwsem, TryLockSharedFailsWhileWriterHolds) {
  PercpuRwsem s;
  s.lock();
  bool got = true;
  std::thread([&] {
    got = s.try_lock_shared();
    if (got) s.unlock_shared();
  }).join();
  EXPECT_FALSE(got);
  EXPECT_FALSE(s.in_reader());
  s.unlock();
  std::thread([&] {
    got = s.try_lock_shared();
    if (got) s.unlock_shared();
  }).join();
  EXPECT_TRUE(got);
}

TEST(PercpuRwsem, WriterWaitsForReaderAndBlocksNewOnes) {
  PercpuRwsem s;
  auto r = std::make_unique<HeldReader>(s);
  std::atomic<bool> locked{false};
  std::thread w([&] {
    s.lock();
    locked = true;
    std::this_thread::sleep_for(100ms);
    s.unlock();
  });
  ASSERT_TRUE(eventually([&] { return s.writer_active(); }));
  std::this_thread::sleep_for(100ms);
  EXPECT_FALSE(locked.load()) << "writer got the lock while a reader was inside";
  // A new reader may neither get in (try) nor block the writer that waits.
  std::thread([&] {
    bool got = s.try_lock_shared();
    if (got) s.unlock_shared();
    // Either the writer had not set block_ yet, or it had; both are allowed, but while
    // the writer waits the reader must not be counted afterwards (it undid its count).
  }).join();
  r.reset();
  ASSERT_TRUE(eventually([&] { return locked.load(); }));
  // While the writer holds: a blocking reader waits until it unlocks.
  std::atomic<bool> reader_in{false};
  std::thread late([&] {
    ReadGuard g(s);
    reader_in = true;
  });
  w.join();
  late.join();
  EXPECT_TRUE(reader_in.load());
}

TEST(PercpuRwsem, BlockedReaderWaitsForWriter) {
  PercpuRwsem s;
  s.lock();
  std::atomic<bool> in{false};
  std::thread r([&] {
    ReadGuard g(s);
    in = true;
  });
  std::this_thread::sleep_for(150ms);
  EXPECT_FALSE(in.load()) << "reader got in while the writer held the lock";
  s.unlock();
  r.join();
  EXPECT_TRUE(in.load());
}

TEST(PercpuRwsem, NestedReadWhileWriterWaitsDoesNotDeadlock) {
  PercpuRwsem s;
  std::promise<void> outer_in, go_nested;
  std::atomic<bool> nested_done{false};
  std::thread r([&] {
    ReadGuard outer(s);
    outer_in.set_value();
    go_nested.get_future().wait();
    {
      ReadGuard inner(s);  // the writer has set block_ and waits for `outer`
      EXPECT_TRUE(s.try_lock_shared());
      s.unlock_shared();
    }
    nested_done = true;
  });
  outer_in.get_future().wait();
  std::thread w([&] {
    s.lock();
    s.unlock();
  });
  ASSERT_TRUE(eventually([&] { return s.writer_active(); }));
  std::this_thread::sleep_for(50ms);  // the writer very likely waits in readers_gone()
  go_nested.set_value();
  r.join();
  w.join();
  EXPECT_TRUE(nested_done.load());
}

TEST(PercpuRwsem, ReaderWriterExclusionOnPlainData) {
  PercpuRwsem s;
  // Plain (non-atomic) data: correct exclusion and happens-before edges keep
  // ThreadSanitizer quiet and the invariant a == b intact.
  std::uint64_t a = 0, b = 0;
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> violations{0}, reads{0};
  std::vector<std::thread> ts;
  for (int i = 0; i < 2; ++i) {
    ts.emplace_back([&] {
      std::uint64_t n = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        ReadGuard g(s);
        std::uint64_t x = a;
        std::atomic_signal_fence(std::memory_order_seq_cst);
        std::uint64_t y = b;
        if (x != y) violations++;
        ++n;
      }
      reads += n;
    });
  }
  std::uint64_t writes = 0;
  auto end = std::chrono::steady_clock::now() + 400ms;
  while (std::chrono::steady_clock::now() < end) {
    std::unique_lock l(s);
    ++a;
    std::this_thread::yield();
    ++b;
    ++writes;
  }
  stop = true;
  for (auto& t : ts)
    t.join();
  EXPECT_EQ(violations.load(), 0u);
  EXPECT_EQ(a, writes);
  EXPECT_GT(reads.load(), 0u);
}

TEST(PercpuRwsem, WriterWriterExclusion) {
  PercpuRwsem s;
  std::uint64_t counter = 0;  // plain: only writers touch it
  std::vector<std::thread> ts;
  for (int i = 0; i < 3; ++i) {
    ts.emplace_back([&] {
      for (int k = 0; k < 200; ++k) {
        s.lock();
        std::uint64_t v = counter;
        std::this_thread::yield();
        counter = v + 1;
        s.unlock();
      }
    });
  }
  for (auto& t : ts)
    t.join();
  EXPECT_EQ(counter, 600u);
  EXPECT_FALSE(s.writer_active());
}

// After a synchronize() the write side is idle again and readers take the fast path
// (that synchronize() waits for earlier readers is in the domain contract).
TEST(PercpuRwsem, SynchronizeLeavesNoWriterBehind) {
  PercpuRwsem s;
  s.synchronize();
  {
    HeldReader r(s);
    std::thread w([&] { s.synchronize(); });
    ASSERT_TRUE(eventually([&] { return s.writer_active(); }));
    r.release();
    w.join();
  }
  EXPECT_FALSE(s.writer_active());
  ReadGuard g(s);
  EXPECT_TRUE(s.in_reader());
}

// fork() while another thread holds the write side and a reader waits for it: in the
// child neither exists, so reading, writing and synchronize() must all work.
TEST(PercpuRwsem, ForkChildResetsGoneWriter) {
  PercpuRwsem s;
  std::promise<void> locked, release;
  std::thread w([&] {
    s.lock();
    locked.set_value();
    release.get_future().wait();
    s.unlock();
  });
  locked.get_future().wait();
  std::thread r([&] { ReadGuard g(s); });  // blocks until the writer unlocks
  std::this_thread::sleep_for(50ms);
  pid_t pid = fork();
  if (pid == 0) {
    alarm(10);
    if (s.writer_active()) _exit(1);
    {
      ReadGuard g(s);
      if (!s.in_reader()) _exit(2);
    }
    if (!s.try_lock_shared()) _exit(3);
    s.unlock_shared();
    s.lock();
    s.unlock();
    s.synchronize();
    _exit(0);
  }
  ASSERT_GT(pid, 0);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
      << "fork child failed or hung (status " << status << ")";
  release.set_value();
  w.join();
  r.join();
}

// The forking thread holds the write side: the child still holds it and can release it.
TEST(PercpuRwsem, ForkChildKeepsOwnWriteLock) {
  PercpuRwsem s;
  s.lock();
  pid_t pid = fork();
  if (pid == 0) {
    alarm(10);
    if (!s.writer_active()) _exit(1);
    if (s.try_lock_shared()) _exit(2);
    s.unlock();
    if (!s.try_lock_shared()) _exit(3);
    s.unlock_shared();
    _exit(0);
  }
  ASSERT_GT(pid, 0);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
  s.unlock();
}

}  // namespace
