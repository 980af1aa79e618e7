// ustack and usym as values (printf, print, variables, tuples, map values), the stack
// table behind them, stack_mode from config and from the environment, usermode, and
// uaddr("SYM") as the checker rewrites it: docs/design/script-language.md, "Stacks and
// symbols" and "config".
#include <link.h>

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "script/check.h"
#include "script/eval.h"
#include "script/output.h"
#include "script/run_misc.h"
#include "script/run_stack.h"

#include "script_harness.h"

extern "C" __attribute__((noinline)) int hp_stack_value_leaf(int x) {
  __asm__ volatile("");
  return x + 1;
}
extern "C" __attribute__((noinline)) int hp_stack_value_caller(int x) {
  __asm__ volatile("");
  return hp_stack_value_leaf(x) + 1;
}
extern "C" {
int hp_stack_value_global = 0x55555555;  // uaddr's subject
}

namespace hotprobe::script {
namespace {

using harness::first_line;

std::uint64_t leaf() {
  return reinterpret_cast<std::uint64_t>(&hp_stack_value_leaf);
}
std::uint64_t caller() {
  return reinterpret_cast<std::uint64_t>(&hp_stack_value_caller);
}

// A compiled script (script_harness.h) whose probe 0 is hit with registers of a two-frame
// stack laid out by hand on this thread's stack: the pc in hp_stack_value_leaf, the
// return address in hp_stack_value_caller (+5).
struct Traced : harness::Script {
  using Script::Script;
  std::string hit() {
    if (!prog) return "";
    sink.out.clear();
    alignas(16) volatile std::uint64_t stack[8] = {};
    stack[2] = 0;             // the caller's saved rbp: the chain ends
    stack[3] = caller() + 5;  // its return address
    Regs r{};
    r.rip = leaf();
    r.rsp = reinterpret_cast<std::uint64_t>(&stack[0]);
    r.rbp = reinterpret_cast<std::uint64_t>(&stack[2]);
    ProbeSpec s = prog->spec(0);
    Hit h;
    h.regs = &r;
    h.cookie = s.cookie;
    if (s.on_entry) s.on_entry(h);
    return sink.out;
  }
};

constexpr const char* kTwoFrames =
    "\n        hp_stack_value_leaf+0\n        hp_stack_value_caller+5\n";

TEST(StackValues, CheckerAcceptsValueForms) {
  for (const char* s : {
           "uprobe:libc:getpid { printf(\"%s\\n\", ustack); }",
           "uprobe:libc:getpid { printf(\"%s %s\\n\", ustack(3), ustack(perf, 2)); }",
           "uprobe:libc:getpid { print(ustack(raw)); print(ustack(raw, 4)); }",
           "uprobe:libc:getpid { $s = ustack; printf(\"%s\", $s); }",
           "uprobe:libc:getpid { print((ustack, \"a\", usym(reg(\"ip\")))); }",
           "uprobe:libc:getpid { @s = ustack(2); @u = usym(arg0); @t = (1, usym(arg0)); }",
           "uprobe:libc:getpid { printf(\"%s\\n\", usym(reg(\"ip\"))); print(usermode); }",
           "BEGIN { printf(\"%s\\n\", ustack); print((ustack, \"a\")); exit(); }",
           "BEGIN { printf(\"%d\\n\", usermode); }",
       }) {
    EXPECT_EQ(first_line(s), "") << s;
  }
}

TEST(StackValues, PrintedAsBpftracePrintsThem) {
  Traced r("uprobe:libc:getpid { printf(\"%s|\", ustack); }");
  EXPECT_EQ(r.hit(), std::string(kTwoFrames) + "|");
  Traced one("uprobe:libc:getpid { printf(\"%s|\", ustack(1)); }");
  EXPECT_EQ(one.hit(), "\n        hp_stack_value_leaf+0\n|");
  char perf[256];
  std::snprintf(perf, sizeof perf,
                "\n\t%llx hp_stack_value_leaf+0 (%%s)\n\t%llx hp_stack_value_caller+5 (%%s)\n",
                static_cast<unsigned long long>(leaf()),
                static_cast<unsigned long long>(caller() + 5));
  Traced p("uprobe:libc:getpid { print(ustack(perf)); }");
  const std::string got = p.hit();
  // The module is this test program, by the path /proc/self/maps names it.
  EXPECT_NE(got.find("hp_stack_value_leaf+0 ("), std::string::npos) << got;
  EXPECT_EQ(got.rfind("\n\t", 0), 0u) << got;
  char raw[128];
  std::snprintf(raw, sizeof raw, "\n%llx\n%llx\n\n", static_cast<unsigned long long>(leaf()),
                static_cast<unsigned long long>(caller() + 5));
  Traced rw("uprobe:libc:getpid { print(ustack(raw)); }");
  EXPECT_EQ(rw.hit(), raw);
  // build_id: this program's build id and the file offset (the linker gives it one).
  Traced bid("uprobe:libc:getpid { print(ustack(build_id, 1)); }");
  const std::string b = bid.hit();
  ASSERT_GT(b.size(), 8u) << b;
  EXPECT_EQ(b.substr(0, 1), "\n");
  EXPECT_NE(b.find(" 0x"), std::string::npos) << b;
  EXPECT_EQ(b.find_first_not_of("0123456789abcdefx \n"), std::string::npos) << b;
  Traced sym("uprobe:libc:getpid { printf(\"[%s] [%10s]\\n\", usym(reg(\"ip\")), usym(1)); }");
  EXPECT_EQ(sym.hit(), "[hp_stack_value_leaf] [       0x1]\n");
  Traced tup("uprobe:libc:getpid { print((ustack(1), \"a\", usym(reg(\"ip\")))); }");
  EXPECT_EQ(tup.hit(), "(\n        hp_stack_value_leaf+0\n, a, hp_stack_value_leaf)\n");
  Traced json("uprobe:libc:getpid { print(ustack(1)); printf(\"%s\", usym(reg(\"ip\"))); }",
              OutputFormat::json);
  EXPECT_EQ(json.hit(),
            "{\"type\": \"value\", \"data\": \"\\n        hp_stack_value_leaf+0\\n\"}\n"
            "{\"type\": \"printf\", \"data\": \"hp_stack_value_leaf\"}\n");
  Traced begin("BEGIN { printf(\"[%s]\\n\", ustack); }");  // no registers: the empty stack
  ASSERT_TRUE(begin.prog);
  begin.prog->run_begin();
  EXPECT_EQ(begin.sink.out, "[\n]\n");
}

// Deferred (the agent): the probed thread writes markers, the reader names them.
TEST(StackValues, DeferredValuesAreNamedByTheReader) {
  set_symbols_deferred(true);
  Traced text("uprobe:libc:getpid { printf(\"%s|\", ustack); print((usym(reg(\"ip\")), 1)); }");
  std::string out = text.hit();
  EXPECT_EQ(out.find("hp_stack_value"), std::string::npos) << out;
  EXPECT_EQ(out.front(), kSymbolMarker);
  expand_symbols(out);
  EXPECT_EQ(out, std::string(kTwoFrames) + "|(hp_stack_value_leaf, 1)\n");
  Traced json("uprobe:libc:getpid { printf(\"%s\", ustack(1)); print(usym(reg(\"ip\"))); }",
              OutputFormat::json);
  out = json.hit();
  EXPECT_NE(out.find("\\u001e"), std::string::npos) << out;
  expand_symbols(out);
  EXPECT_EQ(out,
            "{\"type\": \"printf\", \"data\": \"\\n        hp_stack_value_leaf+0\\n\"}\n"
            "{\"type\": \"value\", \"data\": \"hp_stack_value_leaf\"}\n");
  set_symbols_deferred(false);
  // A string of the program shaped like a marker of another process stays as it is.
  std::string forged =
      "a\x1e"
      "00000000s1\x1f b \\u001e00000000s1\\u001f";
  const std::string before = forged;
  expand_symbols(forged);
  EXPECT_EQ(forged, before);
}

TEST(StackValues, VariablesAndMapValuesKeepTheStack) {
  Traced r(
      "uprobe:libc:getpid { $s = ustack; @s = $s; @u = usym(reg(\"ip\")); "
      "@t = (7, usym(reg(\"ip\"))); printf(\"%s\", $s); }");
  EXPECT_EQ(r.hit(), kTwoFrames);
  EXPECT_EQ(r.prog->print_maps(), std::string("\n\n@s: ") + kTwoFrames +
                                      "\n@t: (7, hp_stack_value_leaf)\n@u: hp_stack_value_leaf\n");
}

TEST(StackValues, AStackValueKeysAMap) {
  Traced r("uprobe:libc:getpid { $s = ustack(1); @[$s, usym(reg(\"ip\"))] = count(); }");
  r.hit();
  r.hit();
  EXPECT_EQ(r.prog->print_maps(),
            "\n\n@[\n        hp_stack_value_leaf+0\n, hp_stack_value_leaf]: 2\n");
}

TEST(StackValues, UsermodeIsOneInAUprobe) {
  Traced r("uprobe:libc:getpid { print(usermode); printf(\"%d\\n\", usermode + 1); }");
  EXPECT_EQ(r.hit(), "1\n2\n");
}

TEST(StackValues, TheTableInternsOneStackOnceAcrossThreads) {
  stack_table_init();
  constexpr int kThreads = 4, kStacks = 500;
  std::vector<std::vector<std::string>> markers(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([t, &markers] {
      for (int i = 0; i < kStacks; ++i) {
        const std::uint64_t words[4] = {3, 0x1000u + i, 0x2000u + i, 0x3000u};
        char m[kSymbolMarkerBytes];
        const std::uint32_t n = stack_marker(words, SymbolForm::stack, m);
        markers[t].emplace_back(m, n);
        // Read back at once: the slot may be another thread's, still being written.
        std::uint64_t back[8] = {};
        SymbolForm form{};
        if (!read_marker(markers[t].back(), form, back, 8) || back[0] != 3 || back[1] != words[1] ||
            back[2] != words[2] || back[3] != words[3])
          markers[t].back() = "bad";
      }
    });
  }
  for (auto& th : threads)
    th.join();
  std::set<std::string> distinct;
  for (int i = 0; i < kStacks; ++i) {
    for (int t = 1; t < kThreads; ++t)
      EXPECT_EQ(markers[t][i], markers[0][i]) << i;
    distinct.insert(markers[0][i]);
    std::uint64_t back[8];
    SymbolForm form{};
    ASSERT_TRUE(read_marker(markers[0][i], form, back, 8));
    EXPECT_EQ(form, SymbolForm::stack);
    ASSERT_EQ(back[0], 3u);
    EXPECT_EQ(back[1], 0x1000u + i);
    EXPECT_EQ(back[2], 0x2000u + i);
    EXPECT_EQ(back[3], 0x3000u);
  }
  EXPECT_EQ(distinct.size(), static_cast<std::size_t>(kStacks));
}

TEST(StackValues, AStringThatLooksLikeAStackIsAString) {
  stack_table_init();
  const std::uint64_t words[2] = {1, leaf()};
  char m[kSymbolMarkerBytes];
  const std::string real(m, stack_marker(words, SymbolForm::stack, m));
  std::string forged = real;
  forged[1] = forged[1] == '0' ? '1' : '0';  // another process's nonce
  std::uint64_t back[4];
  SymbolForm form{};
  EXPECT_TRUE(read_marker(real, form, back, 4));
  EXPECT_FALSE(read_marker(forged, form, back, 4));
  EXPECT_FALSE(read_marker(real.substr(0, real.size() - 1), form, back, 4));
  std::string out;
  const FormatSpec spec[] = {{"", 's'}};
  const FmtArg arg{0, forged, true};
  format_printf(out, spec, {&arg, 1}, /*escape=*/true);
  EXPECT_EQ(out.rfind("\\x1e", 0), 0u) << out;  // escaped, never named
  out.clear();
  const FmtArg named{0, real, true};
  format_printf(out, spec, {&named, 1}, true);
  EXPECT_EQ(out, "\n        hp_stack_value_leaf+0\n");
}

TEST(StackValues, ConfigAndEnvironmentChooseTheMode) {
  Traced perf("config = { stack_mode = perf } uprobe:libc:getpid { printf(\"%s\", ustack(1)); }");
  EXPECT_EQ(perf.hit().rfind("\n\t", 0), 0u);
  Traced raw(
      "config = { BPFTRACE_STACK_MODE = raw } uprobe:libc:getpid { printf(\"%s\", ustack(1)); }");
  char want[64];
  std::snprintf(want, sizeof want, "\n%llx\n", static_cast<unsigned long long>(leaf()));
  EXPECT_EQ(raw.hit(), want);
  // The environment's line (the command adds it) over the config; a mode written wins.
  Traced env(std::string("config = { stack_mode = perf } uprobe:libc:getpid { printf(\"%s\", "
                         "ustack(1)); }") +
             env_settings_line("stack_mode", "raw"));
  EXPECT_EQ(env.hit(), want);
  Traced written(
      "config = { stack_mode = raw } uprobe:libc:getpid { printf(\"%s\", "
      "ustack(bpftrace, 1)); }");
  EXPECT_EQ(written.hit(), "\n        hp_stack_value_leaf+0\n");
  EXPECT_EQ(first_line("config = { show_debug_info = 0; missing_probes = \"error\" } BEGIN {}"),
            "");
  EXPECT_EQ(first_line("config = { stack_mode = fast } BEGIN {}"),
            "stdin:1:25-29: ERROR: stack_mode is bpftrace, perf, raw or build_id ('fast' given)");
  EXPECT_EQ(first_line("config = { show_debug_info = 1 } BEGIN {}"), "");
  EXPECT_EQ(first_line("config = { show_debug_info = often } BEGIN {}"),
            "stdin:1:30-35: ERROR: show_debug_info is true, false, 1 or 0");
  EXPECT_EQ(first_line("config = { missing_probes = \"often\" } BEGIN {}"),
            "stdin:1:29-36: ERROR: Invalid value for missing_probes: valid values are ignore, "
            "warn, and error.");
  EXPECT_EQ(first_line("config = { stack_mode = raw } uprobe:libc:getpid { @[ustack] = count(); }"),
            "");
}

TEST(StackValues, MissingProbesTheCommandFoundAreLeftOut) {
  const std::string src =
      "config = { missing_probes = \"warn\" } uprobe:./p:f, uprobe:./p:g { @a = 1; } "
      "uprobe:./p:g { @b = 1; } BEGIN { @c = 1; }";
  EXPECT_EQ(script_settings(src).missing_probes, "warn");
  EXPECT_EQ(script_settings("config = { missing_probes = \"ignore\" } BEGIN {}").missing_probes,
            "ignore");
  EXPECT_EQ(script_settings("BEGIN {}").missing_probes, "");
  auto p = parse(src + std::string(kSkipProbePrefix) + "uprobe:./p:g\n", "stdin");
  ASSERT_TRUE(p.ok()) << p.error().message();
  ASSERT_EQ(p->actions.size(), 2u);  // the action of g alone is gone
  ASSERT_EQ(p->actions[0].probes.size(), 1u);
  EXPECT_EQ(p->actions[0].probes[0].probe.text, "uprobe:./p:f");
  EXPECT_EQ(p->actions[1].probes[0].probe.text, "BEGIN");
}

// The load bias of this program (the main executable), as uaddr adds it.
std::uint64_t main_bias() {
  std::uint64_t bias = 0;
  dl_iterate_phdr(
      [](dl_phdr_info* info, std::size_t, void* data) {
        *static_cast<std::uint64_t*>(data) = info->dlpi_addr;
        return 1;  // the first module is the main program
      },
      &bias);
  return bias;
}

TEST(StackValues, UaddrIsATypedPointerToTheSymbol) {
  const std::uint64_t value = reinterpret_cast<std::uint64_t>(&hp_stack_value_global) - main_bias();
  const std::string facts = uaddr_line("./prog", "G", value, 4, "/proc/self/exe", true) +
                            uaddr_line("./prog", "NOPE", 0, 0, "/proc/self/exe", false);
  Traced r("uprobe:./prog:f { printf(\"0x%x %d\\n\", *uaddr(\"G\"), sizeof(*uaddr(\"G\"))); }" +
           facts);
  EXPECT_EQ(r.hit(), "0x55555555 4\n");
  struct {
    const char* script;
    const char* error;
  } cases[] = {
      {"uprobe:./prog:f { print(*uaddr(\"NOPE\")); }",
       "stdin:1:26-39: ERROR: Could not resolve symbol: ./prog:NOPE (/proc/self/exe has no "
       "symbol of that name)"},
      {"uprobe:./prog:f { print(*uaddr(\"H\")); }",
       "stdin:1:26-36: ERROR: Could not resolve symbol: ./prog:H (uaddr needs the hotprobe "
       "command, which reads the binary's symbols)"},
      {"BEGIN { print(*uaddr(\"G\")); }",
       "stdin:1:16-26: ERROR: uaddr() names a symbol of the probed binary: it is for uprobe and "
       "uretprobe probes (not 'BEGIN')"},
      {"uprobe:./prog:f { print(uaddr(G)); }",
       "stdin:1:25-33: ERROR: uaddr() takes one string literal, the symbol's name: "
       "uaddr(\"GLOBAL\")"},
  };
  for (const auto& c : cases)
    EXPECT_EQ(first_line(c.script + facts), c.error) << c.script;
  const std::string two =
      uaddr_line("./a", "G", 0x10, 4, "/a", true) + uaddr_line("./b", "G", 0x10, 8, "/b", true);
  EXPECT_EQ(first_line("uprobe:./a:f, uprobe:./b:f { print(*uaddr(\"G\")); }" + two),
            "stdin:1:37-47: ERROR: Symbol size mismatch between probes. Symbol \"G\" has size 4 "
            "for probe \"uprobe:./a:f\" but size 8 for probe \"uprobe:./b:f\"");
}

}  // namespace
}  // namespace hotprobe::script
