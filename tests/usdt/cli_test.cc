// The hotprobe command on probe targets and listings as bpftrace takes them: `list` with a
// wildcard probe type and with -p PID alone, `list -v` of usdt probes, and the builtins
// sarg0..N (a function's stack arguments) and pcomm (the parent process's name).
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "support/run_command.h"

namespace {

using namespace std::chrono_literals;

hp::test::CommandResult hotprobe(const std::vector<std::string>& args) {
  hp::test::Command c{{HP_HOTPROBE}};
  c.argv.insert(c.argv.end(), args.begin(), args.end());
  c.env = {{"HOTPROBE_AGENT", HP_AGENT}};
  c.timeout = 60s;
  return hp::test::run_command(c);
}

const std::string kTarget = HP_USDT_TARGET;
const std::string kStackArgs = HP_STACK_ARGS;
const std::string kConst = HP_USDT_CONST;
const std::string kDup = HP_USDT_DUP;

bool contains(const std::string& s, const std::string& what) {
  return s.find(what) != std::string::npos;
}

TEST(ListTargets, WildcardProbeTypeListsEveryType) {
  // bpftrace -l '*:PATH:*': the functions and the usdt probes of the file.
  auto r = hotprobe({"list", "*:" + kTarget + ":*"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "uprobe:" + kTarget + ":tick\n")) << r.out;
  EXPECT_TRUE(contains(r.out, "usdt:" + kTarget + ":hpu:tick\n")) << r.out;
  auto u = hotprobe({"list", "u*:" + kTarget + ":*"});  // uprobe and usdt both match u*
  ASSERT_EQ(u.code, 0) << u.err;
  EXPECT_TRUE(contains(u.out, "usdt:" + kTarget + ":hpu:tick\n")) << u.out;
  auto none = hotprobe({"list", "k*:" + kTarget + ":*"});
  EXPECT_NE(none.code, 0);
  EXPECT_TRUE(contains(none.err, "'k*:' matches no probe type hotprobe lists")) << none.err;
  EXPECT_TRUE(contains(none.err, "hotprobe list 'usdt:")) << none.err;
}

TEST(ListTargets, VerboseUsdtShowsTheArgumentTypes) {
  auto r = hotprobe({"list", "-v", "usdt:" + kTarget + ":hpu:tick"});
  ASSERT_EQ(r.code, 0) << r.err;
  // tick(long, long, short, unsigned char), as the note's -8 -8 -2 1 sizes say.
  EXPECT_EQ(r.out, "usdt:" + kTarget +
                       ":hpu:tick\n    int64_t arg0\n    int64_t arg1\n    int16_t arg2\n"
                       "    uint8_t arg3\n");
}

TEST(ListTargets, PidAloneListsEveryModulesFunctionsAndUsdtProbes) {
  // bpftrace -l -p PID: uprobes and usdt probes of every file the process maps.
  const std::string go = hp::test::temp_path("list_go");
  ::unlink(go.c_str());
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    (void)!::freopen("/dev/null", "w", stdout);
    ::execl(kTarget.c_str(), kTarget.c_str(), "wait", go.c_str(), "1", nullptr);
    ::_exit(127);
  }
  // Until the program and libc are mapped (the target then waits for `go`).
  const std::string maps = "/proc/" + std::to_string(pid) + "/maps";
  for (auto deadline = std::chrono::steady_clock::now() + 30s;
       std::chrono::steady_clock::now() < deadline;) {
    const std::string m = hp::test::read_file(maps);
    if (contains(m, "hp_usdt_target") && contains(m, "libc")) break;
    std::this_thread::sleep_for(10ms);
  }
  auto r = hotprobe({"list", "-p", std::to_string(pid)});
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "usdt:" + kTarget + ":hpu:tick\n")) << r.out.substr(0, 2000);
  EXPECT_TRUE(contains(r.out, "uprobe:" + kTarget + ":tick\n")) << r.out.substr(0, 2000);
  EXPECT_TRUE(contains(r.out, "libc.so.6:malloc\n")) << r.out.substr(0, 2000);
}

TEST(ListTargets, PidInAnotherMountNamespace) {
  // The program runs from a tmpfs mounted in its own mount namespace: its path names
  // nothing here, its notes are read through /proc/PID/map_files.
  char dir_template[] = "/tmp/hp_mountns_XXXXXX";
  ASSERT_NE(::mkdtemp(dir_template), nullptr);
  const std::string dir = dir_template, prog = dir + "/hp_usdt_target";
  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::close(ready[0]);
    char ok = 0;
    if (::unshare(CLONE_NEWNS) == 0 &&
        ::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) == 0 &&
        ::mount("tmpfs", dir.c_str(), "tmpfs", 0, nullptr) == 0) {
      std::ifstream in(kTarget, std::ios::binary);
      std::ofstream out(prog, std::ios::binary);
      out << in.rdbuf();
      out.close();
      ok = ::chmod(prog.c_str(), 0755) == 0;
    }
    (void)!::write(ready[1], &ok, 1);
    if (!ok) ::_exit(77);
    (void)!::freopen("/dev/null", "w", stdout);
    ::execl(prog.c_str(), prog.c_str(), "wait", "/nonexistent/never", "1", nullptr);
    ::_exit(127);
  }
  ::close(ready[1]);
  char ok = 0;
  (void)!::read(ready[0], &ok, 1);
  ::close(ready[0]);
  if (!ok) {
    ::waitpid(pid, nullptr, 0);
    ::rmdir(dir.c_str());
    GTEST_SKIP() << "no mount namespace here (needs root)";
  }
  const std::string maps = "/proc/" + std::to_string(pid) + "/maps";
  for (auto deadline = std::chrono::steady_clock::now() + 30s;
       std::chrono::steady_clock::now() < deadline;) {
    const std::string m = hp::test::read_file(maps);
    if (contains(m, prog) && contains(m, "libc")) break;
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_NE(::access(prog.c_str(), F_OK), 0);  // not there in this namespace
  auto r = hotprobe({"list", "-p", std::to_string(pid), "usdt:*"});
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
  ::rmdir(dir.c_str());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "usdt:" + prog + ":hpu:tick\n")) << r.out;
}

TEST(Builtins, StackArgumentsAndParentName) {
  // too_many(0, 1, 2, 4, 8, 16, 32, 64, 128, 256): g..j on the stack. The program's
  // parent is hotprobe, which starts it.
  auto r = hotprobe({"run", "-e",
                     "uprobe:" + kStackArgs +
                         ":too_many { printf(\"%d %d %d %d %s %s\\n\", sarg0, sarg1, sarg2, "
                         "sarg3, pcomm, leader_comm); }",
                     "--", kStackArgs, "2"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "32 64 128 256 hotprobe hp_stack_args\n")) << r.out << r.err;
  EXPECT_TRUE(contains(r.out, "32 64 128 257 hotprobe hp_stack_args\n")) << r.out << r.err;
}

TEST(Builtins, StackArgumentsOnlyAtAFunctionsEntry) {
  auto r = hotprobe(
      {"run", "-e", "uretprobe:" + kStackArgs + ":too_many { @ = sarg0; }", "--", kStackArgs});
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(contains(r.err, "The sarg0 builtin can only be used with 'uprobes' probes")) << r.err;
}

TEST(UsdtConstants, TruncatedToTheNotesSizeAndSign) {
  // The compiler writes every constant signed ("4@$-202182160" for the uint32 4092785136).
  auto r = hotprobe(
      {"run", "-e", "usdt:" + kConst + ":hpc:* { printf(\"%lld \", arg0); }", "--", kConst});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "4092785136 -202182160 61936 -3600 240 -16 ")) << r.out << r.err;
}

TEST(UsdtScriptTargets, ModuleGlobStarAndQuotedName) {
  // A glob for the file: the loaded modules whose path matches; `probe` names the file.
  const std::string dir = kConst.substr(0, kConst.rfind('/'));
  auto r = hotprobe(
      {"run", "-e", "usdt:" + dir + "/hp_usdt_co*:hpc:u32 { printf(\"%s %lld\\n\", probe, arg0); }",
       "--", kConst});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "usdt:" + kConst + ":hpc:u32 4092785136\n")) << r.out << r.err;
  // '*' for the file: every module of the process; `probe` names each site's file.
  auto star = hotprobe(
      {"run", "-e", "usdt:*:hpc:u* { printf(\"%s %lld\\n\", probe, arg0); }", "--", kConst});
  ASSERT_EQ(star.code, 0) << star.err;
  EXPECT_TRUE(contains(star.out, "Attaching 3 probes...\n")) << star.out << star.err;
  for (const char* l : {":hpc:u32 4092785136\n", ":hpc:u16 61936\n", ":hpc:u8 240\n"})
    EXPECT_TRUE(contains(star.out, "usdt:" + kConst + l)) << l << " not in:\n" << star.out;
  // A name in double quotes, with its escapes: the note's name is "quoted", quotes included.
  auto q =
      hotprobe({"run", "-e", "usdt:" + kConst + ":hpq:\"\\\"quoted\\\"\" { printf(\"hit\\n\"); }",
                "--", kConst});
  ASSERT_EQ(q.code, 0) << q.err;
  EXPECT_TRUE(contains(q.out, "Attaching 1 probe...\nhit\n")) << q.out << q.err;
}

TEST(UsdtDuplicated, TwoMarkersAtOneAddressAreOneSiteWithBothProbes) {
  // hpd:one and hpd:two name one nop: each probe runs its action at every hit.
  auto r = hotprobe({"run", "-e",
                     "usdt:" + kDup + ":hpd:one { @one[arg0] = count(); } usdt:" + kDup +
                         ":hpd:two { @two[arg0] = count(); }",
                     "--", kDup, "2"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "Attaching 2 probes...\n")) << r.out;
  for (const char* l : {"@one[0]: 1\n", "@one[1]: 1\n", "@two[0]: 1\n", "@two[1]: 1\n"})
    EXPECT_TRUE(contains(r.out, l)) << l << " not in:\n" << r.out << r.err;
}

}  // namespace
