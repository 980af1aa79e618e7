// The agent's operator new and delete (src/agent/own_heap.cc), compiled into this test so
// that they are this program's too: threads race through allocations of every class and
// of mappings of their own, aligned and not, each block filled with its owner's pattern and
// checked before it is freed; a fork in the middle leaves the child a heap it can use.
// Built with -DHP_OWN_HEAP_UNLOCKED (own_heap_broken_test), the same races without the
// mutex must fail, which shows that the checks see a broken heap.
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <random>
#include <thread>
#include <vector>

namespace {

struct Block {
  unsigned char* p = nullptr;
  std::size_t n = 0;
  std::size_t align = 0;
  unsigned char fill = 0;
};

Block make(std::mt19937& rng, unsigned char fill) {
  Block b;
  const int kind = static_cast<int>(rng() % 16);
  b.n = kind < 12 ? 1 + rng() % (std::size_t{32} << kind) : 70'000 + rng() % 200'000;
  b.align = rng() % 4 == 0 ? (std::size_t{16} << (rng() % 9)) : 0;  // 16 .. 4096
  b.p = static_cast<unsigned char*>(b.align ? ::operator new(b.n, std::align_val_t(b.align))
                                            : ::operator new(b.n));
  b.fill = fill;
  std::memset(b.p, fill, b.n);
  return b;
}

// False when the block is not all its owner's pattern or not aligned as asked.
bool intact(const Block& b) {
  if (b.align && reinterpret_cast<std::uintptr_t>(b.p) % b.align != 0) return false;
  if (reinterpret_cast<std::uintptr_t>(b.p) % 16 != 0) return false;
  for (std::size_t i = 0; i < b.n; i += 61)
    if (b.p[i] != b.fill) return false;
  return b.p[b.n - 1] == b.fill;
}

void drop(const Block& b) {
  if (b.align)
    ::operator delete(b.p, std::align_val_t(b.align));
  else
    ::operator delete(b.p);
}

// `threads` threads, each keeping up to 64 live blocks, `rounds` allocations each; the
// number of blocks found overwritten by another thread.
long race(int threads, int rounds) {
  std::atomic<long> bad{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t) {
    ts.emplace_back([t, rounds, &bad] {
      std::mt19937 rng(static_cast<unsigned>(t) * 7919u + 1);
      std::vector<Block> live;
      const auto fill = static_cast<unsigned char>(0x11 * (t + 1));
      for (int i = 0; i < rounds; ++i) {
        if (live.size() < 64 && (live.empty() || rng() % 3 != 0)) {
          live.push_back(make(rng, fill));
        } else {
          const std::size_t k = rng() % live.size();
          if (!intact(live[k])) bad.fetch_add(1);
          drop(live[k]);
          live[k] = live.back();
          live.pop_back();
        }
      }
      for (const Block& b : live) {
        if (!intact(b)) bad.fetch_add(1);
        drop(b);
      }
    });
  }
  for (auto& t : ts)
    t.join();
  return bad.load();
}

#ifndef HP_OWN_HEAP_UNLOCKED

TEST(OwnHeap, ThreadsRacingThroughEveryClassKeepTheirBlocks) {
  EXPECT_EQ(race(4, 20'000), 0);
}

TEST(OwnHeap, NothrowAndArraysAndNullDelete) {
  void* p = ::operator new(100, std::nothrow);
  ASSERT_NE(p, nullptr);
  ::operator delete(p, std::nothrow);
  auto* a = new int[1000]();
  EXPECT_EQ(a[999], 0);
  delete[] a;
  ::operator delete(nullptr);
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
  // Out of memory: nothrow gives null, the throwing form throws. (A sanitizer's allocator
  // reports such a size as an error instead.)
  EXPECT_EQ(::operator new (std::size_t{1} << 62, std::nothrow), nullptr);
  EXPECT_THROW((void)::operator new (std::size_t{1} << 62), std::bad_alloc);
#endif
}

// A fork while other threads allocate: the child's heap works (its mutex is a new one,
// whatever thread held the parent's).
TEST(OwnHeap, ForkWhileThreadsAllocateLeavesTheChildAHeap) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "sanitizer builds keep the sanitizer's allocator (own_heap.cc is empty), "
                  "whose locks a child forked while threads allocate may find held";
#endif
  std::atomic<bool> stop{false};
  std::vector<std::thread> ts;
  for (int t = 0; t < 3; ++t) {
    ts.emplace_back([t, &stop] {
      std::mt19937 rng(static_cast<unsigned>(t) + 5);
      while (!stop.load(std::memory_order_relaxed))
        drop(make(rng, 0x5a));
    });
  }
  for (int i = 0; i < 50; ++i) {
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      std::mt19937 rng(99);
      std::vector<Block> v;
      for (int k = 0; k < 200; ++k)
        v.push_back(make(rng, 0x33));
      for (const Block& b : v)
        if (!intact(b)) ::_exit(2);
      ::_exit(0);
    }
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFEXITED(status)) << "child " << i << " status " << status;
    ASSERT_EQ(WEXITSTATUS(status), 0) << "child " << i;
  }
  stop = true;
  for (auto& t : ts)
    t.join();
}

#else

// Without the mutex two threads take the same free block or bump the same chunk: blocks
// are found overwritten, or the heap falls over (its header check traps, a free list
// points at garbage). Run in a child, which must not come back clean.
TEST(OwnHeapBroken, RacesWithoutTheMutexAreSeen) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "sanitizer builds keep the sanitizer's operator new (own_heap.cc is empty)";
#endif
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    // Until a race is seen, for at most a minute (on a loaded machine the threads overlap
    // less often; a broken heap shows within the first race when they do).
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (std::chrono::steady_clock::now() < end)
      if (race(4, 20'000) != 0) ::_exit(1);
    ::_exit(0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  EXPECT_FALSE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
      << "a minute of races without the mutex found no overwritten block";
}

#endif

}  // namespace
