// ustack and usym as values, stack_mode from the environment and uaddr() through the
// built `hotprobe run` (the command reads the symbols uaddr names and BPFTRACE_STACK_MODE,
// the agent prints): docs/design/script-language.md, "Stacks and symbols" and "config".
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "support/run_command.h"

namespace {

using Result = hp::test::CommandResult;
using Env = std::vector<std::pair<std::string, std::optional<std::string>>>;

Result hotprobe(const std::vector<std::string>& args, Env env = {}) {
  hp::test::Command c{{HP_HOTPROBE}};
  c.argv.insert(c.argv.end(), args.begin(), args.end());
  env.emplace_back("HOTPROBE_AGENT", HP_AGENT);
  env.emplace_back("BPFTRACE_STACK_MODE", std::nullopt);
  for (auto& e : env) {  // a later entry of a name replaces an earlier one
    bool seen = false;
    for (auto& have : c.env)
      if (have.first == e.first) seen = true;
    if (!seen) c.env.push_back(e);
  }
  return hp::test::run_command(c);
}

std::string on_inner(const char* prog, const std::string& body) {
  return std::string("uprobe:") + prog + ":inner { " + body + " }";
}

bool contains(const std::string& s, const std::string& what) {
  return s.find(what) != std::string::npos;
}

TEST(StackValuesRun, PrintfAndPrintNameTheFrames) {
  auto r = hotprobe({"run", "-e",
                     on_inner(HP_STACK_PIE,
                              "printf(\"%s|\", ustack); print(ustack(perf, 1)); "
                              "print((ustack(1), usym(reg(\"ip\")))); exit();"),
                     "--", HP_STACK_PIE});
  EXPECT_EQ(r.code, 0) << r.err;
  // inner pushes no frame: its caller is not in the rbp chain (as in bpftrace's stacks);
  // outer's caller is.
  EXPECT_TRUE(contains(r.out, "\n        inner+0\n        main+")) << r.out;
  EXPECT_TRUE(contains(r.out, " inner+0 (" + std::string(HP_STACK_PIE) + ")\n")) << r.out;
  EXPECT_TRUE(contains(r.out, "(\n        inner+0\n, inner)\n")) << r.out;
}

TEST(StackValuesRun, TheEnvironmentsStackModeIsOverTheConfig) {
  const std::string script = "config = { stack_mode = perf } " +
                             on_inner(HP_STACK_PIE, "printf(\"[%s]\", ustack(1)); exit();");
  auto perf = hotprobe({"run", "-e", script, "--", HP_STACK_PIE});
  EXPECT_EQ(perf.code, 0) << perf.err;
  EXPECT_TRUE(contains(perf.out, "[\n\t")) << perf.out;
  auto raw = hotprobe({"run", "-e", script, "--", HP_STACK_PIE}, {{"BPFTRACE_STACK_MODE", "raw"}});
  EXPECT_EQ(raw.code, 0) << raw.err;
  EXPECT_TRUE(contains(raw.out, "[\n5")) << raw.out;  // a PIE's address, in hex
  EXPECT_FALSE(contains(raw.out, "inner")) << raw.out;
  auto bad = hotprobe({"run", "-e", script, "--", HP_STACK_PIE}, {{"BPFTRACE_STACK_MODE", "fast"}});
  EXPECT_NE(bad.code, 0);
  EXPECT_TRUE(
      contains(bad.err, "BPFTRACE_STACK_MODE is bpftrace, perf, raw or build_id ('fast' given)"))
      << bad.err;
}

TEST(StackValuesRun, UaddrReadsGlobalsOfPieAndNonPie) {
  for (const char* prog : {HP_STACK_PIE, HP_STACK_NOPIE}) {
    auto r = hotprobe({"run", "-e",
                       on_inner(prog,
                                "printf(\"0x%x -- 0x%x %d %d\\n\", *uaddr(\"GLOBAL_A\"), "
                                "*uaddr(\"GLOBAL_C\"), *uaddr(\"GLOBAL_S\"), "
                                "sizeof(*uaddr(\"GLOBAL_S\"))); exit();"),
                       "--", prog});
    EXPECT_EQ(r.code, 0) << r.err;
    EXPECT_TRUE(contains(r.out, "0x55555555 -- 0x33333333 7 2\n")) << prog << "\n" << r.out;
  }
  auto missing = hotprobe(
      {"run", "-e", on_inner(HP_STACK_PIE, "print(*uaddr(\"NO_SUCH\"));"), "--", HP_STACK_PIE});
  EXPECT_NE(missing.code, 0);
  EXPECT_TRUE(contains(
      missing.err, std::string("ERROR: Could not resolve symbol: ") + HP_STACK_PIE + ":NO_SUCH"))
      << missing.err;
}

TEST(StackValuesRun, MissingProbesWarnOrIgnoreAttachTheRest) {
  const std::string probes = std::string("uprobe:") + HP_STACK_PIE +
                             ":inner, uprobe:" + HP_STACK_PIE +
                             ":hp_no_such_function { printf(\"hit\\n\"); exit(); }";
  const std::string what =
      std::string("No matches for uprobe ") + HP_STACK_PIE + ":hp_no_such_function.";
  // "error", the default: the agent's message, which names the function and attaches none.
  auto error = hotprobe({"run", "-e", probes, "--", HP_STACK_PIE});
  EXPECT_NE(error.code, 0);
  EXPECT_TRUE(contains(error.err, "hp_no_such_function")) << error.err;
  EXPECT_FALSE(contains(error.out, "hit\n")) << error.out;
  auto warn = hotprobe(
      {"run", "-e", "config = { missing_probes = \"warn\" } " + probes, "--", HP_STACK_PIE});
  EXPECT_EQ(warn.code, 0) << warn.err;
  EXPECT_TRUE(contains(warn.err, "WARNING: " + what + " Skipping.")) << warn.err;
  EXPECT_TRUE(contains(warn.out, "Attaching 1 probe...\n")) << warn.out;
  EXPECT_TRUE(contains(warn.out, "hit\n")) << warn.out;
  auto ignore = hotprobe(
      {"run", "-e", "config = { missing_probes = \"ignore\" } " + probes, "--", HP_STACK_PIE});
  EXPECT_EQ(ignore.code, 0) << ignore.err;
  EXPECT_FALSE(contains(ignore.err, "hp_no_such_function")) << ignore.err;
  EXPECT_TRUE(contains(ignore.out, "hit\n")) << ignore.out;
}

}  // namespace
