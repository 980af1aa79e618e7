// A followed child that closes every descriptor (the channel to hotprobe among them)
// before it execs or exits, as Python's subprocess and daemons' spawn helpers do: it is
// traced on, and its image and its counts reach hotprobe through the rendezvous
// (agent/rendezvous.h), which gives the channel to the traced tree's processes only.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "agent/rendezvous.h"
#include "agent_e2e_util.h"

extern "C" {
#include "fixture/exit_marks.h"
}

namespace {

using hp::agent_test::map_value;
using hp::agent_test::run_command;
using hp::agent_test::RunResult;

// TSan cannot start a followed child's reporter thread after a multi-threaded fork.
#if defined(HOTPROBE_TSAN)
#define HP_SKIP_FOLLOW() GTEST_SKIP() << "TSan: no thread after a multi-threaded fork"
#else
#define HP_SKIP_FOLLOW() (void)0
#endif

RunResult spawn_marks(const std::string& how) {
  const std::string lib = HP_EXIT_MARKS_LIB;
  const std::string script = "uprobe:" + lib + ":mark_lib_ctor { @ctor = count(); } uprobe:" + lib +
                             ":mark_main { @main = count(); }";
  return run_command({HP_HOTPROBE, "run", "--follow-forks", "-e", script, "--", HP_CLOSING_SPAWN,
                      how, HP_EXIT_MARKS, "return"},
                     {}, std::chrono::seconds(60));
}

TEST(ClosingSpawn, AForkedChildsImageIsTraced) {
  HP_SKIP_FOLLOW();
  RunResult r = spawn_marks("fork");
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(map_value(r.out, "main"), kMain) << r.out << r.err;
  if (std::string(HP_SANITIZE).empty()) {  // a sanitizer-built agent is preloaded
    EXPECT_EQ(map_value(r.out, "ctor"), kLibCtor) << r.out << r.err;
  }
  EXPECT_EQ(r.err, "");
}

TEST(ClosingSpawn, AVforkChildsImageIsTraced) {
  HP_SKIP_FOLLOW();
  RunResult r = spawn_marks("vfork");
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(map_value(r.out, "main"), kMain) << r.out << r.err;
  if (std::string(HP_SANITIZE).empty()) {
    EXPECT_EQ(map_value(r.out, "ctor"), kLibCtor) << r.out << r.err;
  }
  EXPECT_EQ(r.err, "");
}

// The child's counts and its printf output, kept while it has no channel.
TEST(ClosingSpawn, AForkedChildsCountsAndOutputArrive) {
  HP_SKIP_FOLLOW();
  const std::string script = std::string("uprobe:") + HP_CLOSING_SPAWN +
                             ":child_work { @w = count(); printf(\"w%d\\n\", arg0); }";
  RunResult r = run_command(
      {HP_HOTPROBE, "run", "--follow-forks", "-e", script, "--", HP_CLOSING_SPAWN, "work", "7"}, {},
      std::chrono::seconds(60));
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(map_value(r.out, "w"), 7) << r.out << r.err;
  for (int i = 0; i < 7; ++i)
    EXPECT_NE(r.out.find("w" + std::to_string(i) + "\n"), std::string::npos) << r.out;
  // (LeakSanitizer speaks at the child's exit, of the reporter thread it finds running.)
  if (std::string(HP_SANITIZE).empty()) {
    EXPECT_EQ(r.err, "");
  }
}

// The rendezvous's name: in /proc/net/unix, "@hotprobe-PID-...".
std::string rendezvous_of(pid_t hotprobe) {
  std::ifstream in("/proc/net/unix");
  const std::string want = "@hotprobe-" + std::to_string(hotprobe) + "-";
  for (std::string line; std::getline(in, line);) {
    const auto at = line.find(want);
    if (at != std::string::npos) return line.substr(at + 1);
  }
  return "";
}

// A process outside the traced tree (this test, hotprobe's parent) gets nothing.
TEST(ClosingSpawn, AProcessOutsideTheTracedTreeGetsNoChannel) {
  const pid_t hp = ::fork();
  ASSERT_GE(hp, 0);
  if (hp == 0) {
    const int null = ::open("/dev/null", O_WRONLY);
    ::dup2(null, 1);
    ::dup2(null, 2);
    ::execl(HP_HOTPROBE, HP_HOTPROBE, "run", "-e", "BEGIN { }", "--", "/bin/sleep", "30",
            static_cast<char*>(nullptr));
    ::_exit(127);
  }
  std::string name;
  for (int i = 0; i < 1000 && name.empty(); ++i) {
    name = rendezvous_of(hp);
    if (name.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_FALSE(name.empty()) << "no rendezvous in /proc/net/unix";
  EXPECT_EQ(hp::agent::rendezvous_channel(name, 2000), -1);
  ::kill(hp, SIGTERM);  // passed on to the program
  int status = 0;
  ::waitpid(hp, &status, 0);
}

}  // namespace
