// The process's last steps are counted: the final report of `hotprobe run` is taken at
// `_exit` (the last thing the process does), after the atexit handlers and every
// library's destructors, which run with hits still counted (docs/design/agent.md, "The
// final report, and the ways a process ends"). fixture/exit_marks.c ends each way a process
// ends; each step calls its own mark a known number of times (fixture/exit_marks.h), and
// the maps must be printed once, with exactly those counts.
#include <gtest/gtest.h>

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

const char* const kSteps[] = {"main", "atexit", "lib_fini", "exe_fini", "child"};

std::string script() {
  std::string s;
  for (const char* step : kSteps)
    s += std::string("uprobe:") + HP_EXIT_MARKS_LIB + ":mark_" + step + " { @" + step +
         " = count(); } ";
  return s;
}

RunResult run(const std::string& mode, bool follow_forks = false) {
  std::vector<std::string> args{HP_HOTPROBE, "run"};
  if (follow_forks) args.push_back("--follow-forks");
  args.insert(args.end(), {"-e", script(), "--", HP_EXIT_MARKS, mode});
  return run_command(args, {}, std::chrono::seconds(60));
}

// Each map is printed once: the report is taken once, whichever way the process ended.
void expect_printed_once(const RunResult& r) {
  for (const char* step : kSteps) {
    const std::string line = std::string("@") + step + ":";
    const auto first = r.out.find(line);
    if (first != std::string::npos) {
      EXPECT_EQ(r.out.find(line, first + 1), std::string::npos) << step << " twice:\n" << r.out;
    }
  }
}

void expect_counts(const RunResult& r, long main, long atexit, long lib_fini, long exe_fini,
                   long child = 0) {
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(map_value(r.out, "main"), main) << r.out << r.err;
  EXPECT_EQ(map_value(r.out, "atexit"), atexit) << r.out << r.err;
  EXPECT_EQ(map_value(r.out, "lib_fini"), lib_fini) << r.out << r.err;
  EXPECT_EQ(map_value(r.out, "exe_fini"), exe_fini) << r.out << r.err;
  EXPECT_EQ(map_value(r.out, "child"), child) << r.out << r.err;
  expect_printed_once(r);
  EXPECT_EQ(r.err.find("before its final report"), std::string::npos) << r.err;
}

TEST(ExitSteps, ReturnFromMainCountsAtexitHandlersAndEveryDestructor) {
  expect_counts(run("return"), kMain, kAtexit, kLibFini, kExeFini);
}

TEST(ExitSteps, ExitCountsAtexitHandlersAndEveryDestructor) {
  expect_counts(run("exit"), kMain, kAtexit, kLibFini, kExeFini);
}

// _exit runs neither: the report comes at once.
TEST(ExitSteps, UnderscoreExitReportsWhatMainDid) {
  expect_counts(run("_exit"), kMain, 0, 0, 0);
}

TEST(ExitSteps, ExitFromAnotherThreadCountsEveryStep) {
  expect_counts(run("thread"), kMain, kAtexit, kLibFini, kExeFini);
}

TEST(ExitSteps, ExitInASignalHandlerCountsEveryStep) {
  expect_counts(run("signal"), kMain, kAtexit, kLibFini, kExeFini);
}

// The child's exit runs the atexit handler and the destructors it inherited: its counts
// add to the parent's, in one print.
TEST(ExitSteps, FollowedForkChildCountsItsLastStepsToo) {
#if defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "TSan kills a child forked with threads running when it starts a thread (the "
                  "followed child's reporter)";
#endif
  expect_counts(run("fork", true), kMain, 2 * kAtexit, 2 * kLibFini, 2 * kExeFini, kChild);
}

// Actions that print on the main thread before exit() and in its last steps: the script's
// per-thread text buffers outlive exit()'s thread_local destructors (never destroyed), so
// the printing changes no count (a destroyed buffer's free and its destructor's node were
// counted as the program's) and every line is printed.
TEST(ExitSteps, PrintingInTheLastStepsChangesNoCount) {
  const std::string lib = HP_EXIT_MARKS_LIB;
  const std::string count_frees = "uprobe:libc:free { @f = count(); } ";
  const std::string printing = count_frees + "uprobe:" + lib +
                               ":mark_main { printf(\"in main\\n\"); } uprobe:" + lib +
                               ":mark_lib_fini { printf(\"in fini\\n\"); }";
  auto run_script = [](const std::string& script) {
    return run_command({HP_HOTPROBE, "run", "-e", script, "--", HP_EXIT_MARKS, "exit"}, {},
                       std::chrono::seconds(60));
  };
  const RunResult quiet = run_script(count_frees);
  const RunResult loud = run_script(printing);
  ASSERT_EQ(quiet.status, 0) << quiet.err;
  ASSERT_EQ(loud.status, 0) << loud.err;
  EXPECT_EQ(map_value(loud.out, "f"), map_value(quiet.out, "f")) << quiet.out << loud.out;
  auto lines = [&](const std::string& text) {
    std::size_t n = 0;
    for (std::size_t at = 0; (at = loud.out.find(text, at)) != std::string::npos; ++at)
      ++n;
    return n;
  };
  EXPECT_EQ(lines("in main\n"), std::size_t{kMain}) << loud.out;
  EXPECT_EQ(lines("in fini\n"), std::size_t{kLibFini}) << loud.out;
}

// A thread's last steps count too: a key destructor of the program's runs after every key
// destructor of hotprobe's (its key is made later), as glibc's own frees of the thread's
// state (__libc_thread_freeres) come after them all.
TEST(ThreadEnd, KeyDestructorsAfterHotprobesCount) {
  const std::string fix = HP_THREAD_END;
  const std::string script = "uprobe:" + fix + ":mark_thread { @t = count(); } uprobe:" + fix +
                             ":mark_key_dtor { @k = count(); }";
  RunResult r =
      run_command({HP_HOTPROBE, "run", "-e", script, "--", fix}, {}, std::chrono::seconds(60));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(map_value(r.out, "t"), 40) << r.out << r.err;
  EXPECT_EQ(map_value(r.out, "k"), 40 * 3) << r.out << r.err;
}

// The frees of 40 threads that end, glibc's flush of each thread's malloc cache among them,
// counted as bpftrace counts them. The flush frees what the cache holds: with the agent's
// allocations made from the program's malloc, chunks of hotprobe's own were in it, and the
// threads counted 232 to 360 frees against bpftrace's 200 (src/agent/own_heap.cc).
TEST(ThreadEnd, FreesInTheEndingThreadsEqualBpftraces) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "the agent takes the sanitizer's operator new here";
#endif
  if (std::string why = hp::agent_test::bpftrace_usable(); !why.empty()) GTEST_SKIP() << why;
  const std::string fix = HP_THREAD_END;
  RunResult bt =
      run_command({"bpftrace", "-e",
                   "uprobe:libc:free /pid == cpid && tid != pid/ { @thr = count(); }", "-c", fix},
                  {}, std::chrono::seconds(120));
  ASSERT_EQ(bt.status, 0) << bt.err;
  const long want = map_value(bt.out, "thr");
  ASSERT_GT(want, 0) << bt.out;
  RunResult r = run_command(
      {HP_HOTPROBE, "run", "-e", "uprobe:libc:free /tid != pid/ { @thr = count(); }", "--", fix},
      {}, std::chrono::seconds(60));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(map_value(r.out, "thr"), want) << r.out;
}

}  // namespace
