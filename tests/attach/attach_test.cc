// End-to-end tests of `hotprobe attach -p PID`: the built hotprobe and agent on a
// running fixture program (fixture/attach_target.c) that counts its own calls of the
// probed functions, so what hotprobe counted can be compared with what happened.
// docs/design/attach.md has what each test proves and the window-boundary argument.
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "elf/modules.h"
#include "inject/inject.h"
#include "reachable_copies.h"

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

bool sanitized() {
  return std::strlen(HP_SANITIZE) != 0;
}
#define HP_SKIP_IF_SANITIZED()                                                                \
  if (sanitized())                                                                            \
  GTEST_SKIP() << "built with -fsanitize=" HP_SANITIZE                                        \
                  ": the sanitized agent would be injected into a target whose sanitizer "    \
                  "runtime did not start first (and whose allocator it cannot replace); the " \
                  "release build runs these tests"

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string temp_path(const std::string& what) {
  static int serial = 0;
  return ::testing::TempDir() + "hp_attach_" + std::to_string(::getpid()) + "_" + what + "_" +
         std::to_string(++serial);
}

std::vector<long> numbers_after(const std::string& line, const std::string& word) {
  std::vector<long> v;
  if (line.rfind(word, 0) != 0) return v;
  std::istringstream in(line.substr(word.size()));
  long x;
  while (in >> x)
    v.push_back(x);
  return v;
}

// The programs a test runs. The tests that run a process as another user (nobody) use
// copies in a directory that user can reach (ReachableCopies below): a checkout in a
// `mktemp -d` directory (mode 0700) keeps nobody from executing the fixture, hotprobe or
// the agent there, or loading libhotprobe.so beside them.
struct Programs {
  std::string target = HP_TARGET;
  std::string hotprobe = HP_HOTPROBE;
  std::string agent = HP_AGENT;
  std::string exit_lib = HP_EXIT_LIB;  // an "agent" that ends the process in its constructor
  std::string library_path;            // LD_LIBRARY_PATH for the copies ("" for the build tree's)
};
Programs& programs() {
  static Programs p;
  return p;
}
void set_library_path() {
  if (!programs().library_path.empty())
    ::setenv("LD_LIBRARY_PATH", programs().library_path.c_str(), 1);
}

using hp_test::base_name;
using hp_test::dir_of;
using hp_test::root_only_and_reachable;

// Copies of the fixture, hotprobe, the agents and libhotprobe.so (the two programs find it
// through LD_LIBRARY_PATH: their RUNPATH names the build tree), which programs() points at
// while the object lives (tests/attach/reachable_copies.h). Needs root.
class ReachableCopies {
 public:
  ReachableCopies() {
    if (!programs().library_path.empty()) return;  // copies already in use
    copies_.emplace(
        std::vector<std::pair<std::string, std::string>>{{HP_TARGET, base_name(HP_TARGET)},
                                                         {HP_HOTPROBE, base_name(HP_HOTPROBE)},
                                                         {HP_AGENT, base_name(HP_AGENT)},
                                                         {HP_EXIT_LIB, base_name(HP_EXIT_LIB)},
                                                         {HP_CORE_LIB, HP_CORE_LIB_SONAME}});
    if (!copies_->error().empty()) return;
    saved_ = programs();
    programs() = Programs{copies_->path(base_name(HP_TARGET)),
                          copies_->path(base_name(HP_HOTPROBE)), copies_->path(base_name(HP_AGENT)),
                          copies_->path(base_name(HP_EXIT_LIB)), copies_->dir()};
  }
  ~ReachableCopies() {
    if (copies_ && copies_->error().empty()) programs() = saved_;
  }
  ReachableCopies(const ReachableCopies&) = delete;
  ReachableCopies& operator=(const ReachableCopies&) = delete;
  // What went wrong ("" when the copies are in place).
  std::string error() const { return copies_ ? copies_->error() : std::string(); }

 private:
  std::optional<hp_test::ReachableCopies> copies_;
  Programs saved_;
};

// Root refuses to load the agent from below a directory that others may write (/tmp, for
// a clone in a `mktemp -d` directory): then every test of this file uses the copies.
class CopiesForTheWholeRun : public ::testing::Environment {
 public:
  void SetUp() override {
    if (::getuid() != 0 || sanitized()) return;
    if (root_only_and_reachable(dir_of(HP_AGENT)) && root_only_and_reachable(dir_of(HP_TARGET)))
      return;
    copies_ = std::make_unique<ReachableCopies>();
    if (!copies_->error().empty()) std::printf("[ copies   ] %s\n", copies_->error().c_str());
  }
  void TearDown() override { copies_.reset(); }

 private:
  std::unique_ptr<ReachableCopies> copies_;
};
[[maybe_unused]] ::testing::Environment* const g_copies_env =
    ::testing::AddGlobalTestEnvironment(new CopiesForTheWholeRun);

#define HP_USE_REACHABLE_COPIES(copies) \
  ReachableCopies copies;               \
  ASSERT_TRUE(copies.error().empty()) << copies.error()

// The fixture program, with its stdin and stdout on pipes: one command line in, one
// answer line out.
class Target {
 public:
  // `stack_limit`: the program's RLIMIT_STACK (soft and hard; 0: as inherited).
  explicit Target(const std::vector<std::string>& args, uid_t run_as = 0, rlim_t stack_limit = 0) {
    int in[2], out[2];
    if (::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0) return;
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(in[0], 0);
      ::dup2(out[1], 1);
      if (stack_limit != 0) {
        rlimit rl{stack_limit, stack_limit};
        if (::setrlimit(RLIMIT_STACK, &rl) != 0) ::_exit(97);
      }
      if (run_as != 0) {
        gid_t gid = run_as;
        if (::setgroups(1, &gid) != 0 || ::setresgid(gid, gid, gid) != 0 ||
            ::setresuid(run_as, run_as, run_as) != 0)
          ::_exit(98);
      }
      set_library_path();
      const char* exe = programs().target.c_str();
      std::vector<char*> argv{const_cast<char*>(exe)};
      for (const auto& a : args)
        argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      ::execv(exe, argv.data());
      ::_exit(99);
    }
    ::close(in[0]);
    ::close(out[1]);
    to_ = in[1];
    from_ = out[0];
    std::string ready = line();
    auto ids = numbers_after(ready, "ready");
    if (!ids.empty() && ids[0] == pid_) tids_.assign(ids.begin() + 1, ids.end());
    ready_ = !ids.empty() && ids[0] == pid_;
  }
  ~Target() {
    if (pid_ > 0 && !reaped_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    if (to_ >= 0) ::close(to_);
    if (from_ >= 0) ::close(from_);
  }
  pid_t pid() const { return pid_; }
  bool ready() const { return ready_; }
  const std::vector<long>& tids() const { return tids_; }

  // The next line of its stdout ("" after `timeout` or at its end).
  std::string line(std::chrono::milliseconds timeout = 20s) {
    auto deadline = Clock::now() + timeout;
    for (;;) {
      if (auto nl = buf_.find('\n'); nl != std::string::npos) {
        std::string l = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        return l;
      }
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      if (left.count() <= 0) return {};
      pollfd p{from_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
      char chunk[4096];
      ssize_t n = ::read(from_, chunk, sizeof chunk);
      if (n <= 0) return {};
      buf_.append(chunk, static_cast<std::size_t>(n));
    }
  }
  void send(const std::string& text) {
    ssize_t n = ::write(to_, text.data(), text.size());
    (void)n;
  }
  std::string command(const std::string& text) {
    send(text + "\n");
    return line();
  }
  // The numbers of the answer to `what` (its first word repeated, then the numbers).
  std::vector<long> counts(const std::string& what) {
    return numbers_after(command(what), what.substr(0, what.find(' ')));
  }

  // Exit status (128+N for signal N), -1 if it has not ended within `timeout`.
  int wait_exit(std::chrono::milliseconds timeout = 20s) {
    auto deadline = Clock::now() + timeout;
    int status = 0;
    while (::waitpid(pid_, &status, WNOHANG) == 0) {
      if (Clock::now() > deadline) return -1;
      std::this_thread::sleep_for(2ms);
    }
    reaped_ = true;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

 private:
  pid_t pid_ = -1;
  int to_ = -1, from_ = -1;
  bool ready_ = false, reaped_ = false;
  std::vector<long> tids_;
  std::string buf_;
};

struct Outcome {
  int code = -1;  // exit status, 128+N for signal N, -1 on timeout
  std::string out, err;
  double seconds = 0;
};

// `hotprobe ARGS...` running in the background, its stdout and stderr in files.
class Hotprobe {
 public:
  // `agent`: null for programs().agent.
  explicit Hotprobe(const std::vector<std::string>& args, const char* agent = nullptr,
                    uid_t run_as = 0, bool ignore_sigint = false)
      : out_path_(temp_path("out")), err_path_(temp_path("err")), start_(Clock::now()) {
    pid_ = ::fork();
    if (pid_ == 0) {
      // As a shell starts `hotprobe attach ... &` in a script: SIGINT ignored.
      if (ignore_sigint) ::signal(SIGINT, SIG_IGN);
      int o = ::open(out_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      int e = ::open(err_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      ::dup2(o, 1);
      ::dup2(e, 2);
      int null = ::open("/dev/null", O_RDONLY);
      ::dup2(null, 0);
      ::setenv("HOTPROBE_AGENT", agent ? agent : programs().agent.c_str(), 1);
      if (run_as != 0) {
        gid_t gid = run_as;
        if (::setgroups(1, &gid) != 0 || ::setgid(gid) != 0 || ::setuid(run_as) != 0) ::_exit(98);
      }
      set_library_path();
      const char* exe = programs().hotprobe.c_str();
      std::vector<char*> argv{const_cast<char*>(exe)};
      for (const auto& a : args)
        argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      ::execv(exe, argv.data());
      ::_exit(99);
    }
  }
  ~Hotprobe() {
    if (pid_ > 0 && !reaped_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    ::unlink(out_path_.c_str());
    ::unlink(err_path_.c_str());
  }
  pid_t pid() const { return pid_; }
  std::string out() const { return read_file(out_path_); }

  bool wait_for_output(const std::string& text, std::chrono::milliseconds timeout = 20s) {
    auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {
      if (out().find(text) != std::string::npos) return true;
      int status;
      if (!reaped_ && ::waitpid(pid_, &status, WNOHANG) == pid_) {
        reaped_ = true;
        status_ = status;
      }
      if (reaped_) return out().find(text) != std::string::npos;
      std::this_thread::sleep_for(2ms);
    }
    return false;
  }
  void interrupt() { ::kill(pid_, SIGINT); }
  void kill(int sig) { ::kill(pid_, sig); }
  std::string err() const { return read_file(err_path_); }
  Outcome wait(std::chrono::milliseconds timeout = 20s) {
    Outcome r;
    auto deadline = Clock::now() + timeout;
    while (!reaped_) {
      int status;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        reaped_ = true;
        status_ = status;
        break;
      }
      if (Clock::now() > deadline) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, nullptr, 0);
        reaped_ = true;
        status_ = -1;
        ADD_FAILURE() << "hotprobe did not end within " << timeout.count() << " ms";
        break;
      }
      std::this_thread::sleep_for(2ms);
    }
    if (status_ != -1) r.code = WIFEXITED(status_) ? WEXITSTATUS(status_) : 128 + WTERMSIG(status_);
    r.out = out();
    r.err = read_file(err_path_);
    r.seconds = std::chrono::duration<double>(Clock::now() - start_).count();
    return r;
  }

 private:
  pid_t pid_ = -1;
  std::string out_path_, err_path_;
  Clock::time_point start_;
  bool reaped_ = false;
  int status_ = -1;
};

std::vector<std::string> attach_args(pid_t pid, const std::string& script) {
  return {"attach", "-p", std::to_string(pid), "-e", script};
}

std::string probe(const char* function, const std::string& body) {
  return "uprobe:" + programs().target + ":" + function + " { " + body + " }";
}

// "@name[KEY]: VALUE" lines of a printed map (text format), by key.
std::map<long, long> keyed_map(const std::string& out, const std::string& name) {
  std::map<long, long> m;
  std::istringstream in(out);
  std::string l, prefix = "@" + name + "[";
  while (std::getline(in, l)) {
    if (l.rfind(prefix, 0) != 0) continue;
    auto close = l.find("]: ");
    if (close == std::string::npos) continue;
    m[std::stol(l.substr(prefix.size(), close - prefix.size()))] = std::stol(l.substr(close + 3));
  }
  return m;
}

// The functions whose first bytes differ, in `pid`'s memory, from their file's bytes:
// "module:function" entries; "" when all match. Reads /proc/PID/mem.
std::string code_differs_from_file(pid_t pid, const std::vector<std::string>& specs) {
  auto modules = hp::elf::ModuleList::of_process(pid);
  if (!modules) return "cannot read the modules: " + modules.error().message();
  std::string differs;
  int mem = ::open(("/proc/" + std::to_string(pid) + "/mem").c_str(), O_RDONLY | O_CLOEXEC);
  if (mem < 0) return "cannot open /proc/PID/mem";
  for (const auto& spec : specs) {
    auto colon = spec.rfind(':');
    auto m = modules->resolve(spec.substr(0, colon));
    if (!m) {
      differs += spec + " (module not found) ";
      continue;
    }
    auto elf = modules->elf(**m);
    if (!elf) {
      differs += spec + " (no ELF) ";
      continue;
    }
    auto syms = (*elf)->find(spec.substr(colon + 1));
    if (syms.empty()) {
      differs += spec + " (no symbol) ";
      continue;
    }
    const auto* sym = syms.front();
    std::size_t len = std::min<std::uint64_t>(std::max<std::uint64_t>(sym->size, 16), 256);
    auto file = (*elf)->read_bytes(sym->file_offset, len);
    auto addr = (*m)->offset_to_address(sym->file_offset);
    if (!file || !addr) {
      differs += spec + " (cannot locate) ";
      continue;
    }
    std::vector<std::uint8_t> memory(len);
    if (::pread(mem, memory.data(), len, static_cast<off_t>(*addr)) != static_cast<ssize_t>(len) ||
        memory != *file)
      differs += spec + " ";
  }
  ::close(mem);
  return differs;
}

// The functions the tests' scripts probe.
std::vector<std::string> script_functions() {
  return {programs().target + ":hp_work", programs().target + ":hp_window"};
}
// The agent's own hooks on the process's end (src/agent/session.cc, Session::attach).
// The agent's exit/exec hooks, and the engine's internal module watcher (the last
// engine of the process takes it off).
std::vector<std::string> agent_hook_functions() {
  return {"libc:exit", "libc:_exit", "libc:execve", "libc:execveat",
          "ld-linux-x86-64.so.2:_dl_debug_state"};
}

// Waits (bounded) until the agent's per-session threads ("hotprobe-agent", the reporter)
// have ended: they detach the probes after hotprobe has printed the final report.
void wait_agent_threads_gone(pid_t pid) {
  auto deadline = Clock::now() + 5s;
  for (;;) {
    bool any = false;
    std::string task = "/proc/" + std::to_string(pid) + "/task/";
    if (DIR* d = ::opendir(task.c_str())) {
      while (const dirent* e = ::readdir(d))
        if (e->d_name[0] != '.' && read_file(task + e->d_name + "/comm") == "hotprobe-agent\n")
          any = true;
      ::closedir(d);
    }
    if (!any || Clock::now() > deadline) return;
    std::this_thread::sleep_for(2ms);
  }
}

// Attach to three threads calling hp_work in a loop: hotprobe's per-thread counts of a
// gated window are exact, those of the free-running function lie within the program's
// own counts around the attached time; detach restores every probed byte and the program
// runs on and exits normally.
TEST(HotprobeAttach, CountsMatchTheProgramsOwnAndDetachRestoresTheCode) {
  HP_SKIP_IF_SANITIZED();
  Target t({"work", "3"});
  ASSERT_TRUE(t.ready());
  ASSERT_EQ(t.tids().size(), 3u);
  auto s0 = t.counts("snap");
  Hotprobe hp(attach_args(t.pid(), probe("hp_work", "@c[tid] = count();") + " " +
                                       probe("hp_window", "@w[tid] = count();")));
  ASSERT_TRUE(hp.wait_for_output("Attaching 2 probes...\n")) << hp.wait().err;
  auto s1 = t.counts("snap");
  auto w1 = t.counts("window 1000");
  std::this_thread::sleep_for(100ms);
  auto s2 = t.counts("snap");
  hp.interrupt();
  Outcome r = hp.wait();
  auto s3 = t.counts("snap");
  ASSERT_EQ(r.code, 0) << r.err;
  ASSERT_EQ(s0.size(), 3u);
  ASSERT_EQ(s3.size(), 3u);
  ASSERT_EQ(w1.size(), 3u);
  auto c = keyed_map(r.out, "c"), w = keyed_map(r.out, "w");
  for (std::size_t k = 0; k < 3; ++k) {
    long tid = t.tids()[k];
    // Exact: every hp_window call of the window happened between two answers of the
    // program, both inside the attached time.
    EXPECT_EQ(w[tid], w1[k]) << "thread " << tid << "\n" << r.out;
    // Bounded: calls counted after attach completed (s1) and before Ctrl-C (s2) were all
    // seen; nothing before the command started (s0) or after it ended (s3) was, but one
    // call incremented before s0 may enter the function after it.
    EXPECT_GE(c[tid], s2[k] - s1[k]) << "thread " << tid << "\n" << r.out;
    EXPECT_LE(c[tid], s3[k] - s0[k] + 1) << "thread " << tid << "\n" << r.out;
    EXPECT_GT(s2[k] - s1[k], 0) << "thread " << tid << " did not run during the window";
  }
  wait_agent_threads_gone(t.pid());
  EXPECT_EQ(code_differs_from_file(t.pid(), script_functions()), "");
  // The program runs on: its own checks of every result pass, windows still complete.
  EXPECT_EQ(t.counts("window 10"), (std::vector<long>{w1[0] + 10, w1[1] + 10, w1[2] + 10}));
  EXPECT_EQ(t.command("quit"), "bye");
  EXPECT_EQ(t.wait_exit(), 0);
}

// The injected thread (the leader) is blocked in a system call: it must complete as the
// program expects after detach (the program checks the result and errno itself).
TEST(HotprobeAttach, BlockedReadCompletesAfterDetach) {
  HP_SKIP_IF_SANITIZED();
  Target t({"read"});
  ASSERT_TRUE(t.ready());
  Hotprobe hp(attach_args(t.pid(), probe("hp_work", "@ = count();")));
  ASSERT_TRUE(hp.wait_for_output("Attaching 1 probe...\n")) << hp.wait().err;
  hp.interrupt();
  Outcome r = hp.wait();
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(t.wait_exit(50ms), -1) << "the read() returned early";
  wait_agent_threads_gone(t.pid());
  EXPECT_EQ(code_differs_from_file(t.pid(), script_functions()), "");
  t.send("hello\n");
  EXPECT_EQ(t.line(), "got hello");
  EXPECT_EQ(t.wait_exit(), 0) << "2: read() failed with EINTR, 3: wrong data";
}

TEST(HotprobeAttach, BlockedNanosleepCompletesAfterDetach) {
  HP_SKIP_IF_SANITIZED();
  constexpr int kSleepMs = 4000;
  auto start = Clock::now();
  Target t({"sleep", std::to_string(kSleepMs)});
  ASSERT_TRUE(t.ready());
  Hotprobe hp(attach_args(t.pid(), probe("hp_work", "@ = count();")));
  ASSERT_TRUE(hp.wait_for_output("Attaching 1 probe...\n")) << hp.wait().err;
  hp.interrupt();
  Outcome r = hp.wait();
  EXPECT_EQ(r.code, 0) << r.err;
  ASSERT_LT(Clock::now() - start, std::chrono::milliseconds(kSleepMs))
      << "attach and detach took longer than the sleep: the test proves nothing";
  EXPECT_EQ(t.line(), "slept");
  EXPECT_EQ(t.wait_exit(), 0) << "4: nanosleep() failed (EINTR), 5: it returned early";
}

// Two sessions at once: each sees its own probes and prints its own maps; ending one
// leaves the other counting exactly.
TEST(HotprobeAttach, TwoSessionsKeepTheirOwnProbes) {
  HP_SKIP_IF_SANITIZED();
  Target t({"work", "2"});
  ASSERT_TRUE(t.ready());
  Hotprobe a(attach_args(
      t.pid(), probe("hp_window", "@a = count();") + " " + probe("hp_work", "@awork = count();")));
  ASSERT_TRUE(a.wait_for_output("Attaching 2 probes...\n")) << a.wait().err;
  Hotprobe b(attach_args(t.pid(), probe("hp_window", "@b = count();")));
  ASSERT_TRUE(b.wait_for_output("Attaching 1 probe...\n")) << b.wait().err;
  t.counts("window 100");  // 200 calls, both sessions
  a.interrupt();
  Outcome ra = a.wait();
  EXPECT_EQ(ra.code, 0) << ra.err;
  EXPECT_NE(ra.out.find("@a: 200\n"), std::string::npos) << ra.out;
  EXPECT_EQ(ra.out.find("@b"), std::string::npos) << ra.out;
  t.counts("window 50");  // 100 more, session b only
  b.interrupt();
  Outcome rb = b.wait();
  EXPECT_EQ(rb.code, 0) << rb.err;
  EXPECT_NE(rb.out.find("@b: 300\n"), std::string::npos) << rb.out;
  EXPECT_EQ(rb.out.find("@a"), std::string::npos) << rb.out;
  wait_agent_threads_gone(t.pid());
  EXPECT_EQ(code_differs_from_file(t.pid(), script_functions()), "");
  EXPECT_EQ(t.command("quit"), "bye");
  EXPECT_EQ(t.wait_exit(), 0);
}

// Attach, detach, attach again, 20 times: every cycle counts its own window exactly.
// Returns the target's "maps" answers (maps lines, threads, descriptors) before the
// first cycle, after it, and after the last. `settle`: wait for the agent's threads of
// one cycle to end before the next (see BackToBackAttachSucceeds).
struct CycleCounts {
  std::vector<long> before, after_first, after_warm, after;
};
// Cycles after which the process's one-time growth is over: the agent and its first
// session (cycle 1), and glibc's cache of exited thread stacks, which keeps the stacks
// of a session's short-lived threads for the next session's (cycle 2).
constexpr int kWarmCycles = 5;

void attach_cycles(Target& t, int cycles, bool settle, CycleCounts& c) {
  c.before = t.counts("maps");
  for (int i = 0; i < cycles; ++i) {
    Hotprobe hp(attach_args(t.pid(), probe("hp_window", "@w = count();")));
    ASSERT_TRUE(hp.wait_for_output("Attaching 1 probe...\n")) << "cycle " << i << hp.wait().err;
    t.counts("window 5");
    hp.interrupt();
    Outcome r = hp.wait();
    ASSERT_EQ(r.code, 0) << "cycle " << i << ": " << r.err;
    ASSERT_NE(r.out.find("@w: 10\n"), std::string::npos) << "cycle " << i << ": " << r.out;
    if (settle) wait_agent_threads_gone(t.pid());
    if (i == 0) c.after_first = t.counts("maps");
    if (i == kWarmCycles - 1) c.after_warm = t.counts("maps");
  }
  wait_agent_threads_gone(t.pid());
  c.after = t.counts("maps");
  ASSERT_EQ(c.before.size(), 3u);
  ASSERT_EQ(c.after_first.size(), 3u);
  ASSERT_EQ(c.after.size(), 3u);
  std::printf(
      "[ cycles ] maps lines %ld -> %ld (first) -> %ld (cycle %d) -> %ld (last); threads %ld "
      "-> %ld -> %ld; fds %ld -> %ld -> %ld\n",
      c.before[0], c.after_first[0], c.after_warm.empty() ? -1L : c.after_warm[0], kWarmCycles,
      c.after[0], c.before[1], c.after_first[1], c.after[1], c.before[2], c.after_first[2],
      c.after[2]);
}

// The session's maps live in memory hotprobe holds (a region passed to the agent over the
// channel): the process's end, however it comes, cannot take them. The script counts
// hp_window, which the program calls only inside its windows, so the count printed must be
// exactly the program's own total at the end (which also bounds it: >= the count seen
// before the end, <= the calls made). END runs once: in the process, or in hotprobe when
// the process could not run it.
// A function, not a constant: the fixture's path is the copy's when the copies are in use.
std::string window_script() {
  return probe("hp_window", "@w = count(); @t[tid] = count();") +
         " END { printf(\"end ran\\n\"); }";
}

std::size_t occurrences(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1))
    ++n;
  return n;
}

// How many of `pid`'s descriptors name a file whose link starts with `prefix`.
int fd_links(pid_t pid, const std::string& prefix) {
  const std::string dir = "/proc/" + std::to_string(pid) + "/fd/";
  DIR* d = ::opendir(dir.c_str());
  if (!d) return -1;
  int n = 0;
  while (const dirent* e = ::readdir(d)) {
    char link[256];
    const ssize_t len = ::readlink((dir + e->d_name).c_str(), link, sizeof link - 1);
    if (len > 0 && std::string_view(link, static_cast<std::size_t>(len)).starts_with(prefix)) ++n;
  }
  ::closedir(d);
  return n;
}

// Two windows of calls in a session, then `end` ends the process ("kill": SIGKILL;
// otherwise a command: "abort", "quit"); the maps must print once with the exact totals.
void maps_survive_the_end(const std::string& end, int expected_status) {
  Target t({"work", "2"});
  ASSERT_TRUE(t.ready());
  Hotprobe hp(attach_args(t.pid(), window_script()));
  ASSERT_TRUE(hp.wait_for_output("Attaching 2 probes...\n")) << hp.wait().err;
  t.counts("window 100");
  auto w = t.counts("window 50");
  ASSERT_EQ(w.size(), 2u);
  // The region is reachable from hotprobe only: the agent kept no descriptor of it.
  EXPECT_EQ(fd_links(t.pid(), "/memfd:hotprobe-maps"), 0) << "a descriptor of the region";
  EXPECT_EQ(fd_links(hp.pid(), "/memfd:hotprobe-maps"), 1) << "hotprobe's descriptor";
  if (end == "kill")
    ::kill(t.pid(), SIGKILL);
  else
    t.send(end + "\n");
  EXPECT_EQ(t.wait_exit(), expected_status);
  Outcome r = hp.wait();
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(occurrences(r.out, "@w: "), 1u) << r.out;
  EXPECT_NE(r.out.find("@w: " + std::to_string(w[0] + w[1]) + "\n"), std::string::npos)
      << "the program made " << w[0] + w[1] << " calls\n"
      << r.out << r.err;
  auto per_thread = keyed_map(r.out, "t");
  EXPECT_EQ(per_thread[t.tids()[0]], w[0]) << r.out;
  EXPECT_EQ(per_thread[t.tids()[1]], w[1]) << r.out;
  EXPECT_EQ(occurrences(r.out, "end ran\n"), 1u) << r.out;
  // END's output comes before the maps, as at a normal end.
  EXPECT_LT(r.out.find("end ran\n"), r.out.find("@w: ")) << r.out;
}

TEST(HotprobeAttachMaps, SigkilledProcessesMapsPrintWithTheCountsReached) {
  HP_SKIP_IF_SANITIZED();
  maps_survive_the_end("kill", 128 + SIGKILL);
}

TEST(HotprobeAttachMaps, AbortedProcessesMapsPrintWithTheCountsReached) {
  HP_SKIP_IF_SANITIZED();
  maps_survive_the_end("abort", 128 + SIGABRT);
}

TEST(HotprobeAttachMaps, NormalEndPrintsTheMapsOnce) {
  HP_SKIP_IF_SANITIZED();
  maps_survive_the_end("quit", 0);
}

// The program closes every descriptor, the agent's channel with them: the agent stops
// tracing and makes its report into the region (END runs in the process), and hotprobe
// prints it with the maps as they were at that moment, and says why the session ended.
TEST(HotprobeAttachMaps, ClosedChannelStillPrintsTheMapsAndSaysSo) {
  HP_SKIP_IF_SANITIZED();
  Target t({"work", "2"});
  ASSERT_TRUE(t.ready());
  Hotprobe hp(attach_args(t.pid(), window_script()));
  ASSERT_TRUE(hp.wait_for_output("Attaching 2 probes...\n")) << hp.wait().err;
  auto w = t.counts("window 40");
  ASSERT_EQ(w.size(), 2u);
  EXPECT_EQ(t.command("closefds"), "closed");
  Outcome r = hp.wait();
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.out.find("@w: " + std::to_string(w[0] + w[1]) + "\n"), std::string::npos) << r.out;
  EXPECT_EQ(occurrences(r.out, "end ran\n"), 1u) << r.out;
  EXPECT_NE(r.err.find("closed hotprobe's channel to its agent"), std::string::npos) << r.err;
  wait_agent_threads_gone(t.pid());
  EXPECT_EQ(t.command("quit"), "bye");
  EXPECT_EQ(t.wait_exit(), 0);
}

bool agent_loaded(pid_t pid);  // below, with the users' tests

// The region's size comes from HOTPROBE_MAP_MEMORY as for `hotprobe run`: a malformed one
// is refused before anything is injected, with the range it must lie in.
TEST(HotprobeAttachMaps, MalformedMapMemoryIsRefusedBeforeInjecting) {
  HP_SKIP_IF_SANITIZED();
  Target t({"work", "2"});
  ASSERT_TRUE(t.ready());
  ::setenv("HOTPROBE_MAP_MEMORY", "lots", 1);
  Hotprobe hp(attach_args(t.pid(), window_script()));
  ::unsetenv("HOTPROBE_MAP_MEMORY");
  Outcome r = hp.wait();
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("HOTPROBE_MAP_MEMORY='lots' is not a size in MiB from 1 to 1048576"),
            std::string::npos)
      << r.err;
  EXPECT_FALSE(agent_loaded(t.pid())) << "the agent was loaded";
  EXPECT_EQ(t.command("quit"), "bye");
  EXPECT_EQ(t.wait_exit(), 0);
}

// Each session has a region of its own: a second attach to the same process counts from
// zero, and neither session's maps show in the other's print.
TEST(HotprobeAttachMaps, SecondSessionStartsWithFreshMaps) {
  HP_SKIP_IF_SANITIZED();
  Target t({"work", "2"});
  ASSERT_TRUE(t.ready());
  for (long per : {30, 7}) {
    Hotprobe hp(attach_args(t.pid(), window_script()));
    ASSERT_TRUE(hp.wait_for_output("Attaching 2 probes...\n")) << hp.wait().err;
    t.counts("window " + std::to_string(per));
    hp.interrupt();
    Outcome r = hp.wait();
    EXPECT_EQ(r.code, 0) << r.err;
    EXPECT_NE(r.out.find("@w: " + std::to_string(2 * per) + "\n"), std::string::npos) << r.out;
    EXPECT_EQ(occurrences(r.out, "end ran\n"), 1u) << r.out;
    wait_agent_threads_gone(t.pid());
  }
  EXPECT_EQ(t.command("quit"), "bye");
  EXPECT_EQ(t.wait_exit(), 0);
}

// The size of the stack of `pid`'s thread named `comm`: the readable and writable mapping
// holding its stack pointer, found from /proc/PID/task/TID/syscall while it is blocked in
// a system call (the reporter polls its channel). 0 when not found.
std::uint64_t thread_stack_bytes(pid_t pid, const std::string& comm) {
  const std::string task = "/proc/" + std::to_string(pid) + "/task/";
  for (int attempt = 0; attempt < 2000; ++attempt) {
    DIR* d = ::opendir(task.c_str());
    if (!d) return 0;
    std::uint64_t sp = 0;
    while (const dirent* e = ::readdir(d)) {
      if (e->d_name[0] == '.') continue;
      std::string name = read_file(task + e->d_name + "/comm");
      if (name != comm + "\n") continue;
      // "NR ARG0 .. ARG5 SP PC" while blocked; "running" otherwise.
      std::istringstream in(read_file(task + e->d_name + "/syscall"));
      std::vector<std::string> words;
      for (std::string w; in >> w;)
        words.push_back(w);
      if (words.size() == 9) sp = std::stoull(words[7], nullptr, 16);
    }
    ::closedir(d);
    if (sp != 0) {
      std::istringstream maps(read_file("/proc/" + std::to_string(pid) + "/maps"));
      for (std::string l; std::getline(maps, l);) {
        const auto dash = l.find('-'), space = l.find(' ');
        const std::uint64_t lo = std::stoull(l.substr(0, dash), nullptr, 16);
        const std::uint64_t hi = std::stoull(l.substr(dash + 1, space - dash - 1), nullptr, 16);
        if (sp >= lo && sp < hi) return hi - lo;
      }
      return 0;
    }
    std::this_thread::sleep_for(1ms);
  }
  return 0;
}

// The agent's threads have their own stack size whatever RLIMIT_STACK the process has:
// the reporter's stack is the same 256 KiB (less its guard page) under a 64 KiB limit
// (glibc's default thread stack then is 64 KiB) and under none (glibc's default is then
// 2 MiB of address space per thread; 8 MiB under the usual 8 MiB limit). The attach thread
// is made by the same function (start_agent_thread) but ends once the session started.
void attach_with_stack_limit(rlim_t limit) {
  Target t({"work", "2"}, 0, limit);
  ASSERT_TRUE(t.ready());
  Hotprobe hp(attach_args(t.pid(), window_script()));
  ASSERT_TRUE(hp.wait_for_output("Attaching 2 probes...\n")) << hp.wait().err;
  const std::uint64_t stack = thread_stack_bytes(t.pid(), "hotprobe-agent");
  EXPECT_GE(stack, 128u << 10) << "the reporter's stack mapping";
  EXPECT_LE(stack, 256u << 10) << "the reporter's stack mapping";
  auto w = t.counts("window 20");
  ASSERT_EQ(w.size(), 2u);
  hp.interrupt();
  Outcome r = hp.wait();
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("@w: 40\n"), std::string::npos) << r.out;
  wait_agent_threads_gone(t.pid());
  EXPECT_EQ(t.command("quit"), "bye");
  EXPECT_EQ(t.wait_exit(), 0);
}

TEST(HotprobeAttachStack, SmallStackLimit) {
  HP_SKIP_IF_SANITIZED();
  attach_with_stack_limit(64 << 10);
}

TEST(HotprobeAttachStack, UnlimitedStack) {
  HP_SKIP_IF_SANITIZED();
  attach_with_stack_limit(RLIM_INFINITY);
}

// The first cycle may add the agent's one-time mappings and threads (the library, its
// TLS, the allocator arena of its threads, the hot-path domain's grace-period thread
// hp-gp-tt); cycles 2..20 add no thread, and the probes come off every time.
TEST(HotprobeAttach, TwentyCyclesEachCountTheirOwnWindowNoThreadLeft) {
  HP_SKIP_IF_SANITIZED();
  Target t({"work", "2"});
  ASSERT_TRUE(t.ready());
  CycleCounts c;
  attach_cycles(t, 20, /*settle=*/true, c);
  if (HasFatalFailure()) return;
  EXPECT_LE(c.after_first[1] - c.before[1], 1) << "more than one lasting agent thread";
  EXPECT_EQ(c.after[1], c.after_first[1]) << "threads left behind per attach";
  EXPECT_EQ(code_differs_from_file(t.pid(), script_functions()), "");
  EXPECT_EQ(t.command("quit"), "bye");
  EXPECT_EQ(t.wait_exit(), 0);
}

// A finished attach session frees itself (engine, probes, exit hooks, socket, eventfds):
// from the warm-up on, a cycle adds no mapping and no descriptor.
TEST(HotprobeAttach, TwentyCyclesLeakNoMappingsOrDescriptors) {
  HP_SKIP_IF_SANITIZED();
  // Beyond the warm-up's one-time mappings: glibc's stack cache may keep one more thread
  // stack (2 lines: stack and guard) when a session's thread starts before the previous
  // session's has finished exiting, which a loaded machine makes likely. A leak per
  // attach adds lines every cycle: 15 cycles after the warm-up show it far above this.
  constexpr long kSlack = 4;
  Target t({"work", "2"});
  ASSERT_TRUE(t.ready());
  CycleCounts c;
  attach_cycles(t, 20, /*settle=*/true, c);
  if (HasFatalFailure()) return;
  ASSERT_EQ(c.after_warm.size(), 3u);
  EXPECT_LE(c.after[0] - c.after_warm[0], kSlack) << "mappings leak per attach";
  EXPECT_LE(c.after_warm[0] - c.after_first[0], 4) << "more than two cached thread stacks";
  EXPECT_EQ(c.after[2], c.after_first[2]) << "descriptors leak per attach";
  EXPECT_EQ(t.command("quit"), "bye");
  EXPECT_EQ(t.wait_exit(), 0);
}

// A new attach right after the previous hotprobe returned: the previous session's
// reporter may still be ending; it leaves the engine's signal (hotprobe::reserved_signal)
// open, so the new session's patching can move it (it used to block every signal and
// fail the attach with "did not answer hotprobe's signal 61 within 1 s").
TEST(HotprobeAttach, BackToBackAttachSucceeds) {
  HP_SKIP_IF_SANITIZED();
  Target t({"work", "2"});
  ASSERT_TRUE(t.ready());
  CycleCounts c;
  attach_cycles(t, 20, /*settle=*/false, c);
}

// The agent's own hooks on libc's exit, _exit, execve and execveat come off with the
// script's probes, in the same batch, and the engine's module watcher on ld.so's
// _dl_debug_state with the session's engine: after detach they are the file's bytes.
TEST(HotprobeAttach, DetachRestoresTheAgentsExitHooks) {
  HP_SKIP_IF_SANITIZED();
  Target t({"work", "2"});
  ASSERT_TRUE(t.ready());
  Hotprobe hp(attach_args(t.pid(), probe("hp_window", "@w = count();")));
  ASSERT_TRUE(hp.wait_for_output("Attaching 1 probe...\n")) << hp.wait().err;
  hp.interrupt();
  EXPECT_EQ(hp.wait().code, 0);
  wait_agent_threads_gone(t.pid());
  EXPECT_EQ(code_differs_from_file(t.pid(), agent_hook_functions()), "");
  EXPECT_EQ(t.command("quit"), "bye");
  EXPECT_EQ(t.wait_exit(), 0);
}

// --duration ends the session by itself (no signal): the maps print, every probe comes
// off, and the pause the injection cost is reported on stderr.
TEST(HotprobeAttach, DurationEndsTheSessionAndThePauseIsReported) {
  HP_SKIP_IF_SANITIZED();
  Target t({"work", "2"});
  ASSERT_TRUE(t.ready());
  auto args = attach_args(t.pid(), probe("hp_work", "@ = count();"));
  args.insert(args.end(), {"--duration", "0.3"});
  Hotprobe hp(args);
  Outcome r = hp.wait();
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("Attaching 1 probe...\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\n@: "), std::string::npos) << r.out;
  EXPECT_NE(r.err.find(" was stopped "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(" ms to load the agent"), std::string::npos) << r.err;
  wait_agent_threads_gone(t.pid());
  EXPECT_EQ(code_differs_from_file(t.pid(), script_functions()), "");
  EXPECT_EQ(t.command("quit"), "bye");
  EXPECT_EQ(t.wait_exit(), 0);
}

// A target that exec's during the session (the fixture's `command`): the session ends
// with the old image, its maps print with the counts reached, and hotprobe says what the
// process became, and only that. The new program runs and ends normally.
void exec_ends_the_session(const char* command) {
  Target t({"work", "2"});
  ASSERT_TRUE(t.ready());
  Hotprobe hp(attach_args(t.pid(), window_script()));
  ASSERT_TRUE(hp.wait_for_output("Attaching 2 probes...\n")) << hp.wait().err;
  auto w = t.counts("window 50");
  ASSERT_EQ(w.size(), 2u);
  EXPECT_EQ(t.command(command), "execd");
  EXPECT_EQ(t.wait_exit(), 0) << "the new program did not end normally";
  Outcome r = hp.wait();
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("process " + std::to_string(t.pid()) +
                       " exec'd '/bin/sh': the session ends there"),
            std::string::npos)
      << r.err;
  EXPECT_EQ(r.err.find("nonexistent"), std::string::npos) << r.err;
  EXPECT_NE(r.out.find("@w: " + std::to_string(w[0] + w[1]) + "\n"), std::string::npos)
      << r.out << r.err;
}

TEST(HotprobeAttach, TargetThatExecsEndsTheSessionAndSaysSo) {
  HP_SKIP_IF_SANITIZED();
  exec_ends_the_session("exec");
}

// execvp tries PATH's entries in turn: the execve that fails (no such file) leaves the
// session tracing; the one that works ends it.
TEST(HotprobeAttach, ExecThroughPathEndsTheSessionAtTheExecThatWorks) {
  HP_SKIP_IF_SANITIZED();
  exec_ends_the_session("execvp");
}

TEST(HotprobeAttachErrors, NoSuchProcess) {
  pid_t gone = ::fork();
  if (gone == 0) ::_exit(0);
  ::waitpid(gone, nullptr, 0);  // a PID that existed and is free now
  Hotprobe hp(attach_args(gone, "BEGIN { exit(); }"));
  Outcome r = hp.wait();
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("no process with PID " + std::to_string(gone)), std::string::npos) << r.err;
}

TEST(HotprobeAttachErrors, PermissionDeniedNamesTheWayOut) {
  HP_SKIP_IF_SANITIZED();
  if (::getuid() != 0) GTEST_SKIP() << "needs root, to run hotprobe as user 65534";
  HP_USE_REACHABLE_COPIES(copies);
  Target t({"read"});
  ASSERT_TRUE(t.ready());
  Hotprobe hp(attach_args(t.pid(), probe("hp_work", "@ = count();")), nullptr, 65534);
  Outcome r = hp.wait();
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("uid 0"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("CAP_SYS_PTRACE"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("run as that user, or as root"), std::string::npos) << r.err;
  t.send("hello\n");
  EXPECT_EQ(t.line(), "got hello");
  EXPECT_EQ(t.wait_exit(), 0);
}

// The "agent" ends the process in its constructor: the target exits in the middle of
// the injection, and hotprobe says so with the exit status.
TEST(HotprobeAttachErrors, TargetExitsDuringInjection) {
  HP_SKIP_IF_SANITIZED();
  Target t({"read"});
  ASSERT_TRUE(t.ready());
  Hotprobe hp(attach_args(t.pid(), probe("hp_work", "@ = count();")), programs().exit_lib.c_str());
  Outcome r = hp.wait();
  EXPECT_EQ(t.wait_exit(), 7);
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("exited during the injection"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("exit status 7"), std::string::npos) << r.err;
}

bool agent_loaded(pid_t pid) {
  return read_file("/proc/" + std::to_string(pid) + "/maps").find("libhotprobe_agent") !=
         std::string::npos;
}

constexpr uid_t kNobody = 65534;

// Root attaches to a process of another user (nobody): the channel does not depend on
// either side's file-system permissions; counts are exact.
TEST(HotprobeAttachUsers, RootAttachesToAnotherUsersProcess) {
  HP_SKIP_IF_SANITIZED();
  if (::getuid() != 0) GTEST_SKIP() << "needs root";
  HP_USE_REACHABLE_COPIES(copies);
  Target t({"work", "2"}, kNobody);
  ASSERT_TRUE(t.ready());
  ASSERT_NE(read_file("/proc/" + std::to_string(t.pid()) + "/status").find("Uid:\t65534"),
            std::string::npos);
  Hotprobe hp(attach_args(t.pid(), probe("hp_window", "@w[tid] = count();")));
  ASSERT_TRUE(hp.wait_for_output("Attaching 1 probe...\n")) << hp.wait().err;
  auto w1 = t.counts("window 300");
  hp.interrupt();
  Outcome r = hp.wait();
  ASSERT_EQ(r.code, 0) << r.err;
  auto w = keyed_map(r.out, "w");
  ASSERT_EQ(w1.size(), 2u);
  for (std::size_t k = 0; k < 2; ++k)
    EXPECT_EQ(w[t.tids()[k]], w1[k]) << r.out;
  EXPECT_EQ(t.command("quit"), "bye");
  EXPECT_EQ(t.wait_exit(), 0);
}

// A third user cannot take over the session of root and a nobody process: it sees the
// channel's abstract name in /proc/net/unix and connects to it as often as it can while
// hotprobe attaches; hotprobe takes only the target's connection (SO_PEERCRED), the
// others get nothing, and the session counts exactly.
TEST(HotprobeAttachUsers, ThirdUserCannotReachTheChannel) {
  HP_SKIP_IF_SANITIZED();
  if (::getuid() != 0) GTEST_SKIP() << "needs root";
  HP_USE_REACHABLE_COPIES(copies);
  Target t({"work", "2"}, kNobody);
  ASSERT_TRUE(t.ready());
  int report[2];
  ASSERT_EQ(::pipe(report), 0);
  const pid_t attacker = ::fork();
  if (attacker == 0) {
    ::close(report[0]);
    const uid_t third = 54321;
    if (::setgroups(0, nullptr) != 0 || ::setresgid(third, third, third) != 0 ||
        ::setresuid(third, third, third) != 0)
      ::_exit(98);
    long connected = 0, got_data = 0;
    const auto end = Clock::now() + 3s;
    while (Clock::now() < end) {
      std::istringstream unix_sockets(read_file("/proc/net/unix"));
      std::string l;
      while (std::getline(unix_sockets, l)) {
        auto at = l.find("@hotprobe-attach-");
        if (at == std::string::npos) continue;
        std::string name = l.substr(at + 1);
        int fd = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK, 0);
        sockaddr_un a{};
        a.sun_family = AF_UNIX;
        std::memcpy(a.sun_path + 1, name.data(), name.size());
        if (::connect(fd, reinterpret_cast<sockaddr*>(&a),
                      static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size())) ==
            0) {
          ++connected;
          pollfd p{fd, POLLIN, 0};
          char buf[64];
          if (::poll(&p, 1, 200) == 1 && ::recv(fd, buf, sizeof buf, MSG_DONTWAIT) > 0) ++got_data;
        }
        ::close(fd);
      }
    }
    std::string out = std::to_string(connected) + " " + std::to_string(got_data) + "\n";
    ssize_t n = ::write(report[1], out.data(), out.size());
    (void)n;
    ::_exit(0);
  }
  ::close(report[1]);
  Hotprobe hp(attach_args(t.pid(), probe("hp_window", "@w = count();")));
  ASSERT_TRUE(hp.wait_for_output("Attaching 1 probe...\n")) << hp.wait().err;
  t.counts("window 100");
  ::waitpid(attacker, nullptr, 0);
  char buf[64] = {};
  ssize_t n = ::read(report[0], buf, sizeof buf - 1);
  ::close(report[0]);
  long connected = -1, got_data = -1;
  std::istringstream(std::string(buf, n > 0 ? n : 0)) >> connected >> got_data;
  std::printf("[ channel  ] the third user connected %ld times, received data %ld times\n",
              connected, got_data);
  EXPECT_EQ(got_data, 0) << "the third user received the session";
  hp.interrupt();
  Outcome r = hp.wait();
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("@w: 200\n"), std::string::npos) << r.out;
  EXPECT_EQ(t.command("quit"), "bye");
  EXPECT_EQ(t.wait_exit(), 0);
}

// A refused attach leaves no agent behind: a non-root user against root's process, and
// root with an agent library in a world-writable directory.
TEST(HotprobeAttachUsers, RefusedAttachLeavesNoAgent) {
  HP_SKIP_IF_SANITIZED();
  if (::getuid() != 0) GTEST_SKIP() << "needs root";
  HP_USE_REACHABLE_COPIES(copies);
  Target t({"read"});
  ASSERT_TRUE(t.ready());
  {
    Hotprobe hp(attach_args(t.pid(), probe("hp_work", "@ = count();")), nullptr, kNobody);
    Outcome r = hp.wait();
    EXPECT_EQ(r.code, 1) << r.err;
    EXPECT_NE(r.err.find("run as that user, or as root"), std::string::npos) << r.err;
  }
  char dir_template[] = "/tmp/hp_attach_ww_XXXXXX";
  ASSERT_NE(::mkdtemp(dir_template), nullptr);
  const std::string dir = dir_template;
  ::chmod(dir.c_str(), 0777);
  const std::string agent = dir + "/libhotprobe_agent.so";
  {
    std::ifstream in(HP_AGENT, std::ios::binary);
    std::ofstream out(agent, std::ios::binary);
    out << in.rdbuf();
  }
  ::chmod(agent.c_str(), 0755);
  {
    Hotprobe hp(attach_args(t.pid(), probe("hp_work", "@ = count();")), agent.c_str());
    Outcome r = hp.wait();
    EXPECT_EQ(r.code, 1) << r.err;
    EXPECT_NE(r.err.find("refusing to load"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("writable by everyone"), std::string::npos) << r.err;
  }
  EXPECT_FALSE(agent_loaded(t.pid()));
  ::unlink(agent.c_str());
  ::rmdir(dir.c_str());
  t.send("hello\n");
  EXPECT_EQ(t.line(), "got hello");
  EXPECT_EQ(t.wait_exit(), 0);
}

// hotprobe started with SIGINT ignored (a script's `hotprobe attach ... &`): Ctrl-C at
// once still ends it, and the process runs on.
TEST(HotprobeAttachSignals, InheritedIgnoredSigintStillEndsHotprobe) {
  HP_SKIP_IF_SANITIZED();
  Target t({"work", "2"});
  ASSERT_TRUE(t.ready());
  for (int delay_ms : {0, 1, 3, 10, 30}) {
    Hotprobe hp(attach_args(t.pid(), probe("hp_window", "@w = count();")), nullptr, 0,
                /*ignore_sigint=*/true);
    // One SIGINT, `delay_ms` after hotprobe's own code runs: once it no longer ignores
    // SIGINT, or (had it kept ignoring it) once it has loaded the agent.
    const std::string status_path = "/proc/" + std::to_string(hp.pid()) + "/status";
    const std::string exe = "/proc/" + std::to_string(hp.pid()) + "/exe";
    for (auto until = Clock::now() + 10s; Clock::now() < until;) {
      char link[4096] = {};
      if (::readlink(exe.c_str(), link, sizeof link - 1) <= 0 ||
          std::string(link) != programs().hotprobe) {
        std::this_thread::sleep_for(100us);  // not hotprobe yet (fork, then exec)
        continue;
      }
      const std::string st = read_file(status_path);
      const auto at = st.find("SigIgn:\t");
      const bool ignores =
          at != std::string::npos && (std::stoull(st.substr(at + 8, 16), nullptr, 16) & 2);
      if (!ignores || hp.err().find(" ms to load the agent") != std::string::npos) break;
      std::this_thread::sleep_for(100us);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
    hp.interrupt();
    int status = 0;
    pid_t done = 0;
    for (auto until = Clock::now() + 10s;
         (done = ::waitpid(hp.pid(), &status, WNOHANG)) == 0 && Clock::now() < until;)
      std::this_thread::sleep_for(2ms);
    ASSERT_EQ(done, hp.pid()) << "hotprobe ignored SIGINT " << delay_ms
                              << " ms after its start; it printed:\n"
                              << hp.out() << hp.err();
    EXPECT_EQ(t.wait_exit(20ms), -1) << "the target died";
  }
  // The process is fine, and a normal attach works.
  Hotprobe hp(attach_args(t.pid(), probe("hp_window", "@w = count();")));
  ASSERT_TRUE(hp.wait_for_output("Attaching 1 probe...\n")) << hp.wait().err;
  t.counts("window 10");
  hp.interrupt();
  Outcome r = hp.wait();
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("@w: 20\n"), std::string::npos) << r.out;
  EXPECT_EQ(t.command("quit"), "bye");
  EXPECT_EQ(t.wait_exit(), 0);
}

// `hotprobe attach` killed (SIGKILL; the last one SIGINT) 1-60 ms after it starts, at
// instants from a fixed seed: the process survives every one, and a final attach counts
// exactly.
TEST(HotprobeAttachSignals, KilledAttachNeverHurtsTheProcess) {
  HP_SKIP_IF_SANITIZED();
  Target t({"work", "2"});
  ASSERT_TRUE(t.ready());
  std::mt19937 rng(7122026);
  std::uniform_int_distribution<int> instant_us(1000, 60000);
  constexpr int kRounds = 30;
  for (int i = 0; i < kRounds; ++i) {
    Hotprobe hp(attach_args(t.pid(), probe("hp_window", "@w = count();")));
    std::this_thread::sleep_for(std::chrono::microseconds(instant_us(rng)));
    hp.kill(i == kRounds - 1 ? SIGINT : SIGKILL);
    hp.wait();
    ASSERT_EQ(t.wait_exit(20ms), -1) << "round " << i << ": the process died";
  }
  wait_agent_threads_gone(t.pid());
  Hotprobe hp(attach_args(t.pid(), probe("hp_window", "@w = count();")));
  ASSERT_TRUE(hp.wait_for_output("Attaching 1 probe...\n")) << hp.wait().err;
  t.counts("window 25");
  hp.interrupt();
  Outcome r = hp.wait();
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("@w: 50\n"), std::string::npos) << r.out;
  EXPECT_EQ(t.command("quit"), "bye");
  EXPECT_EQ(t.wait_exit(), 0);
}

// nginx with `user nobody;` and two workers: one session per worker (root attaching to
// nobody's processes), a probe on ngx_http_create_request, which runs once per request;
// the workers' counts add up to the requests served.
TEST(HotprobeAttachUsers, NginxWorkersCountEveryRequest) {
  HP_SKIP_IF_SANITIZED();
  if (::getuid() != 0) GTEST_SKIP() << "needs root";
  HP_USE_REACHABLE_COPIES(copies);
  const char* nginx = "/usr/sbin/nginx";
  if (::access(nginx, X_OK) != 0) GTEST_SKIP() << "no nginx";
  // A free port.
  int s = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t alen = sizeof a;
  ASSERT_EQ(::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::getsockname(s, reinterpret_cast<sockaddr*>(&a), &alen), 0);
  const int port = ntohs(a.sin_port);
  ::close(s);
  char dir_template[] = "/tmp/hp_attach_nginx_XXXXXX";
  ASSERT_NE(::mkdtemp(dir_template), nullptr);
  const std::string dir = dir_template;
  ::chmod(dir.c_str(), 0755);
  std::ofstream(dir + "/nginx.conf")
      << "user nobody nogroup;\nworker_processes 2;\ndaemon off;\npid " << dir
      << "/nginx.pid;\nerror_log " << dir << "/error.log;\nevents { worker_connections 64; }\n"
      << "http {\n access_log off;\n client_body_temp_path " << dir << "/body;\n"
      << " proxy_temp_path " << dir << "/proxy;\n fastcgi_temp_path " << dir << "/fcgi;\n"
      << " uwsgi_temp_path " << dir << "/uwsgi;\n scgi_temp_path " << dir << "/scgi;\n"
      << " server {\n  listen 127.0.0.1:" << port
      << ";\n  location / { return 200 \"ok\\n\"; }\n }\n}\n";
  const pid_t master = ::fork();
  if (master == 0) {
    int null = ::open("/dev/null", O_RDWR);
    ::dup2(null, 0);
    ::dup2(null, 1);
    set_library_path();  // for the copy of the agent the workers load
    ::execl(nginx, nginx, "-p", dir.c_str(), "-c", (dir + "/nginx.conf").c_str(), nullptr);
    ::_exit(127);
  }
  struct Cleanup {
    pid_t master;
    std::string dir;
    ~Cleanup() {
      ::kill(master, SIGTERM);
      ::waitpid(master, nullptr, 0);
      std::string cmd = "rm -rf " + dir;
      int rc = std::system(cmd.c_str());
      (void)rc;
    }
  } cleanup{master, dir};
  // Its two workers, once they run as nobody.
  std::vector<pid_t> workers;
  for (auto deadline = Clock::now() + 10s; workers.size() < 2 && Clock::now() < deadline;) {
    workers.clear();
    std::istringstream kids(read_file("/proc/" + std::to_string(master) + "/task/" +
                                      std::to_string(master) + "/children"));
    pid_t w;
    while (kids >> w) {
      if (read_file("/proc/" + std::to_string(w) + "/status").find("Uid:\t65534") !=
          std::string::npos)
        workers.push_back(w);
    }
    if (workers.size() < 2) std::this_thread::sleep_for(10ms);
  }
  ASSERT_EQ(workers.size(), 2u) << read_file(dir + "/error.log");
  std::vector<std::unique_ptr<Hotprobe>> sessions;
  for (pid_t w : workers) {
    sessions.push_back(std::make_unique<Hotprobe>(
        attach_args(w, "uprobe:/usr/sbin/nginx:ngx_http_create_request { @ = count(); }")));
  }
  for (auto& hp : sessions)
    ASSERT_TRUE(hp->wait_for_output("Attaching 1 probe...\n")) << hp->wait().err;
  // N requests, one connection each.
  constexpr int kRequests = 200;
  int served = 0;
  for (int i = 0; i < kRequests; ++i) {
    int c = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_port = htons(static_cast<std::uint16_t>(port));
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(c, reinterpret_cast<sockaddr*>(&to), sizeof to) == 0) {
      const std::string req = "GET / HTTP/1.0\r\nHost: x\r\n\r\n";
      if (::write(c, req.data(), req.size()) == static_cast<ssize_t>(req.size())) {
        std::string resp;
        char buf[512];
        ssize_t n;
        while ((n = ::read(c, buf, sizeof buf)) > 0)
          resp.append(buf, static_cast<std::size_t>(n));
        if (resp.starts_with("HTTP/1.1 200")) ++served;
      }
    }
    ::close(c);
  }
  EXPECT_EQ(served, kRequests);
  long total = 0;
  std::string outs;
  for (auto& hp : sessions) {
    hp->interrupt();
    Outcome r = hp->wait();
    EXPECT_EQ(r.code, 0) << r.err;
    auto at = r.out.find("\n@: ");
    long n = at == std::string::npos ? 0 : std::stol(r.out.substr(at + 4));
    outs += std::to_string(n) + " ";
    total += n;
  }
  std::printf("[ nginx    ] per worker: %s(%d requests served)\n", outs.c_str(), served);
  EXPECT_EQ(total, served) << outs;
}

// The agent refuses a request it cannot use (a malformed one; one naming a channel nobody
// listens on) and returns without starting anything: no agent thread, the process runs
// on, and the unload that `hotprobe attach` does after such a refusal succeeds. (The
// agent library itself stays mapped, dormant: it has STB_GNU_UNIQUE symbols, which make
// the loader keep it, as after any session.)
TEST(HotprobeAttachUsers, AgentRefusalStartsNothing) {
  HP_SKIP_IF_SANITIZED();
  if (::getuid() != 0) GTEST_SKIP() << "needs root";
  HP_USE_REACHABLE_COPIES(copies);
  const std::string agent = programs().agent;
  Target t({"read"});
  ASSERT_TRUE(t.ready());
  auto loaded = hp::inject::load_library(t.pid(), agent);
  ASSERT_TRUE(loaded.ok()) << loaded.error().message();
  ASSERT_TRUE(agent_loaded(t.pid()));
  const std::uint64_t args[] = {hp::inject::kDataArgument};
  for (std::string request :
       {std::string("bogus"),
        std::string("hotprobe-attach 1 1 0123456789abcdef0123456789abcdef")}) {
    auto rc = hp::inject::call_function_with_data(t.pid(), agent, "hotprobe_agent_attach", args,
                                                  {request.c_str(), request.size() + 1});
    ASSERT_TRUE(rc.ok()) << rc.error().message();
    // A malformed request: EINVAL; a well-formed one naming no listener: ECONNREFUSED.
    EXPECT_TRUE(*rc == -EINVAL || *rc == -ECONNREFUSED) << request << ": " << *rc;
  }
  auto unloaded = hp::inject::unload_library(t.pid(), loaded->handle);
  ASSERT_TRUE(unloaded.ok()) << unloaded.error().message();
  const std::string task = "/proc/" + std::to_string(t.pid()) + "/task/";
  if (DIR* d = ::opendir(task.c_str())) {
    while (const dirent* e = ::readdir(d)) {
      if (e->d_name[0] != '.') {
        EXPECT_NE(read_file(task + e->d_name + "/comm"), "hotprobe-agent\n");
      }
    }
    ::closedir(d);
  }
  t.send("hello\n");
  EXPECT_EQ(t.line(), "got hello");
  EXPECT_EQ(t.wait_exit(), 0);
}

}  // namespace
