// Stack values read by another process (the stack table's words written for hotprobe and
// adopted there), the frames' source places and inlined functions under show_debug_info
// (with a lookup installed as the hotprobe command installs libdw's), and len(ustack):
// docs/design/script-language.md, "Stacks and symbols"; script-runtime.md, "Stacks as
// values: the stack table".
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "script/eval.h"
#include "script/output.h"
#include "script/run_stack.h"
#include "script/symbolize.h"

#include "script_harness.h"

extern "C" __attribute__((noinline)) int hp_stack_place_leaf(int x) {
  __asm__ volatile("");
  return x + 1;
}
extern "C" __attribute__((noinline)) int hp_stack_place_caller(int x) {
  __asm__ volatile("");
  return hp_stack_place_leaf(x) + 1;
}

namespace hotprobe::script {
namespace {

std::uint64_t leaf() {
  return reinterpret_cast<std::uint64_t>(&hp_stack_place_leaf);
}
std::uint64_t caller() {
  return reinterpret_cast<std::uint64_t>(&hp_stack_place_caller);
}

// A stack marker of process `nonce` naming `slot`, as that process writes it.
std::string foreign_marker(std::uint32_t nonce, char form, std::uint64_t slot) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%c%08x%c%llx%c", kSymbolMarker, nonce, form,
                static_cast<unsigned long long>(slot), kSymbolMarkerEnd);
  return buf;
}

// The nonce of this process, from a marker it writes.
std::uint32_t own_nonce() {
  char m[kSymbolMarkerBytes];
  symbol_marker(1, m);
  return static_cast<std::uint32_t>(std::stoul(std::string(m + 1, 8), nullptr, 16));
}

TEST(StackPlaces, ExportedStacksReadBackInAnotherProcess) {
  stack_table_init();
  const std::uint64_t words[] = {2, leaf(), caller() + 5};
  char marker[kSymbolMarkerBytes];
  stack_marker(words, SymbolForm::stack, marker);
  std::vector<std::uint64_t> out;
  export_stacks(out);
  ASSERT_GE(out.size(), 5u);
  EXPECT_EQ(out[0], own_nonce());
  // The words as another process's: its nonce differs, its slots are these.
  const std::uint32_t other = own_nonce() ^ 0x5a5a5a5au;
  out[0] = other;
  adopt_stacks(out);
  const std::uint64_t slot = std::stoull(std::string(marker + 10), nullptr, 16);
  SymbolForm form{};
  std::uint64_t got[8] = {};
  ASSERT_TRUE(read_marker(foreign_marker(other, 's', slot), form, got, 8));
  EXPECT_EQ(form, SymbolForm::stack);
  EXPECT_EQ(got[0], 2u);
  EXPECT_EQ(got[1], leaf());
  EXPECT_EQ(got[2], caller() + 5);
  // A slot the process did not write before it ended: the empty stack.
  ASSERT_TRUE(read_marker(foreign_marker(other, 's', 0xfffe), form, got, 8));
  EXPECT_EQ(got[0], 0u);
  // A third process's marker is a string like any other.
  EXPECT_FALSE(read_marker(foreign_marker(other ^ 1, 's', slot), form, got, 8));
  // Printed by the printers as this process's values are.
  std::string text;
  FmtArg v;
  const std::string m = foreign_marker(other, 's', slot);
  v.s = m;
  v.is_string = true;
  append_value(text, v, OutputFormat::text);
  EXPECT_EQ(text, "\n        hp_stack_place_leaf+0\n        hp_stack_place_caller+5\n\n");
  EXPECT_EQ(stack_frame_count(m), 2);
  EXPECT_EQ(stack_frame_count("not a stack"), 0);
  // Damaged words (a count past the end) keep what read whole.
  std::vector<std::uint64_t> bad = {other, slot, 2, leaf(), caller() + 5, 7, 100, 1};
  adopt_stacks(bad);
  ASSERT_TRUE(read_marker(m, form, got, 8));
  EXPECT_EQ(got[0], 2u);
  ASSERT_TRUE(read_marker(foreign_marker(other, 's', 7), form, got, 8));
  EXPECT_EQ(got[0], 0u);
}

// The copy for hotprobe may be made while slots are still claimed and written (a handler
// that has not returned yet): it holds published slots only, each whole.
TEST(StackPlaces, ExportWhileOtherThreadsInternSeesWholeStacks) {
  stack_table_init();
  constexpr int kThreads = 2, kStacks = 400;
  std::atomic<int> running{kThreads};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([t, &running] {
      for (int i = 0; i < kStacks; ++i) {
        // [3, a, a + 1, a + 2]: a frame count and frames a reader can check.
        const std::uint64_t a = 0x7000000u + static_cast<std::uint64_t>(t) * 0x100000u + i * 4u;
        const std::uint64_t words[4] = {3, a, a + 1, a + 2};
        char m[kSymbolMarkerBytes];
        stack_marker(words, SymbolForm::stack, m);
      }
      running.fetch_sub(1);
    });
  }
  int torn = 0, exports = 0;
  do {
    std::vector<std::uint64_t> out;
    export_stacks(out);
    ++exports;
    for (std::size_t i = 1; i + 1 < out.size();) {
      const std::uint64_t n = out[i + 1];
      const std::uint64_t* f = &out[i + 2];
      if (n == 3 && f[0] >= 0x7000000u && f[0] < 0x8000000u &&
          (f[1] != f[0] + 1 || f[2] != f[0] + 2))
        ++torn;
      i += 2 + n;
    }
  } while (running.load() > 0);
  for (auto& th : threads)
    th.join();
  EXPECT_EQ(torn, 0);
  EXPECT_GE(exports, 1);
}

// A fork child's table diverges from its parent's: its new stacks carry a nonce of its
// own (hotprobe, naming by the parent's words, must not take them for the parent's), and
// the markers written before the fork still read.
TEST(StackPlaces, AForkChildMarksItsStacksAsItsOwn) {
  stack_table_init();
  const std::uint64_t before[] = {1, leaf()};
  char old_marker[kSymbolMarkerBytes];
  stack_marker(before, SymbolForm::stack, old_marker);
  const std::uint32_t parent = own_nonce();
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    int code = 0;
    const std::uint64_t after[] = {1, caller() + 5};
    char m[kSymbolMarkerBytes];
    stack_marker(after, SymbolForm::stack, m);
    SymbolForm form{};
    std::uint64_t got[4] = {};
    if (own_nonce() == parent) code |= 1;
    if (std::string(m + 1, 8) == std::string(old_marker + 1, 8)) code |= 2;
    if (!read_marker(m, form, got, 4) || got[0] != 1 || got[1] != caller() + 5) code |= 4;
    if (!read_marker(old_marker, form, got, 4) || got[0] != 1 || got[1] != leaf()) code |= 8;
    ::_exit(code);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);  // 1, 2: the parent's nonce; 4, 8: a marker unread
  EXPECT_EQ(own_nonce(), parent);
}

std::vector<Symbolizer::SourcePlace> fake_places(const std::string&, std::uint64_t) {
  return {{"inner_inl", "/src/a.c", 3}, {"outer_inl", "/src/a.c", 9}, {"", "/src/a.c", 20}};
}
std::vector<Symbolizer::SourcePlace> no_places(const std::string&, std::uint64_t) {
  return {};
}

TEST(StackPlaces, ShowDebugInfoPrintsInlinedFramesAndPlaces) {
  stack_table_init();
  const std::uint64_t words[] = {1, leaf()};
  char marker[kSymbolMarkerBytes];
  stack_marker(words, SymbolForm::stack, marker);
  char perf[kSymbolMarkerBytes];
  stack_marker(words, SymbolForm::stack_perf, perf);
  auto print = [](const char* m) {
    std::string text;
    FmtArg v;
    v.s = m;
    v.is_string = true;
    append_value(text, v, OutputFormat::text);
    return text;
  };
  set_source_lookup(&fake_places);
  set_show_debug_info(true);
  const std::string on = print(marker);
  const std::string on_perf = print(perf);
  // The printer keeps what it looked up per address: another address for another lookup.
  const std::uint64_t other[] = {1, caller() + 5};
  char plain[kSymbolMarkerBytes];
  stack_marker(other, SymbolForm::stack, plain);
  set_source_lookup(&no_places);
  const std::string none = print(plain);
  set_source_lookup(&fake_places);
  set_show_debug_info(false);
  const std::string off = print(marker);
  set_source_lookup(nullptr);
  EXPECT_EQ(on,
            "\n        [inlined] inner_inl@/src/a.c:3\n        [inlined] outer_inl@/src/a.c:9\n"
            "        hp_stack_place_leaf+0@/src/a.c:20\n\n");
  char want[256];
  std::snprintf(want, sizeof want,
                "\n\t%llx inner_inl (inlined)\n\t%llx outer_inl (inlined)\n\t%llx ",
                static_cast<unsigned long long>(leaf()), static_cast<unsigned long long>(leaf()),
                static_cast<unsigned long long>(leaf()));
  EXPECT_EQ(on_perf.rfind(want, 0), 0u) << on_perf;
  EXPECT_EQ(on_perf.find('@'), std::string::npos) << on_perf;
  EXPECT_EQ(none, "\n        hp_stack_place_caller+5\n\n");  // a module without DWARF
  EXPECT_EQ(off, "\n        hp_stack_place_leaf+0\n\n");
}

// The agent has no lookup: its reader leaves a request per frame, which the command, with
// its lookup, turns into the same text.
TEST(StackPlaces, TheAgentsReaderLeavesPlacesToTheCommand) {
  stack_table_init();
  const std::uint64_t words[] = {2, leaf(), caller() + 5};
  char marker[kSymbolMarkerBytes], perf[kSymbolMarkerBytes];
  stack_marker(words, SymbolForm::stack, marker);
  stack_marker(words, SymbolForm::stack_perf, perf);
  set_source_lookup(nullptr);
  set_show_debug_info(true);
  set_places_by_reader(true);
  std::string text = std::string("a") + marker + "|" + perf + "b";
  expand_symbols(text);
  set_places_by_reader(false);
  ASSERT_TRUE(has_place_requests(text)) << text;
  std::string without = text;
  name_source_places(without);  // no lookup: the frames as bpftrace 0.17 prints them
  EXPECT_EQ(
      without.rfind("a\n        hp_stack_place_leaf+0\n        hp_stack_place_caller+5\n|", 0), 0u)
      << without;
  set_source_lookup(&fake_places);
  name_source_places(text);
  set_source_lookup(nullptr);
  set_show_debug_info(false);
  const std::string stack =
      "\n        [inlined] inner_inl@/src/a.c:3\n        [inlined] outer_inl@/src/a.c:9\n"
      "        hp_stack_place_leaf+0@/src/a.c:20\n";
  EXPECT_EQ(text.rfind("a" + stack, 0), 0u) << text;
  EXPECT_NE(text.find("        hp_stack_place_caller+5@/src/a.c:20\n|"), std::string::npos) << text;
  char want[128];
  std::snprintf(want, sizeof want,
                "|\n\t%llx inner_inl (inlined)\n\t%llx outer_inl (inlined)\n\t%llx ",
                static_cast<unsigned long long>(leaf()), static_cast<unsigned long long>(leaf()),
                static_cast<unsigned long long>(leaf()));
  EXPECT_NE(text.find(want), std::string::npos) << text;
  EXPECT_FALSE(has_place_requests(text)) << text;
  // In JSON output the marker and the requests are escaped inside the string.
  const std::string inner(marker + 1, std::strlen(marker) - 2);
  std::string json = "{\"data\": \"\\u001e" + inner + "\\u001f\\\\u001d\"}\n";
  set_show_debug_info(true);
  set_places_by_reader(true);
  expand_symbols(json);
  set_places_by_reader(false);
  ASSERT_NE(json.find("\\u001d"), std::string::npos) << json;
  set_source_lookup(&fake_places);
  name_source_places(json);
  set_source_lookup(nullptr);
  set_show_debug_info(false);
  // The program's own backslash and "u001d" (escaped as \\u001d) is text, not a request.
  const std::string inl =
      "\\n        [inlined] inner_inl@/src/a.c:3\\n        [inlined] outer_inl@/src/a.c:9";
  EXPECT_EQ(json, "{\"data\": \"" + inl + "\\n        hp_stack_place_leaf+0@/src/a.c:20" + inl +
                      "\\n        hp_stack_place_caller+5@/src/a.c:20\\n\\\\u001d\"}\n");
  // A request cut off (or not one) stays as it is; a malformed one goes.
  std::string cut =
      "x\x1d/bin/true\x1c"
      "10";
  name_source_places(cut);
  EXPECT_EQ(cut,
            "x\x1d/bin/true\x1c"
            "10");
  std::string bad = "x\x1dnothing\x1dy";
  name_source_places(bad);
  EXPECT_EQ(bad, "xy");
}

TEST(StackPlaces, TheSettingIsTheScriptsConfig) {
  harness::Script on("config = { show_debug_info = 1 } BEGIN { }");
  EXPECT_TRUE(show_debug_info());
  harness::Script off("BEGIN { }");
  EXPECT_FALSE(show_debug_info());
  EXPECT_EQ(harness::first_line("config = { show_debug_info = true } BEGIN { }"), "");
}

TEST(StackPlaces, LenTakesAMapOrAStack) {
  for (const char* s : {
           "uprobe:libc:getpid { @ = len(ustack); }",
           "uprobe:libc:getpid { $s = ustack(3); @ = len($s); }",
           "uprobe:libc:getpid { @s[1] = ustack; @ = len(@s[1]); }",
           "uprobe:libc:getpid { @m[1] = 1; @ = len(@m); }",
       }) {
    EXPECT_EQ(harness::first_line(s), "") << s;
  }
  EXPECT_EQ(harness::first_line("uprobe:libc:getpid { @ = len(\"abc\"); }"),
            "stdin:1:30-35: ERROR: len() takes a map (len(@m)) or a stack (len(ustack), len($s) "
            "of $s = ustack), not string");
  EXPECT_NE(harness::first_line("uprobe:libc:getpid { @ = len(1); }"), "");
}

}  // namespace
}  // namespace hotprobe::script
