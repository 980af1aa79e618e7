// The process's first steps are counted: under `hotprobe run` the agent is loaded at the
// first constructor after libc's, before the constructors of the program's libraries
// (docs/design/agent.md, "The process's first steps"; src/inject/start.cc). The library
// of fixture/exit_marks.c calls its mark kLibCtor times in its constructor; the preloaded
// agent (HOTPROBE_RUN_START=preload), initialized after that library, counts none of them.
#include <gtest/gtest.h>

#include <sys/stat.h>

#include <fstream>
#include <string>
#include <vector>

#include "agent_e2e_util.h"

extern "C" {
#include "fixture/exit_marks.h"
}

namespace {

using hp::agent_test::map_value;
using hp::agent_test::run_command;
using hp::agent_test::RunResult;

// TSan cannot start a followed child's reporter thread after a multi-threaded fork.
bool tsan() {
#if defined(HOTPROBE_TSAN)
  return true;
#else
  return false;
#endif
}

bool sanitized() {
  return std::string(HP_SANITIZE).size() > 0;
}

// The fixture, run directly or through `prefix` (env(1), which exec's it: the library's
// constructor then runs in an image the program exec'd). `options` go before the script.
RunResult run_marks(const std::vector<std::string>& env,
                    const std::vector<std::string>& prefix = {},
                    const std::vector<std::string>& options = {}) {
  const std::string lib = HP_EXIT_MARKS_LIB;
  const std::string script = "uprobe:" + lib + ":mark_lib_ctor { @ctor = count(); } uprobe:" + lib +
                             ":mark_main { @main = count(); }";
  std::vector<std::string> args{HP_HOTPROBE, "run"};
  args.insert(args.end(), options.begin(), options.end());
  args.insert(args.end(), {"-e", script, "--"});
  args.insert(args.end(), prefix.begin(), prefix.end());
  args.insert(args.end(), {HP_EXIT_MARKS, "return"});
  return run_command(args, env, std::chrono::seconds(60));
}

// A followed child's image: a shell forks a child for the fixture (the `; true` keeps it
// from exec'ing in place), which execs it.
const std::vector<std::string> kInAChild = {"/bin/sh", "-c", "\"$0\" \"$@\"; true"};

TEST(FirstSteps, ALibrarysConstructorIsCounted) {
  if (sanitized()) GTEST_SKIP() << "a sanitizer-built agent is preloaded (its runtime comes first)";
  RunResult r = run_marks({});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(map_value(r.out, "ctor"), kLibCtor) << r.out << r.err;
  EXPECT_EQ(map_value(r.out, "main"), kMain) << r.out << r.err;
  EXPECT_EQ(r.err, "");
}

// The preloaded agent is initialized after the library: its constructor's calls are not
// seen. What the early start fixes, and the proof that the test above can fail.
TEST(FirstSteps, ThePreloadedAgentMissesTheConstructor) {
  RunResult r = run_marks({"HOTPROBE_RUN_START=preload"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(map_value(r.out, "ctor"), 0) << r.out << r.err;
  EXPECT_EQ(map_value(r.out, "main"), kMain) << r.out << r.err;
}

// The image the program exec's: its agent starts before that image's libraries'
// constructors too (hotprobe traces the process from the hand-over to the execve).
TEST(FirstSteps, ALibrarysConstructorInAnExecdImageIsCounted) {
  if (sanitized()) GTEST_SKIP() << "a sanitizer-built agent is preloaded (its runtime comes first)";
  RunResult r = run_marks({}, {"/usr/bin/env"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(map_value(r.out, "ctor"), kLibCtor) << r.out << r.err;
  EXPECT_EQ(map_value(r.out, "main"), kMain) << r.out << r.err;
  EXPECT_EQ(r.err, "");
}

TEST(FirstSteps, ThePreloadedAgentMissesTheConstructorInAnExecdImage) {
  RunResult r = run_marks({"HOTPROBE_RUN_START=preload"}, {"/usr/bin/env"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(map_value(r.out, "ctor"), 0) << r.out << r.err;
  EXPECT_EQ(map_value(r.out, "main"), kMain) << r.out << r.err;
}

// The exec of a thread other than the main one: the kernel gives that thread the
// process's pid in the exec, and hotprobe traces that thread (not the main one) from the
// hand-over to the execve.
TEST(FirstSteps, ALibrarysConstructorInAnImageAThreadExecsIsCounted) {
  if (sanitized()) GTEST_SKIP() << "a sanitizer-built agent is preloaded (its runtime comes first)";
  RunResult r = run_marks({}, {HP_THREAD_EXEC});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(map_value(r.out, "ctor"), kLibCtor) << r.out << r.err;
  EXPECT_EQ(map_value(r.out, "main"), kMain) << r.out << r.err;
  EXPECT_EQ(r.err, "");
}

TEST(FirstSteps, ThePreloadedAgentMissesTheConstructorInAnImageAThreadExecs) {
  RunResult r = run_marks({"HOTPROBE_RUN_START=preload"}, {HP_THREAD_EXEC});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(map_value(r.out, "ctor"), 0) << r.out << r.err;
  EXPECT_EQ(map_value(r.out, "main"), kMain) << r.out << r.err;
}

// --follow-forks: the image a followed child execs starts early too.
TEST(FirstSteps, ALibrarysConstructorInAFollowedChildsImageIsCounted) {
  if (sanitized()) GTEST_SKIP() << "a sanitizer-built agent is preloaded (its runtime comes first)";
  RunResult r = run_marks({}, kInAChild, {"--follow-forks"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(map_value(r.out, "ctor"), kLibCtor) << r.out << r.err;
  EXPECT_EQ(map_value(r.out, "main"), kMain) << r.out << r.err;
  EXPECT_EQ(r.err, "");
}

TEST(FirstSteps, ThePreloadedAgentMissesTheConstructorInAFollowedChildsImage) {
  if (tsan()) GTEST_SKIP() << "TSan: no thread after a multi-threaded fork";
  RunResult r = run_marks({"HOTPROBE_RUN_START=preload"}, kInAChild, {"--follow-forks"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(map_value(r.out, "ctor"), 0) << r.out << r.err;
  EXPECT_EQ(map_value(r.out, "main"), kMain) << r.out << r.err;
}

TEST(FirstSteps, AnUnknownStartModeIsRefusedBeforeTheProgramRuns) {
  const std::string marker = ::testing::TempDir() + "hp_first_steps_ran";
  ::unlink(marker.c_str());
  RunResult r = run_command({HP_HOTPROBE, "run", "-e", "BEGIN { }", "--", "/usr/bin/touch", marker},
                            {"HOTPROBE_RUN_START=sideways"}, std::chrono::seconds(60));
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("HOTPROBE_RUN_START='sideways'"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("'preload'"), std::string::npos) << r.err;
  struct stat st;
  EXPECT_NE(::stat(marker.c_str(), &st), 0) << "the program ran";
}

// The program's environment is its own: its LD_PRELOAD as the user set it (the agent is
// not in it), no HOTPROBE_ variable.
TEST(FirstSteps, TheProgramsEnvironmentIsItsOwn) {
  const std::string lib = HP_EXIT_MARKS_LIB;
  for (const std::string& preload : std::vector<std::string>{"", lib}) {
    // hotprobe itself runs with the user's LD_PRELOAD, which a sanitizer's runtime must
    // precede.
    if (!preload.empty() && sanitized()) continue;
    std::vector<std::string> env;
    if (!preload.empty()) env.push_back("LD_PRELOAD=" + preload);
    RunResult r =
        run_command({HP_HOTPROBE, "run", "-e", "uprobe:" + lib + ":mark_main { @ = count(); }",
                     "--", "/usr/bin/env"},
                    env, std::chrono::seconds(60));
    EXPECT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(r.out.find("HOTPROBE_"), std::string::npos) << r.out;
    if (sanitized()) continue;  // the sanitizer's runtime and the agent are preloaded
    if (preload.empty()) {
      EXPECT_EQ(r.out.find("LD_PRELOAD="), std::string::npos) << r.out;
    } else {
      EXPECT_NE(r.out.find("\nLD_PRELOAD=" + preload + "\n"), std::string::npos) << r.out;
    }
  }
}

// A program that cannot be executed: the child's error and status, as without tracing.
TEST(FirstSteps, AnExecThatFailsEndsWithItsStatus) {
  const std::string path = ::testing::TempDir() + "hp_first_steps_not_exec";
  std::ofstream(path) << "not a program\n";
  ::chmod(path.c_str(), 0644);
  RunResult r = run_command({HP_HOTPROBE, "run", "-e", "BEGIN { }", "--", path}, {},
                            std::chrono::seconds(60));
  EXPECT_EQ(r.status, 126) << r.out << r.err;
  EXPECT_NE(r.err.find("cannot run"), std::string::npos) << r.err;
  ::unlink(path.c_str());
}

}  // namespace
