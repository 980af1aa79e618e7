// The `hotprobe` command end to end on what a user (or another user) may hand it: scripts
// nested past the limits (refused with their position, no crash, with a 1 MiB stack as
// `ulimit -s 1024` gives, also where the agent compiles inside the program), --output paths
// another user controls, programs the agent cannot enter (refused before they start), and
// the command-line forms bpftrace users type.
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "support/run_command.h"

namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;

using Result = hp::test::CommandResult;
using hp::test::contains;
using hp::test::read_file;
using hp::test::temp_path;

// Runs hotprobe with `args`; `stack_kib` > 0 sets RLIMIT_STACK first (`ulimit -s`), which
// the traced program inherits too.
Result hotprobe(const std::vector<std::string>& args, rlim_t stack_kib = 0,
                std::chrono::seconds timeout = 60s) {
  hp::test::Command c{{HP_HOTPROBE}};
  c.argv.insert(c.argv.end(), args.begin(), args.end());
  c.env = {{"HOTPROBE_AGENT", HP_AGENT}};
  if (stack_kib) {
    c.in_child = [stack_kib] {
      rlimit rl{stack_kib * 1024, stack_kib * 1024};
      ::setrlimit(RLIMIT_STACK, &rl);
    };
  }
  c.timeout = timeout;
  return hp::test::run_command(c);
}

std::string repeat(const std::string& s, int n) {
  std::string out;
  for (int i = 0; i < n; ++i)
    out += s;
  return out;
}

std::string work_probe(const std::string& body) {
  return std::string("uprobe:") + HP_TARGET + ":work { " + body + " }";
}

// A directory every user may write in (as /tmp, without the sticky bit: the worst case).
struct SharedDir {
  std::string path = temp_path("shared");
  SharedDir() {
    fs::remove_all(path);
    fs::create_directory(path);
    ::chmod(path.c_str(), 0777);
  }
  ~SharedDir() { fs::remove_all(path); }
  std::string operator/(const std::string& name) const { return path + "/" + name; }
};

// --- Scripts -------------------------------------------------------------------------

TEST(SecurityCli, DeepScriptsAreSyntaxErrorsWithAPositionNotCrashes) {
  const std::string parens =
      "BEGIN { @x = " + repeat("(", 10000) + "1" + repeat(")", 10000) + "; }";
  const std::string sum = "BEGIN { @x = " + repeat("1+", 20000) + "1; }";
  for (const std::string& src : {parens, sum}) {
    auto r = hotprobe({"run", "-e", src, "--", HP_TARGET, "exit", "0"}, 1024);
    EXPECT_EQ(r.code, 1) << r.err.substr(0, 400);
    EXPECT_TRUE(r.err.starts_with("-e:1:")) << r.err.substr(0, 400);
    EXPECT_TRUE(contains(r.err, "ERROR: syntax error, nested too deeply") ||
                contains(r.err, "ERROR: syntax error, expression too deep"))
        << r.err.substr(0, 400);
    EXPECT_EQ(r.out, "");  // nothing ran
  }
}

TEST(SecurityCli, DeepestAcceptedScriptRunsInTheProgramUnderUlimitS1024) {
  // Compiled by hotprobe, then again by the agent inside the program, on a thread whose
  // stack follows the program's RLIMIT_STACK: both must survive, and the program's exit
  // status is its own.
  const std::string sum = "1" + repeat(" + 1", 999);
  const std::string nested = repeat("(", 28) + "arg0" + repeat(")", 28);
  const std::string src = work_probe("@s = sum(" + sum + "); @n = max(" + nested +
                                     "); @k[0] = 0; @c[@k[@k[0]]] = count();");
  auto r = hotprobe({"run", "-e", src, "--", HP_TARGET, "exit", "7"}, 1024);
  EXPECT_EQ(r.code, 7) << r.err;
  EXPECT_TRUE(contains(r.out, "@s: 1000\n")) << r.out;
  EXPECT_TRUE(contains(r.out, "@n: 7\n")) << r.out;
}

TEST(SecurityCli, PrintfWithThirtyThreeValuesIsRefused) {
  const std::string src =
      "BEGIN { printf(\"" + repeat("%d ", 33) + "\\n\"" + repeat(", 1", 33) + "); }";
  auto r = hotprobe({"run", "-e", src, "--", HP_TARGET, "exit", "0"});
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(contains(r.err,
                       "printf() can only take up to 32 arguments after its format (33 "
                       "provided)"))
      << r.err;
}

// --- --output ------------------------------------------------------------------------

TEST(SecurityCli, OutputThroughASymlinkLeavesItsTargetUntouched) {
  SharedDir dir;
  const std::string victim = dir / "victim";
  { std::ofstream(victim) << "root's secret\n"; }
  ::chmod(victim.c_str(), 0600);
  fs::create_symlink(victim, dir / "trace.out");  // planted by another user
  auto r = hotprobe({"run", "-e", work_probe("@ = count();"), "--output", dir / "trace.out", "--",
                     HP_TARGET, "touch", dir / "ran"});
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(contains(r.err, "is a symbolic link")) << r.err;
  EXPECT_EQ(read_file(victim), "root's secret\n");
  struct stat st {};
  ASSERT_EQ(::stat(victim.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_FALSE(fs::exists(dir / "ran"));  // refused before the program started
}

TEST(SecurityCli, AttachRefusesABadOutputBeforeInjecting) {
  SharedDir dir;
  fs::create_symlink("/etc/hostname", dir / "trace.out");
  const std::string ready = dir / "ready";
  const pid_t target = ::fork();
  if (target == 0) {
    const int o = ::open(ready.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ::dup2(o, 1);
    ::execl(HP_TARGET, HP_TARGET, "spin", static_cast<char*>(nullptr));
    ::_exit(99);
  }
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  while (!contains(read_file(ready), "ready") && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(5ms);
  auto r = hotprobe({"attach", "-p", std::to_string(target), "-e", work_probe("@ = count();"),
                     "--output", dir / "trace.out"});
  const std::string maps = read_file("/proc/" + std::to_string(target) + "/maps");
  ::kill(target, SIGKILL);
  ::waitpid(target, nullptr, 0);
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(contains(r.err, "is a symbolic link")) << r.err;
  EXPECT_FALSE(contains(r.err, "to load the agent")) << r.err;
  EXPECT_FALSE(contains(maps, "hotprobe")) << "the agent was loaded";
}

TEST(SecurityCli, NewOutputFileIsPrivate) {
  SharedDir dir;
  const mode_t old = ::umask(0);  // even with a permissive umask
  auto r = hotprobe({"run", "-e", work_probe("@ = count();"), "--output", dir / "trace.out", "--",
                     HP_TARGET, "count", "3"});
  ::umask(old);
  EXPECT_EQ(r.code, 0) << r.err;
  struct stat st {};
  ASSERT_EQ(::stat((dir / "trace.out").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_TRUE(contains(read_file(dir / "trace.out"), "@: 3\n"));
}

TEST(SecurityCli, OutputToAFifoNeverBlocks) {
  SharedDir dir;
  const std::string fifo = dir / "fifo";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0666), 0);
  // No reader: the open fails at once (a blocking open would wait forever).
  auto r = hotprobe(
      {"run", "-e", work_probe("@ = count();"), "--output", fifo, "--", HP_TARGET, "exit", "0"}, 0,
      30s);
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(contains(r.err, "FIFO")) << r.err;
  // With a reader: opened, then refused as not a regular file.
  const int reader = ::open(fifo.c_str(), O_RDONLY | O_NONBLOCK);
  ASSERT_GE(reader, 0);
  r = hotprobe(
      {"run", "-e", work_probe("@ = count();"), "--output", fifo, "--", HP_TARGET, "exit", "0"}, 0,
      30s);
  ::close(reader);
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(contains(r.err, "is not a regular file")) << r.err;
}

TEST(SecurityCli, OutputFileOfAnotherUserIsNotOverwritten) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to give a file to another user";
  SharedDir dir;
  const std::string theirs = dir / "theirs";
  { std::ofstream(theirs) << "their data\n"; }
  ASSERT_EQ(::chown(theirs.c_str(), 65534, 65534), 0);
  auto r = hotprobe(
      {"run", "-e", work_probe("@ = count();"), "--output", theirs, "--", HP_TARGET, "exit", "0"});
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(contains(r.err, "belongs to user 65534")) << r.err;
  EXPECT_EQ(read_file(theirs), "their data\n");
}

// --- Programs the agent cannot enter --------------------------------------------------

TEST(SecurityCli, StaticProgramIsRefusedBeforeItStarts) {
  const std::string busybox = "/bin/busybox";
  if (!fs::exists(busybox)) GTEST_SKIP() << "busybox-static is not installed";
  const std::string marker = temp_path("busybox_ran");
  ::unlink(marker.c_str());
  auto r = hotprobe(
      {"run", "-e", "uprobe:libc:malloc { @ = count(); }", "--", busybox, "touch", marker});
  // Exit status 1: hotprobe's own error; the program never ran (no marker).
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(contains(r.err, "is statically linked")) << r.err;
  EXPECT_TRUE(contains(r.err, "'hotprobe attach -p' cannot trace it either")) << r.err;
  EXPECT_FALSE(fs::exists(marker));
}

TEST(SecurityCli, SetuidProgramIsRefusedBeforeItStarts) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to make a set-user-ID copy";
  SharedDir dir;
  const std::string copy = dir / "suid_target";
  fs::copy_file(HP_TARGET, copy);
  ASSERT_EQ(::chown(copy.c_str(), 65534, 65534), 0);
  ASSERT_EQ(::chmod(copy.c_str(), 04755), 0);
  auto r = hotprobe({"run", "-e", work_probe("@ = count();"), "--", copy, "touch", dir / "ran"});
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(contains(r.err, "is set-user-ID")) << r.err;
  EXPECT_FALSE(fs::exists(dir / "ran"));
}

TEST(SecurityCli, MuslProgramIsRefusedBeforeItStarts) {
  // The target with its PT_INTERP renamed to musl's loader (same length or shorter).
  SharedDir dir;
  const std::string copy = dir / "musl_target";
  std::string bytes = read_file(HP_TARGET);
  const std::string glibc = "/lib64/ld-linux-x86-64.so.2";
  const std::size_t at = bytes.find(glibc);
  ASSERT_NE(at, std::string::npos);
  const std::string musl = "/lib/ld-musl-x86_64.so.1";
  bytes.replace(at, glibc.size(), musl + std::string(glibc.size() - musl.size(), '\0'));
  { std::ofstream(copy, std::ios::binary) << bytes; }
  ::chmod(copy.c_str(), 0755);
  auto r = hotprobe({"run", "-e", work_probe("@ = count();"), "--", copy, "exit", "0"});
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(contains(r.err, "is linked against musl libc")) << r.err;
}

// --- Command-line forms ----------------------------------------------------------------

TEST(SecurityCli, DashCRunsTheCommandSplitAtWhitespace) {
  auto r = hotprobe(
      {"run", "-e", work_probe("@ = count();"), "-c", std::string(HP_TARGET) + "   count\t4"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "@: 4\n")) << r.out;
  // bpftrace's top level: `hotprobe -e SCRIPT -c CMD`.
  r = hotprobe({"-e", work_probe("@ = count();"), "-c", std::string(HP_TARGET) + " count 2"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "@: 2\n")) << r.out;
  // Both forms at once is a usage error.
  r = hotprobe({"run", "-e", work_probe("@ = count();"), "-c", HP_TARGET, "--", HP_TARGET});
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(contains(r.err, "the program is given twice")) << r.err;
}

TEST(SecurityCli, BpftraceTopLevelForms) {
  SharedDir dir;
  const std::string file = dir / "trace.bt";
  { std::ofstream(file) << work_probe("@ = count();") << "\n"; }
  auto r = hotprobe({file, "-c", std::string(HP_TARGET) + " count 3"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "@: 3\n")) << r.out;
  // -p is attach's.
  r = hotprobe({"-e", "uprobe:libc:malloc { @ = count(); }", "-p", "99999999"});
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(contains(r.err, "hotprobe attach: no process with PID 99999999")) << r.err;
  // A program after a script file without '--'.
  r = hotprobe({"run", file, HP_TARGET});
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(contains(r.err, "follows the script file")) << r.err;
}

TEST(SecurityCli, ProgramWithoutDashesSaysHowToWriteIt) {
  auto r = hotprobe({"run", "-e", work_probe("@ = count();"), HP_TARGET});
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(contains(
      r.err, "-e gives the script, so '" + std::string(HP_TARGET) + "' is not a script file"))
      << r.err;
  EXPECT_FALSE(contains(r.err, "give the script either")) << r.err;
}

TEST(SecurityCli, DurationZeroSaysWhatIsWrong) {
  auto r = hotprobe({"attach", "-p", std::to_string(::getpid()), "-e",
                     "uprobe:libc:malloc { @ = count(); }", "--duration", "0"});
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(contains(r.err, "'0' is not a positive number of seconds")) << r.err;
  EXPECT_FALSE(contains(r.err, "e+308")) << r.err;
}

TEST(SecurityCli, ThreadIdWhereAProcessIdIsExpected) {
  std::atomic<pid_t> tid{0};
  std::atomic<bool> done{false};
  std::thread t([&] {
    tid = static_cast<pid_t>(::gettid());
    while (!done)
      std::this_thread::sleep_for(1ms);
  });
  while (tid == 0)
    std::this_thread::yield();
  auto r = hotprobe(
      {"attach", "-p", std::to_string(tid.load()), "-e", "uprobe:libc:malloc { @ = count(); }"});
  done = true;
  t.join();
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(contains(r.err, "is a thread of process " + std::to_string(::getpid()))) << r.err;
  EXPECT_FALSE(contains(r.err, "Options::")) << r.err;
}

}  // namespace
