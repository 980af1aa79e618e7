// `hotprobe list` with bpftrace -l patterns: usdt:PATH:..., uprobe:PATH:..., wildcards in
// every field, refusals. The built hotprobe is run for what its command line takes; -v
// and -p (list_probes' verbose and pid) are called in-process, list.cc being compiled
// into this test. Expected lines are bpftrace 0.17's output on the same fixtures.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

namespace hp::cli {
// list.cc's entry points for `hotprobe list [-v] [-p PID] MODULE_OR_PATTERN [GLOB]`.
int list_probes(const std::string& pattern, bool verbose, int pid);
int list(const std::string& module, const std::string& glob, bool verbose, int pid);
}  // namespace hp::cli

namespace {

struct Output {
  int status = -1;
  std::string out;
  std::string err;
};

// `hotprobe list ARGS`, or with `sub` another command line (bpftrace's `-l` forms).
Output run_hotprobe(const std::string& args, const char* sub = " list ") {
  const std::string err_file = ::testing::TempDir() + "hp_list_err_" + std::to_string(::getpid());
  Output o;
  FILE* f = ::popen((std::string(HP_HOTPROBE) + sub + args + " 2>" + err_file).c_str(), "r");
  if (!f) return o;
  char buf[4096];
  for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;)
    o.out.append(buf, n);
  const int st = ::pclose(f);
  o.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  std::ifstream in(err_file);
  o.err.assign(std::istreambuf_iterator<char>(in), {});
  ::unlink(err_file.c_str());
  return o;
}

std::string quote(const std::string& s) {
  return "'" + s + "'";
}

const std::string kProg = HP_USDT_PROG;
const std::string kLib = HP_USDT_LIB;
const std::string kDwarf = HP_DWARF_O2;

std::string usdt_lines(const std::string& path, std::initializer_list<const char*> names) {
  std::string out;
  for (const char* n : names)
    out += "usdt:" + path + ":" + n + "\n";
  return out;
}

TEST(ListUsdt, EveryProbeOfAFileOnceSorted) {
  auto o = run_hotprobe(quote("usdt:" + kProg + ":*"));
  EXPECT_EQ(o.status, 0) << o.err;
  // hptest:twice is at two sites and listed once, as bpftrace lists it.
  EXPECT_EQ(o.out,
            usdt_lines(kProg, {"hptest:constant", "hptest:forms", "hptest:guarded", "hptest:ints",
                               "hptest:none", "hptest:ptr", "hptest:small", "hptest:twice"}));
  o = run_hotprobe(quote("usdt:" + kLib + ":*"));
  EXPECT_EQ(o.status, 0) << o.err;
  EXPECT_EQ(o.out, usdt_lines(kLib, {"hplib:empty", "hplib:fire"}));
}

TEST(ListUsdt, WildcardsInEveryField) {
  // usdt:PATH:NAME matches the name under any provider.
  auto o = run_hotprobe(quote("usdt:" + kProg + ":tw*"));
  EXPECT_EQ(o.out, usdt_lines(kProg, {"hptest:twice"})) << o.err;
  o = run_hotprobe(quote("usdt:" + kProg + ":hp*:[gi]*"));
  EXPECT_EQ(o.out, usdt_lines(kProg, {"hptest:guarded", "hptest:ints"})) << o.err;
  o = run_hotprobe(quote("U:" + kProg + ":*:none"));
  EXPECT_EQ(o.out, usdt_lines(kProg, {"hptest:none"})) << o.err;
  // A path glob: each matching file.
  const std::string dir = kProg.substr(0, kProg.rfind('/'));
  o = run_hotprobe(quote("usdt:" + dir + "/*usdt*:*:fire"));
  EXPECT_EQ(o.status, 0) << o.err;
  EXPECT_EQ(o.out, usdt_lines(kLib, {"hplib:fire"}));
}

TEST(ListUsdt, NoMatchAndOtherTypesAreErrorsThatSayWhatWorks) {
  auto o = run_hotprobe(quote("usdt:" + kProg + ":nope"));
  EXPECT_EQ(o.status, 1);
  EXPECT_TRUE(o.out.empty());
  EXPECT_NE(o.err.find("no USDT probe matches '*:nope' in " + kProg), std::string::npos) << o.err;
  o = run_hotprobe(quote("usdt:" + kDwarf + ":*"));  // a file without notes
  EXPECT_EQ(o.status, 1);
  EXPECT_NE(o.err.find("readelf -n"), std::string::npos) << o.err;
  o = run_hotprobe("kprobe:do_sys_open");
  EXPECT_EQ(o.status, 1);
  EXPECT_NE(o.err.find("'kprobe:' probes are not listed here"), std::string::npos) << o.err;
  EXPECT_NE(o.err.find("usdt:"), std::string::npos) << o.err;
  o = run_hotprobe(quote("usdt:*:*"));
  EXPECT_EQ(o.status, 1);
  EXPECT_NE(o.err.find("names no file"), std::string::npos) << o.err;
  o = run_hotprobe(quote("usdt:" + kProg + ":a:b:c"));
  EXPECT_EQ(o.status, 1);
  EXPECT_NE(o.err.find("too many fields"), std::string::npos) << o.err;
  o = run_hotprobe(quote("usdt:" + kProg + ":*") + " extra");
  EXPECT_EQ(o.status, 1);
  EXPECT_NE(o.err.find("a GLOB after it has no place"), std::string::npos) << o.err;
}

TEST(ListUprobe, PatternFormAndModuleFormAgree) {
  auto pattern = run_hotprobe(quote("uprobe:" + kDwarf + ":hp_dw_s*"));
  EXPECT_EQ(pattern.status, 0) << pattern.err;
  EXPECT_EQ(pattern.out,
            "uprobe:" + kDwarf + ":hp_dw_simple\nuprobe:" + kDwarf + ":hp_dw_structs\n");
  auto module = run_hotprobe(kDwarf + " 'hp_dw_s*'");
  EXPECT_EQ(module.out, pattern.out) << module.err;
  auto ret = run_hotprobe(quote("uretprobe:" + kDwarf + ":hp_dw_void"));
  EXPECT_EQ(ret.out, "uretprobe:" + kDwarf + ":hp_dw_void\n") << ret.err;
}

TEST(ListUprobe, NoMatchSaysWhereAndColonsBelongToTheName) {
  // Everything after PATH is the function pattern, C++'s ns::f included.
  auto o = run_hotprobe(quote("uprobe:" + kDwarf + ":ns::hp_dw*"));
  EXPECT_EQ(o.status, 1);
  EXPECT_TRUE(o.out.empty());
  EXPECT_NE(o.err.find("no function matches 'ns::hp_dw*' in " + kDwarf), std::string::npos)
      << o.err;
  o = run_hotprobe(kDwarf + " 'zz*'");
  EXPECT_EQ(o.status, 1);
  EXPECT_NE(o.err.find("`hotprobe list " + kDwarf + "` lists them all"), std::string::npos)
      << o.err;
}

std::string capture(const std::string& pattern, bool verbose, int pid, int& status) {
  ::testing::internal::CaptureStdout();
  status = hp::cli::list_probes(pattern, verbose, pid);
  return ::testing::internal::GetCapturedStdout();
}

TEST(ListVerbose, ParametersAsBpftraceLvPrintsThem) {
  int status = -1;
  std::string out = capture("uprobe:" + kDwarf + ":hp_dw_s*", true, 0, status);
  EXPECT_EQ(status, 0);
  EXPECT_EQ(out, "uprobe:" + kDwarf +
                     ":hp_dw_simple\n"
                     "    int a\n    const char* s\n    long unsigned int n\n"
                     "uprobe:" +
                     kDwarf +
                     ":hp_dw_structs\n"
                     "    struct hp_point* p\n    struct hp_point v\n    struct hp_big big\n"
                     "    hp_size_t len\n");
  // The module form takes -v too.
  out.clear();
  ::testing::internal::CaptureStdout();
  status = hp::cli::list(kDwarf, "hp_dw_mixed", true, 0);
  out = ::testing::internal::GetCapturedStdout();
  EXPECT_EQ(status, 0);
  EXPECT_EQ(out, "uprobe:" + kDwarf +
                     ":hp_dw_mixed\n    double d\n    int i\n    void* p\n    char** argv\n");
  // No DWARF: the names, and a warning on stderr (as bpftrace warns).
  ::testing::internal::CaptureStderr();
  out = capture("uprobe:" + std::string(HP_DWARF_NODEBUG) + ":hp_dw_void", true, 0, status);
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(status, 0);
  EXPECT_EQ(out, "uprobe:" + std::string(HP_DWARF_NODEBUG) + ":hp_dw_void\n");
  EXPECT_NE(err.find("has no DWARF debug info (install its -dbgsym package or build with -g)"),
            std::string::npos)
      << err;
}

// -p PID: what a running process maps. `sleep` with the USDT library preloaded.
TEST(ListPid, UsdtProbesOfTheModulesAProcessMaps) {
#if defined(HOTPROBE_ASAN) || defined(HOTPROBE_TSAN)
  // The fixture library is built with the sanitizer, whose runtime refuses to be preloaded
  // into an unsanitized `sleep`: the child dies, sometimes after the loader mapped it.
  GTEST_SKIP() << "a sanitized fixture library cannot be preloaded into sleep(1)";
#endif
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::setenv("LD_PRELOAD", kLib.c_str(), 1);
    ::execlp("sleep", "sleep", "30", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  // Wait until the loader has mapped the library (or the child is gone).
  bool mapped = false;
  for (int i = 0; i < 5000 && !mapped; ++i) {
    std::ifstream maps("/proc/" + std::to_string(child) + "/maps");
    std::string text((std::istreambuf_iterator<char>(maps)), {});
    mapped = text.find(kLib) != std::string::npos;
    int st = 0;
    if (!mapped && ::waitpid(child, &st, WNOHANG) == child) break;
    if (!mapped) ::usleep(1000);
  }
  if (!mapped) {
    ::kill(child, SIGKILL);
    ::waitpid(child, nullptr, 0);
    GTEST_SKIP() << "the library could not be preloaded into sleep (a sanitizer build?)";
  }
  int status = -1;
  std::string all = capture("usdt:*", false, child, status);
  EXPECT_EQ(status, 0);
  EXPECT_NE(all.find(usdt_lines(kLib, {"hplib:empty", "hplib:fire"})), std::string::npos) << all;
  // A library's short name, as in probes (uprobe:libc:...).
  std::string short_name = capture("usdt:hp_usdt_lib:*:fire", false, child, status);
  EXPECT_EQ(status, 0);
  EXPECT_EQ(short_name, usdt_lines(kLib, {"hplib:fire"}));
  std::string funcs = capture("uprobe:" + kLib + ":hp_usdt_*", false, child, status);
  EXPECT_EQ(status, 0);
  EXPECT_EQ(funcs, "uprobe:" + kLib + ":hp_usdt_lib_fire\n");
  // The module form with no module: every module the process maps.
  ::testing::internal::CaptureStdout();
  status = hp::cli::list("", "hp_usdt_*", false, child);
  funcs = ::testing::internal::GetCapturedStdout();
  EXPECT_EQ(status, 0);
  EXPECT_EQ(funcs, "uprobe:" + kLib + ":hp_usdt_lib_fire\n");
  ::kill(child, SIGKILL);
  ::waitpid(child, nullptr, 0);
}

}  // namespace

TEST(ListCommandLine, VerboseAndBpftraceFormsReachTheListing) {
  const std::string simple = "uprobe:" + kDwarf +
                             ":hp_dw_simple\n"
                             "    int a\n    const char* s\n    long unsigned int n\n";
  auto o = run_hotprobe(quote("uprobe:" + kDwarf + ":hp_dw_simple"), " list -v ");
  EXPECT_EQ(o.status, 0) << o.err;
  EXPECT_EQ(o.out, simple);
  o = run_hotprobe(quote("uprobe:" + kDwarf + ":hp_dw_simple"), " -lv ");
  EXPECT_EQ(o.status, 0) << o.err;
  EXPECT_EQ(o.out, simple);
  o = run_hotprobe(kDwarf + " hp_dw_simple", " list --verbose ");
  EXPECT_EQ(o.out, simple);
  o = run_hotprobe(quote("uprobe:" + kDwarf + ":hp_dw_simple"), " -l ");
  EXPECT_EQ(o.status, 0) << o.err;
  EXPECT_EQ(o.out, "uprobe:" + kDwarf + ":hp_dw_simple\n");
  // -p takes a process id, and refuses anything else before listing.
  o = run_hotprobe(quote("uprobe:*:hp_dw_simple"), " list -p abc ");
  EXPECT_NE(o.status, 0);
  EXPECT_NE(o.err.find("-p"), std::string::npos) << o.err;
}
