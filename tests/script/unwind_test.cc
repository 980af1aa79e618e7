// ustack by CFI (unwind_table.h): the tables built from the loaded modules' .eh_frame,
// the walk through a ten-frame chain built without frame pointers (fixture/unwind_chain.c,
// -O2 -fomit-frame-pointer) with every frame named, the modes, and walks over garbage
// stacks (on this thread's own stack and on another mapping) that end without a fault.
#include <dlfcn.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "script/program.h"
#include "script/run_stack.h"
#include "script/symbolize.h"
#include "script/unwind_table.h"

extern "C" int hp_chain_1(std::uint64_t* out, void (*cb)(std::uint64_t*), int x);
extern "C" int hp_chain_10(std::uint64_t* out, void (*cb)(std::uint64_t*), int x);

namespace hotprobe::script {
namespace {

// Runs `fn` inside the fixture's chain with the registers of hp_chain_10 right after its
// call to hp_unwind_capture (the chain's frames are there while `fn` runs).
template <typename Fn>
[[gnu::noinline]] void run_in_chain(Fn fn) {
  static thread_local Fn* current;
  current = &fn;
  std::uint64_t at[3] = {};
  hp_chain_1(
      at,
      [](std::uint64_t* a) {
        Regs r{};
        r.rip = a[0];
        r.rsp = a[1];
        r.rbp = a[2];
        (*current)(r);
      },
      0);
  __asm__ volatile("");  // not a tail call: run_in_chain's frame is the chain's caller
}
constexpr std::string_view kChainCaller =
    "void hotprobe::script::(anonymous namespace)::run_in_chain";

// A word of another function's frame, read as the unwinder reads it (ASan would take the
// read for one of that frame's objects' red zones).
[[gnu::no_sanitize_address]] std::uint64_t stack_word(const std::uint64_t* p) {
  return *p;
}

std::vector<std::string> names(const std::uint64_t* out) {
  Symbolizer sym = Symbolizer::current();
  std::vector<std::string> v;
  for (std::uint64_t i = 0; i < out[0]; ++i)
    v.push_back(sym.name(out[1 + i]).symbol);
  return v;
}

class Unwind : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_GT(unwind::build_now_for_test(), 0u); }
  void TearDown() override { unwind::set_mode(unwind::Mode::fp); }
};

TEST_F(Unwind, TheChainsRowsSayWhereTheCfaIs) {
  const auto rows = unwind::rows_for_test(reinterpret_cast<std::uint64_t>(&hp_chain_1));
  ASSERT_FALSE(rows.empty());
  for (std::size_t i = 1; i < rows.size(); ++i)
    ASSERT_LT(rows[i - 1].pc, rows[i].pc);
  // hp_chain_1's first instruction: CFA = rsp + 8, rbp as the caller left it.
  Dl_info info{};
  ASSERT_NE(dladdr(reinterpret_cast<void*>(&hp_chain_1), &info), 0);
  const std::uint64_t off = reinterpret_cast<std::uint64_t>(&hp_chain_1) -
                            reinterpret_cast<std::uint64_t>(info.dli_fbase);
  unwind::Rule r;
  ASSERT_EQ(unwind::find(reinterpret_cast<std::uint64_t>(&hp_chain_1), r), unwind::Found::rule);
  EXPECT_EQ(r.kind, unwind::Kind::rsp);
  EXPECT_EQ(r.cfa_off, 8);
  EXPECT_EQ(r.rbp_off, 0);
  bool found = false;
  for (const auto& row : rows)
    found |= row.pc == off;
  EXPECT_TRUE(found);
  // libc's table reaches past its signal trampoline's FDE (a CIE of its own, 'S') to
  // malloc, whose entry has the same rule.
  const auto m = reinterpret_cast<std::uint64_t>(dlsym(RTLD_DEFAULT, "malloc"));
  ASSERT_EQ(unwind::find(m, r), unwind::Found::rule);
  EXPECT_EQ(r.kind, unwind::Kind::rsp);
  EXPECT_EQ(r.cfa_off, 8);
  EXPECT_GT(unwind::rows_for_test(m).size(), 5000u);
}

TEST_F(Unwind, CfiNamesEveryFrameOfAChainWithoutFramePointers) {
  unwind::set_mode(unwind::Mode::cfi);
  std::vector<std::uint64_t> out(1 + 127), four(1 + 127);
  run_in_chain([&](const Regs& r) {
    capture_ustack(r, false, 127, out.data());
    capture_ustack(r, false, 4, four.data());  // at most the frames asked for
  });
  const auto got = names(out.data());
  ASSERT_GE(got.size(), 11u);
  for (int i = 0; i < 10; ++i)
    EXPECT_EQ(got[static_cast<std::size_t>(i)], "hp_chain_" + std::to_string(10 - i)) << i;
  // Then the test's own frames, up to main and libc's start.
  EXPECT_EQ(got[10].substr(0, kChainCaller.size()), kChainCaller) << got[10];
  bool main_seen = false;
  for (const auto& n : got)
    main_seen |= n == "main";
  EXPECT_TRUE(main_seen);
  EXPECT_EQ(four[0], 4u);
  EXPECT_EQ(names(four.data())[3], "hp_chain_7");
}

TEST_F(Unwind, FramePointersAloneLoseTheChainAndAutoFindsIt) {
  std::vector<std::uint64_t> out(1 + 127), aut(1 + 127);
  run_in_chain([&](const Regs& r) {
    unwind::set_mode(unwind::Mode::fp);
    capture_ustack(r, false, 127, out.data());
    unwind::set_mode(unwind::Mode::automatic);
    capture_ustack(r, false, 127, aut.data());
  });
  const auto fp = names(out.data());
  ASSERT_GE(fp.size(), 1u);
  EXPECT_TRUE(fp.size() < 2 || fp[1] != "hp_chain_9");  // no rbp chain through the fixture
  const auto a = names(aut.data());
  ASSERT_GE(a.size(), 10u);
  EXPECT_EQ(a[1], "hp_chain_9");
  EXPECT_EQ(a[9], "hp_chain_1");
}

// At a function's first instruction the return address is at [rsp]: the CFI says so
// (CFA = rsp + 8), with no entry rule needed. The state at hp_chain_10's entry is rebuilt
// from the live chain.
TEST_F(Unwind, AtAnEntryTheCallerFollows) {
  unwind::set_mode(unwind::Mode::cfi);
  std::vector<std::uint64_t> at(1 + 127);
  run_in_chain([&](const Regs& c) {
    std::vector<std::uint64_t> out(1 + 127);
    capture_ustack(c, false, 127, out.data());
    ASSERT_GE(out[0], 11u);
    // hp_chain_10's return address into hp_chain_9 is out[2]; the stack word holding it
    // is where hp_chain_10's rsp was at its entry.
    const auto* words = reinterpret_cast<const std::uint64_t*>(c.rsp);
    std::uint64_t entry_sp = 0;
    for (int i = 0; i < 64 && !entry_sp; ++i)
      if (stack_word(words + i) == out[2]) entry_sp = c.rsp + 8 * static_cast<std::uint64_t>(i);
    ASSERT_NE(entry_sp, 0u);
    Regs e = c;
    e.rip = reinterpret_cast<std::uint64_t>(&hp_chain_10);
    e.rsp = entry_sp;
    capture_ustack(e, true, 127, at.data());
  });
  const auto got = names(at.data());
  ASSERT_GE(got.size(), 11u);
  EXPECT_EQ(got[0], "hp_chain_10");
  EXPECT_EQ(got[1], "hp_chain_9");
  EXPECT_EQ(got[10].substr(0, kChainCaller.size()), kChainCaller) << got[10];
}

// Code addresses to start walks from: this binary's and libc's text.
std::vector<std::uint64_t> code_addresses(std::mt19937_64& rng, std::size_t n) {
  std::vector<std::uint64_t> v;
  const std::uint64_t bases[] = {reinterpret_cast<std::uint64_t>(&hp_chain_1),
                                 reinterpret_cast<std::uint64_t>(&std::memcpy),
                                 reinterpret_cast<std::uint64_t>(&::malloc)};
  for (std::size_t i = 0; i < n; ++i)
    v.push_back(bases[i % 3] + rng() % 4096 - 2048);
  return v;
}

void walk_garbage(std::uint64_t* stack, std::size_t words, std::mt19937_64& rng,
                  std::uint64_t code) {
  for (std::size_t i = 0; i < words; ++i) {
    switch (rng() % 4) {
      case 0:
        stack[i] = rng();
        break;
      case 1:  // a pointer into the garbage itself
        stack[i] = reinterpret_cast<std::uint64_t>(&stack[rng() % words]);
        break;
      case 2:  // a code address
        stack[i] = code + rng() % 256;
        break;
      default:
        stack[i] = 0;
    }
  }
  Regs r{};
  r.rip = code;
  r.rsp = reinterpret_cast<std::uint64_t>(&stack[rng() % 64]);
  r.rbp = rng() % 2 ? rng() : reinterpret_cast<std::uint64_t>(&stack[rng() % words]);
  std::uint64_t out[1 + 127];
  for (unwind::Mode m : {unwind::Mode::cfi, unwind::Mode::automatic}) {
    unwind::set_mode(m);
    capture_ustack(r, rng() % 2, 127, out);
    ASSERT_LE(out[0], 127u);
    ASSERT_GE(out[0], 1u);
  }
}

// A thread whose own stack is garbage-filled (the walk's plain loads) and a garbage stack
// in a mapping that is not the thread's (process_vm_readv, next to unmapped pages): every
// walk ends within its bounds.
TEST_F(Unwind, GarbageStacksEndTheWalk) {
  std::thread t([] {
    std::mt19937_64 rng(7);
    for (std::uint64_t code : code_addresses(rng, 300)) {
      volatile std::uint64_t frame[512];
      walk_garbage(const_cast<std::uint64_t*>(frame), 512, rng, code);
    }
  });
  t.join();
  const std::size_t len = 1 << 16;
  auto* m = static_cast<char*>(
      mmap(nullptr, 3 * len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(m, MAP_FAILED);
  ASSERT_EQ(munmap(m + 2 * len, len), 0);  // the garbage ends at an unmapped page
  std::mt19937_64 rng(11);
  for (std::uint64_t code : code_addresses(rng, 300))
    walk_garbage(reinterpret_cast<std::uint64_t*>(m + len), len / 8, rng, code);
  munmap(m, 2 * len);
}

// A module mapped after the tables were built: a hit that meets it falls back (no_table)
// and asks; the builder thread builds its table and publishes a new set while other
// threads walk through the old one.
TEST_F(Unwind, AModuleLoadedLaterGetsItsTableWhileThreadsWalk) {
  unwind::set_mode(unwind::Mode::automatic);
  unwind::prepare();  // the builder thread
  std::atomic<bool> stop{false};
  std::vector<std::thread> walkers;
  for (int t = 0; t < 2; ++t)
    walkers.emplace_back([&] {
      while (!stop.load()) {
        run_in_chain([](const Regs& r) {
          std::uint64_t out[1 + 127];
          capture_ustack(r, false, 127, out);
          ASSERT_GE(out[0], 11u);
        });
      }
    });
  void* lib = dlopen("libsqlite3.so.0", RTLD_NOW | RTLD_LOCAL);  // not loaded before
  if (!lib) {
    stop.store(true);
    for (auto& w : walkers)
      w.join();
    GTEST_SKIP() << "no libsqlite3.so.0 to load (apt-get install libsqlite3-0)";
  }
  const auto fn = reinterpret_cast<std::uint64_t>(dlsym(lib, "sqlite3_libversion"));
  ASSERT_NE(fn, 0u);
  unwind::Rule r;
  // Asked for by the first lookup; built by the builder thread (a bounded wait for a
  // condition, not a timing assertion).
  bool built = false;
  for (int i = 0; i < 2000 && !built; ++i) {
    built = unwind::find(fn, r) == unwind::Found::rule && r.kind == unwind::Kind::rsp;
    if (!built) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  stop.store(true);
  for (auto& w : walkers)
    w.join();
  EXPECT_TRUE(built) << "libsqlite3's table was not built";
  EXPECT_EQ(r.cfa_off, 8);
}

// A rebuild that finds no module new (a pc in no module, JIT code, asks again and again)
// publishes no new set: sets are never freed.
TEST_F(Unwind, ARebuildWithNothingNewKeepsTheSet) {
  const std::size_t before = unwind::sets_published_for_test();
  for (int i = 0; i < 5; ++i)
    unwind::build_now_for_test();
  EXPECT_EQ(unwind::sets_published_for_test(), before);
}

// A fork while another thread builds tables (and holds their lock): the child builds its
// own. Each child must end by itself; one that hangs is killed and fails the test.
TEST_F(Unwind, AForkChildBuildsTablesWhileTheParentWasBuilding) {
  std::atomic<bool> stop{false};
  std::thread builder([&] {
    while (!stop.load())
      unwind::build_now_for_test();
  });
  int hung = 0, failed = 0;
  for (int i = 0; i < 20 && hung == 0; ++i) {
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) _exit(unwind::build_now_for_test() > 0 ? 0 : 1);
    int status = 0;
    pid_t done = 0;
    // A bounded wait for the child's end (not a timing assertion: a child that builds
    // ends within milliseconds; one deadlocked on its lock never does).
    for (int k = 0; k < 1000 && done == 0; ++k) {
      done = waitpid(pid, &status, WNOHANG);
      if (done == 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (done == 0) {
      ++hung;
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
    } else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      ++failed;
    }
  }
  stop.store(true);
  builder.join();
  EXPECT_EQ(hung, 0);
  EXPECT_EQ(failed, 0);
}

TEST_F(Unwind, ModeComesFromTheEnvironmentAndDefaultsToFramePointers) {
  EXPECT_EQ(unwind::mode(), unwind::Mode::fp);  // TearDown's, or HOTPROBE_USTACK unset
  unwind::set_mode(unwind::Mode::automatic);
  EXPECT_EQ(unwind::mode(), unwind::Mode::automatic);
}

TEST_F(Unwind, ABadModeIsRefusedWithTheValuesThatAreNot) {
  ASSERT_EQ(setenv("HOTPROBE_USTACK", "dwarf", 1), 0);
  const std::string e = unwind::mode_error();
  auto p = Program::compile("uprobe:libc:getpid { @[ustack] = count(); }");
  ASSERT_EQ(setenv("HOTPROBE_USTACK", "auto", 1), 0);
  EXPECT_EQ(unwind::mode_error(), "");
  ASSERT_EQ(unsetenv("HOTPROBE_USTACK"), 0);
  EXPECT_EQ(unwind::mode_error(), "");
  EXPECT_NE(e.find("HOTPROBE_USTACK=dwarf is not a stack walk: use fp"), std::string::npos) << e;
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.error().message(), e);
}

}  // namespace
}  // namespace hotprobe::script
