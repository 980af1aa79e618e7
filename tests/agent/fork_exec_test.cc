// Forks, execs and wrappers under `hotprobe run` (docs/design/agent.md, "Forks" and "What
// is not traced is said"): the maps of followed children merge into PROGRAM's print, an
// exec'd program is named as untraced, and a probe whose binary never loaded is warned about.
#include <sys/stat.h>

#include <gtest/gtest.h>

#include <fstream>
#include <regex>
#include <string>
#include <vector>

#include "agent_e2e_util.h"

namespace {

using hp::agent_test::map_value;
using hp::agent_test::run_command;
using hp::agent_test::RunResult;

RunResult hotprobe_run(const std::vector<std::string>& opts, const std::string& script,
                       const std::vector<std::string>& command) {
  std::vector<std::string> args{HP_HOTPROBE, "run"};
  args.insert(args.end(), opts.begin(), opts.end());
  args.insert(args.end(), {"-e", script, "--"});
  args.insert(args.end(), command.begin(), command.end());
  return run_command(args, {}, std::chrono::seconds(60));
}

std::string probe_on(const std::string& binary) {
  return "uprobe:" + binary + ":probed ";
}

int count_of(const std::string& text, const std::string& what) {
  int n = 0;
  for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1))
    ++n;
  return n;
}

bool skip_fork_follow() {
#if defined(HOTPROBE_TSAN)
  return true;  // TSan cannot start the child's reporter thread after a multi-threaded fork
#else
  return false;
#endif
}

constexpr int kChildren = 4;
constexpr int kCalls = 25;

TEST(ForkExec, FollowedChildrenMergeIntoOneMap) {
  if (skip_fork_follow()) GTEST_SKIP() << "TSan: no thread after a multi-threaded fork";
  auto r = hotprobe_run({"--follow-forks"}, probe_on(HP_FORKER) + "{ @calls = count(); }",
                        {HP_FORKER, std::to_string(kChildren), std::to_string(kCalls)});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(count_of(r.out, "@calls: "), 1) << r.out;  // one print, as bpftrace's
  EXPECT_EQ(map_value(r.out, "calls"), (kChildren + 1) * kCalls) << r.out;
}

TEST(ForkExec, FollowedChildrenKeyedByPidGiveOneKeyEach) {
  if (skip_fork_follow()) GTEST_SKIP() << "TSan: no thread after a multi-threaded fork";
  auto r = hotprobe_run({"--follow-forks"},
                        probe_on(HP_FORKER) + "{ @by[pid] = count(); @hist = hist(arg0); }",
                        {HP_FORKER, std::to_string(kChildren), std::to_string(kCalls)});
  ASSERT_EQ(r.status, 0) << r.err;
  std::regex row(R"(@by\[(\d+)\]: (\d+)\n)");
  int keys = 0;
  for (auto it = std::sregex_iterator(r.out.begin(), r.out.end(), row);
       it != std::sregex_iterator(); ++it) {
    ++keys;
    EXPECT_EQ(std::stol((*it)[2]), kCalls) << r.out;
  }
  EXPECT_EQ(keys, kChildren + 1) << r.out;
  EXPECT_EQ(count_of(r.out, "@hist:"), 1) << r.out;
  // hist(arg0) of 0..24 in every process: bucket [16, 32) holds 9 per process.
  EXPECT_NE(r.out.find("[16, 32)" + std::string(11, ' ')), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(std::to_string(9 * (kChildren + 1)) + " |"), std::string::npos) << r.out;
}

TEST(ForkExec, WithoutFollowForksOnlyTheProgramCounts) {
  auto r = hotprobe_run({}, probe_on(HP_FORKER) + "{ @calls = count(); }",
                        {HP_FORKER, std::to_string(kChildren), std::to_string(kCalls)});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(map_value(r.out, "calls"), kCalls) << r.out;
}

TEST(ForkExec, AnExecdProbedBinaryIsSaidToBeUntraced) {
  auto r = hotprobe_run(
      {},
      probe_on(HP_FORKER) + "{ @a = count(); } " + probe_on(HP_EXEC_TARGET) + "{ @b = count(); }",
      {HP_FORKER, "exec", HP_EXEC_TARGET, "0", "3"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(map_value(r.out, "a"), 1) << r.out;  // before the exec: traced
  EXPECT_EQ(map_value(r.out, "b"), 0) << r.out;
  EXPECT_NE(r.err.find("the probe on '" + std::string(HP_EXEC_TARGET) +
                       ":probed' never attached during the run"),
            std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("exec'd, and hotprobe does not trace exec'd programs"), std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("hotprobe run ... -- " + std::string(HP_EXEC_TARGET)), std::string::npos)
      << r.err;
}

TEST(ForkExec, AnExecWithNoProbeOnItsBinaryIsStillSaid) {
  auto r = hotprobe_run({}, probe_on(HP_FORKER) + "{ @a = count(); }",
                        {HP_FORKER, "exec", HP_EXEC_TARGET, "0", "3"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.err.find("exec'd '" + std::string(HP_EXEC_TARGET) + "', which ran untraced"),
            std::string::npos)
      << r.err;
}

// posix_spawn and shells run a command in a vfork child, which shares the program's memory
// (and its session) until it execs: its exec must not end the program's tracing.
TEST(ForkExec, AVforkChildsExecLeavesTheProgramTraced) {
  auto r = hotprobe_run({}, probe_on(HP_FORKER) + "{ @calls = count(); }",
                        {HP_FORKER, "spawn", std::to_string(kCalls), HP_EXEC_TARGET});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(map_value(r.out, "calls"), 2 * kCalls) << r.out;
  EXPECT_EQ(r.err.find("exec'd"), std::string::npos) << r.err;  // the program never exec'd
}

std::string write_wrapper(const std::string& body) {
  std::string path = hp::agent_test::temp_dir("wrapper") + "/wrapper.sh";
  std::ofstream(path) << "#!/bin/sh\n" << body;
  ::chmod(path.c_str(), 0755);
  return path;
}

TEST(ForkExec, AShellWrapperThatExecsIsWarnedAbout) {
  std::string wrapper = write_wrapper(std::string("exec ") + HP_EXEC_TARGET + " 0 3\n");
  auto r = hotprobe_run({}, probe_on(HP_EXEC_TARGET) + "{ @b = count(); }", {wrapper});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(map_value(r.out, "b"), 0) << r.out;
  EXPECT_NE(r.err.find("the probe on '" + std::string(HP_EXEC_TARGET) +
                       ":probed' never attached during the run"),
            std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("hotprobe run ... -- " + std::string(HP_EXEC_TARGET)), std::string::npos)
      << r.err;
}

TEST(ForkExec, AShellWrapperThatRunsAChildIsWarnedAbout) {
  std::string wrapper = write_wrapper(std::string(HP_EXEC_TARGET) + " 0 3\nexit $?\n");
  auto r = hotprobe_run({}, probe_on(HP_EXEC_TARGET) + "{ @b = count(); }", {wrapper});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.err.find("never attached during the run: '" + wrapper + "' is a script run by"),
            std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("pyenv which python3"), std::string::npos) << r.err;
}

TEST(ForkExec, AProbeThatAttachedIsNotWarnedAbout) {
  auto r = hotprobe_run({}, probe_on(HP_FORKER) + "{ @calls = count(); }",
                        {HP_FORKER, "0", std::to_string(kCalls)});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(map_value(r.out, "calls"), kCalls) << r.out;
  EXPECT_EQ(r.err.find("never attached"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("exec'd"), std::string::npos) << r.err;
}

}  // namespace
