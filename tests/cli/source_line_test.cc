// End to end: bpftrace's source-line probes (`uprobe:BIN@FILE:LINE`) under `hotprobe run`,
// on the DWARF fixture (tests/elf/fixture/dwarf_args.c, built -g -O0 and with split DWARF),
// whose main calls each function once.
#include <gtest/gtest.h>

#include <unistd.h>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "support/run_command.h"

namespace {

using hp::test::hotprobe;

unsigned line_of(const std::string& text) {
  std::ifstream in(HP_DWARF_SOURCE);
  std::string line;
  for (unsigned n = 1; std::getline(in, line); ++n)
    if (line.find(text) != std::string::npos) return n;
  return 0;
}

bool contains(const std::string& s, const std::string& what) {
  return s.find(what) != std::string::npos;
}

class SourceLine : public ::testing::TestWithParam<const char*> {};

// A line inside a function is hit once per call; the function's first line is its entry,
// the address of the function's own probe (bpftrace's "source line to address
// validation" case, with `pc`).
TEST_P(SourceLine, HitsTheLinesAddress) {
  const std::string bin = GetParam();
  const std::string body = bin + "@dwarf_args.c:" + std::to_string(line_of("return a + 1;"));
  const std::string first = bin + "@dwarf_args.c:" + std::to_string(line_of("int hp_dw_simple("));
  auto r = hotprobe({"run", "-e",
                     "uprobe:" + body + " { @body = count(); } uprobe:" + first +
                         " { @a = reg(\"pc\"); } uprobe:" + bin +
                         ":hp_dw_simple { @b = reg(\"ip\"); @same = (@a == @b); }",
                     "--", bin});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_TRUE(contains(r.out, "@body: 1\n")) << r.out;
  EXPECT_TRUE(contains(r.out, "@same: 1\n")) << r.out;
}

INSTANTIATE_TEST_SUITE_P(Builds, SourceLine, ::testing::Values(HP_DWARF_O0, HP_DWARF_SPLIT),
                         [](const ::testing::TestParamInfo<const char*>& info) {
                           return std::string(info.param) == HP_DWARF_SPLIT ? "split" : "O0";
                         });

TEST(SourceLineErrors, SayWhatIsWrongAndWhatHelps) {
  const std::string bin = HP_DWARF_O0;
  auto r = hotprobe({"run", "-e", "uprobe:" + bin + "@nosuch.c:3 { exit(); }", "--", bin});
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(contains(r.err, "was compiled from 'nosuch.c' (its source files: ")) << r.err;
  r = hotprobe({"run", "-e", "uprobe:" + bin + "@dwarf_args.c:1 { exit(); }", "--", bin});
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(contains(r.err, "has no code")) << r.err;
  r = hotprobe({"run", "-e", "uretprobe:" + bin + "@dwarf_args.c:25 { exit(); }", "--", bin});
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(contains(r.err, "a uretprobe cannot be placed at a source line")) << r.err;
}

// --debuginfo DIR on the command line: `list -v` finds the parameters of a stripped copy
// through it; a directory that does not exist is a usage error naming it.
TEST(DebuginfoOption, ListFindsTheDebugFileThere) {
  const std::string dir = ::testing::TempDir() + "hp_cli_dbg_" + std::to_string(::getpid());
  const std::string cmd = "mkdir -p '" + dir + "/ext' && objcopy --only-keep-debug '" +
                          HP_DWARF_O0 + "' '" + dir +
                          "/ext/prog.debug' && objcopy --strip-debug '" + HP_DWARF_O0 + "' '" +
                          dir + "/prog' 2>/dev/null";
  if (std::system(cmd.c_str()) != 0) GTEST_SKIP() << "objcopy (binutils) is not installed";
  const std::string probe = "uprobe:" + dir + "/prog:hp_dw_simple";
  auto r = hotprobe({"list", "-v", probe});
  EXPECT_FALSE(contains(r.out, "const char* s")) << r.out;
  r = hotprobe({"list", "-v", "--debuginfo=./ext", probe});  // takes one value, not the probe
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "    int a\n    const char* s\n")) << r.out << r.err;
  r = hotprobe({"list", "-v", probe, "--debuginfo", "/nonexistent-hp:" + dir + "/ext"});
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(contains(r.err, "--debuginfo /nonexistent-hp: no such directory")) << r.err;
  std::system(("rm -rf '" + dir + "'").c_str());
}

}  // namespace
