// Stack values through the built `hotprobe run`: kept in maps and printed by the command
// after the program exited, with file:line and inlined frames under show_debug_info = 1,
// and len(ustack). docs/design/script-language.md, "Stacks and symbols".
#include <gtest/gtest.h>

#include <regex>
#include <string>
#include <vector>

#include "support/run_command.h"

namespace {

hp::test::CommandResult run(const std::string& script, const char* prog) {
  hp::test::Command c{{HP_HOTPROBE, "run", "-e", script, "--", prog}};
  c.env = {{"HOTPROBE_AGENT", HP_AGENT}, {"BPFTRACE_STACK_MODE", std::nullopt}};
  return hp::test::run_command(c);
}

std::string on_leaf(const char* prog, const std::string& body) {
  return std::string("uprobe:") + prog + ":leaf /arg0 == 3/ { " + body + " }";
}

bool contains(const std::string& s, const std::string& what) {
  return s.find(what) != std::string::npos;
}

// The program has exited when the command prints its maps (from the memory they share):
// the stack values' frames came from the agent before it ended.
TEST(StackDebugRun, StackValuesInMapsPrintAfterTheProgramExited) {
  auto r = run(on_leaf(HP_STACK_INLINE, "@s[arg0] = ustack; @t = (1, ustack(perf, 2));"),
               HP_STACK_INLINE);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "@s[3]: \n        leaf+0\n        middle+")) << r.out;
  EXPECT_TRUE(contains(r.out, "        outer+")) << r.out;
  EXPECT_TRUE(contains(r.out, "        main+")) << r.out;
  EXPECT_TRUE(contains(r.out, "@t: (1, \n\t")) << r.out;
  EXPECT_TRUE(contains(r.out, " leaf+0 (" + std::string(HP_STACK_INLINE) + ")\n")) << r.out;
  EXPECT_FALSE(contains(r.out, "\\x1e")) << r.out;  // no marker printed as a string
}

TEST(StackDebugRun, ShowDebugInfoPrintsPlacesAndInlinedFrames) {
  // The source's path as DWARF has it: the directory the compiler ran in, which a
  // compiler cache may have taken from another checkout of the same file.
  const std::string src = "SRC";
  auto r = run("config = { show_debug_info = 1 } " +
                   on_leaf(HP_STACK_INLINE,
                           "@k[ustack] = count(); @p[ustack(perf, 3)] = count(); @v = ustack(3);"),
               HP_STACK_INLINE);
  ASSERT_EQ(r.code, 0) << r.err;
  r.out = std::regex_replace(r.out, std::regex("@/[^\n:@]*/stack_inline\\.c:"), "@SRC:");
  // bpftrace main's form: the function inlined at the return address first, then the
  // frame that holds it, each with its source place.
  EXPECT_TRUE(contains(r.out, "@k[\n    leaf+0@" + src + ":")) << r.out;
  EXPECT_TRUE(contains(r.out, "\n    [inlined] twice@" + src + ":")) << r.out;
  // Each outer function at its call of the next: scale calls twice at line 28, middle
  // calls scale at line 33.
  EXPECT_TRUE(contains(r.out, "\n    [inlined] scale@" + src + ":28\n    middle+")) << r.out;
  EXPECT_TRUE(contains(r.out, "@" + src + ":33\n    outer+")) << r.out;
  EXPECT_TRUE(contains(r.out, "\n    outer+")) << r.out;
  // A value too, indented by 8; ustack(3) counts addresses, so four lines.
  EXPECT_TRUE(contains(r.out, "@v: \n        leaf+0@" + src + ":")) << r.out;
  EXPECT_TRUE(contains(r.out, "\n        [inlined] twice@" + src)) << r.out;
  EXPECT_TRUE(contains(r.out, "\n        [inlined] scale@" + src)) << r.out;
  // perf: the inlined function at the same address, no places.
  EXPECT_TRUE(contains(r.out, " twice (inlined)\n\t")) << r.out;
  EXPECT_TRUE(contains(r.out, " scale (inlined)\n\t")) << r.out;
  EXPECT_FALSE(contains(r.out, "(" + std::string(HP_STACK_INLINE) + ")@")) << r.out;
}

TEST(StackDebugRun, WithoutTheSettingOrWithoutDwarfFramesPrintAsBpftrace017) {
  auto plain = run(on_leaf(HP_STACK_INLINE, "@k[ustack(3)] = count();"), HP_STACK_INLINE);
  ASSERT_EQ(plain.code, 0) << plain.err;
  EXPECT_TRUE(contains(plain.out, "@k[\n    leaf+0\n    middle+")) << plain.out;
  EXPECT_FALSE(contains(plain.out, "[inlined]")) << plain.out;
  auto nodebug = run("config = { show_debug_info = true } " +
                         on_leaf(HP_STACK_INLINE_NODEBUG, "@k[ustack(3)] = count();"),
                     HP_STACK_INLINE_NODEBUG);
  ASSERT_EQ(nodebug.code, 0) << nodebug.err;
  EXPECT_TRUE(contains(nodebug.out, "@k[\n    leaf+0\n    middle+")) << nodebug.out;
  EXPECT_FALSE(contains(nodebug.out, "[inlined]")) << nodebug.out;
}

TEST(StackDebugRun, LenOfAStackIsItsFrames) {
  auto r = run(on_leaf(HP_STACK_INLINE,
                       "$x = ustack(2); @m = len($x); @n = len(ustack); @o = len(ustack(perf, 3)); "
                       "@s[1] = ustack(3); @l = len(@s[1]); @z = len(comm);"),
               HP_STACK_INLINE);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "@m: 2\n")) << r.out;
  EXPECT_TRUE(contains(r.out, "@o: 3\n")) << r.out;
  EXPECT_TRUE(contains(r.out, "@l: 3\n")) << r.out;
  EXPECT_TRUE(contains(r.out, "@z: 0\n")) << r.out;  // a string that holds no stack
  // leaf, middle, outer, main and libc's frames below it.
  const auto at = r.out.find("@n: ");
  ASSERT_NE(at, std::string::npos) << r.out;
  EXPECT_GE(std::stoi(r.out.substr(at + 4)), 4) << r.out;
  auto bad = run(on_leaf(HP_STACK_INLINE, "@n = len(\"abc\");"), HP_STACK_INLINE);
  EXPECT_NE(bad.code, 0);
  EXPECT_TRUE(contains(bad.err, "len() takes a map (len(@m)) or a stack")) << bad.err;
}

}  // namespace
