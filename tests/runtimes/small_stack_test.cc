// Handlers run on hotprobe's handler stack, not on the probed thread's: a probed function
// called on a coroutine stack of a few KiB (makecontext/swapcontext), on an 8 KiB
// sigaltstack inside a signal handler, and on a thread with the smallest stack pthreads
// allows, with handlers that use 16 KiB of stack. Each small stack has a PROT_NONE page
// below it, so a dispatcher or handler running there would fault instead of passing.
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>

#include <gtest/gtest.h>

#include "hotprobe/probe.h"

extern "C" {
std::atomic<long> hp_ss_sink;
__attribute__((noinline, used)) long hp_ss_leaf(long x) {
  hp_ss_sink.store(x, std::memory_order_relaxed);
  return x * 3 + 1;
}
}

namespace {

using hotprobe::Engine;
using hotprobe::Hit;
using hotprobe::ProbeSpec;

constexpr std::size_t kPage = 4096;

// A stack of `size` bytes with a guard page below it.
struct GuardedStack {
  void* map = nullptr;
  std::size_t size;
  explicit GuardedStack(std::size_t s) : size(s) {
    map = mmap(nullptr, s + kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    EXPECT_NE(map, MAP_FAILED);
    mprotect(map, kPage, PROT_NONE);
  }
  ~GuardedStack() { munmap(map, size + kPage); }
  char* lo() const { return static_cast<char*>(map) + kPage; }
  char* hi() const { return lo() + size; }
  bool holds(const void* p) const { return p >= lo() && p < hi(); }
};

// What the handlers saw; `small` is the stack the probed code runs on.
struct Seen {
  std::atomic<long> entries{0}, returns{0}, on_small{0}, bad_ret{0};
  const GuardedStack* small = nullptr;
};

// 16 KiB of stack, touched: more than any of the small stacks has.
__attribute__((noinline)) void use_stack(Seen* s) {
  volatile char buf[16384];
  for (std::size_t i = 0; i < sizeof buf; i += 512)
    buf[i] = static_cast<char>(i);
  if (s->small && s->small->holds(const_cast<char*>(&buf[0]))) s->on_small++;
}

void on_entry(Hit& h) {
  auto* s = static_cast<Seen*>(h.cookie);
  use_stack(s);
  if (h.data) *h.data = h.regs->arg(0);
  s->entries.fetch_add(1, std::memory_order_relaxed);
}
void on_return(Hit& h) {
  auto* s = static_cast<Seen*>(h.cookie);
  use_stack(s);
  if (static_cast<long>(h.regs->ret()) != static_cast<long>(*h.data) * 3 + 1) s->bad_ret++;
  s->returns.fetch_add(1, std::memory_order_relaxed);
}

// int3: the site traps, and the SIGTRAP hook's dispatch moves to the handler stack too.
std::unique_ptr<Engine> attach_leaf(Seen& seen, bool with_return, bool int3 = false) {
  auto e = Engine::create();
  EXPECT_TRUE(e.ok()) << e.error().message();
  ProbeSpec spec;
  spec.target = ":hp_ss_leaf";
  spec.on_entry = &on_entry;
  if (with_return) spec.on_return = &on_return;
  spec.cookie = &seen;
  spec.allow_int3 = int3;  // a jump unless asked
  spec.force_int3 = int3;
  auto h = (*e)->attach(spec);
  EXPECT_TRUE(h.ok()) << h.error().message();
  return std::move(e.value());
}

// ---------------------------------------------------------------------------------------
// A coroutine: makecontext on 8 KiB.

ucontext_t g_main_ctx, g_co_ctx;
constexpr long kCoCalls = 1000;
std::atomic<long> g_co_bad{0};

void coroutine_body() {
  for (long i = 0; i < kCoCalls; i++) {
    if (hp_ss_leaf(i) != i * 3 + 1) g_co_bad++;
    if (i % 100 == 99) swapcontext(&g_co_ctx, &g_main_ctx);  // and back, a few times
  }
}

// The parameter: bit 0, a return handler too; bit 1, the site in int3 mode.
class SmallStack : public ::testing::TestWithParam<int> {
 protected:
  bool with_return() const { return GetParam() & 1; }
  bool int3() const { return GetParam() & 2; }
};

TEST_P(SmallStack, CoroutineOnEightKiB) {
  Seen seen;
  GuardedStack stack(8 * 1024);
  seen.small = &stack;
  auto e = attach_leaf(seen, with_return(), int3());
  g_co_bad = 0;
  ASSERT_EQ(getcontext(&g_co_ctx), 0);
  g_co_ctx.uc_stack.ss_sp = stack.lo();
  g_co_ctx.uc_stack.ss_size = stack.size;
  g_co_ctx.uc_link = &g_main_ctx;
  makecontext(&g_co_ctx, coroutine_body, 0);
  for (int round = 0; round <= kCoCalls / 100; round++)
    ASSERT_EQ(swapcontext(&g_main_ctx, &g_co_ctx), 0);
  EXPECT_EQ(g_co_bad.load(), 0);
  EXPECT_EQ(seen.entries.load(), kCoCalls);
  EXPECT_EQ(seen.returns.load(), with_return() ? kCoCalls : 0);
  EXPECT_EQ(seen.bad_ret.load(), 0);
  EXPECT_EQ(seen.on_small.load(), 0) << "a handler ran on the coroutine's stack";
}

// ---------------------------------------------------------------------------------------
// A signal handler on an 8 KiB sigaltstack.

std::atomic<long> g_sig_calls{0}, g_sig_bad{0}, g_sig_on_alt{0};
const GuardedStack* g_alt = nullptr;
void sig_handler(int) {
  const long x = g_sig_calls.fetch_add(1, std::memory_order_relaxed);
  int here;
  if (g_alt && g_alt->holds(&here)) g_sig_on_alt++;
  if (hp_ss_leaf(x) != x * 3 + 1) g_sig_bad++;
}

TEST_P(SmallStack, SignalHandlerOnEightKiBSigaltstack) {
#if defined(HOTPROBE_TSAN)
  // TSan runs signal handlers it deferred with every signal blocked, and the kernel kills
  // a thread whose int3 traps while SIGTRAP is blocked.
  if (int3()) GTEST_SKIP() << "int3 probes cannot fire inside TSan-deferred signal handlers";
#endif
  Seen seen;
  GuardedStack alt(8 * 1024);
  seen.small = &alt;
  g_alt = &alt;
  auto e = attach_leaf(seen, with_return(), int3());
  stack_t ss{}, old_ss{};
  ss.ss_sp = alt.lo();
  ss.ss_size = alt.size;
  ASSERT_EQ(sigaltstack(&ss, &old_ss), 0);
  struct sigaction sa {
  }, old_sa{};
  sa.sa_handler = sig_handler;
  sa.sa_flags = SA_ONSTACK | SA_RESTART;
  sigemptyset(&sa.sa_mask);
  ASSERT_EQ(sigaction(SIGUSR2, &sa, &old_sa), 0);
  g_sig_calls = g_sig_bad = g_sig_on_alt = 0;
  constexpr long kSignals = 500;
  for (long i = 0; i < kSignals; i++)
    pthread_kill(pthread_self(), SIGUSR2);  // delivered before pthread_kill returns
  sigaction(SIGUSR2, &old_sa, nullptr);
  sigaltstack(&old_ss, nullptr);
  g_alt = nullptr;
  EXPECT_EQ(g_sig_calls.load(), kSignals);
  EXPECT_EQ(g_sig_on_alt.load(), kSignals) << "the handler did not run on the sigaltstack";
  EXPECT_EQ(g_sig_bad.load(), 0);
  EXPECT_EQ(seen.entries.load(), kSignals);
  EXPECT_EQ(seen.returns.load(), with_return() ? kSignals : 0);
  EXPECT_EQ(seen.bad_ret.load(), 0);
  EXPECT_EQ(seen.on_small.load(), 0) << "a handler ran on the sigaltstack";
}

// ---------------------------------------------------------------------------------------
// A thread with the smallest stack pthreads allows: its first hit allocates the handler
// stack from there.

TEST_P(SmallStack, ThreadWithTheSmallestStack) {
  Seen seen;
  auto e = attach_leaf(seen, with_return(), int3());
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  ASSERT_EQ(pthread_attr_setstacksize(&attr, PTHREAD_STACK_MIN), 0);
  constexpr long kCalls = 1000;
  struct Arg {
    long bad = 0;
  } arg;
  pthread_t t;
  ASSERT_EQ(pthread_create(
                &t, &attr,
                [](void* p) -> void* {
                  for (long i = 0; i < kCalls; i++)
                    if (hp_ss_leaf(i) != i * 3 + 1) static_cast<Arg*>(p)->bad++;
                  return nullptr;
                },
                &arg),
            0);
  pthread_join(t, nullptr);
  pthread_attr_destroy(&attr);
  EXPECT_EQ(arg.bad, 0);
  EXPECT_EQ(seen.entries.load(), kCalls);
  EXPECT_EQ(seen.returns.load(), with_return() ? kCalls : 0);
  EXPECT_EQ(seen.bad_ret.load(), 0);
}

// ---------------------------------------------------------------------------------------
// Threads that exit give their handler stacks back: 64 threads, one after the other, each
// hitting the probe, leave the number of mappings as it was (each stack is two: the guard
// page and the stack).

std::size_t mapping_count() {
  std::FILE* f = std::fopen("/proc/self/maps", "r");
  std::size_t n = 0;
  for (int c; (c = std::fgetc(f)) != EOF;)
    n += c == '\n';
  std::fclose(f);
  return n;
}

TEST(HandlerStack, ExitedThreadsGiveTheirStacksBack) {
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "the sanitizer runtime maps memory of its own per thread";
#endif
  Seen seen;
  auto e = attach_leaf(seen, false);
  auto one_thread = [] {
    pthread_t t;
    pthread_create(
        &t, nullptr, [](void*) -> void* { return reinterpret_cast<void*>(hp_ss_leaf(1)); },
        nullptr);
    pthread_join(t, nullptr);
  };
  one_thread();  // the thread stack cache and the engine's first-use state
  const std::size_t before = mapping_count();
  constexpr int kThreads = 64;
  for (int i = 0; i < kThreads; i++)
    one_thread();
  EXPECT_EQ(seen.entries.load(), kThreads + 1);
  EXPECT_LT(mapping_count(), before + kThreads / 4)
      << "handler stacks of exited threads stay mapped";
}

INSTANTIATE_TEST_SUITE_P(, SmallStack, ::testing::Values(0, 1, 2, 3),
                         [](const ::testing::TestParamInfo<int>& i) {
                           return std::string(i.param & 1 ? "EntryAndReturn" : "Entry") +
                                  (i.param & 2 ? "Int3" : "");
                         });

}  // namespace
