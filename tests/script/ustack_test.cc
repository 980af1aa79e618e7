// ustack, usym and reg(): the checker's limits and messages (bpftrace's where it has
// them), the frame-pointer walk on frames laid out by hand (on this thread's stack, on a
// coroutine-like heap stack, through unreadable memory), the symbolizer and the printed
// form of stack keys.
#include <sys/mman.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "script/check.h"
#include "script/maps.h"
#include "script/output.h"
#include "script/run_stack.h"
#include "script/symbolize.h"

extern "C" __attribute__((noinline)) int hp_ustack_test_marker(int x) {
  __asm__ volatile("");
  return x + 1;
}

namespace hotprobe::script {
namespace {

std::string first_error(std::string_view src) {
  auto r = parse_and_check(src, "stdin");
  if (r.ok()) return "";
  const std::string& m = r.error().message();
  return m.substr(0, m.find('\n'));
}

TEST(Ustack, CheckerAcceptsBpftraceForms) {
  for (const char* s : {
           "uprobe:libc:getpid { @[ustack] = count(); }",
           "uprobe:libc:getpid { @[ustack()] = count(); }",
           "uprobe:libc:getpid { @[ustack(5)] = count(); }",
           "uprobe:libc:getpid { @[ustack(perf)] = count(); }",
           "uprobe:libc:getpid { @[ustack(bpftrace, 1024)] = count(); }",
           "uprobe:libc:getpid { @[comm, ustack(3)] = count(); @[comm, ustack(9)] = count(); }",
           "uretprobe:libc:getpid { @[ustack, retval] = sum(1); }",
           "uprobe:libc:getpid { @[usym(reg(\"ip\"))] = count(); @r = reg(\"r15\") + reg(\"sp\"); "
           "}",
           "BEGIN { @[usym(1)] = count(); }",
           "BEGIN { printf(\"%s\\n\", strftime(\"%H:%M:%S %f\", nsecs)); }",
           "uprobe:libc:getpid { join(arg1); join(arg1, \",\"); @[buf(arg0, 31)] = count(); }",
       }) {
    EXPECT_EQ(first_error(s), "") << s;
  }
}

TEST(Ustack, CheckerErrors) {
  struct {
    const char* script;
    const char* error;
  } cases[] = {
      {"BEGIN { @[ustack] = count(); }",
       "stdin:1:11-17: ERROR: ustack can only be used in uprobe and uretprobe probes (not "
       "'BEGIN'): it reads the probed thread's registers"},
      {"interval:s:1 { @[ustack(3)] = count(); }",
       "stdin:1:18-27: ERROR: ustack can only be used in uprobe and uretprobe probes (not "
       "'interval'): it reads the probed thread's registers"},
      {"uprobe:libc:getpid { @[ustack(build_id)] = count(); }",
       "stdin:1:31-39: ERROR: ustack(build_id) is printed as a value here (printf(\"%s\", "
       "ustack(build_id))), not as a map key: key the map by ustack, ustack(perf) or "
       "ustack(raw)"},
      {"uprobe:libc:getpid { @[ustack(fast)] = count(); }",
       "stdin:1:31-35: ERROR: ustack(): unknown stack mode 'fast': the modes are bpftrace, "
       "perf, raw and build_id (the last as a value only)"},
      {"uprobe:libc:getpid { @[ustack(1025)] = count(); }",
       "stdin:1:24-36: ERROR: ustack([int limit]): limit shouldn't exceed 1024, 1025 given"},
      {"uprobe:libc:getpid { @[ustack(perf, -1)] = count(); }",
       "stdin:1:24-40: ERROR: ustack([int limit]): limit shouldn't exceed 1024, "
       "18446744073709551615 given"},
      {"uprobe:libc:getpid { @[ustack(0)] = count(); }",
       "stdin:1:24-33: ERROR: ustack(0) keeps no frame: the limit is 1 to 1024, or none for "
       "every frame"},
      {"uprobe:libc:getpid { @[ustack(1, 2, 3)] = count(); }",
       "stdin:1:24-39: ERROR: ustack() takes up to 2 arguments (3 provided)"},
      {"uprobe:libc:getpid { $n = 3; @[ustack($n)] = count(); }",
       "stdin:1:32-42: ERROR: ustack() expects an integer literal as its limit"},
      {"uprobe:libc:getpid { printf(\"%d\", ustack); }",
       "stdin:1:22-42: ERROR: printf: %d specifier expects a value of type integer (string "
       "supplied)"},
      {"uprobe:libc:getpid { @[ustack] = count(); @[ustack(perf)] = count(); }",
       "stdin:1:43-58: ERROR: Argument mismatch for @: trying to access with arguments: "
       "[ustack(perf)] when map expects arguments: [ustack]"},
      {"uprobe:libc:getpid { @[reg(\"foo\")] = count(); }",
       "stdin:1:24-34: ERROR: 'foo' is not a valid register on this architecture (x86_64): the "
       "registers are r15 r14 r13 r12 bp bx r11 r10 r9 r8 ax cx dx si di ip pc flags sp"},
      {"uprobe:libc:getpid { @[reg(3)] = count(); }",
       "stdin:1:24-30: ERROR: reg() expects a string literal (integer provided)"},
      {"END { @[reg(\"ip\")] = count(); }",
       "stdin:1:9-18: ERROR: reg() can only be used in uprobe and uretprobe probes (not 'END'): "
       "it reads the probed thread's registers"},
      {"uprobe:libc:getpid { @[usym(1, 2)] = count(); }",
       "stdin:1:24-34: ERROR: usym() requires one argument (2 provided)"},
      {"uprobe:libc:getpid { @[usym(\"x\")] = count(); }",
       "stdin:1:29-32: ERROR: usym() expects an integer or pointer argument (string provided)"},
      {"uprobe:libc:getpid { printf(\"%s\", strftime(nsecs)); }",
       "stdin:1:35-50: ERROR: strftime() takes a format string literal and a time in "
       "nanoseconds since boot: strftime(\"%H:%M:%S\", nsecs)"},
      {"uprobe:libc:getpid { printf(\"%s\", strftime(\"%H\", \"x\")); }",
       "stdin:1:50-53: ERROR: strftime() expects an integer time (string provided)"},
      {"uprobe:libc:getpid { join(arg0, 1); }",
       "stdin:1:22-35: ERROR: join() takes an array of strings and an optional separator "
       "literal: join(arg1) or join(arg1, \",\")"},
      {"uprobe:libc:getpid { @[buf(arg0, 65)] = count(); }",
       "stdin:1:34-36: ERROR: buf(): the length is 0 to 64 bytes (65 given; bpftrace's "
       "BPFTRACE_STRLEN): read it in parts"},
      {"uprobe:libc:getpid { @[buf(arg0, arg1)] = count(); }",
       "stdin:1:24-39: ERROR: buf() takes a pointer and a length literal: buf(arg0, 16)"},
  };
  for (const auto& c : cases)
    EXPECT_EQ(first_error(c.script), c.error) << c.script;
}

// Frames laid out as a frame-pointer chain: [saved rbp, return address] pairs.
struct Chain {
  std::uint64_t words[16][2] = {};
  void link(int frames) {
    for (int k = 0; k < frames; ++k) {
      words[k][0] = k + 1 < frames ? reinterpret_cast<std::uint64_t>(words[k + 1]) : 0;
      words[k][1] = 0x1000 + static_cast<std::uint64_t>(k);
    }
  }
  Regs regs() const {
    Regs r{};
    r.rip = 0x999;
    r.rsp = reinterpret_cast<std::uint64_t>(words[0]);
    r.rbp = r.rsp;
    return r;
  }
};

std::vector<std::uint64_t> walk(const Regs& r, bool entry, std::uint32_t max) {
  std::vector<std::uint64_t> out(1 + max, 0xdead);
  capture_ustack(r, entry, max, out.data());
  out.resize(1 + out[0]);
  return out;
}

TEST(Ustack, WalksTheRbpChainOnThisThreadsStack) {
  Chain c;
  c.link(5);
  const Regs r = c.regs();
  EXPECT_EQ(walk(r, false, 127),
            (std::vector<std::uint64_t>{6, 0x999, 0x1000, 0x1001, 0x1002, 0x1003, 0x1004}));
  EXPECT_EQ(walk(r, false, 3), (std::vector<std::uint64_t>{3, 0x999, 0x1000, 0x1001}));
  // At a function's entry the return address at [rsp] (here words[0][0], the link to the
  // next frame) is the caller's frame.
  EXPECT_EQ(walk(r, true, 3), (std::vector<std::uint64_t>{
                                  3, 0x999, reinterpret_cast<std::uint64_t>(c.words[1]), 0x1000}));
  // The walk read this thread's stack with plain loads: its mapping is known now.
  const StackBounds b = ustack_bounds_for_test();
  EXPECT_LE(b.lo, r.rsp);
  EXPECT_GT(b.hi, r.rsp);
}

TEST(Ustack, StopsAtLoopsZeroReturnsAndTheStackTop) {
  Chain c;
  c.link(4);
  c.words[2][0] = reinterpret_cast<std::uint64_t>(c.words[1]);  // points back: a loop
  EXPECT_EQ(walk(c.regs(), false, 127),
            (std::vector<std::uint64_t>{4, 0x999, 0x1000, 0x1001, 0x1002}));
  c.link(4);
  c.words[1][1] = 0;  // a zero return address ends the stack
  EXPECT_EQ(walk(c.regs(), false, 127), (std::vector<std::uint64_t>{2, 0x999, 0x1000}));
  c.link(4);
  c.words[3][0] = ~std::uint64_t{0} - 64;  // above every stack: not read
  EXPECT_EQ(walk(c.regs(), false, 127).size(), 6u);
}

TEST(Ustack, ReadsAForeignStackWithoutFaulting) {
  // A coroutine's stack: heap memory, not the thread's own stack mapping. Its last frame
  // links to a page that cannot be read.
  const long page = ::sysconf(_SC_PAGESIZE);
  auto* mem =
      static_cast<char*>(::mmap(nullptr, static_cast<std::size_t>(2 * page), PROT_READ | PROT_WRITE,
                                MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(mem, MAP_FAILED);
  ASSERT_EQ(::mprotect(mem + page, static_cast<std::size_t>(page), PROT_NONE), 0);
  auto* w = reinterpret_cast<std::uint64_t*>(mem + page - 64);
  w[0] = reinterpret_cast<std::uint64_t>(w + 2);
  w[1] = 0x2000;
  w[2] = reinterpret_cast<std::uint64_t>(mem + page);  // the unreadable page
  w[3] = 0x2001;
  Regs r{};
  r.rip = 0x777;
  r.rsp = reinterpret_cast<std::uint64_t>(w);
  r.rbp = r.rsp;
  EXPECT_EQ(walk(r, false, 127), (std::vector<std::uint64_t>{3, 0x777, 0x2000, 0x2001}));
  ::munmap(mem, static_cast<std::size_t>(2 * page));
}

TEST(Ustack, EntryInstructionCacheAgreesAcrossThreads) {
  // Threads race to fill the per-address cache for the same addresses; every answer must
  // be the one the file gives (the first call of each address reads it).
  const auto base = reinterpret_cast<std::uint64_t>(&hp_ustack_test_marker);
  constexpr int kThreads = 4, kAddrs = 48;
  std::vector<std::vector<bool>> seen(kThreads, std::vector<bool>(kAddrs));
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      for (int k = 0; k < kAddrs; ++k)
        seen[t][k] = entry_instruction(base + static_cast<std::uint64_t>(k));
    });
  for (auto& th : threads)
    th.join();
  for (int k = 0; k < kAddrs; ++k) {
    const bool now = entry_instruction(base + static_cast<std::uint64_t>(k));
    for (int t = 0; t < kThreads; ++t)
      EXPECT_EQ(seen[t][k], now) << "address +" << k << ", thread " << t;
  }
  // A byte that is `push %rbp` in the file is an entry, and the marker's code is read from
  // the file, not from memory (which a probe would have patched).
  const auto* code = reinterpret_cast<const unsigned char*>(base);
  EXPECT_EQ(entry_instruction(base), code[0] == 0x55 || (code[0] == 0xf3 && code[1] == 0x0f &&
                                                         code[2] == 0x1e && code[3] == 0xfa));
}

TEST(Ustack, SymbolizerNamesFunctionsOfThisProgram) {
  Symbolizer sym = Symbolizer::current();
  const auto at = reinterpret_cast<std::uint64_t>(&hp_ustack_test_marker);
  const Symbolizer::Name n = sym.name(at + 1);
  EXPECT_EQ(n.symbol, "hp_ustack_test_marker");
  EXPECT_EQ(n.offset, 1u);
  EXPECT_FALSE(n.module.empty());
  EXPECT_EQ(frame_text(n, at + 1), "hp_ustack_test_marker+1");
  const Symbolizer::Name none = sym.name(0x10);
  EXPECT_TRUE(none.symbol.empty());
  EXPECT_EQ(frame_text(none, 0x10), "0x10");
  // From a module list alone, as hotprobe reads it from the region after the program.
  Symbolizer empty("");
  EXPECT_TRUE(empty.name(at).symbol.empty());
}

TEST(Ustack, KeysPrintAsBpftracePrintsThem) {
  const auto at = reinterpret_cast<std::uint64_t>(&hp_ustack_test_marker);
  MapDesc d{"@", ValueKind::count, {false}, 0, 0, 1, false, {KeyPart::ustack}, 3};
  Row row{{2, at, 0x10, 0}, {7}};
  std::string out;
  append_map(out, d, {row}, OutputFormat::text);
  EXPECT_EQ(out, "@[\n    hp_ustack_test_marker+0\n    0x10\n]: 7\n");
  out.clear();
  append_map(out, d, {row}, OutputFormat::json);
  EXPECT_EQ(out,
            "{\"type\": \"map\", \"data\": {\"@\": {\"\\n    hp_ustack_test_marker+0\\n    "
            "0x10\\n\": 7}}}\n");
  MapDesc perf{
      "@p", ValueKind::count, {false, false}, 0, 0, 1, false, {KeyPart::ustack_perf, KeyPart::usym},
      1};
  Row prow{{1, 0x10, at + 2}, {1}};
  out.clear();
  append_map(out, perf, {prow}, OutputFormat::text);
  EXPECT_EQ(out, "@p[\n\t10 0x10 ([unknown])\n, hp_ustack_test_marker]: 1\n");
}

TEST(Ustack, KeyEndingInAStackComparesUpToItsLastFrame) {
  MapDesc d{
      "@", ValueKind::count, {false, false}, 0, 0, 1, false, {KeyPart::integer, KeyPart::ustack},
      4};
  ASSERT_EQ(d.key_words(), 6u);
  ASSERT_EQ(d.stack_tail(), 1u);
  AggMap m(d);
  Shard* s = m.new_shard();
  // The same stack with other words past its last frame: one key, stored with zeros.
  std::uint64_t a[6] = {9, 2, 0x10, 0x11, 0xbad, 0xbad};
  std::uint64_t b[6] = {9, 2, 0x10, 0x11, 0, 0x5};
  add_relaxed(*s->find_or_insert(a), 1);
  add_relaxed(*s->find_or_insert(b), 1);
  std::uint64_t c[6] = {9, 3, 0x10, 0x11, 0xbad, 0};  // a third frame: another key
  add_relaxed(*s->find_or_insert(c), 1);
  auto rows = m.snapshot();
  ASSERT_EQ(rows.size(), 2u);
  for (const Row& r : rows) {
    if (r.key[1] == 2) {
      EXPECT_EQ(r.key, (std::vector<std::uint64_t>{9, 2, 0x10, 0x11, 0, 0}));
      EXPECT_EQ(r.value[0], 2u);
    } else {
      EXPECT_EQ(r.key, (std::vector<std::uint64_t>{9, 3, 0x10, 0x11, 0xbad, 0}));
    }
  }
}

}  // namespace
}  // namespace hotprobe::script
