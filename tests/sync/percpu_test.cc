// CPU helpers, per-CPU arrays, the rseq per-CPU add (no update lost under preemption and
// migration), fences, membarrier, and the per-thread slot registry (ids, growth,
// folding of exited threads, reuse without stale counts).
#include "sync/percpu.h"

#include <gtest/gtest.h>
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

namespace {

using hp::sync::PerCpu;
using hp::sync::PerCpuCounter;
using hp::sync::detail::SlotId;
using hp::sync::detail::thread_slot;
using hp::sync::detail::thread_slot_if_present;

TEST(Percpu, PossibleCpus) {
  unsigned n = hp::sync::possible_cpus();
  EXPECT_GE(n, 1u);
  EXPECT_GE(n, static_cast<unsigned>(sysconf(_SC_NPROCESSORS_ONLN)));
}

TEST(Percpu, CurrentCpuFollowsAffinity) {
  cpu_set_t orig;
  ASSERT_EQ(sched_getaffinity(0, sizeof orig, &orig), 0);
  unsigned checked = 0;
  for (unsigned cpu = 0; cpu < hp::sync::possible_cpus() && cpu < CPU_SETSIZE; ++cpu) {
    if (!CPU_ISSET(cpu, &orig)) continue;
    std::thread([&, cpu] {
      cpu_set_t one;
      CPU_ZERO(&one);
      CPU_SET(cpu, &one);
      ASSERT_EQ(pthread_setaffinity_np(pthread_self(), sizeof one, &one), 0);
      sched_yield();  // make sure we migrated
      EXPECT_EQ(hp::sync::current_cpu(), cpu);
      EXPECT_EQ(sched_getcpu(), static_cast<int>(cpu));
    }).join();
    ++checked;
  }
  EXPECT_GE(checked, 1u);
  EXPECT_LT(hp::sync::current_cpu(), hp::sync::possible_cpus());
}

// glibc registers an rseq area for every thread when the kernel has rseq, unless the
// tunable glibc.pthread.rseq=0 turns it off; current_cpu() and percpu_add() rely on it
// (and fall back to sched_getcpu() and an atomic add without it).
bool rseq_disabled_by_tunable() {
  const char* t = std::getenv("GLIBC_TUNABLES");
  return t && std::strstr(t, "glibc.pthread.rseq=0") != nullptr;
}

bool kernel_has_rseq() {
  // An invalid registration (length 0): EINVAL if the system call exists, ENOSYS if not.
  errno = 0;
  long r = syscall(SYS_rseq, nullptr, 0, 0, 0);
  return !(r == -1 && errno == ENOSYS);
}

// The cpu_id of this thread's registered area agrees with sched_getcpu(). The thread may
// migrate between the two reads: retry until both reads of cpu_id bracket an agreeing
// sched_getcpu(), which a registered area does within a few tries.
void expect_rseq_cpu_id_tracks_this_thread() {
  bool agreed = false;
  for (int i = 0; i < 1000 && !agreed; ++i) {
    auto before = static_cast<std::int32_t>(hp::sync::detail::rseq_area()->cpu_id);
    int cpu = sched_getcpu();
    auto after = static_cast<std::int32_t>(hp::sync::detail::rseq_area()->cpu_id);
    agreed = before == after && before == cpu;
  }
  EXPECT_TRUE(agreed) << "the rseq area's cpu_id never matched sched_getcpu(): the area "
                         "at __rseq_offset is not the one the kernel updates";
}

TEST(Percpu, RseqIsRegisteredByGlibc) {
  if (!kernel_has_rseq()) GTEST_SKIP() << "this kernel has no rseq system call";
  if (rseq_disabled_by_tunable())
    GTEST_SKIP() << "GLIBC_TUNABLES has glibc.pthread.rseq=0: glibc registers no rseq area";
  // glibc >= 2.35 exports the registration: a size of at least the original 20-byte ABI
  // (cpu_id_start, cpu_id, rseq_cs, flags) and the area's offset from the thread pointer.
  EXPECT_GE(__rseq_size, 20u) << "glibc did not register rseq although the kernel has it";
  EXPECT_NE(__rseq_offset, 0);
  EXPECT_TRUE(hp::sync::rseq_available());
  EXPECT_GE(static_cast<std::int32_t>(hp::sync::detail::rseq_area()->cpu_id), 0)
      << "cpu_id is RSEQ_CPU_ID_UNINITIALIZED (-1): the area is not registered";
  expect_rseq_cpu_id_tracks_this_thread();
  // Every new thread is registered too (glibc does it in pthread_create's start routine).
  bool thread_available = false;
  std::thread([&] {
    thread_available = hp::sync::rseq_available();
    expect_rseq_cpu_id_tracks_this_thread();
  }).join();
  EXPECT_TRUE(thread_available);
  // current_cpu() reads the same field.
  unsigned cpu = hp::sync::current_cpu();
  EXPECT_LT(cpu, hp::sync::possible_cpus());
}

TEST(Percpu, ElementsOnSeparateCacheLines) {
  PerCpu<std::uint64_t> p;
  EXPECT_EQ(p.size(), hp::sync::possible_cpus());
  if (p.size() >= 2) {
    auto d = reinterpret_cast<std::uintptr_t>(&p[1]) - reinterpret_cast<std::uintptr_t>(&p[0]);
    EXPECT_GE(d, hp::kCacheLine);
  }
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(&p[0]) % hp::kCacheLine, 0u);
  for (unsigned c = 0; c < p.size(); ++c)
    EXPECT_EQ(p[c], 0u);
  p.local() = 7;
  std::uint64_t sum = 0;
  for (unsigned c = 0; c < p.size(); ++c)
    sum += p[c];
  EXPECT_EQ(sum, 7u);
}

TEST(Percpu, PercpuAddLosesNoUpdate) {
  // More threads than CPUs, so threads are preempted and migrated inside the sequence;
  // the restart must make every add count exactly once.
  PerCpuCounter c;
  constexpr int kThreads = 6;
  constexpr int kAdds = 200000;
  std::vector<std::thread> ts;
  for (int i = 0; i < kThreads; ++i) {
    ts.emplace_back([&, i] {
      for (int k = 0; k < kAdds; ++k) {
        hp::sync::percpu_add(c, 3);
        hp::sync::percpu_add(c, -1);
        if ((k & 1023) == 0 && (i & 1)) sched_yield();
      }
    });
  }
  for (auto& t : ts)
    t.join();
  EXPECT_EQ(hp::sync::percpu_sum(c), std::int64_t{2} * kThreads * kAdds);
}

// Store buffering (Dekker): thread A stores x, then `fence_a`, then loads y; thread B
// stores y, then `fence_b`, then loads x. Returns how many of `rounds` rounds saw both
// loads return 0, the outcome a full barrier on both sides forbids and plain x86 allows.
// How often plain x86 shows it depends on the machine: up to a few in a thousand rounds
// on bare metal, as rarely as 0-15 in 20,000 on a busy 2-vCPU virtual machine, so a
// missing barrier is caught often on the former and only sometimes on the latter.
// A round-dependent delay of 0-63 steps before a thread's store, so that over the rounds
// the two threads' stores and loads overlap in every alignment (the stores being in
// flight at the same time is what makes the forbidden outcome possible).
inline void skew(int seed) {
  for (int k = seed % 64; k > 0; --k)
    hp::sync::compiler_barrier();
}

template <class FenceA, class FenceB>
int store_buffering_both_zero(int rounds, FenceA fence_a, FenceB fence_b) {
  std::atomic<int> x{0}, y{0};
  std::atomic<int> go{0}, done{0};
  int r1 = 0, r2 = 0;
  int both_zero = 0;
  std::thread other([&] {
    for (int i = 1; i <= rounds; ++i) {
      for (int spin = 0; go.load(std::memory_order_acquire) != i; ++spin) {
        if (spin > 100) sched_yield();
      }
      skew(i * 7919);
      y.store(1, std::memory_order_relaxed);
      fence_b();
      r2 = x.load(std::memory_order_relaxed);
      done.store(i, std::memory_order_release);
    }
  });
  for (int i = 1; i <= rounds; ++i) {
    x.store(0, std::memory_order_relaxed);
    y.store(0, std::memory_order_relaxed);
    go.store(i, std::memory_order_release);
    skew(i * 104729);
    x.store(1, std::memory_order_relaxed);
    fence_a();
    r1 = y.load(std::memory_order_relaxed);
    for (int spin = 0; done.load(std::memory_order_acquire) != i; ++spin) {
      if (spin > 100) sched_yield();
    }
    if (r1 == 0 && r2 == 0) ++both_zero;
  }
  other.join();
  return both_zero;
}

// With full_fence() on both sides, the two threads can never both read 0.
TEST(Percpu, FullFenceForbidsStoreBuffering) {
  EXPECT_EQ(store_buffering_both_zero(
                20000, [] { hp::sync::full_fence(); }, [] { hp::sync::full_fence(); }),
            0);
}

// The asymmetric pairing the fast read sides rely on: the reader has only a compiler
// barrier, the writer calls membarrier_all(), which runs a full barrier on the reader's
// CPU if it is running (or it has passed a context switch). Both reading 0 is forbidden
// as with two fences. membarrier_all() also works from a thread other than the first
// caller (registration is per process).
TEST(Percpu, MembarrierPairsWithCompilerBarrier) {
  EXPECT_EQ(store_buffering_both_zero(
                10000, [] { hp::sync::compiler_barrier(); }, [] { hp::sync::membarrier_all(); }),
            0);
  int both_zero = -1;
  std::thread t([&] {
    both_zero = store_buffering_both_zero(
        2000, [] { hp::sync::membarrier_all(); }, [] { hp::sync::compiler_barrier(); });
  });
  t.join();
  EXPECT_EQ(both_zero, 0);
}

TEST(ThreadSlots, IdsAreReusedAndStartClean) {
  std::uint32_t first;
  {
    SlotId a;
    first = a.get();
    auto* s = thread_slot(a.get());
    hp::sync::detail::slot_inc(s->lock[0], std::memory_order_relaxed);
    hp::sync::detail::slot_inc(s->lock[1], std::memory_order_relaxed);
    EXPECT_EQ(a.sum_locks(0), 1u);
    EXPECT_EQ(a.sum_locks(1), 1u);
    EXPECT_EQ(a.sum_unlocks(0), 0u);
  }
  SlotId b;
  EXPECT_EQ(b.get(), first);  // the smallest free id comes back first
  EXPECT_EQ(b.sum_locks(0), 0u);
  EXPECT_EQ(b.sum_locks(1), 0u);
  const auto* s = thread_slot_if_present(b.get());
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->lock[0].load(), 0u);
}

TEST(ThreadSlots, ExitedThreadsAreFoldedExactly) {
  SlotId id;
  std::vector<std::thread> ts;
  for (int i = 0; i < 4; ++i) {
    ts.emplace_back([&, i] {
      auto* s = thread_slot(id.get());
      for (int k = 0; k <= i; ++k)
        hp::sync::detail::slot_inc(s->lock[0], std::memory_order_relaxed);
      hp::sync::detail::slot_inc(s->unlock[1], std::memory_order_release);
    });
  }
  for (auto& t : ts)
    t.join();
  EXPECT_EQ(id.sum_locks(0), 1u + 2u + 3u + 4u);
  EXPECT_EQ(id.sum_unlocks(1), 4u);
  EXPECT_EQ(id.sum_locks(1), 0u);
}

TEST(ThreadSlots, TableGrowsAndKeepsCounts) {
  std::vector<std::unique_ptr<SlotId>> ids;
  ids.push_back(std::make_unique<SlotId>());
  auto* s0 = thread_slot(ids[0]->get());
  hp::sync::detail::slot_inc(s0->lock[0], std::memory_order_relaxed);
  for (int i = 0; i < 100; ++i)
    ids.push_back(std::make_unique<SlotId>());
  for (auto& id : ids) {
    auto* s = thread_slot(id->get());  // grows this thread's table
    hp::sync::detail::slot_inc(s->unlock[0], std::memory_order_release);
  }
  EXPECT_EQ(ids[0]->sum_locks(0), 1u);  // survived the moves
  EXPECT_EQ(ids[0]->sum_unlocks(0), 1u);
  EXPECT_EQ(ids[50]->sum_unlocks(0), 1u);
}

TEST(ThreadSlots, ForkChildKeepsOnlyItsOwnThread) {
  SlotId id;
  std::atomic<bool> stop{false};
  std::atomic<bool> ready{false};
  std::thread holder([&] {
    auto* s = thread_slot(id.get());
    hp::sync::detail::slot_inc(s->lock[0], std::memory_order_relaxed);  // "inside" forever
    ready = true;
    while (!stop.load())
      std::this_thread::yield();
  });
  while (!ready.load())
    std::this_thread::yield();
  EXPECT_EQ(id.sum_locks(0), 1u);
  pid_t pid = fork();
  if (pid == 0) {
    // The holder does not exist in the child: its count is gone.
    _exit(id.sum_locks(0) == 0 ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  stop = true;
  holder.join();
}

}  // namespace
