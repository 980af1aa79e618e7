// uprobe `args` against bpftrace 0.17 itself: each script runs under `bpftrace -c` and
// under `hotprobe run` on args_fixture.c (built with -g: the parameters come from its
// DWARF), and both must print the same, byte for byte. bpftrace 0.17 reads the structs a
// parameter points to only from the script's own definitions, so the scripts that read
// them define them; hotprobe reads its own layout from DWARF. Skipped, with the reason,
// where bpftrace cannot run.
#include <unistd.h>

#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "support/run_command.h"

namespace {

using hp::test::Command;
using hp::test::CommandResult;
using hp::test::run_command;

constexpr const char* kHotprobe = HP_HOTPROBE_BIN;
constexpr const char* kFixture = HP_ARGS_BIN;

std::string why_bpftrace_cannot_run() {
#if defined(HOTPROBE_ASAN) || defined(HOTPROBE_TSAN)
  return "sanitizer build (conformance runs in the release build)";
#endif
  if (::geteuid() != 0) return "not root";
  CommandResult t = run_command(Command{{"bpftrace", "-e", "BEGIN { exit(); }"}});
  if (t.code != 0) return "bpftrace cannot run here: " + t.err.substr(0, 200);
  return "";
}

std::string substitute(std::string script) {
  for (std::size_t p; (p = script.find("BIN")) != std::string::npos;)
    script.replace(p, 3, kFixture);
  return script;
}

struct Case {
  const char* name;
  const char* script;
};

#define HP_ITEM_DEFS                                                                 \
  "struct inner { short x; unsigned char y; };\n"                                    \
  "struct item { int id; char name[12]; struct inner in; long vals[2]; struct item " \
  "*next; };\n"

const Case kCases[] = {
    {"integers_of_each_size",
     "uprobe:BIN:take_ints { printf(\"%d %ld %d %d\\n\", args->a, args->b, args->c, args->d); }"},
    {"string_parameter",
     "uprobe:BIN:take_str { printf(\"%s %d\\n\", str(args->s), args->n); "
     "@[str(args->s)] = sum(args->n); }"},
    {"struct_pointer_fields", HP_ITEM_DEFS
     "uprobe:BIN:take_item { printf(\"%d %s %d %d %ld %s\\n\", args->it->id, args->it->name, "
     "args->k, args->it->in.x, args->it->vals[1], args->it->next->name); }"},
    {"print_of_a_struct",
     HP_ITEM_DEFS "uprobe:BIN:take_item { print(args->it->in); @[args->k] = sum(args->k); }"},
    {"parameter_after_a_struct_by_value",
     "uprobe:BIN:take_pair { @[args->k] = sum(args->k + 1); }"},
};

class ArgsConformance : public ::testing::TestWithParam<Case> {};

TEST_P(ArgsConformance, OutputMatchesBpftrace) {
  const std::string why = why_bpftrace_cannot_run();
  if (!why.empty()) GTEST_SKIP() << "bpftrace conformance skipped: " << why;
  const std::string script = substitute(GetParam().script);
  CommandResult b = run_command(Command{{"bpftrace", "-e", script, "-c", kFixture}});
  ASSERT_EQ(b.code, 0) << "bpftrace failed: " << b.err;
  CommandResult h = run_command(Command{{kHotprobe, "run", "-e", script, "--", kFixture}});
  ASSERT_EQ(h.code, 0) << "hotprobe run failed: " << h.err;
  EXPECT_EQ(h.out, b.out) << "script: " << script << "\nhotprobe stderr: " << h.err;
}

INSTANTIATE_TEST_SUITE_P(Scripts, ArgsConformance, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<Case>& i) { return i.param.name; });

}  // namespace
