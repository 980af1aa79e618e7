// `args` as a whole and a struct named only in DWARF, end to end: the built hotprobe reads
// the fixture's DWARF (fixture/args_whole.c), appends the facts to the script, and the
// agent in the traced program copies the parameters from their registers.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "support/run_command.h"

namespace {

using hp::test::hotprobe;

const std::string kTake = std::string("uprobe:") + HP_ARGS_WHOLE + ":hp_take";

// $a.p, a struct of the program, is a map key in bpftrace 0.17's form ({.x=1}); the named
// tuple @r, which only current bpftrace has, prints in current bpftrace's form.
TEST(ArgsWholeRun, TheRecordOfTheParametersAndADwarfStruct) {
  auto r =
      hotprobe({"run", "-e",
                kTake + " { $a = args; printf(\"%c %d %d %d\\n\", $a.c, *$a.n, $a.p.y, $a.p.z); "
                        "$h = (struct hp_hidden *)args.h; printf(\"%d %s\\n\", $h->a, $h->tag); "
                        "@[args.c, $a.p] = count(); @r = (c=args.c, p=$a.p); }",
                "--", HP_ARGS_WHOLE});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out,
            "Attaching 1 probe...\nx 5 -2 300\n77 dwarf\n\n\n@[120, {.x=1,.y=-2,.z=300}]: "
            "1\n@r: { .c = 120, .p = { .x = 1, .y = -2, .z = 300 } }\n")
      << r.err;
}

TEST(ArgsWholeRun, PrintOfArgsShowsPointersInHex) {
  auto r = hotprobe({"run", "-e", kTake + " { print(args); }", "--", HP_ARGS_WHOLE});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(r.out.starts_with("Attaching 1 probe...\n{ .n = 0x")) << r.out << r.err;
  EXPECT_NE(r.out.find(", .c = 120, .p = { .x = 1, .y = -2, .z = 300 }, .h = 0x"),
            std::string::npos)
      << r.out;
}

}  // namespace
