// `hotprobe run` with usdt probes on fixture/usdt_target.c, whose hits and arguments are
// known exactly (bpftrace 0.17 prints the same maps for these scripts).
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <fstream>
#include <thread>

#include <string>
#include <vector>

#include "support/run_command.h"

namespace {

using namespace std::chrono_literals;

hp::test::CommandResult hotprobe(const std::vector<std::string>& args) {
  hp::test::Command c{{HP_HOTPROBE}};
  c.argv.insert(c.argv.end(), args.begin(), args.end());
  c.env = {{"HOTPROBE_AGENT", HP_AGENT}, {"HPU_LIB", HP_USDT_LATER}};
  c.timeout = 60s;
  return hp::test::run_command(c);
}

hp::test::CommandResult run(const std::string& script, std::vector<std::string> target) {
  std::vector<std::string> args{"run", "-e", script, "--"};
  args.insert(args.end(), target.begin(), target.end());
  return hotprobe(args);
}

const std::string kTarget = HP_USDT_TARGET;

bool contains(const std::string& s, const std::string& what) {
  return s.find(what) != std::string::npos;
}

// Runs `script` on the target in `mode` (loop N, ...) and expects each of `lines` in what
// it prints.
void expect_lines(const std::string& script, const std::vector<std::string>& mode,
                  const std::vector<std::string>& lines) {
  std::vector<std::string> target{kTarget};
  target.insert(target.end(), mode.begin(), mode.end());
  auto r = run(script, target);
  ASSERT_EQ(r.code, 0) << r.err;
  for (const std::string& l : lines)
    EXPECT_TRUE(contains(r.out, l)) << l << " not in:\n" << r.out;
}

TEST(UsdtRun, ArgumentsOfEverySizeAndSign) {
  // tick(i, -1000 * i, (short)(i - 5), (unsigned char)(200 + i % 3)): registers of 8, 8, 2
  // and 1 bytes, signed and unsigned.
  expect_lines("usdt:" + kTarget + ":hpu:tick { @[arg0, arg1, arg2, arg3] = count(); }",
               {"loop", "3"},
               {"@[0, 0, -5, 200]: 1\n", "@[1, -1000, -4, 201]: 1\n", "@[2, -2000, -3, 202]: 1\n"});
}

TEST(UsdtRun, StackSlotArgumentsAndEveryInlinedCopy) {
  // hpu:slot is built at -O0 (-4@-4(%rbp) -8@-16(%rbp)); hpu:inl is inlined twice, each
  // copy a constant (-8@$1, -8@$2). The provider may be left out, U: is usdt:, and the
  // path may be quoted (bpftrace's way to write libstdc++.so.6).
  expect_lines("usdt:\"" + kTarget + "\":slot { @s[arg0, arg1] = count(); } U:" + kTarget +
                   ":hpu:i?l { @i[arg0] = count(); }",
               {"loop", "3"}, {"@s[0, 0]: 1\n@s[1, 7]: 1\n@s[2, 14]: 1\n", "@i[1]: 3\n@i[2]: 3\n"});
}

TEST(UsdtRun, ProbeNamesTheProbeMatched) {
  // As bpftrace expands them: usdt:PATH:PROVIDER:NAME, the provider filled in, each probe
  // a wildcard matches by its own name.
  expect_lines("usdt:" + kTarget + ":inl { @i[probe] = count(); } usdt:" + kTarget +
                   ":hpu:[st]* { @w[probe] = count(); }",
               {"loop", "2"},
               {"@i[usdt:" + kTarget + ":hpu:inl]: 4\n", "@w[usdt:" + kTarget + ":hpu:slot]: 2\n",
                "@w[usdt:" + kTarget + ":hpu:tick]: 2\n"});
}

TEST(UsdtRun, UnreadableArgumentReadsZero) {
  // hpu:bad's first argument is 8 bytes at address 8: read as 0, as bpftrace reads it.
  expect_lines("usdt:" + kTarget + ":hpu:bad { @[arg0, arg1] = count(); }", {"bad", "4"},
               {"@[0, 7]: 4\n"});
}

TEST(UsdtRun, GuardedSiteRunsOnlyWhileProbed) {
  auto probed =
      run("usdt:" + kTarget + ":hpu:guarded { @[arg0] = count(); }", {kTarget, "loop", "3"});
  ASSERT_EQ(probed.code, 0) << probed.err;
  EXPECT_TRUE(contains(probed.out, "guarded ran 3\n")) << probed.out;
  EXPECT_TRUE(contains(probed.out, "@[0]: 1\n@[1]: 1\n@[2]: 1\n")) << probed.out;
  auto other = run("usdt:" + kTarget + ":hpu:tick { @ = count(); }", {kTarget, "loop", "3"});
  ASSERT_EQ(other.code, 0) << other.err;
  EXPECT_TRUE(contains(other.out, "guarded ran 0\n")) << other.out;
}

TEST(UsdtRun, LibraryLoadedLater) {
  // Its sites are placed when dlopen maps it; hpl:fire's arguments are (i, -i), and
  // hpl:guarded runs behind a semaphore raised then.
  const std::string lib = HP_USDT_LATER;
  auto r = run("usdt:" + lib + ":hpl:fire { @f[arg0, arg1] = count(); } usdt:" + lib +
                   ":hpl:guarded { @g = count(); }",
               {kTarget, "dlopen", lib, "3"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "@f[0, 0]: 1\n@f[1, -1]: 1\n@f[2, -2]: 1\n")) << r.out;
  EXPECT_TRUE(contains(r.out, "@g: 3\n")) << r.out;
  EXPECT_TRUE(contains(r.out, "guarded ran 3\n")) << r.out;
}

TEST(UsdtRun, ThreadsHitALibrarysSitesFirstTogether) {
  // Four threads load the library and fire hpl:fire(i % 4, -(i % 4)) at once: the sites'
  // argument specs are found on their first hits, by whichever threads get there.
  auto r = run("usdt:" + std::string(HP_USDT_LATER) + ":hpl:fire { @[arg0, arg1] = count(); }",
               {kTarget, "threads", "4", "2000"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "@[0, 0]: 2000\n@[1, -1]: 2000\n@[2, -2]: 2000\n@[3, -3]: 2000\n"))
      << r.out;
}

TEST(UsdtAttach, ArgumentsInARunningProcess) {
  // attach -p runs the same engine and script in a process already running: the target
  // waits for a file, created once hotprobe says it attached; hotprobe ends with it.
  const std::string go = hp::test::temp_path("usdt_go");
  ::unlink(go.c_str());
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    (void)!::freopen("/dev/null", "w", stdout);
    ::execl(kTarget.c_str(), kTarget.c_str(), "wait", go.c_str(), "3", nullptr);
    ::_exit(127);
  }
  hp::test::Command c{{HP_HOTPROBE, "attach", "-p", std::to_string(pid), "-e",
                       "usdt:" + kTarget + ":hpu:tick { @[arg0, arg1, arg2, arg3] = count(); }"}};
  c.env = {{"HOTPROBE_AGENT", HP_AGENT}};
  c.timeout = 60s;
  c.during = [&](pid_t, const std::string& out) {
    const auto deadline = std::chrono::steady_clock::now() + 30s;
    while (!contains(hp::test::read_file(out), "Attaching") &&
           std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(10ms);
    std::ofstream(go).put('x');
  };
  auto r = hp::test::run_command(c);
  int status = 0;
  if (::waitpid(pid, &status, WNOHANG) == 0) ::kill(pid, SIGKILL);
  ::waitpid(pid, &status, 0);
  ::unlink(go.c_str());
  EXPECT_TRUE(contains(r.out, "Attaching 1 probe")) << r.out << r.err;
  for (const char* l :
       {"@[0, 0, -5, 200]: 1\n", "@[1, -1000, -4, 201]: 1\n", "@[2, -2000, -3, 202]: 1\n"})
    EXPECT_TRUE(contains(r.out, l)) << l << " not in:\n" << r.out << r.err;
}

TEST(UsdtRun, ArgumentPastTheNotesCountIsAnError) {
  auto r = run("usdt:" + kTarget + ":hpu:tick { @ = arg4; }", {kTarget, "loop", "1"});
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(contains(
      r.err, "arg4 is out of range: usdt:" + kTarget + ":hpu:tick has 4 arguments (arg0 to arg3)"))
      << r.err;
  auto none = run("usdt:" + kTarget + ":hpu:inl { @ = arg1; }", {kTarget, "loop", "1"});
  EXPECT_NE(none.code, 0);
  EXPECT_TRUE(contains(none.err, "has 1 argument (arg0)")) << none.err;
  auto far = run("usdt:" + kTarget + ":hpu:tick { @ = arg12; }", {kTarget, "loop", "1"});
  EXPECT_NE(far.code, 0);
  EXPECT_TRUE(contains(far.err, "at most 12 arguments")) << far.err;
  auto mixed = run("usdt:" + kTarget + ":hpu:tick, uprobe:" + kTarget + ":tick { @ = arg0; }",
                   {kTarget, "loop", "1"});
  EXPECT_NE(mixed.code, 0);
  EXPECT_TRUE(contains(mixed.err, "give them separate actions")) << mixed.err;
}

TEST(UsdtRun, ProbeThatMatchesNothingNamesTheFileAndHowToList) {
  auto r = run("usdt:" + kTarget + ":hpu:nope { @ = count(); }", {kTarget, "loop", "1"});
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(contains(r.err, "no USDT probe 'hpu:nope' in " + kTarget)) << r.err;
  EXPECT_TRUE(contains(r.err, "hotprobe list 'usdt:" + kTarget + ":*'")) << r.err;
  auto plain =
      run("usdt:" + std::string(HP_HOTPROBE) + ":x:y { @ = count(); }", {kTarget, "loop", "1"});
  EXPECT_NE(plain.code, 0);
  EXPECT_TRUE(contains(plain.err, "has no USDT probes (no .note.stapsdt notes)")) << plain.err;
  auto syntax = run("usdt:" + kTarget + " { @ = count(); }", {kTarget, "loop", "1"});
  EXPECT_NE(syntax.code, 0);
  EXPECT_TRUE(contains(syntax.err, "usdt probe type requires 2 or 3 arguments")) << syntax.err;
}

}  // namespace
