// The trampolines' inline fast paths (core/x86_64/trampoline.h, FastEntry and
// FastReturn): a tasks-trace site whose array holds one plain entry handler runs it from
// the entry trampoline, and a return of one return consumer runs from the return
// trampoline, without calling the dispatcher. Each test puts a hit in one of the states the
// template must hand to the dispatcher (or handle itself) and checks what only a correct hand-off
// gives: the reader word untouched by a nested hit, a recursion miss, a pending rehijack
// done, a sleeping writer woken from the trampoline.
#include <dlfcn.h>
#include <execinfo.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>

#include <gtest/gtest.h>

#include "hotprobe/probe.h"
#include "sync/tasks_trace.h"

extern "C" {
std::atomic<long> hp_fe_sink;

__attribute__((noinline, used)) long hp_fe_leaf(long x) {
  hp_fe_sink.store(x, std::memory_order_relaxed);
  return x + 1;
}

__attribute__((noinline, used)) long hp_fe_park(long x, void (*wait)()) {
  hp_fe_sink.store(x, std::memory_order_relaxed);
  if (wait) wait();
  hp_fe_sink.store(x + 1, std::memory_order_relaxed);
  return x + 1;
}

// Each records the return address it will go back to: the site's landing when probed.
std::uintptr_t hp_fe_ret_seen[2];
__attribute__((noinline, used)) long hp_fe_first(long x) {
  hp_fe_ret_seen[0] = reinterpret_cast<std::uintptr_t>(__builtin_return_address(0));
  hp_fe_sink.store(x, std::memory_order_relaxed);
  return x + 1;
}
__attribute__((noinline, used)) long hp_fe_second(long x) {
  hp_fe_ret_seen[1] = reinterpret_cast<std::uintptr_t>(__builtin_return_address(0));
  hp_fe_sink.store(x, std::memory_order_relaxed);
  return x + 2;
}

__attribute__((noinline, used)) long hp_fe_with_backtrace(long x) {
  void* frames[16];
  hp_fe_sink.store(backtrace(frames, 16), std::memory_order_relaxed);  // unhijacks
  long r = hp_fe_leaf(x);  // a fast-path hit while a rehijack is pending
  hp_fe_sink.store(r, std::memory_order_relaxed);
  return r + 1;
}
}

namespace {

using hotprobe::Engine;
using hotprobe::Hit;
using hotprobe::ProbeSpec;

std::atomic<long> g_entries{0};
std::atomic<long> g_returns{0};
void count_entry(Hit&) {
  g_entries.fetch_add(1, std::memory_order_relaxed);
}
void count_return(Hit&) {
  g_returns.fetch_add(1, std::memory_order_relaxed);
}

std::uint64_t reader_word() {
  return hp::sync::tt_detail::tls_word.load(std::memory_order_relaxed);
}

TEST(FastEntry, AHitNestedInAReadSectionLeavesTheReaderWordAsItWas) {
  auto e = Engine::create().value();
  ProbeSpec s;
  s.target = ":hp_fe_leaf";
  s.on_entry = &count_entry;
  auto h = e->attach(s);
  ASSERT_TRUE(h.ok()) << h.error().message();
  g_entries = 0;
  hp_fe_leaf(1);  // the thread's first hit registers it
  ASSERT_EQ(g_entries.load(), 1);
  {
    hp::sync::ReadGuard g(hp::sync::tasks_trace());
    const std::uint64_t inside = reader_word();
    for (int i = 0; i < 100; i++)
      hp_fe_leaf(i);
    // A nested section only moves the depth and back; an outermost entry would also have
    // bumped the entry count (the high half), which the writer reads as "left and came
    // back", so this is what tells the nested case was handed to the dispatcher.
    EXPECT_EQ(reader_word(), inside);
  }
  EXPECT_EQ(g_entries.load(), 101);
  const std::uint64_t outside = reader_word();
  hp_fe_leaf(2);
  EXPECT_EQ(reader_word(), outside + hp::sync::tt_detail::kEntryInc)
      << "an outermost hit enters and leaves one section";
  EXPECT_EQ(g_entries.load(), 102);
  ASSERT_TRUE(e->detach(*h).ok());
}

std::atomic<int> g_recursing{0};
void recurse(Hit&) {
  g_entries.fetch_add(1, std::memory_order_relaxed);
  hp_fe_leaf(99);  // probed: inside a handler, a miss
}

TEST(FastEntry, AHitInsideAHandlerIsARecursionMiss) {
  auto e = Engine::create().value();
  ProbeSpec s;
  s.target = ":hp_fe_leaf";
  s.on_entry = &recurse;
  auto h = e->attach(s);
  ASSERT_TRUE(h.ok()) << h.error().message();
  g_entries = 0;
  hp_fe_leaf(1);
  const auto before = e->stats();
  for (int i = 0; i < 10; i++)
    hp_fe_leaf(i);
  const auto after = e->stats();
  EXPECT_EQ(g_entries.load(), 11);
  EXPECT_EQ(after.misses_recursion - before.misses_recursion, 10u);
  EXPECT_EQ(after.hits - before.hits, 10u);
  ASSERT_TRUE(e->detach(*h).ok());
}

// backtrace() puts the original return addresses back (the unwinder hooks) and leaves a
// rehijack pending for the thread's next hit. That next hit is a fast-path site: it must
// go to the dispatcher, which hijacks the live return again, or the return probe of the
// function still running would never fire.
TEST(FastEntry, APendingRehijackIsDoneByTheNextHit) {
  auto e = Engine::create().value();
  ProbeSpec outer;
  outer.target = ":hp_fe_with_backtrace";
  outer.on_return = &count_return;
  ProbeSpec leaf;
  leaf.target = ":hp_fe_leaf";
  leaf.on_entry = &count_entry;
  auto ho = e->attach(outer);
  ASSERT_TRUE(ho.ok()) << ho.error().message();
  auto hl = e->attach(leaf);
  ASSERT_TRUE(hl.ok()) << hl.error().message();
  g_entries = 0;
  g_returns = 0;
  for (int i = 0; i < 5; i++)
    EXPECT_EQ(hp_fe_with_backtrace(i), i + 2);
  EXPECT_EQ(g_entries.load(), 5);
  EXPECT_EQ(g_returns.load(), 5) << "a return probe was lost after backtrace()";
  ASSERT_TRUE(e->detach(*hl).ok());
  ASSERT_TRUE(e->detach(*ho).ok());
}

// A writer that waited long enough sleeps on the readers' futex (gp_futex = -1) and
// counts on the last reader to leave to wake it. The fast path leaves the section in the
// trampoline and makes the wake-up call there: right after the hit, the futex word must
// have been taken back to 0 by the reader (a writer that had to time out would still
// show -1 for up to 10 ms).
std::atomic<int> g_phase{0};
void park(Hit& h) {
  // Warming up a thread: hp_fe_leaf(0) (entry: arg 0; return: the value 1, first seen by
  // the dispatcher's path, which is fine: the warm-up is not the hit under test).
  if (static_cast<long>(h.regs->arg(0)) <= 0 && h.data == nullptr) return;
  if (h.data != nullptr && static_cast<long>(h.regs->ret()) <= 1) return;
  g_phase.store(2);
  // Spins (no call, no vector register): the walk of this handler finds no vector write,
  // so the return case is the return trampoline's own fast path, not the dispatcher's.
  while (g_phase.load() != 3)
    __builtin_ia32_pause();
}

class FastPaths : public ::testing::TestWithParam<bool> {};  // false: entry, true: return

TEST_P(FastPaths, LeavingTheSectionWakesASleepingWriter) {
  auto e = Engine::create().value();
  ProbeSpec s;
  s.target = ":hp_fe_leaf";
  (GetParam() ? s.on_return : s.on_entry) = &park;
  auto h = e->attach(s);
  ASSERT_TRUE(h.ok()) << h.error().message();
  for (int attempt = 0; attempt < 3; attempt++) {
    g_phase = 1;
    std::thread reader([] {
      hp_fe_leaf(0);  // the thread's first hit registers it (the dispatcher's slow path)
      hp_fe_leaf(1);  // this one is the trampoline's
    });
    // (a return handler's Hit has the return value: hp_fe_leaf(1) returns 2 > 0)
    while (g_phase.load() != 2)
      std::this_thread::yield();
    std::thread writer([] { hp::sync::tasks_trace().synchronize(); });
    // Let the writer spin out and go to sleep on the futex.
    auto& futex = hp::sync::tt_detail::gp_futex;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (futex.load() != -1 && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    ASSERT_EQ(futex.load(), -1) << "the writer never slept on the readers";
    std::this_thread::sleep_for(std::chrono::milliseconds(30));  // into the long sleeps
    g_phase = 3;
    reader.join();  // returned from hp_fe_leaf: its trampoline has left the section
    const int seen = futex.load();
    writer.join();
    EXPECT_EQ(seen, 0) << "attempt " << attempt << ": no wake from the trampoline";
  }
  g_phase = 0;
  ASSERT_TRUE(e->detach(*h).ok());
}

INSTANTIATE_TEST_SUITE_P(EntryAndReturn, FastPaths, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "ret" : "entry"; });

// A return whose instance recorded a consumer that has left, on a site whose array now
// holds another return consumer (one_return again, another id): the trampoline must hand
// it to the dispatcher, which runs neither handler (the new one saw no entry).
std::atomic<int> g_a_returns{0}, g_b_returns{0};
std::atomic<int> g_park_state{0};
void a_return(Hit&) {
  g_a_returns.fetch_add(1);
}
void b_return(Hit&) {
  g_b_returns.fetch_add(1);
}
void wait_for_release() {  // in the probed function's body, outside any handler
  g_park_state.store(1);
  while (g_park_state.load() != 2)
    std::this_thread::sleep_for(std::chrono::microseconds(100));
}

TEST(FastReturn, AReturnRecordedForAConsumerThatLeftRunsNoHandler) {
  auto e = Engine::create().value();
  ProbeSpec a;
  a.target = ":hp_fe_park";
  a.on_return = &a_return;
  auto ha = e->attach(a);
  ASSERT_TRUE(ha.ok()) << ha.error().message();
  hp_fe_park(1, nullptr);
  ASSERT_EQ(g_a_returns.load(), 1);
  g_a_returns = 0;
  g_park_state = 0;
  std::thread t([] { hp_fe_park(2, &wait_for_release); });
  while (g_park_state.load() != 1)
    std::this_thread::yield();
  ProbeSpec b;
  b.target = ":hp_fe_park";
  b.on_return = &b_return;
  auto hb = e->attach(b);
  ASSERT_TRUE(hb.ok()) << hb.error().message();
  ASSERT_TRUE(e->detach(*ha).ok());  // the array is {b}: one return consumer, not a
  g_park_state = 2;
  t.join();
  EXPECT_EQ(g_a_returns.load(), 0) << "a detached consumer's return handler ran";
  EXPECT_EQ(g_b_returns.load(), 0) << "a return handler ran for a call it never saw enter";
  hp_fe_park(3, nullptr);
  EXPECT_EQ(g_b_returns.load(), 1);
  ASSERT_TRUE(e->detach(*hb).ok());
}

// The entry side of the common return probe runs in the shared routine the fast entry
// path calls (OneReturnEntry): its entry handler gets the cookie, the probe address
// and the data slot the return handler reads back; both hits are counted.
int g_cookie;
std::atomic<long> g_data_mismatches{0};
void store_arg(Hit& h) {
  if (h.cookie != &g_cookie || h.probe_address != reinterpret_cast<std::uintptr_t>(&hp_fe_leaf))
    g_data_mismatches.fetch_add(1);
  *h.data = h.regs->arg(0) * 3;
  g_entries.fetch_add(1, std::memory_order_relaxed);
}
void check_data(Hit& h) {
  if (*h.data != (h.regs->ret() - 1) * 3) g_data_mismatches.fetch_add(1);
  g_returns.fetch_add(1, std::memory_order_relaxed);
}

TEST(OneReturnEntry, RunsTheEntryHandlerWithItsDataAndCountsBothHits) {
  auto e = Engine::create().value();
  ProbeSpec s;
  s.target = ":hp_fe_leaf";
  s.on_entry = &store_arg;
  s.on_return = &check_data;
  s.cookie = &g_cookie;
  auto h = e->attach(s);
  ASSERT_TRUE(h.ok()) << h.error().message();
  g_entries = 0;
  g_returns = 0;
  g_data_mismatches = 0;
  const std::uint64_t hits0 = e->stats().hits;
  constexpr long kCalls = 1000;
  for (long i = 0; i < kCalls; i++)
    ASSERT_EQ(hp_fe_leaf(i), i + 1);
  EXPECT_EQ(g_entries.load(), kCalls);
  EXPECT_EQ(g_returns.load(), kCalls);
  EXPECT_EQ(g_data_mismatches.load(), 0) << "cookie, probe address or data slot wrong";
  EXPECT_EQ(e->stats().hits - hits0, 2u * kCalls);
  ASSERT_TRUE(e->detach(*h).ok());
}

// A return probe at a function's entry points the return address at its own site's
// landing (so the return stack buffer, which the landing exit primed, predicts the ret):
// two probed functions see two different return addresses, where a shared return
// trampoline would show one.
TEST(ReturnLanding, EachSiteReturnsThroughItsOwnLanding) {
  auto e = Engine::create().value();
  ProbeSpec a, b;
  a.target = ":hp_fe_first";
  a.on_return = &count_return;
  b.target = ":hp_fe_second";
  b.on_return = &count_return;
  auto ha = e->attach(a);
  auto hb = e->attach(b);
  ASSERT_TRUE(ha.ok() && hb.ok());
  g_returns = 0;
  EXPECT_EQ(hp_fe_first(1), 2);
  EXPECT_EQ(hp_fe_second(1), 3);
  EXPECT_EQ(g_returns.load(), 2);
  EXPECT_NE(hp_fe_ret_seen[0], hp_fe_ret_seen[1]);
  Dl_info info;
  EXPECT_EQ(dladdr(reinterpret_cast<void*>(hp_fe_ret_seen[0]), &info), 0) << "not hijacked";
  ASSERT_TRUE(e->detach(*ha).ok());
  ASSERT_TRUE(e->detach(*hb).ok());
  hp_fe_first(1);  // unprobed: back into this test's code
  EXPECT_NE(dladdr(reinterpret_cast<void*>(hp_fe_ret_seen[0]), &info), 0);
}

}  // namespace
