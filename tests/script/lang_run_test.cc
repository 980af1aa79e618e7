// Positional parameters, loops and signal() end to end: the built hotprobe runs a small
// program (fixture/lang_target.c: work(3), work(5), poke()) with the parameters after the
// script, in each command-line form bpftrace has (-e and a file, `--` and -c).
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <string>
#include <vector>

#include "support/run_command.h"

namespace {

hp::test::CommandResult hotprobe(const std::vector<std::string>& args) {
  hp::test::Command c{{HP_HOTPROBE}};
  c.argv.insert(c.argv.end(), args.begin(), args.end());
  c.env = {{"HOTPROBE_AGENT", HP_AGENT}};
  return hp::test::run_command(c);
}

const std::string kWork = std::string("uprobe:") + HP_LANG_TARGET + ":work";

// For each hit, 0 + 1 + ... + arg0 - 1 into @[$1]; END prints str($2) and $#.
const std::string kScript =
    kWork + " { for ($i : 0..arg0) { @[$1] += $i; } } END { printf(\"%s %d\\n\", str($2), $#); }";

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
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::execl("/bin/sleep", "sleep", "60", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  // Attach to sleep, not to this program's fork before its exec.
  for (;;) {
    char exe[4096] = {};
    const ssize_t n =
        ::readlink(("/proc/" + std::to_string(child) + "/exe").c_str(), exe, sizeof exe - 1);
    if (n > 0 && std::string(exe).ends_with("sleep")) break;
    ::usleep(1000);
  }
  // BEGIN runs inside the process: the parameters travel in the start message.
  auto r = hotprobe({"attach", "-p", std::to_string(child), "-e",
                     "BEGIN { printf(\"%d %s %d\\n\", $1, str($2), $#); exit(); }", "5", "x"});
  ::kill(child, SIGKILL);
  ::waitpid(child, nullptr, 0);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out.substr(0, r.out.find("\n\n")), "Attaching 1 probe...\n5 x 2") << r.err;
}

}  // namespace
