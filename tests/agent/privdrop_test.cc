// A program that drops root changes the credentials of every one of its threads, hotprobe's
// included (docs/design/agent.md, "Credentials"): under `hotprobe run` it exits as it does
// alone, its counts are exact and the maps are printed.
#include <unistd.h>

#include <gtest/gtest.h>

#include <string>
#include <string_view>
#include <vector>

#include "agent_e2e_util.h"

namespace {

using hp::agent_test::map_value;
using hp::agent_test::run_command;
using hp::agent_test::RunResult;

RunResult hotprobe_run(const std::string& script, const std::vector<std::string>& command) {
  std::vector<std::string> args{HP_HOTPROBE, "run", "-e", script, "--"};
  args.insert(args.end(), command.begin(), command.end());
  return run_command(args, {}, std::chrono::seconds(60));
}

// Setting another user's ids needs root (CAP_SETUID, CAP_SETGID).
bool root() {
  return ::geteuid() == 0;
}

// ThreadSanitizer's runtime runs a thread of its own in the program (and in setpriv, with
// the agent's runtime preloaded), which takes no capset: the program aborts without
// hotprobe too.
bool tsan() {
  return std::string_view(HP_SANITIZE) == "thread";
}

TEST(PrivDrop, TheFixtureDropsRootAlone) {
  if (!root()) GTEST_SKIP() << "dropping root needs root";
  if (tsan()) GTEST_SKIP() << "TSan's own thread does not follow the program's capset";
  RunResult r = run_command({HP_PRIVDROP}, {}, std::chrono::seconds(60));
  EXPECT_EQ(r.status, 0) << r.err;
}

// The main thread keeps its capabilities across setresuid (PR_SET_KEEPCAPS), makes them
// effective again (capset), changes its groups with them, drops them, then fails a setgid:
// every thread, hotprobe's included, gets the main thread's result each time, and all hold
// the same credentials at the end.
TEST(PrivDrop, ADroppingProgramExitsAsAloneWithExactCounts) {
  if (!root()) GTEST_SKIP() << "dropping root needs root";
  if (tsan()) GTEST_SKIP() << "TSan's own thread does not follow the program's capset";
  const std::string fix = HP_PRIVDROP;
  const std::string script = "uprobe:" + fix + ":tick_main { @m = count(); } uprobe:" + fix +
                             ":tick_thread { @t = count(); } "
                             "uprobe:libc:setresuid { @u = count(); } "
                             "uprobe:libc:setgroups { @g = count(); } "
                             "uprobe:libc:setgid { @gid = count(); }";
  RunResult r = hotprobe_run(script, {fix});
  ASSERT_EQ(r.status, 0) << r.out << r.err;
  EXPECT_EQ(map_value(r.out, "m"), 7) << r.out;
  EXPECT_EQ(map_value(r.out, "t"), 11) << r.out;
  EXPECT_EQ(map_value(r.out, "u"), 1) << r.out;
  EXPECT_EQ(map_value(r.out, "g"), 2) << r.out;
  EXPECT_EQ(map_value(r.out, "gid"), 2) << r.out;
}

// util-linux's setpriv, single-threaded: PR_SET_KEEPCAPS, setresuid, capset, setresgid.
TEST(PrivDrop, SetprivRunsItsCommand) {
  if (!root()) GTEST_SKIP() << "dropping root needs root";
  if (tsan()) GTEST_SKIP() << "TSan's own thread does not follow the program's capset";
  if (::access("/usr/bin/setpriv", X_OK) != 0) GTEST_SKIP() << "setpriv is not installed";
  const std::vector<std::string> command{"/usr/bin/setpriv", "--reuid=65534", "--regid=65534",
                                         "--clear-groups", "/bin/true"};
  RunResult alone = run_command(command, {}, std::chrono::seconds(60));
  ASSERT_EQ(alone.status, 0) << alone.err;
  RunResult r = hotprobe_run("uprobe:libc:setresgid { @ = count(); }", command);
  EXPECT_EQ(r.status, 0) << r.out << r.err;
  EXPECT_EQ(map_value(r.out, ""), 1) << r.out;
}

}  // namespace
