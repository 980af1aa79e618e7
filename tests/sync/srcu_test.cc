// Srcu and SrcuFast beyond the domain contract (domain_contract_test.cc): per-domain
// in_reader(), grace-period counting and sharing, the index flip (later readers are not
// waited for), down_read/up_read across threads, read sections in signal handlers, fork,
// domain-id reuse, and a short torture run that a broken flavour fails.
#include "sync/srcu.h"

#include <gtest/gtest.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <future>
#include <memory>
#include <thread>
#include <vector>

#include "support/sync_support.h"

namespace {

using namespace std::chrono_literals;
using hp::sync::Callback;
using hp::sync::GpCookie;
using hp::sync::ReadGuard;
using hp::sync::ReadToken;
using hp::test::eventually;
using hp::test::HeldReader;

template <class D>
class SrcuTest : public ::testing::Test {};
using Domains = ::testing::Types<hp::sync::Srcu, hp::sync::SrcuFast>;
TYPED_TEST_SUITE(SrcuTest, Domains);

TYPED_TEST(SrcuTest, InReaderIsPerDomainAndPerThread) {
  TypeParam a, b;
  ReadGuard g(a);
  EXPECT_TRUE(a.in_reader());
  EXPECT_FALSE(b.in_reader());
  bool other_thread_sees = true;
  std::thread([&] { other_thread_sees = a.in_reader(); }).join();
  EXPECT_FALSE(other_thread_sees);
}

TYPED_TEST(SrcuTest, SynchronizeWithoutReaders) {
  TypeParam d;
  auto before = d.completed();
  d.synchronize();
  d.synchronize();
  EXPECT_GE(d.completed(), before + 2);
  // A reader section in between does not stop the next one.
  { ReadGuard g(d); }
  d.synchronize();
}

TYPED_TEST(SrcuTest, SynchronizeDoesNotWaitForLaterReader) {
  TypeParam d;
  std::uint32_t idx0 = d.current_index();
  auto early = std::make_unique<HeldReader<TypeParam>>(d);
  std::atomic<bool> done{false};
  std::thread w([&] {
    d.synchronize();
    done = true;
  });
  // Once the writer has flipped the index it waits for the early reader only.
  ASSERT_TRUE(eventually([&] { return d.current_index() != idx0; }));
  HeldReader<TypeParam> late(d);  // starts after the flip, held until the end of the test
  EXPECT_FALSE(done.load());
  early.reset();
  ASSERT_TRUE(eventually([&] { return done.load(); }))
      << "synchronize() waited for a reader that began after the flip";
  w.join();
  late.release();
}

TYPED_TEST(SrcuTest, UpReadOnAnotherThread) {
  // srcu_down_read/srcu_up_read: the section is begun on one thread and ended on
  // another; separate lock and unlock counts make the sums still balance.
  TypeParam d;
  ReadToken t{};
  std::promise<void> locked, may_exit;
  std::thread owner([&] {
    t = d.down_read();
    locked.set_value();
    may_exit.get_future().wait();
  });
  locked.get_future().wait();
  std::atomic<bool> done{false};
  std::thread w([&] {
    d.synchronize();
    done = true;
  });
  std::this_thread::sleep_for(100ms);
  EXPECT_FALSE(done.load()) << "synchronize() did not wait for the section";
  d.up_read(t);  // on this thread
  EXPECT_FALSE(d.in_reader());
  w.join();
  d.synchronize();
  may_exit.set_value();
  owner.join();  // its lock count is folded into the domain; still balanced
  d.synchronize();
}

TYPED_TEST(SrcuTest, ConcurrentSynchronizeSharesGracePeriods) {
  TypeParam d;
  auto before = d.completed();
  constexpr int kThreads = 4, kEach = 20;
  std::vector<std::thread> ts;
  for (int i = 0; i < kThreads; ++i) {
    ts.emplace_back([&] {
      for (int k = 0; k < kEach; ++k)
        d.synchronize();
    });
  }
  for (auto& t : ts)
    t.join();
  auto gps = d.completed() - before;
  EXPECT_GE(gps, static_cast<std::uint64_t>(kEach));
  EXPECT_LE(gps, static_cast<std::uint64_t>(kThreads * kEach));
}

// Read sections in a signal handler that interrupts this thread's own read_lock() and
// read_unlock() anywhere (int3 mode runs probe handlers from SIGTRAP). A count lost to
// the interleaving would leave the domain with a reader forever: synchronize() hangs.
template <class D>
struct SignalReaders {
  static inline std::atomic<D*> domain{nullptr};
  static inline std::atomic<std::uint64_t> handler_sections{0};
  static inline std::atomic<std::uint64_t> handler_in_reader_wrong{0};
  static void on_signal(int) {
    int saved_errno = errno;
    on_signal_inner();
    errno = saved_errno;
  }
  static void on_signal_inner() {
    D* d = domain.load(std::memory_order_acquire);
    if (!d) return;
    ReadToken a = d->read_lock();
    ReadToken b = d->read_lock();
    if (!d->in_reader()) handler_in_reader_wrong.fetch_add(1, std::memory_order_relaxed);
    d->read_unlock(b);
    d->read_unlock(a);
    handler_sections.fetch_add(1, std::memory_order_relaxed);
  }
};

TYPED_TEST(SrcuTest, ReadSectionsInSignalHandlers) {
  using S = SignalReaders<TypeParam>;
  TypeParam d;
  S::domain = &d;
  struct sigaction sa {};
  struct sigaction old {};
  sa.sa_handler = &S::on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  ASSERT_EQ(sigaction(SIGUSR1, &sa, &old), 0);
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> in_reader_wrong{0};
  std::thread reader([&] {
    while (!stop.load(std::memory_order_relaxed)) {
      ReadToken t = d.read_lock();
      if (!d.in_reader()) in_reader_wrong++;
      d.read_unlock(t);
      if (d.in_reader()) in_reader_wrong++;
    }
  });
  pthread_t h = reader.native_handle();
  for (int i = 0; i < 3000; ++i) {
    pthread_kill(h, SIGUSR1);
    if ((i & 63) == 0) std::this_thread::yield();
  }
  stop = true;
  reader.join();
  std::atomic<bool> done{false};
  std::thread w([&] {
    d.synchronize();
    done = true;
  });
  bool finished = eventually([&] { return done.load(); });
  EXPECT_TRUE(finished) << "a count was lost: synchronize() waits for a reader that left";
  if (!finished) {
    w.detach();  // the domain is broken; do not hang the test binary
    std::quick_exit(1);
  }
  w.join();
  sigaction(SIGUSR1, &old, nullptr);
  S::domain = nullptr;
  EXPECT_GT(S::handler_sections.load(), 0u);
  EXPECT_EQ(S::handler_in_reader_wrong.load(), 0u);
  EXPECT_EQ(in_reader_wrong.load(), 0u);
}

// fork() while another thread is inside a section and a third waits for it in
// synchronize() (holding the grace-period lock): neither exists in the child, whose
// synchronize() must not wait for them. (No call()/barrier() here: the child would start
// a worker thread, which ThreadSanitizer does not support after a multithreaded fork.)
TYPED_TEST(SrcuTest, ForkChildDoesNotWaitForGoneThreads) {
  TypeParam d;
  HeldReader<TypeParam> r(d);
  std::atomic<bool> done{false};
  std::thread w([&] {
    d.synchronize();
    done = true;
  });
  std::this_thread::sleep_for(50ms);  // w now very likely waits inside synchronize()
  pid_t pid = fork();
  if (pid == 0) {
    alarm(10);  // a hang kills the child with SIGALRM
    if (d.in_reader()) _exit(1);
    d.synchronize();
    d.synchronize();
    ReadToken t = d.read_lock();
    if (!d.in_reader()) _exit(2);
    d.read_unlock(t);
    d.synchronize();
    _exit(0);
  }
  ASSERT_GT(pid, 0);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
      << "fork child failed or hung (status " << status << ")";
  EXPECT_FALSE(done.load());
  r.release();
  w.join();
  EXPECT_TRUE(done.load());
}

TYPED_TEST(SrcuTest, DomainIdReuseStartsClean) {
  std::uint32_t n_threads = 3;
  std::vector<std::thread> keep;
  std::promise<void> stop;
  std::shared_future<void> stop_f = stop.get_future().share();
  for (int round = 0; round < 5; ++round) {
    auto d = std::make_unique<TypeParam>();
    // Leave counts in this thread's slot and in long-lived threads' slots.
    for (int k = 0; k < 10; ++k) {
      ReadGuard g(*d);
    }
    if (round == 0) {
      std::atomic<std::uint32_t> finished{0};
      for (std::uint32_t i = 0; i < n_threads; ++i) {
        keep.emplace_back([&, dp = d.get()] {
          for (int k = 0; k < 10; ++k) {
            ReadGuard g(*dp);
          }
          finished++;
          stop_f.wait();
        });
      }
      // Their sections end before the domain goes away; the threads stay alive.
      ASSERT_TRUE(eventually([&] { return finished.load() == n_threads; }));
    }
    d.reset();
    TypeParam fresh;  // likely the same id
    EXPECT_FALSE(fresh.in_reader());
    fresh.synchronize();
    ReadToken t = fresh.read_lock();
    EXPECT_TRUE(fresh.in_reader());
    fresh.read_unlock(t);
    EXPECT_FALSE(fresh.in_reader());
  }
  stop.set_value();
  for (auto& t : keep)
    t.join();
}

TYPED_TEST(SrcuTest, ManyDomainsEachKeepTheirSlot) {
  std::vector<std::unique_ptr<TypeParam>> ds;
  for (int i = 0; i < 70; ++i)
    ds.push_back(std::make_unique<TypeParam>());
  std::vector<ReadToken> tokens;
  for (auto& d : ds)
    tokens.push_back(d->read_lock());
  for (auto& d : ds)
    EXPECT_TRUE(d->in_reader());
  for (std::size_t i = 0; i < ds.size(); ++i)
    ds[i]->read_unlock(tokens[i]);
  for (auto& d : ds) {
    EXPECT_FALSE(d->in_reader());
    d->synchronize();
  }
}

// Torture: readers check that the object they reach is never poisoned; the writer
// replaces it, waits for a grace period (synchronize or retire), poisons and frees.
struct Node {
  static constexpr std::uint64_t kAlive = 0x600d600d600d600dull;
  static constexpr std::uint64_t kDead = 0xdeaddeaddeaddeadull;
  std::atomic<std::uint64_t> magic{kAlive};
  std::uint64_t value = 0;
};

// `leak`: poison retired nodes but keep them allocated until the end (for the broken
// flavour, whose readers would otherwise touch freed memory).
template <class D>
std::uint64_t torture(D& d, std::chrono::milliseconds how_long, bool leak = false) {
  std::vector<Node*> graveyard;
  auto bury = [&](Node* p) {
    p->magic.store(Node::kDead, std::memory_order_relaxed);
    if (leak) {
      graveyard.push_back(p);
    } else {
      delete p;
    }
  };
  std::atomic<Node*> cur{new Node};
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> bad{0}, reads{0};
  std::vector<std::thread> readers;
  for (int i = 0; i < 3; ++i) {
    readers.emplace_back([&, i] {
      std::uint64_t n = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        ReadGuard g(d);
        Node* p = cur.load(std::memory_order_acquire);
        if (p->magic.load(std::memory_order_relaxed) != Node::kAlive) bad++;
        if ((++n & 63) == 0 && i == 0) std::this_thread::yield();
        {
          ReadGuard nested(d);
          for (int spin = 0; spin < 200; ++spin)
            std::atomic_signal_fence(std::memory_order_seq_cst);
        }
        if (p->magic.load(std::memory_order_relaxed) != Node::kAlive) bad++;
      }
      reads += n;
    });
  }
  auto end = std::chrono::steady_clock::now() + how_long;
  std::uint64_t gen = 0;
  while (std::chrono::steady_clock::now() < end) {
    auto* n = new Node;
    n->value = ++gen;
    Node* old = cur.exchange(n, std::memory_order_acq_rel);
    if (gen & 1 || leak) {
      d.synchronize();
      bury(old);
    } else {
      hp::sync::retire(d, old, [](Node* p) {
        p->magic.store(Node::kDead, std::memory_order_relaxed);
        delete p;
      });
    }
  }
  stop = true;
  for (auto& t : readers)
    t.join();
  d.barrier();
  delete cur.load();
  for (Node* p : graveyard)
    delete p;
  EXPECT_GT(reads.load(), 0u);
  EXPECT_GT(gen, 0u);
  return bad.load();
}

TYPED_TEST(SrcuTest, ShortTorture) {
  TypeParam d;
  EXPECT_EQ(torture(d, 500ms), 0u);
}

// A deliberately broken flavour (no grace period at all) must make the torture fail,
// which shows that the torture can fail (STYLE.md item 11).
struct BrokenDomain {
  hp::sync::SrcuFast inner;
  ReadToken read_lock() noexcept { return inner.read_lock(); }
  void read_unlock(ReadToken t) noexcept { inner.read_unlock(t); }
  bool in_reader() const noexcept { return inner.in_reader(); }
  void synchronize() {}
  void call(Callback* cb) { cb->fn(cb); }
  void barrier() {}
  GpCookie start_poll() { return {}; }
  bool poll(GpCookie) { return true; }
};
static_assert(hp::sync::ReclaimingDomain<BrokenDomain>);

TEST(SrcuTorture, BrokenFlavourIsCaught) {
  BrokenDomain d;
  std::uint64_t bad = 0;
  for (int round = 0; round < 20 && bad == 0; ++round)
    bad += torture(d, 250ms, /*leak=*/true);
  EXPECT_GT(bad, 0u) << "the torture test cannot detect a missing grace period";
}

}  // namespace
