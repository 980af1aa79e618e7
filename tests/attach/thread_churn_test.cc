// attach -p with a probe on free() into a program that starts and joins threads without
// pause: threads whose first hit comes in glibc's last steps of thread exit (after every
// key destructor) must neither leave a record behind for the grace-period writer to trip
// on (the target died of SIGSEGV after the session) nor hold a grace period forever (the
// session never ended). Twelve sessions; the target answers after each.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <dirent.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "reachable_copies.h"

namespace {

// How to run hotprobe: from the build tree, or (root refuses to load the agent from below
// a directory others may write: a clone in a `mktemp -d` directory) from copies of it, its
// agent and libhotprobe.so (tests/attach/reachable_copies.h), made once per run; the
// target then finds the copy of libhotprobe.so too (LD_LIBRARY_PATH), as hotprobe does.
struct Tools {
  std::string hotprobe = HP_HOTPROBE;  // the command, with its environment
  std::string library_path;            // "" for the build tree
};
const Tools& tools() {
  static const Tools t = [] {
    using namespace hp_test;
    Tools t;
    if (::getuid() != 0 || root_only_and_reachable(dir_of(HP_AGENT))) return t;
    static ReachableCopies copies({{HP_HOTPROBE, base_name(HP_HOTPROBE)},
                                   {HP_AGENT, base_name(HP_AGENT)},
                                   {HP_CORE_LIB, HP_CORE_LIB_SONAME}});
    if (!copies.error().empty()) return t;
    t.library_path = copies.dir();
    t.hotprobe = "HOTPROBE_AGENT=" + copies.path(base_name(HP_AGENT)) +
                 " LD_LIBRARY_PATH=" + copies.dir() + " " + copies.path(base_name(HP_HOTPROBE));
    return t;
  }();
  return t;
}

struct Child {
  pid_t pid = -1;
  FILE* to = nullptr;
  FILE* from = nullptr;
};

Child start_target(const char* mode = nullptr) {
  ::signal(SIGPIPE, SIG_IGN);  // a dead target fails answers(), not the test process
  (void)tools();               // the copies, if any, made before the fork
  int in[2], out[2];
  EXPECT_EQ(::pipe(in), 0);
  EXPECT_EQ(::pipe(out), 0);
  Child c;
  c.pid = ::fork();
  if (c.pid == 0) {
    ::dup2(in[0], 0);
    ::dup2(out[1], 1);
    ::close(in[1]);
    ::close(out[0]);
    if (!tools().library_path.empty()) ::setenv("LD_LIBRARY_PATH", tools().library_path.c_str(), 1);
    ::execl(HP_CHURN, HP_CHURN, mode, static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ::close(in[0]);
  ::close(out[1]);
  c.to = ::fdopen(in[1], "w");
  c.from = ::fdopen(out[0], "r");
  return c;
}

bool answers(Child& c) {
  if (std::fputs("?\n", c.to) < 0 || std::fflush(c.to) != 0) return false;
  char line[64];
  return std::fgets(line, sizeof line, c.from) && std::string(line) == "alive\n";
}

std::string run_attach(pid_t pid,
                       const std::string& script = "uprobe:libc:free { @f = count(); }") {
  std::string cmd = tools().hotprobe + " attach -p " + std::to_string(pid) + " -e '" + script +
                    "' --duration 0.3 2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  std::string out;
  char buf[512];
  while (p && std::fgets(buf, sizeof buf, p))
    out += buf;
  int st = p ? ::pclose(p) : -1;
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) out += "\n(exit status " + std::to_string(st) + ")";
  return out;
}

long value(const std::string& out, const std::string& map) {
  const auto at = out.find(map + ": ");
  return at == std::string::npos ? -1 : std::atol(out.c_str() + at + map.size() + 2);
}

// A session on the churning program (a thread the injector takes that ends on its own
// before it stops is replaced by another).
std::string run_session(pid_t pid) {
  return run_attach(pid);
}

long mappings(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/maps");
  long n = 0;
  for (std::string line; std::getline(in, line);)
    n++;
  return n;
}

long descriptors(pid_t pid) {
  DIR* d = ::opendir(("/proc/" + std::to_string(pid) + "/fd").c_str());
  if (!d) return -1;
  long n = 0;
  while (const dirent* e = ::readdir(d))
    n += e->d_name[0] != '.';
  ::closedir(d);
  return n;
}

TEST(ThreadChurn, AttachSessionsOnFreeLeaveTheTargetRunning) {
  if (std::string(HP_SANITIZE).size()) GTEST_SKIP() << "the agent is not built for sanitizers";
  Child c = start_target();
  char line[64];
  ASSERT_TRUE(std::fgets(line, sizeof line, c.from));
  for (int i = 0; i < 12; i++) {
    std::string out = run_session(c.pid);
    EXPECT_NE(out.find("@f: "), std::string::npos) << "session " << i << ": " << out;
    ASSERT_TRUE(answers(c)) << "the target died after session " << i << ": " << out;
  }
  ::kill(c.pid, SIGKILL);
  int st = 0;
  ::waitpid(c.pid, &st, 0);
  EXPECT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) << "status " << st;
}

long vm_data_kib(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("VmData:", 0) == 0) return std::atol(line.c_str() + 7);
  return -1;
}

// Many sessions on one process that creates and joins threads: what each session takes in
// the target (handler stacks and thread records of threads that exit, descriptors,
// hotprobe's threads) is given back, so the mapping and descriptor counts and the data
// size stay near where they were after the first sessions, and every session counts. A
// handler stack left per exiting thread hit after its exit hook adds hundreds of mappings
// a session (and ends, after a few dozen sessions, at vm.max_map_count); a thread record
// left per thread whose first hit comes after its key destructors ("late": its only free
// is glibc's in its last steps of exit) adds megabytes a session.
void many_sessions(const char* mode, int sessions) {
  constexpr int kWarmUp = 3;
  Child c = start_target(mode);
  char line[64];
  ASSERT_TRUE(std::fgets(line, sizeof line, c.from));
  long maps0 = 0, fds0 = 0, data0 = 0;
  for (int i = 0; i < sessions; i++) {
    std::string out = run_session(c.pid);
    ASSERT_TRUE(answers(c)) << "the target died after session " << i << ": " << out;
    EXPECT_GT(value(out, "@f"), 0) << "session " << i << ": " << out;
    if (i + 1 == kWarmUp) {  // the agent is loaded and its first allocations made
      maps0 = mappings(c.pid);
      fds0 = descriptors(c.pid);
      data0 = vm_data_kib(c.pid);
    } else if (i + 1 > kWarmUp) {
      // Threads that exist at the instant of the count (the fixture's, with a stack, a
      // guard page and a handler stack each) and malloc's arenas make the count vary by
      // about a hundred; the leaks these bounds catch add thousands of mappings, or
      // megabytes, a session.
      ASSERT_LE(mappings(c.pid), maps0 + 256) << "mappings grow: session " << i << ": " << out;
      ASSERT_LE(descriptors(c.pid), fds0 + 2) << "descriptors grow: session " << i;
      ASSERT_LE(vm_data_kib(c.pid), data0 + 16 * 1024) << "data grows: session " << i;
    }
  }
  ::kill(c.pid, SIGKILL);
  ::waitpid(c.pid, nullptr, 0);
}

TEST(ThreadChurn, ManySessionsOnOneProcessLeaveNothingBehind) {
  if (std::string(HP_SANITIZE).size()) GTEST_SKIP() << "the agent is not built for sanitizers";
  many_sessions(nullptr, 30);
}

TEST(ThreadChurn, ManySessionsWithHitsOnlyInThreadExitLeaveNothingBehind) {
  if (std::string(HP_SANITIZE).size()) GTEST_SKIP() << "the agent is not built for sanitizers";
  many_sessions("late", 30);
}

// libc's IFUNCs under attach -p: the target lives on, and the
// four functions, called once each per round and attached and detached in one batch,
// count every round of the program's (one apart at most: a round may straddle the
// window's edge).
TEST(AttachIfuncs, LibcIfuncsCountEachRound) {
  if (std::string(HP_SANITIZE).size()) GTEST_SKIP() << "the agent is not built for sanitizers";
  Child c = start_target("ifuncs");
  char line[64];
  ASSERT_TRUE(std::fgets(line, sizeof line, c.from));
  for (int i = 0; i < 4; i++) {
    std::string out = run_attach(c.pid,
                                 "uprobe:libc:strlen { @a = count(); } "
                                 "uprobe:libc:memcpy { @b = count(); } "
                                 "uprobe:libc:memset { @c = count(); } "
                                 "uprobe:libc:strchr { @d = count(); }");
    ASSERT_TRUE(answers(c)) << "the target died after session " << i << ": " << out;
    const long a = value(out, "@a"), b = value(out, "@b"), m = value(out, "@c"),
               d = value(out, "@d");
    // strchr is the program's alone (d rounds); libc calls strlen, memcpy and memset
    // itself too (stdio), so they count at least the program's calls.
    EXPECT_GT(d, 0) << out;
    EXPECT_GE(a, d - 1) << out;
    EXPECT_GE(b, d - 1) << out;
    EXPECT_GE(m, d - 1) << out;
  }
  ::kill(c.pid, SIGKILL);
  ::waitpid(c.pid, nullptr, 0);
}

}  // namespace
