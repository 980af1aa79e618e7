// Forks, execs and wrappers under `hotprobe run` (docs/design/agent.md, "Forks", "Exec" and
// "What is not traced is said"): the maps of followed children merge into PROGRAM's print,
// the image a program exec's is traced on with its counts added to the same maps, an exec'd
// image the agent cannot start in is named as untraced, and a probe whose binary never
// loaded is warned about.
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstring>
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
                       const std::vector<std::string>& command,
                       const std::vector<std::string>& env = {}) {
  std::vector<std::string> args{HP_HOTPROBE, "run"};
  args.insert(args.end(), opts.begin(), opts.end());
  args.insert(args.end(), {"-e", script, "--"});
  args.insert(args.end(), command.begin(), command.end());
  return run_command(args, env, std::chrono::seconds(60));
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

// A sanitizer runtime replaces malloc in the program: libc's is never called.
bool sanitized() {
  return std::strlen(HP_SANITIZE) != 0;
}

// chain_script()'s counts: @p, the calls of probed(), and @m, the malloc(23456) calls, where
// libc's malloc is the program's (a sanitizer runtime replaces it).
void expect_calls(const RunResult& r, long n) {
  EXPECT_EQ(map_value(r.out, "p"), n) << r.out;
  if (!sanitized()) {
    EXPECT_EQ(map_value(r.out, "m"), n) << r.out;
  }
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

TEST(ForkExec, AnExecdProbedBinaryIsTraced) {
  auto r = hotprobe_run(
      {},
      probe_on(HP_FORKER) + "{ @a = count(); } " + probe_on(HP_EXEC_TARGET) + "{ @b = count(); }",
      {HP_FORKER, "exec", HP_EXEC_TARGET, "0", "3"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(map_value(r.out, "a"), 1) << r.out;    // before the exec
  EXPECT_EQ(map_value(r.out, "b"), 3) << r.out;    // the exec'd image
  EXPECT_EQ(count_of(r.out, "@a: "), 1) << r.out;  // one print
  EXPECT_EQ(r.err.find("never attached"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("exec'd"), std::string::npos) << r.err;
}

// exec_chain N M ...: N calls, then an exec of itself that makes M more (and so on).
std::string chain_script() {
  return std::string("BEGIN { printf(\"begin\\n\"); } ") +
         "uprobe:libc:malloc /arg0 == 23456/ { @m = count(); } " + probe_on(HP_EXEC_CHAIN) +
         "{ @p = count(); @h = hist(arg0); } END { printf(\"end\\n\"); }";
}

TEST(ForkExec, CountsAddUpAcrossAnExec) {
  auto r = hotprobe_run({}, chain_script(), {HP_EXEC_CHAIN, "5", "7"});
  ASSERT_EQ(r.status, 0) << r.err;
  expect_calls(r, 5 + 7);
  EXPECT_EQ(count_of(r.out, "begin\n"), 1) << r.out;  // BEGIN and END once, as bpftrace's
  EXPECT_EQ(count_of(r.out, "end\n"), 1) << r.out;
  EXPECT_EQ(count_of(r.out, "Attaching"), 1) << r.out;
  EXPECT_EQ(count_of(r.out, "@h:"), 1) << r.out;
  EXPECT_EQ(r.err.find("exec'd"), std::string::npos) << r.err;
}

TEST(ForkExec, CountsAddUpAcrossAChainOfTwoExecs) {
  auto r = hotprobe_run({}, chain_script(), {HP_EXEC_CHAIN, "5", "7", "11"});
  ASSERT_EQ(r.status, 0) << r.err;
  expect_calls(r, 5 + 7 + 11);
  EXPECT_EQ(count_of(r.out, "end\n"), 1) << r.out;
  EXPECT_EQ(r.err.find("Sanitizer"), std::string::npos) << r.err;  // the hand-over, raced
}

// The program passes an empty environment, or clears LD_PRELOAD first: the agent is put
// back for the new image all the same (the program's own environment is what it passed).
TEST(ForkExec, AnExecWithoutLdPreloadIsTracedToo) {
  for (const char* how : {"-e", "-u"}) {
    auto r = hotprobe_run({}, chain_script(), {HP_EXEC_CHAIN, how, "5", "7", "11"});
    ASSERT_EQ(r.status, 0) << how << r.err;
    expect_calls(r, 5 + 7 + 11);
  }
}

// A vfork child that exec's (posix_spawn, a shell running a command) is a child: followed
// with --follow-forks, its maps merged into the program's; not followed with
// HOTPROBE_FOLLOW_CHILD_EXECS=0 (a followed child's exec then ends its tracing) nor
// without --follow-forks.
TEST(ForkExec, AVforkChildsExecIsFollowedWhenChildExecsAreFollowed) {
  if (skip_fork_follow()) GTEST_SKIP() << "TSan: no thread after a multi-threaded fork";
  auto r = hotprobe_run({"--follow-forks"}, chain_script(), {HP_EXEC_CHAIN, "-v", "5", "7", "11"});
  ASSERT_EQ(r.status, 0) << r.err;
  expect_calls(r, 5 + 7 + 11);
  EXPECT_EQ(count_of(r.out, "@m: "), 1) << r.out;
  auto not_asked = hotprobe_run({"--follow-forks"}, chain_script(), {HP_EXEC_CHAIN, "-v", "5", "7"},
                                {"HOTPROBE_FOLLOW_CHILD_EXECS=0"});
  ASSERT_EQ(not_asked.status, 0) << not_asked.err;
  expect_calls(not_asked, 5);
  auto without = hotprobe_run({}, chain_script(), {HP_EXEC_CHAIN, "-v", "5", "7"});
  ASSERT_EQ(without.status, 0) << without.err;
  expect_calls(without, 5);
}

// Every malloc and free of the process, the loader's in each image included, against
// bpftrace's (its -c traces the pid, whatever it exec's).
TEST(ForkExec, CountsAcrossExecsEqualBpftrace) {
  if (sanitized()) GTEST_SKIP() << "a sanitizer runtime makes calls of its own";
  if (std::string why = hp::agent_test::bpftrace_usable(); !why.empty()) GTEST_SKIP() << why;
  hp::agent_test::expect_counts_equal_bpftrace(HP_HOTPROBE, {"malloc", "free"},
                                               {HP_EXEC_CHAIN, "5", "7", "11"});
}

// The exec'd image's environment has no variable of hotprobe's and no LD_PRELOAD of its.
TEST(ForkExec, TheExecdImageSeesNoHotprobeVariable) {
  auto r = hotprobe_run({}, probe_on(HP_FORKER) + "{ @a = count(); }",
                        {HP_FORKER, "exec", "/usr/bin/env"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("PATH="), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("HOTPROBE_"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("LD_PRELOAD"), std::string::npos) << r.out;
}

// bash defines setenv and unsetenv of its own (on its variable table, not made yet when
// the agent starts): the agent's edits of the environment must not go through them, or
// bash passes hotprobe's variables to every command it runs, whose agent then fails.
TEST(ForkExec, BashPassesNoHotprobeVariableToItsCommands) {
  if (::access("/usr/bin/bash", X_OK) != 0) GTEST_SKIP() << "bash is not installed";
  auto r = hotprobe_run({}, "uprobe:libc:malloc { @m = count(); }",
                        {"/usr/bin/bash", "-c", "/usr/bin/env; /usr/bin/true"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("PATH="), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("HOTPROBE_"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("LD_PRELOAD"), std::string::npos) << r.out;
  EXPECT_EQ(r.err.find("hotprobe agent"), std::string::npos) << r.err;
}

// A static program ignores LD_PRELOAD: the agent does not start in it, and hotprobe says
// so; what was counted before the exec is printed.
TEST(ForkExec, AnExecdStaticProgramIsSaidToBeUntraced) {
  if (::access("/bin/busybox", X_OK) != 0) GTEST_SKIP() << "busybox-static is not installed";
  auto r = hotprobe_run({}, probe_on(HP_FORKER) + "{ @a = count(); }",
                        {HP_FORKER, "exec", "/bin/busybox", "true"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(map_value(r.out, "a"), 1) << r.out;
  EXPECT_NE(r.err.find("exec'd '/bin/busybox', and the agent did not start in the new image"),
            std::string::npos)
      << r.err;
}

// execvp tries each PATH entry: the execs that fail leave the program traced.
TEST(ForkExec, FailedExecsLeaveTheProgramTraced) {
  auto r = hotprobe_run(
      {}, chain_script(),
      {"/usr/bin/env",
       "PATH=/nonexistent:" +
           std::string(HP_EXEC_CHAIN).substr(0, std::string(HP_EXEC_CHAIN).rfind('/')),
       std::string(HP_EXEC_CHAIN).substr(std::string(HP_EXEC_CHAIN).rfind('/') + 1), "5"});
  ASSERT_EQ(r.status, 0) << r.err;
  expect_calls(r, 5);
  EXPECT_EQ(r.err.find("exec'd"), std::string::npos) << r.err;
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

TEST(ForkExec, AShellWrapperThatExecsIsTraced) {
  std::string wrapper = write_wrapper(std::string("exec ") + HP_EXEC_TARGET + " 0 3\n");
  auto r = hotprobe_run({}, probe_on(HP_EXEC_TARGET) + "{ @b = count(); }", {wrapper});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(map_value(r.out, "b"), 3) << r.out;
  EXPECT_EQ(r.err.find("never attached"), std::string::npos) << r.err;
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
