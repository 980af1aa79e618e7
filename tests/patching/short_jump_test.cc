// Short-jump sites (src/core/text_patch_short.h): where no 5-byte jump fits, a 2-byte
// `jmp rel8` to a 5-byte jump written in the padding between functions. The protocol
// writes the pad before the head when attaching and after it when restoring, so threads
// that block every signal (and so die of any trap) race through the site with exact
// counts; the variant that writes the head first sends them into the padding's int3.
// Through the engine: the targets that get a short jump, the padding a function falls
// through (as glibc's __memmove_chk into memmove) that is never used, glibc's memcpy
// (which mempcpy enters at +3), and the bytes of site and padding equal to the file's
// after detach.
#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "../api/internal_probes.h"
#include "core/text_patch.h"
#include "elf/modules.h"
#include "hotprobe/probe.h"

// Byte layouts (InstructionLayoutIsWhatTheTestsAssume):
//   hp_sj_short:  31 c0 xor eax, eax; c3 ret (3 bytes), then the assembler's nop fill
//   hp_sj_chk:    130 nops; cmp rdi, rsi; jb hp_sj_fail; then nop fill that falls
//                 through into
//   hp_sj_loop:   31 c0 xor eax, eax; 1: add eax, 1; dec rdi; jnz 1b (a branch to +2: no
//                 5-byte jump); jmp over 160 nops; ret. Its only fill in rel8 reach is
//                 hp_sj_chk's, which runs: the site must stay int3.
asm(R"(
  .pushsection .text
  .p2align 4
  .globl hp_sj_short
  .type hp_sj_short, @function
hp_sj_short:
  .cfi_startproc
  xorl %eax, %eax
  ret
  .cfi_endproc
  .size hp_sj_short, .-hp_sj_short

  .p2align 4
  .globl hp_sj_chk
  .type hp_sj_chk, @function
hp_sj_chk:
  .cfi_startproc
  .fill 130, 1, 0x90
  cmpq %rsi, %rdi
  jb hp_sj_fail
  .cfi_endproc
  .size hp_sj_chk, .-hp_sj_chk
  .p2align 5
  .globl hp_sj_loop
  .type hp_sj_loop, @function
hp_sj_loop:
  .cfi_startproc
  xorl %eax, %eax
1:
  addl $1, %eax
  decq %rdi
  jnz 1b
  jmp 2f
  .fill 160, 1, 0x90
2:
  ret
  .cfi_endproc
  .size hp_sj_loop, .-hp_sj_loop

  .p2align 4
  .globl hp_sj_fail
  .type hp_sj_fail, @function
hp_sj_fail:
  .cfi_startproc
  movq $-1, %rax
  ret
  .cfi_endproc
  .size hp_sj_fail, .-hp_sj_fail
  .popsection
)");

extern "C" {
long hp_sj_short();
long hp_sj_chk(long a, long b);
long hp_sj_loop(long n);
}

namespace {

[[maybe_unused]] ::testing::Environment* const g_install_internal_probes =
    ::testing::AddGlobalTestEnvironment(new hp_test::InternalProbesEnvironment(":hp_sj_short"));

using hp::core::apply_patches;
using hp::core::PatchSite;

std::uintptr_t addr(const void* f) {
  return reinterpret_cast<std::uintptr_t>(f);
}

// A page of code: f (mov rax, rdi; mov eax, 1; ret) at +64, int3 fill around it (the
// pad goes at +32), g (counts a hit, returns 2) at +512. Attached, f's first two bytes
// jump to the pad, and the pad to g.
class ShortCode {
 public:
  ShortCode() {
    base_ = static_cast<std::uint8_t*>(
        mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    std::memset(base_, 0xCC, 4096);
    f = reinterpret_cast<std::uintptr_t>(base_ + 64);
    pad = reinterpret_cast<std::uintptr_t>(base_ + 32);
    const std::uint8_t body[] = {0x48, 0x89, 0xf8, 0xb8, 1, 0, 0, 0, 0xc3};
    std::memcpy(base_ + 64, body, sizeof body);
    std::uint8_t* q = base_ + 512;
    g = reinterpret_cast<std::uintptr_t>(q);
    auto counter = reinterpret_cast<std::uint64_t>(&hits);
    *q++ = 0x48;
    *q++ = 0xb8;
    std::memcpy(q, &counter, 8);
    q += 8;
    const std::uint8_t tail[] = {0xf0, 0x48, 0xff, 0x00, 0xb8, 2, 0, 0, 0, 0xc3};
    std::memcpy(q, tail, sizeof tail);
    mprotect(base_, 4096, PROT_READ | PROT_EXEC);
    snapshot.assign(base_, base_ + 4096);
  }
  ~ShortCode() { munmap(base_, 4096); }
  ShortCode(const ShortCode&) = delete;
  ShortCode& operator=(const ShortCode&) = delete;

  int call() const { return reinterpret_cast<int (*)()>(f)(); }
  bool as_built() const { return std::memcmp(base_, snapshot.data(), 4096) == 0; }

  std::vector<std::uint8_t> head() const {
    return {0xEB, static_cast<std::uint8_t>(pad - (f + 2))};
  }
  std::vector<std::uint8_t> pad_jump() const {
    std::vector<std::uint8_t> b(5);
    b[0] = 0xE9;
    const auto r = static_cast<std::int32_t>(g - (pad + 5));
    std::memcpy(&b[1], &r, 4);
    return b;
  }
  PatchSite attach() const {
    PatchSite s;
    s.addr = f;
    s.old_bytes = std::vector<std::uint8_t>{0x48, 0x89};
    s.new_bytes = head();
    s.trap_target = g;
    s.pad_at = pad;
    s.pad_old = std::vector<std::uint8_t>(5, 0xCC);
    s.pad_new = pad_jump();
    s.pad_first = true;
    return s;
  }
  PatchSite detach() const {
    PatchSite s;
    s.addr = f;
    s.old_bytes = head();
    s.new_bytes = std::vector<std::uint8_t>{0x48, 0x89};
    s.trap_target = f;
    s.pad_at = pad;
    s.pad_old = pad_jump();
    s.pad_new = std::vector<std::uint8_t>(5, 0xCC);
    s.pad_first = false;
    return s;
  }

  std::atomic<std::uint64_t> hits{0};
  std::uintptr_t f = 0, pad = 0, g = 0;
  std::vector<std::uint8_t> snapshot;

 private:
  std::uint8_t* base_ = nullptr;
};

struct Round {
  const ShortCode* code;
  std::atomic<unsigned>* phase;
  std::atomic<bool> stop{false};
  std::atomic<int> calling{0};
  std::atomic<long> calls{0}, through{0}, wrong{0};
};

// Calls the site until the round ends; a call made wholly while attached (phase 4k+2)
// must go through the probe, one made wholly while detached (4k) must not.
void* caller(void* arg) {
  auto* r = static_cast<Round*>(arg);
  long n = 0, p = 0, w = 0;
  r->calling.fetch_add(1);
  while (!r->stop.load(std::memory_order_relaxed)) {
    const unsigned s0 = r->phase->load(std::memory_order_acquire);
    const int v = r->code->call();
    const unsigned s1 = r->phase->load(std::memory_order_acquire);
    n++;
    p += v == 2;
    if (v != 1 && v != 2) w++;
    if (s0 == s1 && s0 % 4 == 0 && v != 1) w++;
    if (s0 == s1 && s0 % 4 == 2 && v != 2) w++;
  }
  r->calls.fetch_add(n);
  r->through.fetch_add(p);
  r->wrong.fetch_add(w);
  return nullptr;
}

struct Outcome {
  int rounds = 0, failed = 0;
  long calls = 0, through = 0, wrong = 0;
  std::uint64_t hits = 0;
  bool restored = true;  // the page equals its first state after every detach
};

// `rounds` rounds of: callers started with every signal blocked; attach; detach; joined.
Outcome race(int rounds) {
  ShortCode code;
  std::atomic<unsigned> phase{0};
  Outcome out;
  sigset_t all, old;
  sigfillset(&all);
  constexpr int kCallers = 3;
  for (int round = 0; round < rounds; round++) {
    Round r;
    r.code = &code;
    r.phase = &phase;
    std::vector<pthread_t> threads;
    pthread_sigmask(SIG_SETMASK, &all, &old);  // inherited by the callers
    for (int i = 0; i < kCallers; i++) {
      pthread_t t;
      if (pthread_create(&t, nullptr, caller, &r) == 0) threads.push_back(t);
    }
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    while (r.calling.load() < static_cast<int>(threads.size()))
      sched_yield();
    PatchSite on = code.attach();
    phase.fetch_add(1);  // attaching
    auto a = apply_patches({&on, 1});
    if (a.ok()) {
      phase.fetch_add(1);  // attached
      sched_yield();
      PatchSite off = code.detach();
      phase.fetch_add(1);  // detaching
      auto d = apply_patches({&off, 1});
      if (!d.ok()) {
        std::fprintf(stderr, "detach failed: %s\n", d.error().message().c_str());
        std::_Exit(3);
      }
      phase.fetch_add(1);  // detached
      out.restored &= code.as_built();
    } else {
      out.failed++;
      std::fprintf(stderr, "attach failed: %s\n", a.error().message().c_str());
      phase.fetch_add(3);
    }
    r.stop = true;
    for (pthread_t t : threads)
      pthread_join(t, nullptr);
    out.rounds++;
    out.calls += r.calls.load();
    out.through += r.through.load();
    out.wrong += r.wrong.load();
  }
  out.hits = code.hits.load();
  std::printf("pads_left=%llu\n", (unsigned long long)hp::core::patch_totals().short_pads_left);
  std::printf("rounds=%d failed=%d calls=%ld through_probe=%ld hits=%llu wrong=%ld restored=%d\n",
              out.rounds, out.failed, out.calls, out.through, (unsigned long long)out.hits,
              out.wrong, out.restored);
  std::fflush(stdout);
  return out;
}

constexpr int kRounds = 20;

TEST(ShortJump, ThreadsBlockingEverySignalRaceThroughAttachAndDetachWithExactCounts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        const Outcome o = race(kRounds);
        const bool exact = o.wrong == 0 && o.failed == 0 && o.rounds == kRounds &&
                           o.hits == static_cast<std::uint64_t>(o.through) && o.through > 0 &&
                           o.restored;
        std::_Exit(exact ? 0 : 1);
      },
      testing::ExitedWithCode(0), "");
}

// The variant that writes the head before the pad: a caller takes the new jump into the
// padding's int3 while its signals are blocked, and the kernel kills the process.
TEST(ShortJump, HeadBeforePadKillsACallerThatBlocksSigtrap) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        hp::core::use_head_before_pad_for_testing(true);
        race(kRounds);
        std::_Exit(0);  // survived: the test's callers never met the window
      },
      testing::KilledBySignal(SIGTRAP), "");
}

// ---------------------------------------------------------------------------------------
// Through the engine.

using hotprobe::Engine;
using hotprobe::Hit;
using hotprobe::ProbeSpec;

struct Count {
  std::atomic<long> n{0};
  std::atomic<std::uintptr_t> only_rdi{0};  // count only calls with this first argument
};

void count(Hit& h) {
  auto* c = static_cast<Count*>(h.cookie);
  const std::uintptr_t want = c->only_rdi.load(std::memory_order_relaxed);
  if (want == 0 || h.regs->arg(0) == want) c->n.fetch_add(1, std::memory_order_relaxed);
}

ProbeSpec spec(std::string target, Count* c) {
  ProbeSpec s;
  s.target = std::move(target);
  s.on_entry = &count;
  s.cookie = c;
  return s;
}

// The module's file bytes around `a` (from `before` bytes before it, `len` bytes) and
// the same bytes in memory.
struct Around {
  std::vector<std::uint8_t> file, memory;
};
Around around(std::uintptr_t a, std::size_t before, std::size_t len) {
  Around r;
  auto mods = hp::elf::ModuleList::of_self();
  if (!mods.ok()) return r;
  auto loc = mods->locate(a - before);
  if (!loc.ok()) return r;
  auto bytes = mods->read_file_bytes(*loc->module, loc->file_offset, len);
  if (!bytes.ok()) return r;
  r.file = *bytes;
  const auto* m = reinterpret_cast<const std::uint8_t*>(a - before);
  r.memory.assign(m, m + len);
  return r;
}

std::size_t differing(const Around& r) {
  std::size_t n = 0;
  for (std::size_t i = 0; i < r.file.size() && i < r.memory.size(); i++)
    n += r.file[i] != r.memory[i];
  return n;
}

TEST(ShortJump, InstructionLayoutIsWhatTheTestsAssume) {
  const auto* s = reinterpret_cast<const unsigned char*>(&hp_sj_short);
  EXPECT_EQ(s[0], 0x31);
  EXPECT_EQ(s[2], 0xc3);
  EXPECT_EQ(hp_sj_short(), 0);
  EXPECT_EQ(hp_sj_chk(1, 2), -1);
  EXPECT_EQ(hp_sj_loop(4), 4);
  // hp_sj_chk falls through its fill into hp_sj_loop.
  EXPECT_EQ(hp_sj_chk(3, 1), 3);
  EXPECT_LT(addr(reinterpret_cast<const void*>(&hp_sj_loop)) -
                addr(reinterpret_cast<const void*>(&hp_sj_chk)),
            200u);
}

TEST(ShortJump, AThreeByteFunctionTakesAShortJumpAndDetachRestoresSiteAndPad) {
  auto e = Engine::create().value();
  Count c;
  const auto before = e->stats();
  const std::uintptr_t f = addr(reinterpret_cast<const void*>(&hp_sj_short));
  const Around clean = around(f, 128, 264);
  ASSERT_FALSE(clean.file.empty());
  ASSERT_EQ(differing(clean), 0u);
  auto h = e->attach(spec(":hp_sj_short", &c));
  ASSERT_TRUE(h.ok()) << h.error().message();
  auto st = e->stats();
  EXPECT_EQ(st.sites_jmp - before.sites_jmp, 1u);
  EXPECT_EQ(st.sites_int3 - before.sites_int3, 0u) << "a 2-byte first instruction needs no trap";
  const Around on = around(f, 128, 264);
  EXPECT_EQ(on.memory[128], 0xEB) << "the site is a jmp rel8";
  EXPECT_EQ(differing(on), 2u + 5u) << "the head and the pad, nothing else";
  // Threads that block every signal would die of a trap.
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  long sum = 0;
  for (int i = 0; i < 1000; i++)
    sum += hp_sj_short();
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  EXPECT_EQ(sum, 0);
  EXPECT_EQ(c.n.load(), 1000);
  ASSERT_TRUE(e->detach(*h).ok());
  const Around off = around(f, 128, 264);
  EXPECT_EQ(differing(off), 0u) << "site and pad are the file's bytes again";
  EXPECT_EQ(hp_sj_short(), 0);
  EXPECT_EQ(c.n.load(), 1000);
}

TEST(ShortJump, FillThatAFunctionFallsThroughIsNotAPad) {
  auto e = Engine::create().value();
  Count c;
  const auto before = e->stats();
  auto h = e->attach(spec(":hp_sj_loop", &c));
  ASSERT_TRUE(h.ok()) << h.error().message();
  auto st = e->stats();
  EXPECT_EQ(st.sites_int3 - before.sites_int3, 1u)
      << "the only fill in reach runs (hp_sj_chk falls through it): a trap";
  EXPECT_EQ(st.sites_jmp - before.sites_jmp, 0u);
  EXPECT_EQ(hp_sj_chk(2, 1), 2) << "the fill between still runs as nops, into hp_sj_loop";
  EXPECT_EQ(hp_sj_loop(7), 7);
  EXPECT_EQ(c.n.load(), 2);  // hp_sj_chk fell into it once
  ASSERT_TRUE(e->detach(*h).ok());
}

// glibc's memcpy: mempcpy jumps to its second instruction, so no 5-byte jump fits; the
// short jump does, and a thread that blocks every signal calls it.
TEST(ShortJump, GlibcMemcpyIsNoTrapAndDetachRestoresTheFileBytes) {
  void* impl = dlsym(RTLD_DEFAULT, "memcpy");
  ASSERT_NE(impl, nullptr);
  auto e = Engine::create().value();
  Count c;
  static char dst[64], src[64] = "short jump";
  c.only_rdi = addr(dst);
  const auto before = e->stats();
  const Around clean = around(addr(impl), 128, 264);
  ASSERT_FALSE(clean.file.empty());
  if (differing(clean) != 0) GTEST_SKIP() << "memcpy's code differs from libc's file (a tracer?)";
  auto h = e->attach(spec("libc.so.6:memcpy", &c));
  ASSERT_TRUE(h.ok()) << h.error().message();
  EXPECT_EQ(e->stats().sites_int3 - before.sites_int3, 0u) << "memcpy must not be a trap";
  auto* volatile call = reinterpret_cast<void* (*)(void*, const void*, std::size_t)>(impl);
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  for (int i = 0; i < 500; i++)
    call(dst, src, sizeof src);
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  EXPECT_EQ(c.n.load(), 500);
  EXPECT_STREQ(dst, "short jump");
  ASSERT_TRUE(e->detach(*h).ok());
  EXPECT_EQ(differing(around(addr(impl), 128, 264)), 0u);
}

}  // namespace
