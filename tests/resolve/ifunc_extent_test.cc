// strlen's implementation in a stripped libc (__strlen_evex, __strlen_avx2, ...) has no
// sized symbol: its extent comes from its FDE (elf::ElfFile::cfi_extent), so the probe is
// a jump, not an int3. Threads that block every signal, which a SIGTRAP kills, then call
// it safely, and every call counts.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "support/run_command.h"

namespace {

using namespace std::chrono_literals;

using Run = hp::test::CommandResult;
using hp::test::contains;

// $HP_RESOLVE_HOTPROBE and $HP_RESOLVE_AGENT name another build (an older one, to show
// that these tests fail on it).
const char* env_or(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v && *v ? v : fallback;
}
const char* const kHotprobe = env_or("HP_RESOLVE_HOTPROBE", HP_HOTPROBE);
const char* const kAgent = env_or("HP_RESOLVE_AGENT", HP_AGENT);

// Runs hotprobe with `args` and HOTPROBE_DEBUG set (each site says its mode).
Run hotprobe(const std::vector<std::string>& args, std::chrono::seconds timeout = 60s) {
  hp::test::Command c{{kHotprobe}};
  c.argv.insert(c.argv.end(), args.begin(), args.end());
  c.env = {{"HOTPROBE_AGENT", kAgent}, {"HOTPROBE_DEBUG", "1"}};
  c.timeout = timeout;
  return hp::test::run_command(c);
}

// The count the script printed ("@: N"), or -1.
long count_of(const Run& r) {
  const auto at = r.out.find("@: ");
  return at == std::string::npos ? -1 : std::atol(r.out.c_str() + at + 3);
}

constexpr int kPerThread = 2000;

Run run_fixture(bool block) {
  std::vector<std::string> args{"run",
                                "-e",
                                "uprobe:libc:strlen { @ = count(); }",
                                "--",
                                HP_STRLEN_BLOCKED,
                                std::to_string(kPerThread)};
  if (block) args.push_back("block");
  return hotprobe(args);
}

TEST(IfuncExtent, StrlenIsAJumpSite) {
  auto r = hotprobe({"run", "-e", "uprobe:libc:strlen { @ = count(); }", "--", "/bin/true"});
  EXPECT_EQ(r.code, 0) << r.err;
  // "libc.so.6:strlen (its implementation at libc.so.6:fileoff:0x...): jmp site"; the
  // loader's _dl_debug_state (a lone ret, hotprobe's module watcher) is an int3 site.
  const auto at = r.err.find("libc.so.6:strlen (its implementation at ");
  ASSERT_NE(at, std::string::npos) << r.err;
  const std::string line = r.err.substr(at, r.err.find('\n', at) - at);
  EXPECT_TRUE(contains(line, "): jmp site")) << line;
}

// The workers block every signal: with an int3 site the first hit kills the program
// (SIGTRAP); with the jump every call counts, as many as when they block nothing.
TEST(IfuncExtent, ThreadsThatBlockEverySignalSurviveAndCountExactly) {
#if defined(HOTPROBE_ASAN) || defined(HOTPROBE_TSAN)
  GTEST_SKIP() << "the agent's sanitizer runtime intercepts the string functions";
#endif
  auto open = run_fixture(false);
  ASSERT_EQ(open.code, 0) << open.err;
  auto blocked = run_fixture(true);
  ASSERT_EQ(blocked.code, 0) << "the program died (" << blocked.code << "): " << blocked.err;
  EXPECT_TRUE(contains(blocked.out, std::to_string(3 * kPerThread))) << blocked.out;
  const long n_open = count_of(open), n_blocked = count_of(blocked);
  // The workers' calls, and a few of libc's and the agent's own (the same in both runs).
  EXPECT_GE(n_blocked, 3 * kPerThread) << blocked.out;
  EXPECT_LE(n_blocked, 3 * kPerThread + 16) << blocked.out;
  EXPECT_EQ(n_blocked, n_open) << "blocked:\n" << blocked.out << "open:\n" << open.out;
}

// The implementation the loader picked is a function's entry, so it takes a return probe
// (a hijacked return: the entry is a jump site), which sees strlen's result.
TEST(IfuncExtent, ReturnProbeOnTheImplementation) {
#if defined(HOTPROBE_ASAN) || defined(HOTPROBE_TSAN)
  GTEST_SKIP() << "the agent's sanitizer runtime intercepts the string functions";
#endif
  auto r = hotprobe({"run", "-e", "uretprobe:libc:strlen { @[retval] = count(); }", "--",
                     HP_STRLEN_BLOCKED, std::to_string(kPerThread), "block"});
  ASSERT_EQ(r.code, 0) << r.err;
  // The workers' strlen("hotprobe") calls, all returning 8.
  const auto at = r.out.find("@[8]: ");
  ASSERT_NE(at, std::string::npos) << r.out;
  const long n = std::atol(r.out.c_str() + at + 6);
  EXPECT_GE(n, 3 * kPerThread) << r.out;
  EXPECT_LE(n, 3 * kPerThread + 16) << r.out;
}

}  // namespace
