// Short jumps over padding (src/core/text_patch_short.h, plan_ret_over_padding): a site
// whose first instruction is a 1-byte `ret` followed by padding takes the 2-byte jump, its
// second byte written over a padding byte that nothing executes. Two probes a few bytes
// apart (the first's 5-byte jump would cover the second) take a short jump each. Callers that block
// every signal (and so die of any trap) race through attach and detach rounds with exact counts,
// the bytes equal the file's after each detach, and the variant that leaves such a site an int3
// (use_ret_short_jumps(false)) kills them with SIGTRAP. A `ret` followed by code of its
// own function, and glibc's pthread_kill_other_threads_np.
#include <dlfcn.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "../api/internal_probes.h"
#include "core/site_builder.h"
#include "core/text_patch_short.h"
#include "elf/modules.h"
#include "hotprobe/probe.h"

// hp_rsj_ret: c3 ret (its FDE and symbol are 1 byte), then int3 fill to the next 16.
// hp_rsj_ret_code: c3 ret; 31 c0 xor eax, eax; c3 ret: the byte after the first ret
// is its own function's code (a jump could land there), so the site stays int3.
// hp_rsj_near: 48 89 f8 mov rax, rdi (+0); 48 83 c0 01 add rax, 1 (+3); c3 ret (+7), then
// int3 fill: a 5-byte jump at +0 covers +3, so probes at both take short jumps.
asm(R"(
  .pushsection .text
  .p2align 4
  .globl hp_rsj_ret
  .type hp_rsj_ret, @function
hp_rsj_ret:
  .cfi_startproc
  ret
  .cfi_endproc
  .size hp_rsj_ret, .-hp_rsj_ret
  .p2align 4, 0xcc

  .globl hp_rsj_ret_code
  .type hp_rsj_ret_code, @function
hp_rsj_ret_code:
  .cfi_startproc
  ret
  xorl %eax, %eax
  ret
  .cfi_endproc
  .size hp_rsj_ret_code, .-hp_rsj_ret_code
  .p2align 4, 0xcc

  .globl hp_rsj_near
  .type hp_rsj_near, @function
hp_rsj_near:
  .cfi_startproc
  movq %rdi, %rax
  addq $1, %rax
  ret
  .cfi_endproc
  .size hp_rsj_near, .-hp_rsj_near
  .p2align 5, 0xcc
  .popsection
)");

extern "C" {
void hp_rsj_ret();
void hp_rsj_ret_code();
void hp_rsj_near();
}

namespace {

[[maybe_unused]] ::testing::Environment* const g_install_internal_probes =
    ::testing::AddGlobalTestEnvironment(new hp_test::InternalProbesEnvironment(":hp_rsj_ret", [] {
      hp::core::use_ret_short_jumps(true);  // before the module watcher's site is built
    }));

using hotprobe::Engine;
using hotprobe::Hit;
using hotprobe::ProbeSpec;

std::uintptr_t addr(const void* f) {
  return reinterpret_cast<std::uintptr_t>(f);
}

// The module's file bytes around `a` (`before` bytes before it, `len` bytes) and the same
// bytes in memory; how many differ.
std::size_t differing(std::uintptr_t a, std::size_t before, std::size_t len) {
  auto mods = hp::elf::ModuleList::of_self();
  if (!mods.ok()) return len + 1;
  auto loc = mods->locate(a - before);
  if (!loc.ok()) return len + 1;
  auto bytes = mods->read_file_bytes(*loc->module, loc->file_offset, len);
  if (!bytes.ok() || bytes->size() != len) return len + 1;
  const auto* m = reinterpret_cast<const std::uint8_t*>(a - before);
  std::size_t n = 0;
  for (std::size_t i = 0; i < len; i++)
    n += (*bytes)[i] != m[i];
  return n;
}

// Hits, on the thread that made them (a caller tells a call through the probe from one
// that was not) and in all.
thread_local long t_hits = 0;
std::atomic<long> g_hits{0};
void hit(Hit&) {
  t_hits++;
  g_hits.fetch_add(1, std::memory_order_relaxed);
}

ProbeSpec spec(std::string target) {
  ProbeSpec s;
  s.target = std::move(target);
  s.on_entry = &hit;
  return s;
}

struct Round {
  std::atomic<unsigned>* phase;
  void (*fn)();
  long per_call;  // probes a call goes through while attached
  std::atomic<bool> stop{false};
  std::atomic<int> calling{0};
  std::atomic<long> calls{0}, through{0}, wrong{0};
};

// Calls the function until the round ends; a call made wholly while attached (phase
// 4k+2) must hit every probe once, one made wholly while detached (4k) none.
void* caller(void* arg) {
  auto* r = static_cast<Round*>(arg);
  void (*volatile call)() = r->fn;
  long n = 0, p = 0, w = 0;
  r->calling.fetch_add(1);
  while (!r->stop.load(std::memory_order_relaxed)) {
    const unsigned s0 = r->phase->load(std::memory_order_acquire);
    const long before = t_hits;
    call();
    const long d = t_hits - before;
    const unsigned s1 = r->phase->load(std::memory_order_acquire);
    n++;
    p += d;
    if (d < 0 || d > r->per_call) w++;
    if (s0 == s1 && s0 % 4 == 0 && d != 0) w++;
    if (s0 == s1 && s0 % 4 == 2 && d != r->per_call) w++;
  }
  r->calls.fetch_add(n);
  r->through.fetch_add(p);
  r->wrong.fetch_add(w);
  return nullptr;
}

// `rounds` rounds of: callers of `fn` started with every signal blocked; the probes
// `targets` attached in one batch; a hit awaited; detached; joined. 0 when every count
// is exact, no site is an int3 and the bytes are the file's after each detach.
int race(int rounds, void (*fn)() = &hp_rsj_ret,
         std::vector<std::string> targets = {":hp_rsj_ret"}) {
  auto e = Engine::create();
  if (!e.ok()) return 2;
  const std::uintptr_t f = addr(reinterpret_cast<const void*>(fn));
  std::vector<ProbeSpec> specs;
  for (const std::string& t : targets)
    specs.push_back(spec(t));
  std::atomic<unsigned> phase{0};
  long calls = 0, through = 0, wrong = 0, traps = 0, failed = 0, unrestored = 0;
  sigset_t all, old;
  sigfillset(&all);
  constexpr int kCallers = 3;
  for (int round = 0; round < rounds; round++) {
    Round r;
    r.phase = &phase;
    r.fn = fn;
    r.per_call = static_cast<long>(targets.size());
    std::vector<pthread_t> threads;
    pthread_sigmask(SIG_SETMASK, &all, &old);  // inherited by the callers
    for (int i = 0; i < kCallers; i++) {
      pthread_t t;
      if (pthread_create(&t, nullptr, caller, &r) == 0) threads.push_back(t);
    }
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    while (r.calling.load() < static_cast<int>(threads.size()))
      sched_yield();
    const auto before = (*e)->stats();
    phase.fetch_add(1);  // attaching
    auto batch = (*e)->attach(specs, hotprobe::BatchMode::all_or_nothing);
    std::vector<hotprobe::Handle> handles;
    std::string error;
    for (auto& h : batch) {
      if (h.ok())
        handles.insert(handles.end(), h->begin(), h->end());
      else
        error = h.error().message();
    }
    if (error.empty()) {
      phase.fetch_add(1);  // attached
      traps += static_cast<long>((*e)->stats().sites_int3 - before.sites_int3);
      const long seen = g_hits.load();
      while (g_hits.load() == seen)  // a caller went through the site
        sched_yield();
      phase.fetch_add(1);  // detaching
      if (!(*e)->detach(handles).ok()) failed++;
      phase.fetch_add(1);  // detached
      unrestored += differing(f, 64, 128) != 0;
    } else {
      std::fprintf(stderr, "attach failed: %s\n", error.c_str());
      failed++;
      phase.fetch_add(3);
    }
    r.stop = true;
    for (pthread_t t : threads)
      pthread_join(t, nullptr);
    calls += r.calls.load();
    through += r.through.load();
    wrong += r.wrong.load();
  }
  std::printf(
      "rounds=%d calls=%ld through_probe=%ld hits=%ld wrong=%ld traps=%ld failed=%ld "
      "unrestored=%ld\n",
      rounds, calls, through, g_hits.load(), wrong, traps, failed, unrestored);
  std::fflush(stdout);
  const bool exact = wrong == 0 && failed == 0 && traps == 0 && unrestored == 0 &&
                     through == g_hits.load() && through >= rounds;
  return exact ? 0 : 1;
}

// Each round waits out the engine's step 2 for callers that block the move signal.
constexpr int kRounds = 8;

TEST(RetShortJump, ThreadsBlockingEverySignalRaceThroughAttachAndDetachWithExactCounts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(std::_Exit(race(kRounds)), testing::ExitedWithCode(0), "");
}

// Probes at +0 and +3 of hp_rsj_near, in one batch: each takes a short jump.
TEST(RetShortJump, ProbesAFewBytesApartRaceThroughAttachAndDetachWithExactCounts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(std::_Exit(race(kRounds, &hp_rsj_near, {":hp_rsj_near", ":hp_rsj_near+3"})),
              testing::ExitedWithCode(0), "");
}

// The variant that makes them int3 sites (as before short jumps apart) kills the callers.
TEST(RetShortJump, ProbesAFewBytesApartAsInt3SitesKillACallerThatBlocksSigtrap) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        hp::core::use_short_jumps_apart_for_testing(false);
        race(kRounds, &hp_rsj_near, {":hp_rsj_near", ":hp_rsj_near+3"});
        std::_Exit(0);
      },
      testing::KilledBySignal(SIGTRAP), "");
}

// The variant that leaves a 1-byte `ret` an int3 site: the first caller that runs into it
// while attached (the round waits for one) has SIGTRAP blocked, and the kernel kills the
// process.
TEST(RetShortJump, AsAnInt3SiteItKillsACallerThatBlocksSigtrap) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        hp::core::use_ret_short_jumps(false);
        race(kRounds);
        std::_Exit(0);
      },
      testing::KilledBySignal(SIGTRAP), "");
}

TEST(RetShortJump, InstructionLayoutIsWhatTheTestsAssume) {
  const auto* r = reinterpret_cast<const unsigned char*>(&hp_rsj_ret);
  EXPECT_EQ(r[0], 0xc3);
  for (int i = 1; i < 6; i++)
    EXPECT_EQ(r[i], 0xcc) << "int3 fill at +" << i;
  const auto* c = reinterpret_cast<const unsigned char*>(&hp_rsj_ret_code);
  EXPECT_EQ(c[0], 0xc3);
  EXPECT_EQ(c[1], 0x31);
}

TEST(RetShortJump, ARetBeforeFillIsAJmpSiteAndDetachRestoresSiteAndPad) {
  auto e = Engine::create().value();
  const std::uintptr_t f = addr(reinterpret_cast<const void*>(&hp_rsj_ret));
  ASSERT_EQ(differing(f, 64, 128), 0u);
  const auto before = e->stats();
  const long hits = g_hits.load();
  auto h = e->attach(spec(":hp_rsj_ret"));
  ASSERT_TRUE(h.ok()) << h.error().message();
  const auto st = e->stats();
  EXPECT_EQ(st.sites_jmp - before.sites_jmp, 1u);
  EXPECT_EQ(st.sites_int3 - before.sites_int3, 0u) << "a ret before padding needs no trap";
  const auto* m = reinterpret_cast<const unsigned char*>(f);
  EXPECT_EQ(m[0], 0xEB) << "the site is a jmp rel8";
  EXPECT_EQ(differing(f, 64, 128), 2u + 5u) << "the head and the pad, nothing else";
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  for (int i = 0; i < 1000; i++)
    hp_rsj_ret();
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  EXPECT_EQ(g_hits.load() - hits, 1000);
  ASSERT_TRUE(e->detach(*h).ok());
  EXPECT_EQ(differing(f, 64, 128), 0u) << "site and pad are the file's bytes again";
}

TEST(RetShortJump, ARetFollowedByItsFunctionsCodeStaysInt3) {
  auto e = Engine::create().value();
  const auto before = e->stats();
  auto h = e->attach(spec(":hp_rsj_ret_code"));
  ASSERT_TRUE(h.ok()) << h.error().message();
  EXPECT_EQ(e->stats().sites_int3 - before.sites_int3, 1u)
      << "the byte after the ret may be a jump target";
  const long hits = g_hits.load();
  hp_rsj_ret_code();
  EXPECT_EQ(g_hits.load() - hits, 1);
  ASSERT_TRUE(e->detach(*h).ok());
}

TEST(RetShortJump, ProbesAFewBytesApartTakeAShortJumpEach) {
  auto e = Engine::create().value();
  const std::uintptr_t f = addr(reinterpret_cast<const void*>(&hp_rsj_near));
  ASSERT_EQ(differing(f, 64, 128), 0u);
  const auto before = e->stats();
  const long hits = g_hits.load();
  const ProbeSpec specs[] = {spec(":hp_rsj_near"), spec(":hp_rsj_near+3")};
  auto batch = e->attach(specs, hotprobe::BatchMode::all_or_nothing);
  std::vector<hotprobe::Handle> handles;
  for (auto& h : batch) {
    ASSERT_TRUE(h.ok()) << h.error().message();
    handles.insert(handles.end(), h->begin(), h->end());
  }
  EXPECT_EQ(e->stats().sites_jmp - before.sites_jmp, 2u);
  EXPECT_EQ(e->stats().sites_int3 - before.sites_int3, 0u);
  const auto* m = reinterpret_cast<const unsigned char*>(f);
  EXPECT_EQ(m[0], 0xEB);
  EXPECT_EQ(m[3], 0xEB);
  EXPECT_EQ(differing(f, 64, 128), 2u * (2u + 5u)) << "two heads and two pads";
  hp_rsj_near();
  EXPECT_EQ(g_hits.load() - hits, 2);
  ASSERT_TRUE(e->detach(handles).ok());
  EXPECT_EQ(differing(f, 64, 128), 0u);
}

// The engine's own probe on ld.so's _dl_debug_state (a 1-byte ret) is placed with the
// first engine: no site of the process is a trap.
TEST(RetShortJump, TheModuleWatcherIsNoTrap) {
  auto e = Engine::create().value();
  EXPECT_EQ(e->stats().sites_int3, 0u);
}

// glibc's pthread_kill_other_threads_np (a compat symbol) is a 1-byte ret.
TEST(RetShortJump, GlibcPthreadKillOtherThreadsIsNoTrap) {
  void* impl = dlvsym(RTLD_DEFAULT, "pthread_kill_other_threads_np", "GLIBC_2.2.5");
  if (!impl || *static_cast<const unsigned char*>(impl) != 0xc3)
    GTEST_SKIP() << "this libc's pthread_kill_other_threads_np is not a 1-byte ret";
  if (differing(addr(impl), 64, 128) != 0) GTEST_SKIP() << "its code differs from the file";
  auto e = Engine::create().value();
  const auto before = e->stats();
  const long hits = g_hits.load();
  auto h = e->attach(spec("libc.so.6:pthread_kill_other_threads_np@GLIBC_2.2.5"));
  ASSERT_TRUE(h.ok()) << h.error().message();
  EXPECT_EQ(e->stats().sites_int3 - before.sites_int3, 0u);
  EXPECT_EQ(e->stats().sites_jmp - before.sites_jmp, 1u);
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  reinterpret_cast<void (*)()>(impl)();
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  EXPECT_EQ(g_hits.load() - hits, 1);
  ASSERT_TRUE(e->detach(*h).ok());
  EXPECT_EQ(differing(addr(impl), 64, 128), 0u);
}

}  // namespace
