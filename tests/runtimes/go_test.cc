// Go programs under `hotprobe run`: entry probes on Go functions whose goroutines grow and
// move their stacks while the probes are live (the handlers run on hotprobe's stack), and
// return probes on Go functions through their `ret` instructions (core/ret_probe.h), with
// exact counts, the return values, and the program's output and exit status unchanged.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace {

// A sanitizer runtime in the agent installs signal handlers without SA_ONSTACK, which the
// Go runtime refuses ("non-Go code set up signal handler without SA_ONSTACK flag"), and
// needs more static TLS than a running process has for a dlopen.
class GoProgram : public ::testing::Test {
 protected:
  void SetUp() override {
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
    GTEST_SKIP() << "Go programs with a sanitizer-built agent";
#endif
  }
};

struct Outcome {
  int code = -1;  // exit status, 128+N for signal N, -1 on timeout
  std::string out, err;
};

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// `gogc`: GOGC for the program (a collection every few KiB: preemption signals and stack
// shrinking while the probes are live), or none.
Outcome run(const std::vector<std::string>& args, const char* gogc = nullptr,
            std::chrono::seconds timeout = std::chrono::seconds(60)) {
  const std::string base = ::testing::TempDir() + "hp_go_" + std::to_string(::getpid());
  const std::string out_path = base + "_out", err_path = base + "_err";
  pid_t pid = ::fork();
  if (pid == 0) {
    ::setpgid(0, 0);
    int o = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    int e = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ::dup2(o, 1);
    ::dup2(e, 2);
    ::setenv("HOTPROBE_AGENT", HP_AGENT, 1);
    if (gogc) ::setenv("GOGC", gogc, 1);
    std::vector<char*> argv;
    for (const std::string& a : args)
      argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  Outcome r;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  int status = 0;
  for (;;) {
    pid_t w = ::waitpid(pid, &status, WNOHANG);
    if (w == pid) break;
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(-pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      r.out = slurp(out_path);
      r.err = slurp(err_path);
      return r;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // polling a child's exit
  }
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = slurp(out_path);
  r.err = slurp(err_path);
  ::unlink(out_path.c_str());
  ::unlink(err_path.c_str());
  return r;
}

// The program's own line: "cgo 42 leaf L recurse R results S sum T".
struct ProgramLine {
  long leaf = -1, recurse = -1, results = -1, sum = -1;
  std::string line;
};
ProgramLine program_line(const std::string& out) {
  ProgramLine p;
  std::smatch m;
  static const std::regex re(R"((cgo 42 leaf (\d+) recurse (\d+) results (\d+) sum (\d+)))");
  if (std::regex_search(out, m, re)) {
    p.line = m[1];
    p.leaf = std::stol(m[2]);
    p.recurse = std::stol(m[3]);
    p.results = std::stol(m[4]);
    p.sum = std::stol(m[5]);
  }
  return p;
}

// "@NAME: VALUE" in the printed maps.
long map_value(const std::string& out, const std::string& name) {
  std::smatch m;
  const std::regex re("(^|\n)@" + name + ": (-?\\d+)");
  return std::regex_search(out, m, re) ? std::stol(m[2]) : -1;
}

TEST_F(GoProgram, RunsAsItDoesWithoutProbes) {
  Outcome plain = run({HP_GO_PROGRAM});
  ASSERT_EQ(plain.code, 0) << plain.err;
  ProgramLine p = program_line(plain.out);
  EXPECT_EQ(p.leaf, 202000);  // 200 goroutines x 20 rounds x depths 0..99
  EXPECT_EQ(p.recurse, p.leaf);
}

// 200 goroutines recursing 0..99 deep (256-byte frames: their stacks grow and move; with
// GOGC=1 the collector also preempts them and shrinks their stacks), with an entry probe
// on the leaf every level calls and a return probe on the recursive function: every
// count exact, the sum of the return values as the program computed it.
TEST_F(GoProgram, EntryAndReturnProbesOnMovingGoroutineStacks) {
  const ProgramLine want = program_line(run({HP_GO_PROGRAM}).out);
  ASSERT_GT(want.leaf, 0);
  Outcome r =
      run({HP_HOTPROBE, "run", "-e",
           "uprobe:" HP_GO_PROGRAM ":main.leaf { @leaf = count(); } "
           "uretprobe:" HP_GO_PROGRAM ":main.recurse { @ret = count(); @rv = sum(retval); }",
           "--", HP_GO_PROGRAM},
          "1");
  ASSERT_EQ(r.code, 0) << r.err << r.out;
  const ProgramLine got = program_line(r.out);
  EXPECT_EQ(got.line, want.line) << "the program's output changed";
  EXPECT_EQ(map_value(r.out, "leaf"), want.leaf) << r.out;
  EXPECT_EQ(map_value(r.out, "ret"), want.recurse) << r.out;
  EXPECT_EQ(map_value(r.out, "rv"), want.results) << r.out;
  EXPECT_EQ(r.err.find("fatal error"), std::string::npos) << r.err;
}

// A return probe on a small leaf whose result is computed by the last instructions before
// its ret: the handler sees the result (it runs after them, at the ret).
TEST_F(GoProgram, ReturnValueOfALeafComputedRightBeforeItsRet) {
  Outcome r = run({HP_HOTPROBE, "run", "-e",
                   "uretprobe:" HP_GO_PROGRAM ":main.leaf { @n = count(); @rv = sum(retval); }",
                   "--", HP_GO_PROGRAM, "20", "5"});
  ASSERT_EQ(r.code, 0) << r.err << r.out;
  const ProgramLine got = program_line(r.out);
  EXPECT_EQ(map_value(r.out, "n"), got.leaf) << r.out;
  // Every leaf result ends up in exactly one top-level sum.
  EXPECT_EQ(map_value(r.out, "rv"), got.sum) << r.out;
}

// Entry and return pair through the script's own maps (no return instance in this mode):
// the start time kept by thread at the entry, read at the ret.
TEST_F(GoProgram, EntryAndReturnPairThroughTheScriptsMaps) {
  Outcome r = run({HP_HOTPROBE, "run", "-e",
                   "uprobe:" HP_GO_PROGRAM ":main.leaf { @start[tid] = nsecs; } "
                   "uretprobe:" HP_GO_PROGRAM ":main.leaf /@start[tid]/ "
                   "{ @paired = count(); @late = sum(nsecs < @start[tid]); }",
                   "--", HP_GO_PROGRAM, "20", "5"});
  ASSERT_EQ(r.code, 0) << r.err << r.out;
  const ProgramLine got = program_line(r.out);
  // A goroutine may move to another thread between the two (async preemption), so every
  // return need not find a start on its thread; most do.
  EXPECT_GT(map_value(r.out, "paired"), got.leaf / 2) << r.out;
  EXPECT_LE(map_value(r.out, "paired"), got.leaf) << r.out;
  EXPECT_EQ(map_value(r.out, "late"), 0) << r.out;
}

// A Go function without a ret (it never returns): refused before the program runs, with
// the reason.
TEST_F(GoProgram, ReturnProbeOnAFunctionWithoutRetIsRefused) {
  Outcome r = run({HP_HOTPROBE, "run", "-e",
                   "uretprobe:" HP_GO_PROGRAM ":runtime.goexit.abi0 { @n = count(); }", "--",
                   HP_GO_PROGRAM, "2", "1"});
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.err.find("runtime.goexit.abi0: the function has no `ret` instruction"),
            std::string::npos)
      << r.err;
  EXPECT_EQ(program_line(r.out).leaf, -1) << "the program ran";
}

// The Go program started with `args` after the program's path, its stdout in a file,
// until it prints "running" (it is the Go program then, its goroutines started: attaching
// before the exec would find the test's own copy). The child's pid, or -1 when it ended
// or took 60 s.
pid_t start_until_running(const std::vector<std::string>& args, const std::string& out_path,
                          const std::vector<std::string>& env = {}) {
  pid_t prog = ::fork();
  if (prog == 0) {
    int o = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ::dup2(o, 1);
    for (const std::string& e : env)
      ::putenv(const_cast<char*>(e.c_str()));
    std::vector<char*> argv{const_cast<char*>(HP_GO_PROGRAM)};
    for (const std::string& a : args)
      argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(HP_GO_PROGRAM, argv.data());
    ::_exit(127);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (slurp(out_path).find("running\n") == std::string::npos) {
    int status = 0;
    if (::waitpid(prog, &status, WNOHANG) == prog) return -1;
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(prog, SIGKILL);
      ::waitpid(prog, &status, 0);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));  // polling a file
  }
  return prog;
}

// Creates the file `stop` (the program's rounds end) and waits for the program's exit.
int stop_and_wait(const std::string& stop, pid_t prog) {
  { std::ofstream(stop.c_str()) << "stop\n"; }
  int status = 0;
  ::waitpid(prog, &status, 0);
  ::unlink(stop.c_str());
  return status;
}

// `hotprobe attach -p` on a running Go program: the agent is injected, the probes are
// placed while 200 goroutines run through them, and removed; the program goes on to its
// own end, its counts consistent. Goroutines deep in their recursion have less than a
// KiB of stack below their stack pointer: the threads the patcher signals take the
// signal on their signal stacks (tests/patching/signal_stack_test.cc).
TEST_F(GoProgram, AttachToARunningProgram) {
  const std::string stop = ::testing::TempDir() + "hp_go_stop_" + std::to_string(::getpid());
  ::unlink(stop.c_str());
  const std::string out_path = stop + "_out";
  pid_t prog = start_until_running({"200", "100000000", stop}, out_path);
  ASSERT_GT(prog, 0) << slurp(out_path);
  Outcome r = run({HP_HOTPROBE, "attach", "-p", std::to_string(prog), "--duration", "1", "-e",
                   "uprobe:" HP_GO_PROGRAM ":main.leaf { @leaf = count(); } "
                   "uretprobe:" HP_GO_PROGRAM ":main.recurse { @ret = count(); }"});
  const int status = stop_and_wait(stop, prog);
  EXPECT_EQ(r.code, 0) << r.err << r.out;
  EXPECT_GT(map_value(r.out, "leaf"), 0) << r.out << r.err;
  EXPECT_GT(map_value(r.out, "ret"), 0) << r.out << r.err;
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
  const ProgramLine p = program_line(slurp(out_path));
  ::unlink(out_path.c_str());
  EXPECT_GT(p.leaf, 0);
  EXPECT_EQ(p.leaf, p.recurse);
}

// The process's first thread (the one the injector tries first) spins in Go code on a
// goroutine's stack, 8 KiB below it filled with a pattern: the agent's load must not run
// on that stack (a goroutine's stack is small and lies next to others; the injector takes
// a thread on its system stack) and no signal frame may land there. The program checks
// the pattern after the attach. No asynchronous preemption (its frame would go there) and
// no collection (it would move the stack).
// Without the injector's refusal of a thread on a goroutine's stack (src/inject/safe_point.cc)
// the loader's frames are found there ("spin stack written 1024 bytes below").
TEST_F(GoProgram, AttachWhileTheFirstThreadSpinsOnAGoroutineStack) {
  const std::string stop = ::testing::TempDir() + "hp_go_spin_" + std::to_string(::getpid());
  ::unlink(stop.c_str());
  const std::string out_path = stop + "_out";
  pid_t prog = start_until_running({"spin", stop}, out_path, {"GODEBUG=asyncpreemptoff=1"});
  ASSERT_GT(prog, 0) << slurp(out_path);
  Outcome r = run({HP_HOTPROBE, "attach", "-p", std::to_string(prog), "--duration", "1", "-e",
                   "uprobe:" HP_GO_PROGRAM ":main.leaf { @leaf = count(); }"});
  const int status = stop_and_wait(stop, prog);
  EXPECT_EQ(r.code, 0) << r.err << r.out;
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
  EXPECT_NE(slurp(out_path).find("spin stack intact"), std::string::npos) << slurp(out_path);
  ::unlink(out_path.c_str());
}

}  // namespace
