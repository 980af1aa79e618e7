// What was measured reaches the user however the program ends: the built hotprobe on a
// target (fixture/target.c) that makes a known number of calls of `work` and then
// returns, aborts, faults, leaves through exit_group or _exit, or is killed; hotprobe
// itself stopped by SIGTERM (as `timeout` does). Each end must print the maps exactly as a
// normal end prints them (HOTPROBE_SHARED_MAPS=0, the agent's own report, is the
// reference), END's output exactly once, and exit with the program's status.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
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

constexpr int kCalls = 1000;

using Outcome = hp::test::CommandResult;

// Runs `argv` (hotprobe, or a wrapper of it) in its own process group. `keep_fd` is left
// open in it (the target's "ready" pipe); `during` runs while it runs, with its pid.
Outcome run(const std::vector<std::string>& argv, bool shared_maps = true, int keep_fd = -1,
            const std::function<void(pid_t)>& during = {}) {
  hp::test::Command c{argv};
  c.env = {{"HOTPROBE_AGENT", HP_AGENT}};
  if (shared_maps) {
    c.env.emplace_back("HOTPROBE_SHARED_MAPS", std::nullopt);
  } else {
    c.env.emplace_back("HOTPROBE_SHARED_MAPS", "0");
  }
  c.close_fds_but = keep_fd;
  if (during) c.during = [&during](pid_t pid, const std::string&) { during(pid); };
  return hp::test::run_command(c);
}

// Every kind of map the script layer has: sharded counts and sums, a histogram, a striped
// plain map that END reads back.
const char* kBody = "@c = count(); @k[arg0 % 4] = count(); @s = sum(arg0); @h = hist(arg0); @n++;";
const char* kEnd = " END { printf(\"end n=%d\\n\", @n); }";

std::vector<std::string> hotprobe_args(const std::string& format, const std::string& way,
                                       int fd = -1, const std::string& extra_script = {},
                                       bool follow_forks = false) {
  std::vector<std::string> a{HP_HOTPROBE, "run", "-o", format};
  if (follow_forks) a.push_back("--follow-forks");
  a.push_back("-e");
  a.push_back(std::string("uprobe:") + HP_TARGET + ":work { " + kBody + " }" + kEnd + extra_script);
  a.push_back("--");
  a.push_back(HP_TARGET);
  a.push_back(std::to_string(kCalls));
  a.push_back(way);
  if (fd >= 0) a.push_back(std::to_string(fd));
  return a;
}

int count_of(const std::string& s, const std::string& what) {
  int n = 0;
  for (auto pos = s.find(what); pos != std::string::npos; pos = s.find(what, pos + 1))
    ++n;
  return n;
}

// The target's "ready" pipe: it writes its pid there after its calls.
struct ReadyPipe {
  int fds[2] = {-1, -1};
  ReadyPipe() { EXPECT_EQ(::pipe(fds), 0); }  // no O_CLOEXEC: the target inherits it
  ~ReadyPipe() {
    for (int fd : fds)
      if (fd >= 0) ::close(fd);
  }
  int write_end() const { return fds[1]; }
  void close_write_end() {
    ::close(fds[1]);
    fds[1] = -1;
  }
  // The target's pid once it wrote it (bounded wait), or 0 (EOF: it ended first).
  pid_t wait_pid(int timeout_ms = 30000) {
    std::string got;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (got.find('\n') == std::string::npos) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      pollfd p{fds[0], POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(std::max<std::int64_t>(0, left.count()))) != 1) return 0;
      char buf[64];
      ssize_t n = ::read(fds[0], buf, sizeof buf);
      if (n <= 0) return 0;
      got.append(buf, static_cast<std::size_t>(n));
    }
    return static_cast<pid_t>(std::atol(got.c_str()));
  }
};

class Results : public ::testing::TestWithParam<std::string> {
 protected:
  // The maps and END's output of a normal end, printed by the agent over the channel.
  static const std::string& reference(const std::string& format) {
    static std::string text, json;
    std::string& ref = format == "json" ? json : text;
    if (ref.empty()) {
      Outcome r = run(hotprobe_args(format, "exit"), /*shared_maps=*/false);
      EXPECT_EQ(r.code, 0) << r.err;
      ref = r.out;
    }
    return ref;
  }

  // The output must be the reference exactly, and hold the exact counts.
  void expect_exact(const Outcome& r, const std::string& format) {
    const std::string& ref = reference(format);
    EXPECT_EQ(r.out, ref) << r.err;
    if (format == "json") {
      EXPECT_EQ(count_of(r.out, "{\"type\": \"map\", \"data\": {\"@c\": 1000}}\n"), 1) << r.out;
      EXPECT_EQ(count_of(r.out, "\"data\": \"end n=1000\\n\"}"), 1) << r.out;
    } else {
      EXPECT_EQ(count_of(r.out, "\n@c: 1000\n"), 1) << r.out;
      EXPECT_EQ(count_of(r.out, "\n@s: 499500\n"), 1) << r.out;
      EXPECT_EQ(count_of(r.out, "@k[3]: 250\n"), 1) << r.out;
      EXPECT_EQ(count_of(r.out, "end n=1000\n"), 1) << r.out;
      EXPECT_EQ(count_of(r.out, "\n@n: 1000\n"), 1) << r.out;
      // END's output comes before the maps, as bpftrace prints them.
      EXPECT_LT(r.out.find("end n=1000"), r.out.find("@c: 1000")) << r.out;
    }
  }
};

TEST_P(Results, ReferenceHoldsTheCounts) {
  Outcome r = run(hotprobe_args(GetParam(), "exit"));
  EXPECT_EQ(r.code, 0) << r.err;
  expect_exact(r, GetParam());
}

TEST_P(Results, Abort) {
  Outcome r = run(hotprobe_args(GetParam(), "abort"));
  EXPECT_EQ(r.code, 128 + SIGABRT) << r.err;
  expect_exact(r, GetParam());
}

TEST_P(Results, Sigsegv) {
  Outcome r = run(hotprobe_args(GetParam(), "segv"));
#if defined(HOTPROBE_TSAN) || defined(HOTPROBE_ASAN)
  // The sanitizer runtime preloaded with the agent reports the fault and exits itself.
  EXPECT_NE(r.code, 0) << r.err;
#else
  EXPECT_EQ(r.code, 128 + SIGSEGV) << r.err;
#endif
  expect_exact(r, GetParam());
}

TEST_P(Results, RawExitGroup) {
  Outcome r = run(hotprobe_args(GetParam(), "exit_group"));
  EXPECT_EQ(r.code, 3) << r.err;
  expect_exact(r, GetParam());
}

TEST_P(Results, UnderscoreExit) {
  Outcome r = run(hotprobe_args(GetParam(), "_exit"));
  EXPECT_EQ(r.code, 4) << r.err;
  expect_exact(r, GetParam());
}

TEST_P(Results, ShardsOfFourThreadsAfterAbort) {
  Outcome r = run(hotprobe_args(GetParam(), "threads"));
  EXPECT_EQ(r.code, 128 + SIGABRT) << r.err;
  expect_exact(r, GetParam());
}

TEST_P(Results, TargetKilledWithSigkill) {
  ReadyPipe ready;
  Outcome r = run(hotprobe_args(GetParam(), "wait", ready.write_end()), true, ready.write_end(),
                  [&](pid_t) {
                    ready.close_write_end();
                    pid_t target = ready.wait_pid();
                    ASSERT_GT(target, 0) << "the target never reported its calls done";
                    ::kill(target, SIGKILL);
                  });
  EXPECT_EQ(r.code, 128 + SIGKILL) << r.err;
  expect_exact(r, GetParam());
}

// What `timeout` does: SIGTERM to hotprobe, which passes it on to the program.
TEST_P(Results, HotprobeGetsSigterm) {
  ReadyPipe ready;
  Outcome r = run(hotprobe_args(GetParam(), "wait", ready.write_end()), true, ready.write_end(),
                  [&](pid_t hp) {
                    ready.close_write_end();
                    ASSERT_GT(ready.wait_pid(), 0) << "the target never reported its calls done";
                    ::kill(hp, SIGTERM);
                  });
  EXPECT_EQ(r.code, 128 + SIGTERM) << r.err;
  expect_exact(r, GetParam());
}

// `timeout -s TERM 1 hotprobe run ...` itself. Whether the target made its calls within
// the second depends on the machine: the pipe tells, and only then are counts exact.
TEST_P(Results, TimeoutCommand) {
  ReadyPipe ready;
  std::vector<std::string> args{"timeout", "-s", "TERM", "1"};
  for (auto& a : hotprobe_args(GetParam(), "wait", ready.write_end()))
    args.push_back(a);
  Outcome r = run(args, true, ready.write_end(), [&](pid_t) { ready.close_write_end(); });
  EXPECT_EQ(r.code, 124) << r.err;  // timeout's status for "the command timed out"
  if (ready.wait_pid(0) == 0)
    GTEST_SKIP() << "the target did not finish its calls within timeout's second";
  expect_exact(r, GetParam());
}

// The reporting path and the shared memory never both print: exit() in a probe makes the
// agent's final report (END there), the program then runs on untraced and ends normally.
TEST_P(Results, ExitInAProbePrintsOnce) {
  std::vector<std::string> a{HP_HOTPROBE,
                             "run",
                             "-o",
                             GetParam(),
                             "-e",
                             std::string("uprobe:") + HP_TARGET +
                                 ":work /arg0 < 10/ { @c = count(); } uprobe:" + HP_TARGET +
                                 ":work /arg0 == 500/ { exit(); } END { printf(\"end\\n\"); }",
                             "--",
                             HP_TARGET,
                             std::to_string(kCalls),
                             "abort"};
  Outcome r = run(a);
  EXPECT_EQ(r.code, 128 + SIGABRT) << r.err;
  if (GetParam() == "json") {
    EXPECT_EQ(count_of(r.out, "{\"type\": \"map\", \"data\": {\"@c\": 10}}\n"), 1) << r.out;
    EXPECT_EQ(count_of(r.out, "\"data\": \"end\\n\"}"), 1) << r.out;
  } else {
    EXPECT_EQ(count_of(r.out, "\n@c: 10\n"), 1) << r.out;
    EXPECT_EQ(count_of(r.out, "end\n"), 1) << r.out;
  }
}

// A followed fork child counts from zero in maps of its own and sends them as data at its
// end; hotprobe merges them into the program's one print (the parent's maps, in the shared
// memory, print after the abort). END runs over the program's maps only.
TEST_P(Results, FollowedForkChildMergesIntoTheProgramsMaps) {
#if defined(HOTPROBE_TSAN)
  GTEST_SKIP() << "TSan ends a fork child of a threaded process that starts a thread (the "
                  "followed child's reporter)";
#endif
  Outcome r = run(hotprobe_args(GetParam(), "fork", -1, {}, /*follow_forks=*/true));
  EXPECT_EQ(r.code, 128 + SIGABRT) << r.err;
  if (GetParam() == "json") {
    EXPECT_EQ(count_of(r.out, "{\"type\": \"map\", \"data\": {\"@c\": 1500}}\n"), 1) << r.out;
    EXPECT_EQ(count_of(r.out, "\"@c\": 500"), 0) << r.out;
  } else {
    EXPECT_EQ(count_of(r.out, "\n@c: 1500\n"), 1) << r.out;
    EXPECT_EQ(count_of(r.out, "@c: 500\n"), 0) << r.out;
    EXPECT_EQ(count_of(r.out, "end n=1000\n"), 1) << r.out;  // END: the program's maps only
  }
}

// END that prints, clears, zeroes and deletes: run by hotprobe over the maps the program
// left, it prints what the agent's END prints at a normal end.
TEST_P(Results, EndChangingMapsRunsInHotprobeAsInTheProgram) {
  auto args = [&](const char* way, bool shared) {
    std::vector<std::string> a{
        HP_HOTPROBE,
        "run",
        "-o",
        GetParam(),
        "-e",
        std::string("uprobe:") + HP_TARGET +
            ":work { @c = count(); @k[arg0 % 3] = count(); @z = sum(arg0); @m[arg0 % 2] = arg0; }"
            " END { print(@k); clear(@k); zero(@z); delete(@m[1]); @e = count();"
            " printf(\"m0=%d\\n\", @m[0]); }",
        "--",
        HP_TARGET,
        std::to_string(kCalls),
        way};
    return run(a, shared);
  };
  Outcome ref = args("exit", /*shared=*/false);
  ASSERT_EQ(ref.code, 0) << ref.err;
  for (const char* way : {"abort", "exit_group"}) {
    Outcome r = args(way, true);
    EXPECT_EQ(r.out, ref.out) << way << "\n" << r.err;
  }
  if (GetParam() == "text") {
    EXPECT_EQ(count_of(ref.out, "m0=998\n"), 1) << ref.out;
    EXPECT_EQ(count_of(ref.out, "\n@e: 1\n"), 1) << ref.out;
    EXPECT_EQ(count_of(ref.out, "\n@z: 0\n"), 1) << ref.out;
  }
}

INSTANTIATE_TEST_SUITE_P(Formats, Results, ::testing::Values("text", "json"));

// A region too small for the maps: a normal end is still exact (the agent prints them over
// the channel), an abnormal end prints what the region holds and says it ran out.
TEST(ResultsSmallRegion, ExactAtANormalEndAndReportedAfterAnAbort) {
  auto args = [](const char* way) {
    return std::vector<std::string>{
        "env",
        "HOTPROBE_MAP_MEMORY=1",
        HP_HOTPROBE,
        "run",
        "-e",
        std::string("uprobe:") + HP_TARGET + ":work { @k[arg0] = count(); @c = count(); }",
        "--",
        HP_TARGET,
        "100000",
        way};
  };
  Outcome ok = run(args("exit"));
  EXPECT_EQ(ok.code, 0) << ok.err;
  EXPECT_EQ(count_of(ok.out, "]: 1\n"), 100000) << ok.err;
  EXPECT_EQ(count_of(ok.out, "\n@c: 100000\n"), 1) << ok.err;
  EXPECT_EQ(ok.err.find("ran out"), std::string::npos) << ok.err;
  Outcome ab = run(args("abort"));
  EXPECT_EQ(ab.code, 128 + SIGABRT) << ab.err;
  EXPECT_NE(ab.err.find("(1 MiB) ran out"), std::string::npos) << ab.err;
  EXPECT_NE(ab.err.find("HOTPROBE_MAP_MEMORY"), std::string::npos) << ab.err;
  EXPECT_LT(count_of(ab.out, "]: 1\n"), 100000);  // what the region held, no more
}

TEST(ResultsSmallRegion, AMalformedSizeIsRefusedBeforeTheProgramRuns) {
  Outcome r = run({"env", "HOTPROBE_MAP_MEMORY=lots", HP_HOTPROBE, "run", "-e",
                   std::string("uprobe:") + HP_TARGET + ":work { @c = count(); }", "--", HP_TARGET,
                   "1", "exit"});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("HOTPROBE_MAP_MEMORY='lots' is not a size in MiB"), std::string::npos)
      << r.err;
  EXPECT_EQ(r.out, "");
}

// The switch the tests compare with: the maps over the channel alone are lost when the
// program dies (this is what the shared memory changes).
TEST(ResultsWithoutSharedMaps, AnAbortLosesTheMaps) {
  Outcome r = run(hotprobe_args("text", "abort"), /*shared_maps=*/false);
  EXPECT_EQ(r.code, 128 + SIGABRT) << r.err;
  EXPECT_EQ(count_of(r.out, "@c: "), 0) << r.out;
}

// A count() map without keys that was never hit prints as 0, as bpftrace 0.17 prints it;
// other maps never written are a blank line (text) or nothing (json).
TEST(ResultsNeverHit, KeylessCountPrintsZero) {
  for (std::string format : {"text", "json"}) {
    std::vector<std::string> a{
        HP_HOTPROBE,
        "run",
        "-o",
        format,
        "-e",
        std::string("uprobe:") + HP_TARGET +
            ":work /arg0 > 100000/ { @never = count(); @k[arg0] = count(); @s = sum(arg0); } " +
            "uprobe:" + HP_TARGET + ":work { @c = count(); }",
        "--",
        HP_TARGET,
        "3",
        "abort"};
    Outcome r = run(a);
    EXPECT_EQ(r.code, 128 + SIGABRT) << r.err;
    if (format == "json") {
      EXPECT_EQ(count_of(r.out, "{\"type\": \"map\", \"data\": {\"@never\": 0}}\n"), 1) << r.out;
      EXPECT_EQ(count_of(r.out, "\"@k\""), 0) << r.out;
      EXPECT_EQ(count_of(r.out, "\"@s\""), 0) << r.out;
    } else {
      // bpftrace 0.17: "\n\n", then in name order @c, @k (blank), @never, @s (blank).
      EXPECT_NE(r.out.find("\n\n@c: 3\n\n@never: 0\n\n"), std::string::npos) << r.out;
    }
  }
}

}  // namespace
