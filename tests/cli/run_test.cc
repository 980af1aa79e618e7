// End-to-end tests of `hotprobe run` and `hotprobe list`: the built command and agent on a
// small target program (fixture/target.c) whose calls of `work` are known exactly.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "support/run_command.h"

namespace {

using namespace std::chrono_literals;

using Result = hp::test::CommandResult;
using hp::test::read_file;
using hp::test::temp_path;

// Runs hotprobe with `args` in its own process group, `input` on its stdin. `during` runs
// while it is running (with its pid and the path of its stdout file).
Result hotprobe(const std::vector<std::string>& args, const std::string& input = {},
                const std::function<void(pid_t, const std::string&)>& during = {},
                std::chrono::seconds timeout = 30s) {
  hp::test::Command c{{HP_HOTPROBE}};
  c.argv.insert(c.argv.end(), args.begin(), args.end());
  c.env = {{"HOTPROBE_AGENT", HP_AGENT}};
  c.input = input;
  c.during = during;
  c.timeout = timeout;
  return hp::test::run_command(c);
}

// Waits until the file at `path` contains `text` (at most `timeout`).
bool wait_for(const std::string& path, const std::string& text,
              std::chrono::seconds timeout = 20s) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (read_file(path).find(text) != std::string::npos) return true;
    std::this_thread::sleep_for(10ms);
  }
  return false;
}

std::string probe(const std::string& body) {
  return std::string("uprobe:") + HP_TARGET + ":work { " + body + " }";
}

bool contains(const std::string& s, const std::string& what) {
  return s.find(what) != std::string::npos;
}

int count_of(const std::string& s, const std::string& what) {
  int n = 0;
  for (auto pos = s.find(what); pos != std::string::npos; pos = s.find(what, pos + 1))
    ++n;
  return n;
}

TEST(HotprobeRun, CountsCallsByArgument) {
  auto r = hotprobe({"run", "-e", probe("@[arg0] = count();"), "--", HP_TARGET, "count", "10"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(r.out.starts_with("Attaching 1 probe...\n")) << r.out;
  EXPECT_TRUE(contains(r.out, "@[0]: 4\n")) << r.out;
  EXPECT_TRUE(contains(r.out, "@[1]: 3\n")) << r.out;
  EXPECT_TRUE(contains(r.out, "@[2]: 3\n")) << r.out;
}

// A site where no jump fits is a trap per hit, which kills a thread that blocks SIGTRAP:
// said on stderr when it is placed, and only then.
TEST(HotprobeRun, TrapSitesAreSaid) {
  auto r = hotprobe({"run", "-e", std::string("uprobe:") + HP_TARGET + ":hp_tiny { @ = count(); }",
                     "--", HP_TARGET, "tiny", "5"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "@: 5\n")) << r.out;
  EXPECT_TRUE(contains(r.err, "warning: 1 probe site is a trap (int3")) << r.err;
  EXPECT_TRUE(contains(r.err, "blocks SIGTRAP")) << r.err;
  r = hotprobe({"run", "-e", probe("@ = count();"), "--", HP_TARGET, "count", "3"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_FALSE(contains(r.err, "trap")) << r.err;
}

TEST(HotprobeRun, PrintfOutputInOrder) {
  auto r =
      hotprobe({"run", "-e", probe("printf(\"w %d\\n\", arg0);"), "--", HP_TARGET, "count", "4"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "w 0\nw 1\nw 2\nw 0\n")) << r.out;
}

TEST(HotprobeRun, JsonOutput) {
  auto r = hotprobe({"run", "-o", "json", "-e", probe("@[arg0] = count(); printf(\"x\\n\");"), "--",
                     HP_TARGET, "count", "2"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(r.out.starts_with("{\"type\": \"attached_probes\", \"data\": {\"probes\": 1}}\n"))
      << r.out;
  EXPECT_EQ(count_of(r.out, "{\"type\": \"printf\", \"data\": \"x\\n\"}\n"), 2) << r.out;
  EXPECT_TRUE(contains(r.out, "{\"type\": \"map\", \"data\": {\"@\": {\"0\": 1, \"1\": 1}}}"))
      << r.out;
}

TEST(HotprobeRun, OutputFileTakesTheTraceTheProgramKeepsStdout) {
  std::string file = temp_path("trace");
  auto r = hotprobe(
      {"run", "--output", file, "-e", probe("@[arg0] = count();"), "--", HP_TARGET, "echo"}, "abc");
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "abc");  // the program's own output only
  std::string trace = read_file(file);
  ::unlink(file.c_str());
  EXPECT_TRUE(contains(trace, "Attaching 1 probe...")) << trace;
  EXPECT_TRUE(contains(trace, "@[3]: 1\n")) << trace;
}

TEST(HotprobeRun, EndRunsAndPrintsBeforeTheMaps) {
  auto r = hotprobe({"run", "-e", probe("@n = count();") + " END { printf(\"end %d\\n\", 42); }",
                     "--", HP_TARGET, "count", "5"});
  EXPECT_EQ(r.code, 0) << r.err;
  auto end = r.out.find("end 42\n"), map = r.out.find("@n: 5\n");
  ASSERT_NE(end, std::string::npos) << r.out;
  ASSERT_NE(map, std::string::npos) << r.out;
  EXPECT_LT(end, map);
}

// exit() in the script ends the program, as bpftrace's exit() ends its -c command: the
// report first (END once, the maps), then SIGTERM; hotprobe exits 0. (The program spins
// until a signal ends it: without that, the run would last until the test's timeout.)
TEST(HotprobeRun, ExitInAProbeEndsTheProgramAsBpftracesDashCDoes) {
  auto r =
      hotprobe({"run", "-e", probe("@[arg0] = count(); exit();") + " END { printf(\"end\\n\"); }",
                "--", HP_TARGET, "spin"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "ready\n")) << r.out;
  EXPECT_TRUE(contains(r.out, "@[1]: ")) << r.out;
  EXPECT_EQ(count_of(r.out, "end\n"), 1) << r.out;
  EXPECT_EQ(r.err, "");
}

// A program that ignores SIGTERM gets SIGKILL two seconds later.
TEST(HotprobeRun, ExitEndsAProgramThatIgnoresSigterm) {
  if (::access("/usr/bin/perl", X_OK) != 0) GTEST_SKIP() << "perl is not installed";
  auto r = hotprobe({"run", "-e", "interval:ms:100 { exit(); }", "--", "/usr/bin/perl", "-e",
                     "$SIG{TERM} = 'IGNORE'; sleep 60"});
  EXPECT_EQ(r.code, 0) << r.err;
}

// bpftrace's -I DIR and --include FILE: the header's declarations before the script, in
// the subcommand and in bpftrace's top-level form; a missing directory is refused.
TEST(HotprobeRun, IncludeOptionsAsBpftraces) {
  const std::string dir = temp_path("hp_include_dir");
  ::mkdir(dir.c_str(), 0755);
  std::ofstream(dir + "/pt.h") << "struct Pt { int x; long y; };\n";
  const std::string script = "BEGIN { printf(\"%d\\n\", sizeof(struct Pt)); exit(); }";
  auto r = hotprobe(
      {"run", "-I", dir, "--include", "pt.h", "-e", script, "--", HP_TARGET, "count", "1"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "\n16\n")) << r.out;
  auto top = hotprobe(
      {"-I", dir, "--include", "pt.h", "-e", script, "-c", std::string(HP_TARGET) + " count 1"});
  EXPECT_EQ(top.code, 0) << top.err;
  EXPECT_TRUE(contains(top.out, "\n16\n")) << top.out;
  auto bad = hotprobe({"run", "-I", dir + "/none", "-e", script, "--", HP_TARGET, "count", "1"});
  EXPECT_EQ(bad.code, 2);
  EXPECT_TRUE(contains(bad.err, "-I " + dir + "/none: no such directory")) << bad.err;
}

TEST(HotprobeRun, IntervalProbesPrintWhileTheProgramRuns) {
  auto r =
      hotprobe({"run", "-e", probe("@ = count();") + " interval:ms:50 { printf(\"tick\\n\"); }",
                "--", HP_TARGET, "spin"},
               {}, [](pid_t pid, const std::string& out) {
                 EXPECT_TRUE(wait_for(out, "tick\ntick\ntick\n"));
                 ::kill(-pid, SIGINT);
               });
  EXPECT_EQ(r.code, 128 + SIGINT) << r.err;
  EXPECT_GE(count_of(r.out, "tick\n"), 3) << r.out;
}

// Ctrl-C reaches the whole process group: hotprobe and the program. The maps and END
// still print, and the program dies of SIGINT as it would have.
TEST(HotprobeRun, CtrlCPrintsTheMaps) {
  auto r = hotprobe({"run", "-e", probe("@calls = count();") + " END { printf(\"end\\n\"); }", "--",
                     HP_TARGET, "spin"},
                    {}, [](pid_t pid, const std::string& out) {
                      EXPECT_TRUE(wait_for(out, "ready\n"));
                      std::this_thread::sleep_for(50ms);
                      ::kill(-pid, SIGINT);
                    });
  EXPECT_EQ(r.code, 128 + SIGINT) << r.err;
  EXPECT_TRUE(contains(r.out, "end\n")) << r.out;
  EXPECT_TRUE(contains(r.out, "@calls: ")) << r.out;
}

TEST(HotprobeRun, ExitStatusPassesThrough) {
  auto r = hotprobe({"run", "-e", probe("@[arg0] = count();"), "--", HP_TARGET, "exit", "7"});
  EXPECT_EQ(r.code, 7) << r.err;
  EXPECT_TRUE(contains(r.out, "@[7]: 1\n")) << r.out;

  r = hotprobe({"run", "-e", probe("@[arg0] = count();"), "--", HP_TARGET, "_exit", "3"});
  EXPECT_EQ(r.code, 3) << r.err;
  EXPECT_TRUE(contains(r.out, "@[3]: 1\n")) << r.out;  // the _exit probe made the report

  r = hotprobe({"run", "-e", probe("@[arg0] = count();"), "--", HP_TARGET, "kill", "15"});
  EXPECT_EQ(r.code, 128 + SIGTERM) << r.err;
}

TEST(HotprobeRun, StdinPassesThrough) {
  auto r = hotprobe({"run", "-e", probe("@[arg0] = count();"), "--", HP_TARGET, "echo"},
                    "hello world\n");
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "hello world\n")) << r.out;
  EXPECT_TRUE(contains(r.out, "@[12]: 1\n")) << r.out;
}

// The target forks; the child calls work(7), then execs "target count 2" (work(0),
// work(1)); the parent calls work(5) after the child ended.
TEST(HotprobeRun, ForkedChildrenAreUntracedByDefault) {
  auto r = hotprobe(
      {"run", "-e", probe("printf(\"pid %d arg %d\\n\", pid, arg0);"), "--", HP_TARGET, "fork"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, " arg 5\n")) << r.out;
  EXPECT_FALSE(contains(r.out, " arg 7\n")) << r.out;
  EXPECT_FALSE(contains(r.out, " arg 0\n")) << r.out;  // the exec'd program starts clean
}

TEST(HotprobeRun, FollowForksTracesTheChildWithItsPid) {
#if defined(HOTPROBE_TSAN)
  GTEST_SKIP() << "TSan cannot start a thread after a multi-threaded fork (the child's "
                  "reporter): the child dies with die_after_fork";
#endif
  auto r = hotprobe({"run", "--follow-forks", "-e",
                     probe("printf(\"pid %d arg %d\\n\", pid, arg0);"), "--", HP_TARGET, "fork"});
  EXPECT_EQ(r.code, 0) << r.err;
  auto at = r.out.find("child ");
  ASSERT_NE(at, std::string::npos) << r.out;
  int child = std::atoi(r.out.c_str() + at + 6);
  EXPECT_TRUE(contains(r.out, "pid " + std::to_string(child) + " arg 7\n")) << r.out;
  EXPECT_TRUE(contains(r.out, " arg 5\n")) << r.out;
  // The child's exec is followed: the new image's work(0) is traced, with the child's pid.
  EXPECT_TRUE(contains(r.out, "pid " + std::to_string(child) + " arg 0\n")) << r.out;
}

TEST(HotprobeRun, FollowForksChildExecEndsTracingWhenAskedTo) {
#if defined(HOTPROBE_TSAN)
  GTEST_SKIP() << "TSan cannot start a thread after a multi-threaded fork (the child's "
                  "reporter): the child dies with die_after_fork";
#endif
  hp::test::Command c{{HP_HOTPROBE, "run", "--follow-forks", "-e",
                       probe("printf(\"pid %d arg %d\\n\", pid, arg0);"), "--", HP_TARGET, "fork"}};
  c.env = {{"HOTPROBE_AGENT", HP_AGENT}, {"HOTPROBE_FOLLOW_CHILD_EXECS", "0"}};
  auto r = hp::test::run_command(c);
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, " arg 7\n")) << r.out;
  EXPECT_FALSE(contains(r.out, " arg 0\n")) << r.out;
  EXPECT_TRUE(contains(r.err, "ran untraced")) << r.err;
}

TEST(HotprobeRun, FollowedChildMapsMergeIntoTheProgramsPrint) {
#if defined(HOTPROBE_TSAN)
  GTEST_SKIP() << "TSan cannot start a thread after a multi-threaded fork (the child's "
                  "reporter): the child dies with die_after_fork";
#endif
  // The parent counts work(3) before the fork and work(5) after it; the child work(7),
  // from zero (its maps are emptied at the fork), merged into the parent's one dump.
  auto r = hotprobe(
      {"run", "--follow-forks", "-e", probe("@calls[arg0] = count();"), "--", HP_TARGET, "fork"});
  EXPECT_EQ(r.code, 0) << r.err;
  auto first = r.out.find("@calls[");
  ASSERT_NE(first, std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("@calls[", r.out.find("\n\n", first)), std::string::npos) << r.out;
  EXPECT_TRUE(contains(r.out, "@calls[3]: 1\n")) << r.out;
  EXPECT_TRUE(contains(r.out, "@calls[5]: 1\n")) << r.out;
  EXPECT_TRUE(contains(r.out, "@calls[7]: 1\n")) << r.out;
}

TEST(HotprobeRun, ScriptErrorIsReportedBeforeTheProgramRuns) {
  std::string file = temp_path("touched");
  ::unlink(file.c_str());
  auto r = hotprobe({"run", "-e", probe("@[arg0] = cont();"), "--", HP_TARGET, "touch", file});
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(contains(r.err, "ERROR: unknown function 'cont'")) << r.err;
  EXPECT_NE(::access(file.c_str(), F_OK), 0) << "the program ran";
  ::unlink(file.c_str());
}

// The engine's settings travel in the program's environment to the agent, which reads
// them (options_from_environment); a bad value is refused before the program runs.
TEST(HotprobeRun, EngineSettingsComeFromTheEnvironment) {
  auto with_env = [](const char* name, const char* value, const std::string& file) {
    hp::test::Command c{
        {HP_HOTPROBE, "run", "-e", probe("@ = count();"), "--", HP_TARGET, "touch", file}};
    c.env = {{"HOTPROBE_AGENT", HP_AGENT}, {name, value}};
    c.timeout = 30s;
    return hp::test::run_command(c);
  };
  std::string file = temp_path("touched_env");
  ::unlink(file.c_str());
  auto bad = with_env("HOTPROBE_RETURN_PROBES", "sometimes", file);
  EXPECT_EQ(bad.code, 1);
  EXPECT_TRUE(contains(bad.err, "HOTPROBE_RETURN_PROBES=sometimes is not one of auto, ret, hijack"))
      << bad.err;
  EXPECT_NE(::access(file.c_str(), F_OK), 0) << "the program ran";
  auto debug = with_env("HOTPROBE_DEBUG", "1", file);
  EXPECT_EQ(debug.code, 0) << debug.err;
  EXPECT_TRUE(contains(debug.err, "site")) << "HOTPROBE_DEBUG said nothing: " << debug.err;
  EXPECT_EQ(::access(file.c_str(), F_OK), 0) << "the program did not run";
  ::unlink(file.c_str());
}

TEST(HotprobeRun, UnknownFunctionIsReportedWithASuggestion) {
  std::string file = temp_path("touched2");
  ::unlink(file.c_str());
  auto r = hotprobe({"run", "-e", std::string("uprobe:") + HP_TARGET + ":wrok { @ = count(); }",
                     "--", HP_TARGET, "touch", file});
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(contains(r.err, "wrok")) << r.err;
  EXPECT_TRUE(contains(r.err, "did you mean 'work'")) << r.err;
  EXPECT_EQ(r.err.find("did you mean"), r.err.rfind("did you mean")) << "said twice: " << r.err;
  EXPECT_NE(::access(file.c_str(), F_OK), 0) << "the program ran";
  ::unlink(file.c_str());
}

TEST(HotprobeRun, UnknownLibraryIsReportedWithASuggestion) {
  auto r = hotprobe(
      {"run", "-e", "uprobe:libcc:malloc { @ = count(); }", "--", HP_TARGET, "count", "1"});
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(contains(r.err, "no module 'libcc'")) << r.err;
  EXPECT_TRUE(contains(r.err, "did you mean 'libc'")) << r.err;
}

TEST(HotprobeRun, UsageErrorsExit2) {
  EXPECT_EQ(hotprobe({"run", "-e", probe("@ = count();")}).code, 2);    // no program
  EXPECT_EQ(hotprobe({"run", "--", HP_TARGET, "count", "1"}).code, 2);  // no script
  EXPECT_EQ(hotprobe({"run", "--bogus"}).code, 2);
  EXPECT_EQ(hotprobe({}).code, 2);
  auto v = hotprobe({"--version"});
  EXPECT_EQ(v.code, 0);
  EXPECT_TRUE(v.out.starts_with("hotprobe v")) << v.out;
  auto h = hotprobe({"--help"});
  EXPECT_EQ(h.code, 0);
  EXPECT_TRUE(contains(h.out, "Exit status")) << h.out;
}

TEST(HotprobeList, ListsFunctionsInBpftraceForm) {
  auto r = hotprobe({"list", HP_TARGET, "wor*"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, std::string("uprobe:") + HP_TARGET + ":work\n");

  r = hotprobe({"list", HP_TARGET});
  EXPECT_EQ(r.code, 0) << r.err;
  auto main_at = r.out.find(":main\n"), work_at = r.out.find(":work\n");
  ASSERT_NE(main_at, std::string::npos) << r.out;
  ASSERT_NE(work_at, std::string::npos) << r.out;
  EXPECT_LT(main_at, work_at);  // sorted

  r = hotprobe({"list", "libc", "malloc"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(r.out.starts_with("uprobe:/") && r.out.ends_with("libc.so.6:malloc\n")) << r.out;

  EXPECT_EQ(hotprobe({"list"}).code, 2);
  EXPECT_EQ(hotprobe({"list", "no_such_library_xyz"}).code, 1);
}

}  // namespace

namespace {

// `hotprobe attach -p PID` on a running target: the probes count, Ctrl-C (to hotprobe
// only) prints END and the maps, and the target runs on with the probes removed.
TEST(HotprobeAttach, TracesARunningProcessAndLeavesItRunning) {
#if defined(HOTPROBE_TSAN)
  GTEST_SKIP() << "under TSan the target's threads sit in TSan's interceptors, which the "
                  "injector sees as the dynamic loader (never a safe point to call dlopen)";
#endif
  std::string target_out = temp_path("spin");
  pid_t target = ::fork();
  if (target == 0) {
    int o = ::open(target_out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ::dup2(o, 1);
    ::execl(HP_TARGET, HP_TARGET, "spin", static_cast<char*>(nullptr));
    ::_exit(99);
  }
  ASSERT_TRUE(wait_for(target_out, "ready\n"));
  auto r = hotprobe({"attach", "-p", std::to_string(target), "-e",
                     probe("@[arg0] = count();") + " END { printf(\"end\\n\"); }"},
                    {}, [](pid_t pid, const std::string& out) {
                      EXPECT_TRUE(wait_for(out, "Attaching 2 probes...\n"));
                      std::this_thread::sleep_for(100ms);
                      ::kill(pid, SIGINT);
                    });
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "end\n")) << r.out;
  EXPECT_TRUE(contains(r.out, "@[1]: ")) << r.out;
  std::this_thread::sleep_for(50ms);
  int status = 0;
  EXPECT_EQ(::waitpid(target, &status, WNOHANG), 0) << "the target did not survive";
  ::kill(target, SIGKILL);
  ::waitpid(target, &status, 0);
  ::unlink(target_out.c_str());
}

}  // namespace
