// dlopen under `hotprobe run`: the module watcher places the probes of a library inside
// dlopen (docs/design/agent.md, "Libraries loaded later"), and the library's constructor
// runs right after, on the same thread. Every malloc the constructor makes is the
// program's and counts, exactly; so do those of another thread that runs meanwhile, and
// the probe on the loaded library fires on every load (fixture/dlopen_ctor.c).
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "agent_e2e_util.h"

namespace {

using hp::agent_test::bpftrace_usable;
using hp::agent_test::map_value;
using hp::agent_test::run_command;
using hp::agent_test::RunResult;

constexpr long kCtorCalls = 7;  // fixture/dl_ctor_lib.c

bool sanitized() {
  return std::strlen(HP_SANITIZE) != 0;
}

RunResult hotprobe_run(const std::string& script, const std::vector<std::string>& command) {
  std::vector<std::string> args{HP_HOTPROBE, "run", "-e", script, "--"};
  args.insert(args.end(), command.begin(), command.end());
  return run_command(args, {}, std::chrono::seconds(60));
}

// Sizes nobody else asks for tell the fixture's calls apart from the loader's and libc's.
std::string sized_script() {
  return std::string("uprobe:libc:malloc /arg0 == 12345/ { @ctor = count(); } ") +
         "uprobe:libc:malloc /arg0 == 12346/ { @thread = count(); } " +
         "uprobe:libc:malloc /arg0 == 12347/ { @dtor = count(); } " + "uprobe:" HP_DL_CTOR_LIB +
         ":dl_ctor_fn { @fn = count(); }";
}

TEST(Dlopen, ConstructorMallocsCountExactly) {
  if (sanitized()) GTEST_SKIP() << "the sanitizer runtime replaces malloc in the program";
  constexpr long kLoads = 1;
  auto r = hotprobe_run(sized_script(), {HP_DLOPEN_CTOR, HP_DL_CTOR_LIB, "1", "0"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(map_value(r.out, "ctor"), kCtorCalls * kLoads) << r.out;
  EXPECT_EQ(map_value(r.out, "dtor"), kLoads) << r.out;
  EXPECT_EQ(map_value(r.out, "fn"), kLoads) << r.out;
}

// Each load maps the library again: its probe goes from pending to placed and back, a
// batch each time, while the other thread mallocs on.
TEST(Dlopen, RepeatedLoadsWithAThreadMallocingMeanwhileCountExactly) {
  if (sanitized()) GTEST_SKIP() << "the sanitizer runtime replaces malloc in the program";
  constexpr long kLoads = 20, kThreadCalls = 5000;
  auto r = hotprobe_run(sized_script(), {HP_DLOPEN_CTOR, HP_DL_CTOR_LIB, std::to_string(kLoads),
                                         std::to_string(kThreadCalls)});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(map_value(r.out, "ctor"), kCtorCalls * kLoads) << r.out;
  EXPECT_EQ(map_value(r.out, "dtor"), kLoads) << r.out;
  EXPECT_EQ(map_value(r.out, "fn"), kLoads) << r.out;
  EXPECT_EQ(map_value(r.out, "thread"), kThreadCalls) << r.out;
}

// Every malloc and free of the process, the loader's included, against bpftrace's.
TEST(Dlopen, AllMallocsAndFreesEqualBpftrace) {
  if (sanitized()) GTEST_SKIP() << "a sanitizer runtime in the program makes calls of its own";
  if (std::string why = bpftrace_usable(); !why.empty()) GTEST_SKIP() << why;
  hp::agent_test::expect_counts_equal_bpftrace(HP_HOTPROBE, {"malloc", "free"},
                                               {HP_DLOPEN_CTOR, HP_DL_CTOR_LIB, "3", "0"});
}

}  // namespace
