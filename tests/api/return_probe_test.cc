// Return probes through the public API in the situations that break return-address
// hijacking: a signal handler calling the probed function while it is active on the
// normal stack, a thread parked inside a probed function while the probe is detached,
// tail calls between two return-probed functions, recursion deeper than the return
// stack, and more return consumers on one site than a return instance has room for.
#include <pthread.h>
#include <signal.h>
#include <sys/time.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <future>
#include <mutex>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "hotprobe/probe.h"

extern "C" {
// Written by several threads and signal handlers: relaxed atomics (plain stores race).
std::atomic<long> hp_rp_sink;

__attribute__((noinline, used)) long hp_rp_outer(long x, void (*cb)(long)) {
  hp_rp_sink.store(x, std::memory_order_relaxed);
  if (cb) cb(x);
  hp_rp_sink.store(x + 1, std::memory_order_relaxed);
  return x * 2 + 1;
}

__attribute__((noinline, used)) long hp_rp_park(long x, void (*wait)()) {
  hp_rp_sink.store(x, std::memory_order_relaxed);
  wait();
  hp_rp_sink.store(x + 1, std::memory_order_relaxed);
  return x + 7;
}

long hp_rp_depth(long n);
long (*volatile hp_rp_depth_ptr)(long) = hp_rp_depth;  // no tail-call or recursion folding
__attribute__((noinline, used)) long hp_rp_depth(long n) {
  hp_rp_sink.store(n, std::memory_order_relaxed);
  long r = n <= 1 ? n : n + hp_rp_depth_ptr(n - 1);
  hp_rp_sink.store(r, std::memory_order_relaxed);
  return r;
}
}

// A tail call: hp_rp_tail_f(x) = hp_rp_tail_g(2 * (x + 1)); hp_rp_tail_g(y) = 3 * y + 7.
// f has no frame and leaves with `jmp g`, so g returns straight to f's caller.
asm(R"(
  .pushsection .text
  .p2align 4
  .globl hp_rp_tail_f
  .type hp_rp_tail_f, @function
hp_rp_tail_f:
  leaq 1(%rdi), %rdi
  addq %rdi, %rdi
  jmp hp_rp_tail_g
  .size hp_rp_tail_f, .-hp_rp_tail_f

  .p2align 4
  .globl hp_rp_tail_g
  .type hp_rp_tail_g, @function
hp_rp_tail_g:
  movq %rdi, %rax
  imulq $3, %rax, %rax
  addq $7, %rax
  ret
  .size hp_rp_tail_g, .-hp_rp_tail_g
  .popsection
)");

extern "C" {
long hp_rp_tail_f(long x);
long hp_rp_tail_g(long y);
}

namespace {

using hotprobe::Engine;
using hotprobe::EngineOptions;
using hotprobe::Handle;
using hotprobe::Hit;
using hotprobe::ProbeSpec;
using hotprobe::Scheme;

struct Mode {
  Scheme scheme;
  bool int3;
};
std::string mode_name(const ::testing::TestParamInfo<Mode>& i) {
  std::string n(hotprobe::to_string(i.param.scheme));
  for (char& c : n)
    if (c == '-') c = '_';
  return n + (i.param.int3 ? "_int3" : "_jmp");
}
std::vector<Mode> all_modes() {
  std::vector<Mode> v;
  for (Scheme s : hotprobe::all_schemes())
    for (bool int3 : {false, true})
      v.push_back({s, int3});
  return v;
}

std::unique_ptr<Engine> make_engine(Scheme s, unsigned depth = 64) {
  EngineOptions o;
  o.scheme = s;
  o.return_stack_depth = depth;
  auto e = Engine::create(o);
  EXPECT_TRUE(e.ok()) << e.error().message();
  return std::move(e.value());
}

// Counters are atomics: a signal handler on the same thread may interrupt an increment.
struct Tally {
  std::atomic<long> entries{0}, returns{0}, bad_returns{0};
  std::atomic<long> ret_log[8]{};  // the arguments of the last returns, in return order
  std::atomic<long> ret_log_n{0};
};

// hp_rp_outer(x) returns 2x+1: the return handler checks that against the entry's x.
void outer_entry(Hit& h) {
  auto* t = static_cast<Tally*>(h.cookie);
  t->entries.fetch_add(1, std::memory_order_relaxed);
  if (h.data) *h.data = h.regs->arg(0);
}
void outer_return(Hit& h) {
  auto* t = static_cast<Tally*>(h.cookie);
  t->returns.fetch_add(1, std::memory_order_relaxed);
  const long x = static_cast<long>(*h.data);
  if (static_cast<long>(h.regs->ret()) != x * 2 + 1) t->bad_returns.fetch_add(1);
  long i = t->ret_log_n.fetch_add(1);
  t->ret_log[i & 7].store(x);
}

ProbeSpec outer_spec(Tally* t, bool int3) {
  ProbeSpec s;
  s.target = ":hp_rp_outer";
  s.on_entry = &outer_entry;
  s.on_return = &outer_return;
  s.cookie = t;
  s.force_int3 = int3;
  return s;
}

// ---------------------------------------------------------------------------------------
// A signal handler calls the probed function while it is active below.

std::atomic<long> g_sig_calls{0}, g_sig_bad{0};
void sig_calls_outer(int) {
  const int saved_errno = errno;
  const long x = 1000 + g_sig_calls.fetch_add(1, std::memory_order_relaxed);
  if (hp_rp_outer(x, nullptr) != x * 2 + 1) g_sig_bad.fetch_add(1, std::memory_order_relaxed);
  errno = saved_errno;
}

struct SignalScope {
  int sig;
  struct sigaction old {};
  SignalScope(int s, void (*h)(int)) : sig(s) {
    struct sigaction sa {};
    sa.sa_handler = h;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(sig, &sa, &old);
  }
  ~SignalScope() { sigaction(sig, &old, nullptr); }
};

class SignalReentry : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
#if defined(HOTPROBE_TSAN)
    // TSan runs signal handlers it deferred with every signal blocked, and the kernel
    // kills a thread whose int3 traps while SIGTRAP is blocked.
    if (GetParam()) GTEST_SKIP() << "int3 probes cannot fire inside TSan-deferred signal handlers";
    // jmp: TSan runs the deferred handler after the outer call has returned, so the order
    // of the returns the test checks is TSan's, not the program's.
    GTEST_SKIP() << "TSan defers the signal past the outer call's return";
#endif
  }
};

TEST_P(SignalReentry, HandlerCallsTheFunctionActiveBelowIt) {
  auto e = make_engine(Scheme::tasks_trace);
  Tally t;
  auto h = e->attach(outer_spec(&t, GetParam()));
  ASSERT_TRUE(h.ok()) << h.error().message();
  SignalScope scope(SIGUSR1, sig_calls_outer);
  g_sig_calls = 0;
  g_sig_bad = 0;
  const auto before = e->stats();
  constexpr long kIters = 200;
  for (long i = 0; i < kIters; i++) {
    // cb runs inside hp_rp_outer, whose return address is hijacked: the handler's call
    // pushes a second instance above it and must pop only its own.
    const long r = hp_rp_outer(i, [](long) { pthread_kill(pthread_self(), SIGUSR1); });
    ASSERT_EQ(r, i * 2 + 1) << "iteration " << i;
    ASSERT_EQ(t.ret_log_n.load(), 2 * (i + 1));
    // The signal's call returned first, then the outer one.
    EXPECT_EQ(t.ret_log[(2 * i) & 7].load(), 1000 + i);
    EXPECT_EQ(t.ret_log[(2 * i + 1) & 7].load(), i);
  }
  ASSERT_TRUE(e->detach(*h).ok());
  EXPECT_EQ(g_sig_calls.load(), kIters);
  EXPECT_EQ(g_sig_bad.load(), 0);
  EXPECT_EQ(t.entries.load(), 2 * kIters);
  EXPECT_EQ(t.returns.load(), 2 * kIters);
  EXPECT_EQ(t.bad_returns.load(), 0);
  EXPECT_EQ(e->stats().misses_recursion - before.misses_recursion, 0u);
}

TEST_P(SignalReentry, TimerSignalsAtRandomPoints) {
  // SIGALRM every 50 us while this thread calls the probed function in a loop: signals
  // land anywhere, including inside the trampolines and the dispatcher. A call whose
  // entry lands inside a handler is a recursion miss (no return instance); every other
  // call must run both handlers with the right value.
  auto e = make_engine(Scheme::tasks_trace);
  Tally t;
  auto h = e->attach(outer_spec(&t, GetParam()));
  ASSERT_TRUE(h.ok()) << h.error().message();
  SignalScope scope(SIGALRM, sig_calls_outer);
  g_sig_calls = 0;
  g_sig_bad = 0;
  const auto before = e->stats();
  itimerval it{{0, 50}, {0, 50}};
  ASSERT_EQ(setitimer(ITIMER_REAL, &it, nullptr), 0);
  long calls = 0;
  const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(300);
  while (std::chrono::steady_clock::now() < end) {
    for (long i = 0; i < 1000; i++, calls++) {
      const long r = hp_rp_outer(i, nullptr);
      if (r != i * 2 + 1) {
        ADD_FAILURE() << "hp_rp_outer(" << i << ") returned " << r;
        break;
      }
    }
  }
  itimerval off{};
  setitimer(ITIMER_REAL, &off, nullptr);
  ASSERT_TRUE(e->detach(*h).ok());
  const long total = calls + g_sig_calls.load();
  const long misses = static_cast<long>(e->stats().misses_recursion - before.misses_recursion);
  EXPECT_EQ(g_sig_bad.load(), 0);
  EXPECT_EQ(t.bad_returns.load(), 0);
  EXPECT_EQ(t.entries.load() + misses, total) << "calls that neither ran nor missed";
  EXPECT_EQ(t.returns.load(), t.entries.load()) << "entries without their return";
#if !defined(HOTPROBE_TSAN)  // TSan delivers SIGALRM late, at its interceptors only
  EXPECT_GT(g_sig_calls.load(), 10) << "too few signals to prove anything";
#endif
  RecordProperty("signal_calls", static_cast<int>(g_sig_calls.load()));
  RecordProperty("recursion_misses", static_cast<int>(misses));
}

INSTANTIATE_TEST_SUITE_P(JmpAndInt3, SignalReentry, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "int3" : "jmp"; });

// A probe hit, entry and return, leaves errno alone (a probed function called between a
// failing system call and the read of errno must not change what the caller sees).
TEST_P(SignalReentry, HitsPreserveErrno) {
  auto e = make_engine(Scheme::tasks_trace);
  Tally t;
  auto h = e->attach(outer_spec(&t, GetParam()));
  ASSERT_TRUE(h.ok()) << h.error().message();
  for (int i = 0; i < 100; i++) {
    errno = 1000 + i;
    const long r = hp_rp_outer(i, nullptr);
    const int seen = errno;
    ASSERT_EQ(r, 2 * i + 1);
    ASSERT_EQ(seen, 1000 + i) << "call " << i;
  }
  EXPECT_EQ(t.entries.load(), 100);
  EXPECT_EQ(t.returns.load(), 100);
  ASSERT_TRUE(e->detach(*h).ok());
}

// ---------------------------------------------------------------------------------------
// A thread parked inside a return-probed function while the probe goes away.

struct Park {
  std::mutex mu;
  std::condition_variable cv;
  bool parked = false, release = false;
};
Park* g_park;
void park_wait() {
  std::unique_lock<std::mutex> l(g_park->mu);
  g_park->parked = true;
  g_park->cv.notify_all();
  g_park->cv.wait(l, [] { return g_park->release; });
}

struct ParkTally {
  std::atomic<long> entries{0}, returns{0};
};

class ParkedThread : public ::testing::TestWithParam<Mode> {};

// `destroy`: detach by destroying the engine instead of detach().
void run_parked(const Mode m, bool destroy) {
#if defined(HOTPROBE_TSAN)
  // Under ThreadSanitizer the parked return instance does not keep its site as a zombie
  // (the release and ASan builds do): skipped there until that is understood.
  (void)m, (void)destroy;
  GTEST_SKIP() << "a zombie site under ThreadSanitizer is not yet understood";
#endif
  auto e = make_engine(m.scheme);
  ParkTally t;
  ProbeSpec s;
  s.target = ":hp_rp_park";
  s.on_entry = [](Hit& h) { static_cast<ParkTally*>(h.cookie)->entries++; };
  s.on_return = [](Hit& h) { static_cast<ParkTally*>(h.cookie)->returns++; };
  s.cookie = &t;
  s.force_int3 = m.int3;
  auto h = e->attach(s);
  ASSERT_TRUE(h.ok()) << h.error().message();
  const auto zombies_before = e->stats().zombie_sites;

  Park park;
  g_park = &park;
  long result = 0;
  std::thread th([&] { result = hp_rp_park(35, park_wait); });
  {
    std::unique_lock<std::mutex> l(park.mu);
    park.cv.wait(l, [&] { return park.parked; });
  }
  EXPECT_EQ(t.entries.load(), 1);
  // Detach (or the engine's destruction) must not wait for the parked call: it runs on
  // its own thread, and the parked call is released only after it returned. Were it to
  // wait, it would never return; the bound below (far above any detach on a loaded
  // machine) turns that hang into a failure, and then releases the call so the test ends.
  bool detached = false;
  {
    std::promise<bool> done;
    auto finished = done.get_future();
    std::thread detacher([&] {
      bool ok = true;
      if (destroy) {
        e.reset();
      } else {
        ok = e->detach(*h).ok();
      }
      done.set_value(ok);
    });
    const bool returned = finished.wait_for(std::chrono::seconds(60)) == std::future_status::ready;
    EXPECT_TRUE(returned) << "detach waited on a function that has not returned";
    if (!returned) {
      std::lock_guard<std::mutex> l(park.mu);
      park.release = true;
      park.cv.notify_all();
    }
    detacher.join();
    detached = finished.get();
  }
  EXPECT_TRUE(detached) << "detach failed";
  if (!destroy) {
    EXPECT_GE(e->stats().zombie_sites, zombies_before + 1)
        << "the site must be kept while a return instance points at it";
    // Churn the trampoline memory: a site freed too early (its slot holds the landing the
    // late return goes through, at a function's entry in jmp mode) would be written over
    // by these sites' trampolines.
    for (int round = 0; round < 3; round++) {
      std::vector<ProbeSpec> others(3);
      others[0].target = ":hp_rp_outer";
      others[1].target = ":hp_rp_tail_f";
      others[2].target = ":hp_rp_tail_g";
      for (ProbeSpec& o : others) {
        o.on_return = [](Hit&) {};
        o.force_int3 = m.int3;
      }
      std::vector<hotprobe::Handle> hs;
      for (auto& r : e->attach(others)) {
        ASSERT_TRUE(r.ok()) << r.error().message();
        hs.insert(hs.end(), r->begin(), r->end());
      }
      ASSERT_TRUE(e->detach(hs).ok());
      e->sync();
    }
    EXPECT_GE(e->stats().zombie_sites, zombies_before + 1) << "reclaimed while referenced";
  }
  {
    std::lock_guard<std::mutex> l(park.mu);
    park.release = true;
  }
  park.cv.notify_all();
  th.join();
  EXPECT_EQ(result, 42) << "the late return did not come back with the right value";
  EXPECT_EQ(t.returns.load(), 0) << "a detached consumer's return handler ran";
  // And the function works, unprobed and probed again.
  EXPECT_EQ(hp_rp_park(1, [] {}), 8);
  if (destroy) e = make_engine(m.scheme);
  auto h2 = e->attach(s);
  ASSERT_TRUE(h2.ok()) << h2.error().message();
  EXPECT_EQ(hp_rp_park(2, [] {}), 9);
  EXPECT_EQ(t.entries.load(), 2);
  EXPECT_EQ(t.returns.load(), 1);
  ASSERT_TRUE(e->detach(*h2).ok());
  // The zombie goes with a reclaim pass after the late return, which may come after one
  // sync on a loaded machine: wait for it (a minute at most: then it never would).
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  do {
    e->sync();
    if (e->stats().zombie_sites <= zombies_before) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  } while (std::chrono::steady_clock::now() < give_up);
  EXPECT_LE(e->stats().zombie_sites, zombies_before) << "the zombie site was never reclaimed";
}

TEST_P(ParkedThread, DetachDoesNotWaitAndTheLateReturnLands) {
  run_parked(GetParam(), false);
}
TEST_P(ParkedThread, EngineDestroyedWhileParked) {
  run_parked(GetParam(), true);
}

INSTANTIATE_TEST_SUITE_P(Schemes, ParkedThread, ::testing::ValuesIn(all_modes()), mode_name);

// ---------------------------------------------------------------------------------------
// Tail calls between two return-probed functions.

struct TailLog {
  int n = 0;
  struct Ev {
    char kind;   // 'e' entry, 'r' return
    int fn;      // 0 f, 1 g
    long value;  // entry: arg0; return: ret
    long data;   // return: what the entry stored
  } ev[8];
};
TailLog g_tail;
void tail_entry(Hit& h) {
  const int fn = static_cast<int>(reinterpret_cast<std::uintptr_t>(h.cookie));
  if (h.data) *h.data = h.regs->arg(0);
  if (g_tail.n < 8) g_tail.ev[g_tail.n++] = {'e', fn, static_cast<long>(h.regs->arg(0)), 0};
}
void tail_return(Hit& h) {
  const int fn = static_cast<int>(reinterpret_cast<std::uintptr_t>(h.cookie));
  if (g_tail.n < 8)
    g_tail.ev[g_tail.n++] = {'r', fn, static_cast<long>(h.regs->ret()), static_cast<long>(*h.data)};
}

class TailCall : public ::testing::TestWithParam<std::pair<bool, bool>> {};

TEST_P(TailCall, BothReturnHandlersRunAndTheCallerGetsTheValue) {
  const auto [f_int3, g_int3] = GetParam();
  auto e = make_engine(Scheme::tasks_trace);
  ProbeSpec f, g;
  f.target = ":hp_rp_tail_f";
  g.target = ":hp_rp_tail_g";
  for (ProbeSpec* s : {&f, &g}) {
    s->on_entry = &tail_entry;
    s->on_return = &tail_return;
  }
  f.cookie = reinterpret_cast<void*>(0);
  g.cookie = reinterpret_cast<void*>(1);
  f.force_int3 = f_int3;
  g.force_int3 = g_int3;
  auto hf = e->attach(f);
  ASSERT_TRUE(hf.ok()) << hf.error().message();
  auto hg = e->attach(g);
  ASSERT_TRUE(hg.ok()) << hg.error().message();

  for (long x = 0; x < 50; x++) {
    g_tail = {};
    ASSERT_EQ(hp_rp_tail_f(x), 6 * x + 13);
    ASSERT_EQ(g_tail.n, 4);
    const long y = 2 * (x + 1), r = 6 * x + 13;
    EXPECT_EQ(g_tail.ev[0].kind, 'e');
    EXPECT_EQ(g_tail.ev[0].fn, 0);
    EXPECT_EQ(g_tail.ev[0].value, x);
    EXPECT_EQ(g_tail.ev[1].kind, 'e');
    EXPECT_EQ(g_tail.ev[1].fn, 1);
    EXPECT_EQ(g_tail.ev[1].value, y);
    // g's instance is on top: its handler runs first, then f's; both see g's value.
    EXPECT_EQ(g_tail.ev[2].kind, 'r');
    EXPECT_EQ(g_tail.ev[2].fn, 1);
    EXPECT_EQ(g_tail.ev[2].value, r);
    EXPECT_EQ(g_tail.ev[2].data, y);
    EXPECT_EQ(g_tail.ev[3].kind, 'r');
    EXPECT_EQ(g_tail.ev[3].fn, 0);
    EXPECT_EQ(g_tail.ev[3].value, r);
    EXPECT_EQ(g_tail.ev[3].data, x);
    if (HasFailure()) break;
  }
  // g called directly, and f again: nothing left over from the chained instances.
  g_tail = {};
  EXPECT_EQ(hp_rp_tail_g(5), 22);
  EXPECT_EQ(g_tail.n, 2);
  g_tail = {};
  EXPECT_EQ(hp_rp_tail_f(1), 19);
  EXPECT_EQ(g_tail.n, 4);
  ASSERT_TRUE(e->detach(*hf).ok());
  g_tail = {};
  EXPECT_EQ(hp_rp_tail_f(2), 25);  // only g is probed now
  EXPECT_EQ(g_tail.n, 2);
  ASSERT_TRUE(e->detach(*hg).ok());
  EXPECT_EQ(hp_rp_tail_f(3), 31);
}

INSTANTIATE_TEST_SUITE_P(Modes, TailCall,
                         ::testing::Values(std::pair{false, false}, std::pair{true, true},
                                           std::pair{false, true}, std::pair{true, false}),
                         [](const auto& info) {
                           return std::string(info.param.first ? "f_int3" : "f_jmp") +
                                  (info.param.second ? "_g_int3" : "_g_jmp");
                         });

// ---------------------------------------------------------------------------------------
// Recursion deeper than the return stack.

struct DepthTally {
  long entries = 0, returns = 0, bad = 0;
};
void depth_entry(Hit& h) {
  auto* t = static_cast<DepthTally*>(h.cookie);
  t->entries++;
  if (h.data) *h.data = h.regs->arg(0);
}
void depth_return(Hit& h) {
  auto* t = static_cast<DepthTally*>(h.cookie);
  t->returns++;
  const long n = static_cast<long>(*h.data);
  if (static_cast<long>(h.regs->ret()) != n * (n + 1) / 2) t->bad++;
}

class DeepRecursion : public ::testing::TestWithParam<bool> {};

TEST_P(DeepRecursion, ReturnsCorrectlyWithMissesCounted) {
  for (const auto& [depth, levels] :
       {std::pair{16u, 100L}, std::pair{64u, 200L}, std::pair{256u, 300L}, std::pair{1u, 5L}}) {
    SCOPED_TRACE("depth " + std::to_string(depth) + ", " + std::to_string(levels) + " levels");
    auto e = make_engine(Scheme::tasks_trace, depth);
    DepthTally t;
    ProbeSpec s;
    s.target = ":hp_rp_depth";
    s.on_entry = &depth_entry;
    s.on_return = &depth_return;
    s.cookie = &t;
    s.force_int3 = GetParam();
    auto h = e->attach(s);
    ASSERT_TRUE(h.ok()) << h.error().message();
    const auto before = e->stats();
    EXPECT_EQ(hp_rp_depth(levels), levels * (levels + 1) / 2);
    EXPECT_EQ(t.entries, levels);
    EXPECT_EQ(t.returns, static_cast<long>(depth));  // the outermost `depth` levels
    EXPECT_EQ(t.bad, 0);
    EXPECT_EQ(e->stats().misses_return_stack - before.misses_return_stack,
              static_cast<std::uint64_t>(levels - depth));
    // The stack is empty again: a shallow call has its return.
    EXPECT_EQ(hp_rp_depth(1), 1);
    EXPECT_EQ(t.returns, static_cast<long>(depth) + 1);
    ASSERT_TRUE(e->detach(*h).ok());
  }
}

INSTANTIATE_TEST_SUITE_P(JmpAndInt3, DeepRecursion, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "int3" : "jmp"; });

TEST(ReturnStack, DepthOutOfRangeIsRefused) {
  EngineOptions o;
  o.return_stack_depth = 0;
  EXPECT_FALSE(Engine::create(o).ok());
  o.return_stack_depth = 100000;
  auto r = Engine::create(o);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), hotprobe::Errc::invalid_argument);
}

// EngineOptions::return_stack_depth is an option of one engine: creating another engine
// must not change it.
TEST(ReturnStack, DepthIsPerEngine) {
  auto a = make_engine(Scheme::tasks_trace, 8);
  DepthTally t;
  ProbeSpec s;
  s.target = ":hp_rp_depth";
  s.on_entry = &depth_entry;
  s.on_return = &depth_return;
  s.cookie = &t;
  auto h = a->attach(s);
  ASSERT_TRUE(h.ok()) << h.error().message();
  auto b = make_engine(Scheme::tasks_trace, 64);  // another engine, another option
  EXPECT_EQ(hp_rp_depth(12), 78);
  EXPECT_EQ(t.entries, 12);
  EXPECT_EQ(t.returns, 8) << "engine a's return_stack_depth (8) was changed by creating engine b";
  ASSERT_TRUE(a->detach(*h).ok());
}

// More return consumers on one site than a return instance records: each consumer must
// get its return, or the skipped return must be counted as a miss.
TEST(ReturnStack, EveryReturnConsumerRunsOrCountsAMiss) {
  auto e = make_engine(Scheme::tasks_trace);
  constexpr int kConsumers = 6;
  Tally t[kConsumers];
  std::vector<Handle> hs;
  for (auto& ti : t) {
    auto h = e->attach(outer_spec(&ti, false));
    ASSERT_TRUE(h.ok()) << h.error().message();
    hs.push_back((*h)[0]);
  }
  const auto before = e->stats();
  EXPECT_EQ(hp_rp_outer(4, nullptr), 9);
  const auto after = e->stats();
  long returned = 0;
  for (auto& ti : t) {
    EXPECT_EQ(ti.entries.load(), 1);
    EXPECT_EQ(ti.bad_returns.load(), 0);
    returned += ti.returns.load();
  }
  const auto misses = after.misses_return_stack - before.misses_return_stack;
  EXPECT_EQ(returned + static_cast<long>(misses), kConsumers)
      << returned << " return handlers ran and " << misses << " misses were counted for "
      << kConsumers << " consumers: a return was skipped silently";
  ASSERT_TRUE(e->detach(hs).ok());
}

}  // namespace
