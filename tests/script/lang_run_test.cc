// Positional parameters, loops, signal(), system() and cat() end to end: the built hotprobe
// runs a small program (fixture/lang_target.c: work(3), work(5), poke()) with the
// parameters after the script, in each command-line form bpftrace has (-e and a file, `--`
// and -c).
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <string>
#include <vector>

#include "attach/reachable_copies.h"
#include "support/run_command.h"

namespace {

using hp::test::hotprobe;

// A sleep(1) to attach to: its pid, once it is sleep (not this program's fork); as user
// `uid` when not -1.
pid_t start_sleep(long uid = -1) {
  const pid_t child = ::fork();
  if (child == 0) {
    if (uid >= 0 &&
        (::setgid(static_cast<gid_t>(uid)) != 0 || ::setuid(static_cast<uid_t>(uid)) != 0))
      ::_exit(126);
    ::execl("/bin/sleep", "sleep", "60", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  for (;;) {
    char exe[4096] = {};
    const ssize_t n =
        ::readlink(("/proc/" + std::to_string(child) + "/exe").c_str(), exe, sizeof exe - 1);
    if ((n > 0 && std::string(exe).ends_with("sleep")) || ::waitpid(child, nullptr, WNOHANG) != 0)
      break;
    ::usleep(1000);
  }
  return child;
}

const std::string kWork = std::string("uprobe:") + HP_LANG_TARGET + ":work";

// For each hit, 0 + 1 + ... + arg0 - 1 into @[$1]; END prints str($2) and $#.
const std::string kScript =
    kWork + " { for ($i : 0..arg0) { @[$1] += $i; } } END { printf(\"%s %d\\n\", str($2), $#); }";

// `hotprobe attach` injects the agent built with the tests: a sanitized agent cannot be
// injected into a target whose sanitizer runtime did not start first (tests/attach skips
// the same way); the release build runs these.
#if defined(HOTPROBE_ASAN) || defined(HOTPROBE_TSAN)
#define HP_SKIP_ATTACH_IF_SANITIZED() \
  GTEST_SKIP() << "a sanitized agent cannot be injected into an unsanitized target"
#else
#define HP_SKIP_ATTACH_IF_SANITIZED() (void)0
#endif

TEST(LangRun, ParametersAfterTheScriptAndLoops) {
  auto r = hotprobe({"run", "-e", kScript, "100", "label", "--", HP_LANG_TARGET});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "Attaching 2 probes...\nlabel 2\n\n\n@[100]: 13\n") << r.err;
}

TEST(LangRun, ParametersWithBpftracesTopLevelForm) {
  // bpftrace -e SCRIPT ARGS -c CMD.
  auto r = hotprobe({"-e", kScript, "7", "-c", HP_LANG_TARGET});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "Attaching 2 probes...\n 1\n\n\n@[7]: 13\n") << r.err;
}

TEST(LangRun, ParametersAfterAScriptFile) {
  const std::string file =
      ::testing::TempDir() + "hp_lang_run_" + std::to_string(::getpid()) + ".bt";
  { std::ofstream(file) << kScript << "\n"; }
  auto r = hotprobe({"run", file, "0x10", "x", "--", HP_LANG_TARGET});
  std::remove(file.c_str());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "Attaching 2 probes...\nx 2\n\n\n@[16]: 13\n") << r.err;
}

TEST(LangRun, ParameterErrorsAreTheScriptsBeforeTheProgramStarts) {
  auto r = hotprobe({"run", "-e", kWork + " { @ = $1; }", "abc", "--", HP_LANG_TARGET});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("ERROR: $1 used numerically but given \"abc\". Try using str($1)."),
            std::string::npos)
      << r.err;
  EXPECT_EQ(r.out, "");
}

TEST(LangRun, SignalReachesTheTracedProcessWithUnsafe) {
#if defined(HOTPROBE_TSAN)
  GTEST_SKIP() << "ThreadSanitizer delivers the signal late, after the fixture has looked";
#endif
  const std::string script =
      std::string("uprobe:") + HP_LANG_TARGET + ":poke { signal(\"SIGUSR1\"); }";
  auto r = hotprobe({"run", "-e", script, "--", HP_LANG_TARGET, "sig"});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("signal() is an unsafe function being used in safe mode (run hotprobe "
                       "with --unsafe to allow it)"),
            std::string::npos)
      << r.err;
  r = hotprobe({"run", "--unsafe", "-e", script, "--", HP_LANG_TARGET, "sig"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("got SIGUSR1\n"), std::string::npos) << r.err;
}

TEST(LangRun, ParametersReachAnAttachedAgent) {
  HP_SKIP_ATTACH_IF_SANITIZED();
  const pid_t child = start_sleep();
  // BEGIN runs inside the process: the parameters travel in the start message.
  auto r = hotprobe({"attach", "-p", std::to_string(child), "-e",
                     "BEGIN { printf(\"%d %s %d\\n\", $1, str($2), $#); exit(); }", "5", "x"});
  ::kill(child, SIGKILL);
  ::waitpid(child, nullptr, 0);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out.substr(0, r.out.find("\n\n")), "Attaching 1 probe...\n5 x 2") << r.err;
}

TEST(LangRun, SystemAndCatNeedUnsafe) {
  for (const char* call : {"system(\"echo %d\", arg0)", "cat(\"/etc/hostname\")"}) {
    auto r = hotprobe({"run", "-e", kWork + " { " + call + "; }", "--", HP_LANG_TARGET});
    EXPECT_EQ(r.code, 1);
    const std::string name = std::string(call).substr(0, std::string(call).find('('));
    EXPECT_NE(r.err.find(name + "() is an unsafe function being used in safe mode (run hotprobe "
                                "with --unsafe to allow it)"),
              std::string::npos)
        << r.err;
    EXPECT_EQ(r.out, "");
  }
  // Its format is checked as printf's, named as the call.
  auto r = hotprobe({"run", "--unsafe", "-e", kWork + " { system(\"echo %d %d\", arg0); }", "--",
                     HP_LANG_TARGET});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("system: Not enough arguments for format string (1 supplied, 2 expected)"),
            std::string::npos)
      << r.err;
}

TEST(LangRun, SystemRunsInHotprobeInOrderWithPrintf) {
  // The command's parent is hotprobe, never the traced program ($PPID's name).
  const std::string script =
      "BEGIN { printf(\"begin\\n\"); system(\"echo begin sys\"); printf(\"after begin\\n\"); } " +
      kWork +
      " { printf(\"before %d\\n\", arg0); system(\"echo sys %d $(cat /proc/$PPID/comm)\", arg0); "
      "printf(\"after %d\\n\", arg0); } "
      "END { system(\"echo end sys\"); printf(\"end\\n\"); }";
  auto r = hotprobe({"run", "--unsafe", "-e", script, "--", HP_LANG_TARGET});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out,
            "Attaching 3 probes...\nbegin\nbegin sys\nafter begin\n"
            "before 3\nsys 3 hotprobe\nafter 3\nbefore 5\nsys 5 hotprobe\nafter 5\n"
            "end sys\nend\n\n\n")
      << r.err;
}

TEST(LangRun, SystemInTheEndHotprobeRunsForAKilledProgram) {
  // The program is killed before its final report: END runs in hotprobe, its system() too.
  const std::string script =
      "END { printf(\"e\\n\"); system(\"echo end sys $(cat /proc/$PPID/comm)\"); "
      "printf(\"e2\\n\"); }";
  auto r = hotprobe({"run", "--unsafe", "-e", script, "--", "/bin/sh", "-c", "kill -9 $$"});
  EXPECT_EQ(r.code, 128 + SIGKILL) << r.err;
  EXPECT_EQ(r.out, "Attaching 1 probe...\ne\nend sys hotprobe\ne2\n\n\n") << r.err;
}

TEST(LangRun, SystemCommandThatFailsPrintsWhatItPrintedAndTracingGoesOn) {
  // bpftrace's system(): the command's standard output, its standard error as it is, and
  // no word on its exit status.
  const std::string script = kWork +
                             " { system(\"echo out %d; echo err >&2; exit 3\", arg0); "
                             "system(\"hp_no_such_command_%d\", arg0); printf(\"next\\n\"); }";
  auto r = hotprobe({"run", "--unsafe", "-e", script, "--", HP_LANG_TARGET});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "Attaching 1 probe...\nout 3\nnext\nout 5\nnext\n\n\n") << r.err;
  EXPECT_NE(r.err.find("err\n"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("hp_no_such_command_5"), std::string::npos) << r.err;
}

TEST(LangRun, CatPrintsTheFileInOrderAndSaysWhenItCannot) {
  const std::string dir = ::testing::TempDir() + "hp_cat_" + std::to_string(::getpid());
  { std::ofstream(dir + "_3") << "three\nlines\n"; }
  const std::string script = kWork + " { printf(\"%d:\\n\", arg0); cat(\"" + dir +
                             "_%d\", arg0); printf(\"done %d\\n\", arg0); }";
  auto r = hotprobe({"run", "--unsafe", "-e", script, "--", HP_LANG_TARGET});
  std::remove((dir + "_3").c_str());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "Attaching 1 probe...\n3:\nthree\nlines\ndone 3\n5:\ndone 5\n\n\n") << r.err;
  EXPECT_NE(r.err.find("hotprobe: cat(): cannot open '" + dir + "_5': No such file or directory"),
            std::string::npos)
      << r.err;
}

TEST(LangRun, SystemAndCatInJson) {
  const std::string file = ::testing::TempDir() + "hp_cat_json_" + std::to_string(::getpid());
  { std::ofstream(file) << "x\"y\n"; }
  const std::string script = "BEGIN { system(\"echo hi\"); cat(\"" + file + "\"); exit(); }";
  auto r = hotprobe({"run", "--unsafe", "--format", "json", "-e", script, "--", HP_LANG_TARGET});
  std::remove(file.c_str());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("{\"type\": \"syscall\", \"data\": \"hi\\n\"}\n"
                       "{\"type\": \"cat\", \"data\": \"x\\\"y\\n\"}\n"),
            std::string::npos)
      << r.out;
}

TEST(LangRun, SystemRunsInHotprobeAttach) {
  HP_SKIP_ATTACH_IF_SANITIZED();
  const pid_t child = start_sleep();
  auto r = hotprobe({"attach", "--unsafe", "-p", std::to_string(child), "-e",
                     "BEGIN { printf(\"a\\n\"); system(\"echo sys $(cat /proc/$PPID/comm)\"); "
                     "printf(\"b\\n\"); exit(); }"});
  ::kill(child, SIGKILL);
  ::waitpid(child, nullptr, 0);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out.substr(0, r.out.find("\n\n")), "Attaching 1 probe...\na\nsys hotprobe\nb")
      << r.err;
}

TEST(LangRun, RequestsFromAProcessOfAnotherUserAreNotRun) {
  HP_SKIP_ATTACH_IF_SANITIZED();
  // It could write a forged request on the channel: hotprobe would run it as root.
  if (::getuid() != 0) GTEST_SKIP() << "needs root to start a process as another user";
  // The agent from a directory the other user can reach (a checkout in `mktemp -d`, mode
  // 0700, is not).
  hp_test::ReachableCopies copies(
      std::vector<std::pair<std::string, std::string>>{{HP_AGENT, "libhotprobe_agent.so"}});
  ASSERT_EQ(copies.error(), "");
  const pid_t child = start_sleep(65534);
  hp::test::Command c{{HP_HOTPROBE, "attach", "--unsafe", "-p", std::to_string(child), "-e",
                       "BEGIN { printf(\"a\\n\"); system(\"echo sys\"); printf(\"b\\n\"); "
                       "exit(); }"}};
  c.env = {{"HOTPROBE_AGENT", copies.path("libhotprobe_agent.so")}};
  auto r = hp::test::run_command(c);
  ::kill(child, SIGKILL);
  ::waitpid(child, nullptr, 0);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out.substr(0, r.out.find("\n\n")), "Attaching 1 probe...\na\nb") << r.err;
  EXPECT_NE(r.err.find("hotprobe attach: system() and cat() requests from process " +
                       std::to_string(child) +
                       " are not run: it does not run as hotprobe's user (uid 0)"),
            std::string::npos)
      << r.err;
}

}  // namespace
