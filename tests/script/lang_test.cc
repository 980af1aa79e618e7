// Positional parameters, loops and the small builtins: parse and check errors with the
// positions bpftrace 0.17 prints, and what a hit computes (Program::compile with a fake
// Sink, handlers called through their ProbeSpec). Expected texts are bpftrace 0.17's
// where it has the construct.
#include <gtest/gtest.h>
#include <pwd.h>
#include <signal.h>
#include <sys/sysinfo.h>
#include <unistd.h>

#include <atomic>
#include <string>
#include <vector>

#include "script/check.h"
#include "script/fuzz.h"
#include "script/loops.h"
#include "script/program.h"

#include "fake_sink.h"

namespace hotprobe::script {
namespace {

CompileOptions with(std::vector<std::string> params, bool unsafe = false) {
  CompileOptions o;
  o.filename = "stdin";
  o.params = std::move(params);
  o.unsafe = unsafe;
  return o;
}

// The first line of the error of `src`, "" when it compiles.
std::string error(std::string_view src, const CompileOptions& o = with({})) {
  auto r = Program::compile(src, o);
  if (r) return "";
  std::string m = r.error().message();
  return m.substr(0, m.find('\n'));
}

// What BEGIN prints.
std::string begin(std::string_view src, const CompileOptions& o = with({})) {
  auto p = Program::compile(src, o);
  EXPECT_TRUE(p.ok()) << (p ? "" : p.error().message());
  if (!p) return "<error>";
  FakeSink sink;
  (*p)->bind(&sink);
  (*p)->run_begin();
  return sink.out;
}

// What one hit of the script's first probe (a uprobe) prints, arg0 = a0.
std::string hit(std::string_view src, std::uint64_t a0 = 0, const CompileOptions& o = with({})) {
  auto p = Program::compile(src, o);
  EXPECT_TRUE(p.ok()) << (p ? "" : p.error().message());
  if (!p) return "<error>";
  FakeSink sink;
  (*p)->bind(&sink);
  ProbeSpec s = (*p)->spec(0);
  Regs r{};
  r.rdi = a0;
  Hit h;
  h.regs = &r;
  h.cookie = s.cookie;
  s.on_entry(h);
  return sink.out;
}

TEST(ScriptLang, PositionalParameters) {
  const char* kPrint = R"(BEGIN { printf("%d %d %s %s|\n", $1, $#, str($2), str($3)); })";
  EXPECT_EQ(begin(kPrint, with({"42", "abc"})), "42 2 abc |\n");
  // Integers as bpftrace reads them: decimal, 0x hex, a sign.
  EXPECT_EQ(begin(R"(BEGIN { printf("%d %d\n", $1 + 1, $2); })", with({"0x10", "-5"})), "17 -5\n");
  // A missing one is 0, or "" in str(); $# is 0 with none.
  EXPECT_EQ(begin(R"(BEGIN { printf("%d %d [%s]\n", $3, $#, str($1)); })"), "0 0 []\n");
  // An integer-looking one keys a map as an integer, str() of it as text.
  EXPECT_EQ(begin(R"(BEGIN { @[$1] = 1; @s[str($1)] = 2; print(@); print(@s); })", with({"7"})),
            "@[7]: 1\n@s[7]: 2\n");
  EXPECT_EQ(error(R"(BEGIN { printf("%d\n", $2); })", with({"42", "abc"})),
            "stdin:1:24-26: ERROR: $2 used numerically but given \"abc\". Try using str($2).");
  EXPECT_EQ(error("BEGIN { @ = $0; }"),
            "stdin:1:13-15: ERROR: $0 is not a positional parameter: they are $1, $2, ... (the "
            "words after the script on the command line)");
  // The parameters do not reach other variables: $1x is a name (and undefined).
  EXPECT_EQ(error("BEGIN { @ = $1x; }"),
            "stdin:1:13-16: ERROR: Undefined or undeclared variable: $1x");
}

TEST(ScriptLang, WhileBreakContinue) {
  // bpftrace 0.17 prints the same.
  EXPECT_EQ(begin("BEGIN { $i = 0; while ($i < 3) { printf(\"%d\\n\", $i); $i++; if ($i == 2) "
                  "{ break; } } }"),
            "0\n1\n");
  EXPECT_EQ(begin("BEGIN { $i = 0; while ($i < 5) { $i++; if ($i == 2) { continue; } "
                  "printf(\"%d\\n\", $i); } }"),
            "1\n3\n4\n5\n");
  // return inside a loop ends the action, not only the loop.
  EXPECT_EQ(begin("BEGIN { while (1) { printf(\"a\\n\"); return; } printf(\"b\\n\"); }"), "a\n");
  // break leaves the innermost loop only.
  EXPECT_EQ(begin("BEGIN { $i = 0; while ($i < 2) { $i++; $j = 0; while (1) { $j++; if ($j > "
                  "1) { break; } } printf(\"%d %d\\n\", $i, $j); } }"),
            "1 2\n2 2\n");
  EXPECT_EQ(
      error("BEGIN { break; }"),
      "stdin:1:9-14: ERROR: break used outside of a loop (it belongs in a while or for body)");
  EXPECT_EQ(error("BEGIN { unroll(2) { continue; } }"),
            "stdin:1:21-29: ERROR: continue used outside of a loop (it belongs in a while or for "
            "body)");
  EXPECT_EQ(error("BEGIN { while (\"a\") { } }"),
            "stdin:1:16-19: ERROR: Invalid condition in while(): string (a condition is an "
            "integer: 0 is false)");
  EXPECT_EQ(error("BEGIN { while (1) { } exit() }"), "");  // no ';' needed after the block
}

TEST(ScriptLang, ForRange) {
  // Half-open, as bpftrace's: 0, 1, 2; the range is read once.
  EXPECT_EQ(begin("BEGIN { $a = 3; for ($i : 0..$a) { printf(\"%d\\n\", $i); $a = 0; } }"),
            "0\n1\n2\n");
  EXPECT_EQ(begin("BEGIN { for ($i : 5..5) { printf(\"x\\n\"); } printf(\"done\\n\"); }"),
            "done\n");
  EXPECT_EQ(begin("BEGIN { @s = 0; for ($i : 1..(2 + 3)) { if ($i == 2) { continue; } @s += "
                  "$i; } print(@s); }"),
            "@s: 8\n");
  // The loop variable belongs to the body: the name is free after it.
  EXPECT_EQ(begin("BEGIN { for ($i : 0..2) { } for ($i : 7..8) { printf(\"%d\\n\", $i); } }"),
            "7\n");
  EXPECT_EQ(error("BEGIN { for ($i : 0..2) { } @ = $i; }"),
            "stdin:1:33-35: ERROR: Undefined or undeclared variable: $i");
  EXPECT_EQ(error("BEGIN { $i = 1; for ($i : 0..2) { } }"),
            "stdin:1:22-24: ERROR: Loop declaration shadows existing variable: $i (name the loop "
            "variable another $name)");
  EXPECT_EQ(error("BEGIN { for ($i : 0..\"a\") { } }"),
            "stdin:1:22-25: ERROR: Loop range requires an integer for the end value (string "
            "provided)");
  // Syntax: one operand each side of '..'; a map iterated may not change in the loop.
  EXPECT_EQ(error("BEGIN { for ($i : 1+1..10) { } }"),
            "stdin:1:20-21: ERROR: syntax error, unexpected +, expecting ..");
  EXPECT_EQ(error("BEGIN { for (@i : 0..1) { } }"),
            "stdin:1:14-16: ERROR: syntax error, unexpected map, expecting variable");
  EXPECT_EQ(error("BEGIN { @m[1] = 1; for ($kv : @m) { @m[1] = 2; } }"),
            "stdin:1:37-42: ERROR: @m is changed inside a for loop over it: the loop reads the "
            "map as it was when it started; change it after the loop");
}

TEST(ScriptLang, LoopsAreBoundedPerHit) {
  // An endless loop stops the action after kMaxLoopIterations iterations in all.
  EXPECT_EQ(begin("BEGIN { @n = 0; while (1) { @n++; } }"), "");
  auto p = Program::compile("BEGIN { @n = 0; while (1) { @n++; } } END { print(@n); }");
  ASSERT_TRUE(p.ok());
  FakeSink sink;
  (*p)->bind(&sink);
  (*p)->run_begin();
  (*p)->run_end();
  EXPECT_EQ(sink.out, "@n: " + std::to_string(kMaxLoopIterations) + "\n");
  // Nested loops share the budget: 400 * 400 stops at the bound too.
  auto q = Program::compile(
      "BEGIN { @n = 0; for ($i : 0..400) { for ($j : 0..400) { @n++; } } } END { print(@n); }");
  ASSERT_TRUE(q.ok());
  FakeSink s2;
  (*q)->bind(&s2);
  (*q)->run_begin();
  (*q)->run_end();
  const std::int64_t n = std::stoll(s2.out.substr(4));
  EXPECT_LE(n, kMaxLoopIterations);
  EXPECT_GT(n, kMaxLoopIterations - 401);
  // Each hit starts with the whole budget again.
  EXPECT_EQ(hit("uprobe:libc:getpid { for ($i : 0..arg0) { } printf(\"ok\\n\"); }", 50000), "ok\n");
}

TEST(ScriptLang, StringFunctions) {
  EXPECT_EQ(
      begin(
          R"(BEGIN { printf("%d %d %d\n", strncmp("abc", "abd", 2), strncmp("abc", "abd", 3), strncmp("ab", "abc", 3)); })"),
      "0 1 1\n");
  EXPECT_EQ(
      begin(
          R"(BEGIN { printf("%d %d %d\n", strcontains("hello", "ell"), strcontains("hello", "x"), strcontains("a", "")); })"),
      "1 0 1\n");
  EXPECT_EQ(error(R"(BEGIN { strncmp("a", 1, 2); })"),
            "stdin:1:9-27: ERROR: strncmp() only supports string arguments (integer provided)");
  EXPECT_EQ(error(R"(BEGIN { strncmp("a", "b"); })"),
            "stdin:1:9-26: ERROR: strncmp() requires 3 arguments (2 provided)");
  EXPECT_EQ(error(R"(BEGIN { $x = 1; strncmp("a", "b", $x); })"),
            "stdin:1:17-38: ERROR: strncmp() expects a integer literal (integer provided): write "
            "the length as a number, e.g. strncmp(a, b, 4)");
  EXPECT_EQ(
      error(R"(BEGIN { strcontains("a", 2); })"),
      "stdin:1:26-27: ERROR: strcontains() only supports string arguments (integer provided)");
}

TEST(ScriptLang, Builtins) {
  EXPECT_EQ(begin(R"(BEGIN { printf("%d\n", ncpus); })"), std::to_string(get_nprocs_conf()) + "\n");
  passwd* pw = getpwuid(getuid());
  ASSERT_NE(pw, nullptr);
  EXPECT_EQ(begin(R"(BEGIN { printf("%s\n", username); })"), std::string(pw->pw_name) + "\n");
  // rand: uint32 values that change.
  const std::string r = begin(
      R"(BEGIN { $same = 0; for ($i : 0..100) { $a = rand; if ($a < 0 || $a > 0xffffffff) { printf("range\n"); } if ($a == rand) { $same++; } } printf("%d\n", $same < 3); })");
  EXPECT_EQ(r, "1\n");
  EXPECT_EQ(begin(R"(BEGIN { $x = 5; printf("%d\n", uptr($x)); })"), "5\n");
  EXPECT_EQ(
      begin(
          R"(BEGIN { printf("%s %s %s [%s]\n", ntop(0x0100007f), ntop(2, 0x0100007f), ntop(10, 0x0100007f), ntop(3, 1)); })"),
      "127.0.0.1 127.0.0.1 7f00:1:: []\n");
  EXPECT_EQ(error(R"(BEGIN { printf("%s\n", ntop("a")); })"),
            "stdin:1:24-33: ERROR: ntop() argument must be 4 or 16 bytes in size (hotprobe "
            "takes an integer holding an IPv4 address, or ntop(10, ADDR) for IPv6)");
  EXPECT_EQ(error(R"(BEGIN { printf("%s\n", macaddr("a")); })"),
            "stdin:1:24-36: ERROR: macaddr() does not support literal string arguments");
}

TEST(ScriptLang, MacaddrReadsSixBytes) {
  static const unsigned char kMac[6] = {0x00, 0x1b, 0x44, 0x11, 0x3a, 0xb7};
  EXPECT_EQ(hit(R"(uprobe:libc:getpid { printf("%s\n", macaddr(arg0)); })",
                reinterpret_cast<std::uintptr_t>(kMac)),
            "00:1B:44:11:3A:B7\n");
  // Nothing readable there: zeros, as bpftrace prints.
  EXPECT_EQ(hit(R"(uprobe:libc:getpid { printf("%s\n", macaddr(arg0)); })", 5),
            "00:00:00:00:00:00\n");
}

std::atomic<int> g_got{0};

TEST(ScriptLang, SignalNeedsUnsafeAndAUprobe) {
  EXPECT_EQ(error(R"(uprobe:libc:getpid { signal("KILL"); })"),
            "stdin:1:22-36: ERROR: signal() is an unsafe function being used in safe mode (run "
            "hotprobe with --unsafe to allow it)");
  EXPECT_EQ(error(R"(BEGIN { signal("KILL"); })", with({}, true)),
            "stdin:1:9-23: ERROR: signal can not be used with \"BEGIN\" probes (it acts on the "
            "traced thread: use it in a uprobe or uretprobe)");
  EXPECT_EQ(error(R"(uprobe:libc:getpid { signal("FOO"); })", with({}, true)),
            "stdin:1:22-35: ERROR: FOO is not a valid signal (write a name such as \"KILL\", "
            "\"SIGUSR1\" or a number 1 to 64)");
  EXPECT_EQ(error(R"(uprobe:libc:getpid { signal(1234); })", with({}, true)),
            "stdin:1:22-34: ERROR: 1234 is not a valid signal, allowed range: [1,64]");
  EXPECT_EQ(error(R"(BEGIN { system("ls"); })"),
            "stdin:1:9-21: ERROR: system() is an unsafe function being used in safe mode (run "
            "hotprobe with --unsafe to allow it)");
  EXPECT_EQ(error(R"(BEGIN { cat("%d"); })", with({}, true)),
            "stdin:1:9-18: ERROR: cat: Not enough arguments for format string (0 supplied, 1 "
            "expected)");
  // Sent to this process.
  struct sigaction sa {};
  sa.sa_handler = [](int) { g_got.fetch_add(1); };
  struct sigaction old {};
  ASSERT_EQ(sigaction(SIGUSR2, &sa, &old), 0);
  EXPECT_EQ(hit(R"(uprobe:libc:getpid { signal("SIGUSR2"); })", 0, with({}, true)), "");
  EXPECT_EQ(hit(R"(uprobe:libc:getpid { signal(arg0); })", SIGUSR2, with({}, true)), "");
  while (g_got.load() < 2) {
    // Both were sent to this process before the hits returned; wait for delivery.
    timespec ts{0, 1000000};
    nanosleep(&ts, nullptr);
  }
  EXPECT_EQ(g_got.load(), 2);
  sigaction(SIGUSR2, &old, nullptr);
}

}  // namespace
}  // namespace hotprobe::script

namespace hotprobe::script {
namespace {

// Token soups of the new constructs through the fuzz entry (script/fuzz.h: an accepted
// script is lowered, run once and printed; a crash or a sanitizer report is the bug).
// Many run a loop to its bound: each must end.
TEST(ScriptLang, LoopAndParameterSoupsNeverCrash) {
  static const char* const kWords[] = {"while",
                                       "for",
                                       "break",
                                       "continue",
                                       "return",
                                       "(",
                                       ")",
                                       "{",
                                       "}",
                                       ";",
                                       "$i",
                                       "$j",
                                       ":",
                                       "..",
                                       "0",
                                       "1",
                                       "3",
                                       "$1",
                                       "$#",
                                       "str(",
                                       "$2",
                                       "@m",
                                       "=",
                                       "+=",
                                       "++",
                                       "<",
                                       "if",
                                       "exit()",
                                       "strncmp(\"a\", \"ab\", 2)",
                                       "ntop(",
                                       "rand",
                                       "ncpus",
                                       ",",
                                       "unroll(3)",
                                       "!"};
  std::uint64_t x = 0x9e3779b97f4a7c15ULL;
  FuzzStats stats;
  for (int n = 0; n < 1500; ++n) {
    std::string body;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    const int len = static_cast<int>(x % 24) + 1;
    for (int k = 0; k < len; ++k) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      body += kWords[x % std::size(kWords)];
      body += ' ';
    }
    fuzz_one("BEGIN { $i = 0; " + body + " }", &stats);
    fuzz_one("BEGIN { $i = 0; while ($i < 5) { " + body + " } }", &stats);
  }
  EXPECT_EQ(stats.inputs, 3000u);
  EXPECT_GT(stats.checked, 30u);  // the soups reach the evaluator, not only the parser
}

}  // namespace
}  // namespace hotprobe::script
