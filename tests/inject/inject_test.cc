// The injector against real processes: tests/inject/fixture/target.c in its modes, and
// the library fixture/testlib.c whose constructor writes a marker file.
#include "inject/inject.h"

#include <fcntl.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace hp::inject {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A target process (our child) with its stdin and stdout on pipes.
class Target {
 public:
  // `env`: more NAME=VALUE entries for its environment.
  explicit Target(std::vector<std::string> args, std::string marker = "",
                  std::vector<std::string> env = {}) {
    ::signal(SIGPIPE, SIG_IGN);  // a target that died must fail the test, not kill it
    int in[2], out[2];
    if (::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0) std::abort();
    args.insert(args.begin(), HP_INJECT_TARGET);
    std::vector<char*> argv;
    for (auto& a : args)
      argv.push_back(a.data());
    argv.push_back(nullptr);
    env.insert(env.begin(), "HP_INJECT_MARKER=" + marker);
    std::vector<char*> envp;
    for (auto& e : env)
      envp.push_back(e.data());
    envp.push_back(nullptr);
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(in[0], 0);
      ::dup2(out[1], 1);
      ::execve(argv[0], argv.data(), envp.data());
      ::_exit(127);
    }
    ::close(in[0]);
    ::close(out[1]);
    stdin_ = in[1];
    stdout_ = out[0];
  }
  ~Target() {
    if (pid_ > 0 && !reaped_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    ::close(stdin_);
    ::close(stdout_);
  }
  pid_t pid() const { return pid_; }

  // Waits for the "ready" line.
  bool ready() { return line().starts_with("ready"); }

  // The next line of its stdout, without the newline ("" at its end or after 10 s).
  std::string line() {
    std::string line;
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    while (line.find('\n') == std::string::npos) {
      pollfd p{stdout_, POLLIN, 0};
      if (std::chrono::steady_clock::now() > deadline || ::poll(&p, 1, 100) < 0) return "";
      char c;
      if (p.revents) {
        if (::read(stdout_, &c, 1) != 1) return "";  // closed before the line was whole
        line += c;
      }
    }
    line.pop_back();
    return line;
  }

  // Waits until the main thread is blocked in system call `nr` (/proc/PID/syscall).
  bool blocked_in(long nr) {
    const std::string want = std::to_string(nr) + " ";
    for (int i = 0; i < 2000; ++i) {
      if (read_file("/proc/" + std::to_string(pid_) + "/syscall").starts_with(want)) {
        // And asleep, not on its way in.
        const std::string stat = read_file("/proc/" + std::to_string(pid_) + "/stat");
        const auto paren = stat.rfind(')');
        if (paren != std::string::npos && stat.substr(paren + 2, 1) == "S") return true;
      }
      std::this_thread::sleep_for(1ms);
    }
    return false;
  }

  void send(std::string_view s) {
    ASSERT_EQ(::write(stdin_, s.data(), s.size()), (ssize_t)s.size());
  }

  // The exit status (as waitpid gives it), or -1 after `timeout` (then it is killed).
  int wait_exit(std::chrono::milliseconds timeout = 10s) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    int status = 0;
    for (;;) {
      const pid_t r = ::waitpid(pid_, &status, WNOHANG);
      if (r == pid_) {
        reaped_ = true;
        return status;
      }
      if (r < 0) {
        reaped_ = true;  // reaped by the injector's own wait (it traced our child)
        return -2;
      }
      if (std::chrono::steady_clock::now() > deadline) return -1;
      std::this_thread::sleep_for(1ms);
    }
  }

  std::size_t mapping_count() const {
    const std::string maps = read_file("/proc/" + std::to_string(pid_) + "/maps");
    return static_cast<std::size_t>(std::count(maps.begin(), maps.end(), '\n'));
  }

 private:
  pid_t pid_ = -1;
  int stdin_ = -1;
  int stdout_ = -1;
  bool reaped_ = false;
};

std::string temp_path(const std::string& stem) {
  return (fs::temp_directory_path() /
          (stem + "." + std::to_string(::getpid()) + "." +
           std::to_string(std::chrono::steady_clock::now().time_since_epoch().count())))
      .string();
}

// A path in a directory only root can write (the fixtures' directory in the build tree):
// root refuses to load a library from a world-writable place such as /tmp.
std::string secure_temp_path(const std::string& stem) {
  return (fs::path(HP_INJECT_LIB).parent_path() /
          (stem + "." + std::to_string(::getpid()) + "." +
           std::to_string(std::chrono::steady_clock::now().time_since_epoch().count())))
      .string();
}

void report_pause(const Report& r, const char* what) {
  std::cout << "[ pause    ] " << what << ": " << r.pause_ms << " ms (" << r.stop_latency_ms
            << " ms until it stopped), thread " << r.tid << ", " << r.attempts << " stop(s)"
            << (r.in_syscall ? ", in a syscall" : "") << "\n";
}

TEST(Inject, MultiThreadedTargetRunsConstructorAndContinues) {
  const std::string marker = temp_path("hp_inject_marker");
  Target t({"threads", "3"}, marker);
  ASSERT_TRUE(t.ready());
  auto r = load_library(t.pid(), HP_INJECT_LIB);
  ASSERT_TRUE(r.ok()) << r.error().message();
  report_pause(*r, "threads");
  EXPECT_NE(r->handle, 0u);
  EXPECT_LT(r->pause_ms, 1000.0);
  EXPECT_EQ(read_file(marker), "ctor " + std::to_string(t.pid()) + "\n");
  // The program goes on and ends normally: every counter moved.
  t.send("q\n");
  const int status = t.wait_exit();
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 0);
  std::remove(marker.c_str());
}

TEST(Inject, ChosenThreadMakesTheCall) {
  Target t({"threads", "2"});
  ASSERT_TRUE(t.ready());
  pid_t other = 0;
  for (const auto& e : fs::directory_iterator("/proc/" + std::to_string(t.pid()) + "/task")) {
    const pid_t tid = std::stoi(e.path().filename().string());
    if (tid != t.pid()) other = tid;
  }
  ASSERT_NE(other, 0);
  auto r = load_library(t.pid(), HP_INJECT_LIB, Options{.tid = other});
  ASSERT_TRUE(r.ok()) << r.error().message();
  report_pause(*r, "chosen thread");
  EXPECT_EQ(r->tid, other);
  auto bad = load_library(t.pid(), HP_INJECT_LIB, Options{.tid = 1});
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().message(), "process " + std::to_string(t.pid()) +
                                       " has no thread 1 (see /proc/" + std::to_string(t.pid()) +
                                       "/task)");
  t.send("q\n");
  const int status = t.wait_exit();
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

TEST(Inject, BlockedReadResumesWithoutEintr) {
  Target t({"read"});
  ASSERT_TRUE(t.ready());
  ASSERT_TRUE(t.blocked_in(SYS_read));
  auto r = load_library(t.pid(), HP_INJECT_LIB);
  ASSERT_TRUE(r.ok()) << r.error().message();
  report_pause(*r, "read");
  EXPECT_EQ(r->tid, t.pid());
  EXPECT_TRUE(r->in_syscall);
  // Still blocked in read, then the data arrives.
  EXPECT_TRUE(t.blocked_in(SYS_read));
  t.send("hello\n");
  const int status = t.wait_exit();
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 0) << "2: read failed with EINTR, 3: wrong data";
}

void sleep_test(const char* mode, long nr) {
  Target t({mode, "700"});
  ASSERT_TRUE(t.ready());
  ASSERT_TRUE(t.blocked_in(nr));
  auto r = load_library(t.pid(), HP_INJECT_LIB);
  ASSERT_TRUE(r.ok()) << r.error().message();
  report_pause(*r, mode);
  EXPECT_TRUE(r->in_syscall);
  const int status = t.wait_exit();
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 0) << "4: the sleep failed (EINTR), 5: it was cut short";
}

TEST(Inject, NanosleepCompletesItsFullDuration) {
  sleep_test("sleep", SYS_clock_nanosleep);
}
TEST(Inject, RawNanosleepCompletesItsFullDuration) {
  sleep_test("rawsleep", SYS_nanosleep);
}

TEST(Inject, CallFunctionReturnsTheResult) {
  Target t({"idle"});
  ASSERT_TRUE(t.ready());
  auto missing = call_function(t.pid(), HP_INJECT_LIB, "hp_test_entry", 5);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.error().message().find("is not loaded in process"), std::string::npos)
      << missing.error().message();
  auto r = load_library(t.pid(), HP_INJECT_LIB);
  ASSERT_TRUE(r.ok()) << r.error().message();
  auto v = call_function(t.pid(), HP_INJECT_LIB, "hp_test_entry", 5);
  ASSERT_TRUE(v.ok()) << v.error().message();
  EXPECT_EQ(*v, 16);
  auto neg = call_function(t.pid(), HP_INJECT_LIB, "hp_test_entry", -100);
  ASSERT_TRUE(neg.ok()) << neg.error().message();
  EXPECT_EQ(*neg, -299);
  auto hidden = call_function(t.pid(), HP_INJECT_LIB, "hp_test_hidden", 9);
  ASSERT_TRUE(hidden.ok()) << hidden.error().message();
  EXPECT_EQ(*hidden, -9);
  auto unknown = call_function(t.pid(), HP_INJECT_LIB, "hp_no_such_function", 1);
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.error().code(), Errc::not_found);
  // The process is unharmed.
  EXPECT_EQ(::kill(t.pid(), 0), 0);
  EXPECT_EQ(t.wait_exit(50ms), -1);
}

TEST(Inject, DlopenFailureReportsDlerror) {
  Target t({"idle"});
  ASSERT_TRUE(t.ready());
  const std::string bogus = secure_temp_path("hp_inject_not_elf") + ".so";
  std::ofstream(bogus) << std::string(4096, 'x');  // long enough for an ELF header, not one
  auto r = load_library(t.pid(), bogus);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("dlopen(\"" + bogus + "\") failed in process"),
            std::string::npos)
      << r.error().message();
  EXPECT_NE(r.error().message().find("invalid ELF header"), std::string::npos)
      << r.error().message();
  std::remove(bogus.c_str());
  auto rel = load_library(t.pid(), "libfoo.so");
  ASSERT_FALSE(rel.ok());
  EXPECT_EQ(rel.error().code(), Errc::invalid_argument);
  auto absent = load_library(t.pid(), "/nonexistent/libhp.so");
  ASSERT_FALSE(absent.ok());
  EXPECT_EQ(absent.error().code(), Errc::not_found) << absent.error().message();
  EXPECT_EQ(t.wait_exit(50ms), -1);  // still running
}

TEST(Inject, NoSuchProcess) {
  const std::string pid_max = read_file("/proc/sys/kernel/pid_max");
  const pid_t pid = static_cast<pid_t>(std::stol(pid_max));  // pids are below pid_max
  auto c = check_can_trace(pid);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.error().code(), Errc::not_found);
  EXPECT_EQ(c.error().message(), "no process with PID " + std::to_string(pid));
  auto r = load_library(pid, HP_INJECT_LIB);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message(), "no process with PID " + std::to_string(pid));
}

TEST(Inject, ProcessTracedByAnotherTracer) {
  Target t({"idle"});
  ASSERT_TRUE(t.ready());
  int sync[2];
  ASSERT_EQ(::pipe(sync), 0);
  const pid_t tracer = ::fork();
  if (tracer == 0) {
    char ok = ::ptrace(PTRACE_SEIZE, t.pid(), 0, 0) == 0 ? 'y' : 'n';
    if (::write(sync[1], &ok, 1) != 1) ::_exit(1);
    for (;;)
      ::pause();
  }
  char ok = 0;
  ASSERT_EQ(::read(sync[0], &ok, 1), 1);
  ::close(sync[0]);
  ::close(sync[1]);
  ASSERT_EQ(ok, 'y');
  auto r = load_library(t.pid(), HP_INJECT_LIB);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), Errc::busy);
  EXPECT_NE(r.error().message().find("process " + std::to_string(t.pid()) +
                                     " (hp_inject_targe) is being traced by PID " +
                                     std::to_string(tracer)),
            std::string::npos)
      << r.error().message();
  ::kill(tracer, SIGKILL);
  ::waitpid(tracer, nullptr, 0);
}

TEST(Inject, StoppedAndZombieProcessesAreRefused) {
  Target t({"idle"});
  ASSERT_TRUE(t.ready());
  ASSERT_EQ(::kill(t.pid(), SIGSTOP), 0);
  int status = 0;
  ASSERT_EQ(::waitpid(t.pid(), &status, WUNTRACED), t.pid());
  auto stopped = load_library(t.pid(), HP_INJECT_LIB);
  ASSERT_FALSE(stopped.ok());
  EXPECT_NE(stopped.error().message().find("is stopped"), std::string::npos);
  EXPECT_NE(stopped.error().message().find("kill -CONT " + std::to_string(t.pid())),
            std::string::npos)
      << stopped.error().message();
  ::kill(t.pid(), SIGCONT);

  const pid_t zombie = ::fork();
  if (zombie == 0) ::_exit(0);
  for (int i = 0; i < 1000; ++i) {  // until it is a zombie
    // (A sanitizer runtime may have a thread in the child that exits after the leader.)
    const std::string stat = read_file("/proc/" + std::to_string(zombie) + "/stat");
    const auto tasks =
        std::distance(fs::directory_iterator("/proc/" + std::to_string(zombie) + "/task"), {});
    if (stat.find(") Z") != std::string::npos && tasks == 1) break;
    std::this_thread::sleep_for(1ms);
  }
  auto z = check_can_trace(zombie);
  ASSERT_FALSE(z.ok()) << read_file("/proc/" + std::to_string(zombie) + "/status");
  EXPECT_NE(z.error().message().find("is a zombie"), std::string::npos) << z.error().message();
  ::waitpid(zombie, nullptr, 0);
}

// The state letter of thread `tid` of `pid` (field 3 of its stat), '-' when it is gone.
char thread_state(pid_t pid, pid_t tid) {
  const std::string stat =
      read_file("/proc/" + std::to_string(pid) + "/task/" + std::to_string(tid) + "/stat");
  const auto paren = stat.rfind(')');
  return paren == std::string::npos || paren + 2 >= stat.size() ? '-' : stat[paren + 2];
}

// A process that is dying is named as such: a zombie, and one held in the kernel's exit
// path (its tracer, another process, stops it at PTRACE_EVENT_EXIT), where its root and
// mount namespace are gone or going: not "another mount namespace", not "traced".
TEST(InjectDying, ZombieAndExitingProcessesAreNamedAsSuch) {
  const pid_t zombie = ::fork();
  if (zombie == 0) ::_exit(0);
  for (int i = 0; i < 5000 && thread_state(zombie, zombie) != 'Z'; ++i)
    std::this_thread::sleep_for(1ms);
  auto z = load_library(zombie, HP_INJECT_LIB);
  ASSERT_FALSE(z.ok());
  EXPECT_EQ(z.error().code(), Errc::not_found);
  EXPECT_NE(z.error().message().find("process " + std::to_string(zombie) + " ("), std::string::npos)
      << z.error().message();
  EXPECT_NE(z.error().message().find("is a zombie"), std::string::npos) << z.error().message();
  ::waitpid(zombie, nullptr, 0);

  if (::geteuid() != 0) GTEST_SKIP() << "needs root: a sibling process traces the target";
  Target t({"idle"});
  ASSERT_TRUE(t.ready());
  int to_tracer[2], from_tracer[2];
  ASSERT_EQ(::pipe(to_tracer), 0);
  ASSERT_EQ(::pipe(from_tracer), 0);
  const pid_t tracer = ::fork();
  if (tracer == 0) {
    // Seize with PTRACE_O_TRACEEXIT, say so, report the exit stop, hold it until told.
    char c = 's';
    if (::ptrace(PTRACE_SEIZE, t.pid(), 0, PTRACE_O_TRACEEXIT) != 0) c = 'e';
    if (::write(from_tracer[1], &c, 1) != 1 || c == 'e') ::_exit(1);
    int status = 0;
    while (::waitpid(t.pid(), &status, __WALL) == t.pid()) {
      if (WIFSTOPPED(status) && (status >> 16) == PTRACE_EVENT_EXIT) break;
      ::ptrace(PTRACE_CONT, t.pid(), 0, WIFSTOPPED(status) ? WSTOPSIG(status) : 0);
    }
    c = 'x';
    if (::write(from_tracer[1], &c, 1) != 1) ::_exit(1);
    (void)::read(to_tracer[0], &c, 1);
    ::_exit(0);  // the kernel detaches the target, which ends its exit
  }
  char c = 0;
  ASSERT_EQ(::read(from_tracer[0], &c, 1), 1);
  ASSERT_EQ(c, 's');
  ASSERT_EQ(::kill(t.pid(), SIGTERM), 0);
  ASSERT_EQ(::read(from_tracer[0], &c, 1), 1);
  ASSERT_EQ(c, 'x');
  auto e = load_library(t.pid(), HP_INJECT_LIB);
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.error().code(), Errc::not_found);
  EXPECT_NE(e.error().message().find("process " + std::to_string(t.pid()) + " ("),
            std::string::npos)
      << e.error().message();
  EXPECT_NE(e.error().message().find("is exiting"), std::string::npos) << e.error().message();
  auto chk = check_can_trace(t.pid());
  ASSERT_FALSE(chk.ok());
  EXPECT_NE(chk.error().message().find("is exiting"), std::string::npos) << chk.error().message();
  ASSERT_EQ(::write(to_tracer[1], "g", 1), 1);
  ::waitpid(tracer, nullptr, 0);
  const int status = t.wait_exit();
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM) << status;
  for (int fd : {to_tracer[0], to_tracer[1], from_tracer[0], from_tracer[1]})
    ::close(fd);
}

// A process whose leader has exited (pthread_exit) while a thread runs on is alive: its
// root and mount namespace are read through that thread, and the library loads.
TEST(InjectDying, ProcessWhoseLeaderExitedTakesTheLibrary) {
  const std::string marker = temp_path("hp_inject_marker");
  Target t({"leaderexit"}, marker);
  ASSERT_TRUE(t.ready());
  for (int i = 0; i < 5000 && thread_state(t.pid(), t.pid()) != 'Z'; ++i)
    std::this_thread::sleep_for(1ms);
  ASSERT_EQ(thread_state(t.pid(), t.pid()), 'Z');
  auto r = load_library(t.pid(), HP_INJECT_LIB);
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_NE(r->tid, t.pid());
  EXPECT_EQ(read_file(marker), "ctor " + std::to_string(t.pid()) + "\n");
  auto v = call_function(t.pid(), HP_INJECT_LIB, "hp_test_entry", 5);
  ASSERT_TRUE(v.ok()) << v.error().message();
  EXPECT_EQ(*v, 16);
  std::remove(marker.c_str());
}

// Threads that live for microseconds (each starts its successor and exits): a chosen
// thread that exits before it stops is replaced by another, the library is loaded once,
// every call returns its value, and the program ends with every thread it started ended.
// The first kStaged choices are made to exit before the interrupt (the hook waits until
// the seized thread is a zombie), so the replacement is exercised every run.
TEST(InjectThreadExit, ChosenThreadsThatExitAreReplaced) {
  constexpr int kStaged = 3;
  const std::string marker = temp_path("hp_inject_marker");
  const std::string stop = temp_path("hp_inject_stop");
  Target t({"exitchurn", "2"}, marker, {"HP_INJECT_STOP=" + stop});
  ASSERT_TRUE(t.ready());
  // The leader has exited (the injector does not choose its zombie entry).
  for (int i = 0; i < 5000 && thread_state(t.pid(), t.pid()) != 'Z'; ++i)
    std::this_thread::sleep_for(1ms);
  ASSERT_EQ(thread_state(t.pid(), t.pid()), 'Z');
  int staged = 0;
  Options o;
  o.test_after_seize = [&](pid_t tid) {
    if (staged >= kStaged) return;
    ++staged;
    for (int i = 0; i < 5000; ++i) {
      const char st = thread_state(t.pid(), tid);
      if (st == 'Z' || st == 'X' || st == '-') return;
      std::this_thread::sleep_for(1ms);
    }
  };
  auto r = load_library(t.pid(), HP_INJECT_LIB, o);
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(staged, kStaged);
  EXPECT_GE(r->threads_exited, kStaged);  // and any that exited on their own
  EXPECT_EQ(read_file(marker), "ctor " + std::to_string(t.pid()) + "\n");
  int exited = 0;
  for (long x = 0; x < 20; ++x) {
    auto v = call_function(t.pid(), HP_INJECT_LIB, "hp_test_entry", x);
    ASSERT_TRUE(v.ok()) << v.error().message();
    EXPECT_EQ(*v, 3 * x + 1);
  }
  for (int i = 0; i < 10; ++i) {
    auto again = load_library(t.pid(), HP_INJECT_LIB);
    ASSERT_TRUE(again.ok()) << again.error().message();
    EXPECT_EQ(again->handle, r->handle);
    exited += again->threads_exited;
    auto u = unload_library(t.pid(), again->handle);
    ASSERT_TRUE(u.ok()) << u.error().message();
  }
  std::cout << "[ churn    ] " << exited << " chosen thread(s) exited on their own in 10 loads\n";
  auto u = unload_library(t.pid(), r->handle);
  ASSERT_TRUE(u.ok()) << u.error().message();
  EXPECT_EQ(read_file(marker), "ctor " + std::to_string(t.pid()) + "\n");
  std::ofstream(stop).put('\n');
  const std::string done = t.line();
  long started = -1, ended = -2;
  ASSERT_EQ(std::sscanf(done.c_str(), "done %ld %ld", &started, &ended), 2) << done;
  EXPECT_EQ(started, ended);
  EXPECT_GT(started, 0);
  const int status = t.wait_exit();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  std::remove(marker.c_str());
  std::remove(stop.c_str());
}

TEST(Inject, TargetExitingDuringInjectionGivesAnErrorNotAHang) {
  {
    Target t({"idle"});
    ASSERT_TRUE(t.ready());
    const auto t0 = std::chrono::steady_clock::now();
    auto r = load_library(t.pid(), HP_INJECT_EXIT_LIB, Options{.timeout = 3000ms});
    ASSERT_FALSE(r.ok());
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 3500ms);
    EXPECT_EQ(r.error().code(), Errc::not_found);
    EXPECT_NE(r.error().message().find("exited during the injection (exit status 7)"),
              std::string::npos)
        << r.error().message();
    t.wait_exit();
  }
  // Targets that exit on their own at some moment around the injection.
  for (int i = 0; i < 8; ++i) {
    Target t({"sleep", std::to_string(i)});
    ASSERT_TRUE(t.ready());
    const auto t0 = std::chrono::steady_clock::now();
    auto r = load_library(t.pid(), HP_INJECT_LIB, Options{.timeout = 2000ms});
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 2500ms);
    if (!r.ok()) {
      EXPECT_TRUE(r.error().code() == Errc::not_found) << r.error().message();
    }
    const int status = t.wait_exit();
    EXPECT_TRUE(status == -2 || (WIFEXITED(status) && WEXITSTATUS(status) == 0)) << status;
  }
}

TEST(Inject, UnprivilegedUserIsRefused) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to drop to uid 65534";
  Target t({"idle"});
  ASSERT_TRUE(t.ready());
  int pipefd[2];
  ASSERT_EQ(::pipe(pipefd), 0);
  const pid_t child = ::fork();
  if (child == 0) {
    ::close(pipefd[0]);
    if (::setgroups(0, nullptr) != 0 || ::setgid(65534) != 0 || ::setuid(65534) != 0) {
      ::_exit(99);
    }
    auto c = check_can_trace(t.pid());
    auto r = load_library(t.pid(), HP_INJECT_LIB);
    std::string out = std::to_string(static_cast<int>(c.ok() ? Errc::ok : c.error().code())) +
                      "\n" + (c.ok() ? "" : c.error().message()) + "\n" +
                      std::to_string(static_cast<int>(r.ok() ? Errc::ok : r.error().code())) + "\n";
    if (::write(pipefd[1], out.data(), out.size()) < 0) ::_exit(98);
    ::_exit(0);
  }
  ::close(pipefd[1]);
  std::string out;
  char buf[512];
  ssize_t n;
  while ((n = ::read(pipefd[0], buf, sizeof buf)) > 0)
    out.append(buf, static_cast<size_t>(n));
  ::close(pipefd[0]);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  if (WIFEXITED(status) && WEXITSTATUS(status) == 99) GTEST_SKIP() << "setuid(65534) failed";
  std::istringstream in(out);
  std::string check_code, check_msg, load_code;
  std::getline(in, check_code);
  std::getline(in, check_msg);
  std::getline(in, load_code);
  const std::string denied = std::to_string(static_cast<int>(Errc::permission_denied));
  EXPECT_EQ(check_code, denied) << check_msg;
  EXPECT_NE(check_msg.find("runs as uid 0"), std::string::npos) << check_msg;
  EXPECT_NE(check_msg.find("run as that user, or as root"), std::string::npos) << check_msg;
  EXPECT_EQ(load_code, denied);
  EXPECT_EQ(t.wait_exit(10ms), -1);  // untouched
}

TEST(Inject, RepeatedLoadCallUnloadDoesNotGrowTheMappings) {
  const std::string marker = temp_path("hp_inject_marker");
  Target t({"threads", "2"}, marker);
  ASSERT_TRUE(t.ready());
  auto cycle = [&](std::size_t* loaded) {
    auto r = load_library(t.pid(), HP_INJECT_LIB);
    if (!r.ok()) return r.error().message();
    if (loaded) *loaded = t.mapping_count();
    auto v = call_function(t.pid(), HP_INJECT_LIB, "hp_test_entry", 2);
    if (!v.ok()) return v.error().message();
    if (*v != 7) return std::string("hp_test_entry(2) != 7");
    auto u = unload_library(t.pid(), r->handle);
    if (!u.ok()) return u.error().message();
    return std::string();
  };
  std::size_t loaded = 0;
  // Warm-up: the loader's first allocations, and the page of libc's code that holds the
  // return stub, which becomes a private copy once written (its mapping may then stop
  // merging with a neighbour the loader maps next to it).
  ASSERT_EQ(cycle(nullptr), "");
  ASSERT_EQ(cycle(&loaded), "");
  const std::size_t baseline = t.mapping_count();
  EXPECT_GT(loaded, baseline);
  // A leak adds mappings every cycle. While loaded, the count depends on where the loader
  // places the library (next to another mapping or not), so it only has to show the library
  // is there; after the unload, the kernel's merging and the loader's placement move a
  // boundary or two (seen: 30..32 under load), while a leak of one mapping per load adds
  // 20 over the loop.
  std::size_t lo_loaded = loaded, lo_after = baseline, hi_after = baseline;
  for (int i = 0; i < 20; ++i) {
    std::size_t now = 0;
    ASSERT_EQ(cycle(&now), "") << "cycle " << i;
    const std::size_t after = t.mapping_count();
    lo_loaded = std::min(lo_loaded, now);
    lo_after = std::min(lo_after, after), hi_after = std::max(hi_after, after);
  }
  EXPECT_GT(lo_loaded, hi_after) << "a load did not map the library";
  EXPECT_LE(hi_after - lo_after, 4u) << "mappings after unload drift: " << lo_after << ".."
                                     << hi_after << " (warm-up " << baseline << ")";
  // 22 constructors ran: each load really loaded the library again.
  const std::string text = read_file(marker);
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 22);
  t.send("q\n");
  const int status = t.wait_exit();
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 0);
  std::remove(marker.c_str());
}

// The stopped thread may be anywhere in malloc or in the loader (the program's own
// threads, the leader among them, allocate and dlopen/dlclose in loops): the injector
// must find a safe point each time, and the program must come out intact.
TEST(Inject, BusyAllocatorAndLoaderThreadsSurviveRepeatedInjection) {
  const std::string churn_copy = temp_path("hp_inject_churn") + ".so";
  fs::copy_file(HP_INJECT_LIB, churn_copy);  // another inode: loaded on its own
  Target t({"churn", churn_copy});
  ASSERT_TRUE(t.ready());
  int stops = 0;
  double worst = 0;
  for (int i = 0; i < 10; ++i) {
    auto r = load_library(t.pid(), HP_INJECT_LIB);
    ASSERT_TRUE(r.ok()) << "round " << i << ": " << r.error().message();
    stops += r->attempts;
    worst = std::max(worst, r->pause_ms);
    auto v = call_function(t.pid(), HP_INJECT_LIB, "hp_test_entry", i);
    ASSERT_TRUE(v.ok()) << "round " << i << ": " << v.error().message();
    EXPECT_EQ(*v, 3 * i + 1);
    auto u = unload_library(t.pid(), r->handle);
    ASSERT_TRUE(u.ok()) << "round " << i << ": " << u.error().message();
  }
  std::cout << "[ churn    ] 10 loads took " << stops << " stops; worst pause " << worst << " ms\n";
  t.send("q\n");
  const int status = t.wait_exit();
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 0) << "8: the program's own dlopen failed";
  std::remove(churn_copy.c_str());
}

TEST(Inject, OtherMountNamespaceNeedsThePathTheTargetSees) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root for a mount namespace";
  // In a directory only root can write, on a tmpfs of mode 0755: root loads no library
  // from a place another user could write.
  const std::string dir = secure_temp_path("hp_inject_ns");
  fs::create_directories(dir);
  fs::copy_file(HP_INJECT_LIB, dir + "/lib.so");
  int sync[2];
  ASSERT_EQ(::pipe(sync), 0);
  // The child makes a mount namespace where `dir` is an empty tmpfs, then becomes an
  // idle target there.
  const pid_t child = ::fork();
  if (child == 0) {
    char ok = 'y';
    if (::unshare(CLONE_NEWNS) != 0 ||
        ::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0 ||
        ::mount("tmpfs", dir.c_str(), "tmpfs", 0, "mode=0755") != 0) {
      ok = 'n';
    }
    if (::write(sync[1], &ok, 1) != 1 || ok != 'y') ::_exit(99);
    char* argv[] = {const_cast<char*>(HP_INJECT_TARGET), const_cast<char*>("idle"), nullptr};
    char* envp[] = {nullptr};
    const int devnull = ::open("/dev/null", O_WRONLY);
    ::dup2(devnull, 1);
    ::execve(argv[0], argv, envp);
    ::_exit(127);
  }
  ::close(sync[1]);
  char ok = 0;
  ASSERT_EQ(::read(sync[0], &ok, 1), 1);
  ::close(sync[0]);
  if (ok != 'y') {
    ::waitpid(child, nullptr, 0);
    fs::remove_all(dir);
    GTEST_SKIP() << "cannot make a mount namespace here";
  }
  // Until the exec is done (the executable is the target's, not ours).
  for (int i = 0; i < 2000; ++i) {
    if (fs::read_symlink("/proc/" + std::to_string(child) + "/exe") == HP_INJECT_TARGET) break;
    std::this_thread::sleep_for(1ms);
  }
  std::this_thread::sleep_for(20ms);
  auto r = load_library(child, dir + "/lib.so");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), Errc::not_found);
  EXPECT_NE(r.error().message().find("runs in another mount namespace"), std::string::npos)
      << r.error().message();
  // Copied where the target sees it, it loads.
  const std::string inside = "/proc/" + std::to_string(child) + "/root" + dir + "/lib2.so";
  fs::copy_file(HP_INJECT_LIB, inside);
  auto r2 = load_library(child, dir + "/lib2.so");
  ASSERT_TRUE(r2.ok()) << r2.error().message();
  EXPECT_TRUE(r2->other_mount_ns);
  auto v = call_function(child, dir + "/lib2.so", "hp_test_entry", 1);
  ASSERT_TRUE(v.ok()) << v.error().message();
  EXPECT_EQ(*v, 4);
  ::kill(child, SIGKILL);
  ::waitpid(child, nullptr, 0);
  fs::remove_all(dir);
}

// A program (not our fixture) with its stdin and stdout on pipes.
class Program {
 public:
  explicit Program(std::vector<std::string> args) {
    int in[2], out[2];
    if (::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0) std::abort();
    std::vector<char*> argv;
    for (auto& a : args)
      argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_ = ::fork();
    if (pid_ == 0) {
      ::setpgid(0, 0);  // its children (bash's sleep) go with it
      ::dup2(in[0], 0);
      ::dup2(out[1], 1);
      ::execvp(argv[0], argv.data());
      ::_exit(127);
    }
    ::close(in[0]);
    ::close(out[1]);
    stdin_ = in[1];
    stdout_ = out[0];
  }
  ~Program() {
    ::kill(-pid_, SIGKILL);
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    ::close(stdin_);
    ::close(stdout_);
  }
  pid_t pid() const { return pid_; }
  int in() const { return stdin_; }
  // A line of its stdout ("" after 10 s or at its end).
  std::string line() {
    std::string l;
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    while (std::chrono::steady_clock::now() < deadline) {
      pollfd p{stdout_, POLLIN, 0};
      if (::poll(&p, 1, 100) <= 0) continue;
      char c;
      if (::read(stdout_, &c, 1) != 1) break;
      if (c == '\n') return l;
      l += c;
    }
    return l;
  }
  // Until its main thread sleeps in system call `nr`.
  bool blocked_in(long nr) {
    const std::string want = std::to_string(nr) + " ";
    for (int i = 0; i < 5000; ++i) {
      const std::string stat = read_file("/proc/" + std::to_string(pid_) + "/stat");
      const auto paren = stat.rfind(')');
      if (read_file("/proc/" + std::to_string(pid_) + "/syscall").starts_with(want) &&
          paren != std::string::npos && stat.substr(paren + 2, 1) == "S") {
        return true;
      }
      std::this_thread::sleep_for(1ms);
    }
    return false;
  }

 private:
  pid_t pid_ = -1;
  int stdin_ = -1, stdout_ = -1;
};

bool maps_mention(pid_t pid, const std::string& what) {
  return read_file("/proc/" + std::to_string(pid) + "/maps").find(what) != std::string::npos;
}

// Idle programs keep stale return addresses into malloc and stdio in the unused parts of
// their stacks; the injector decides from the thread's real frames, so each is injected
// at its first stop, well within a second.
void expect_injects_within_a_second(pid_t pid, const char* what) {
  Options o;
  o.timeout = 1000ms;
  auto r = load_library(pid, HP_INJECT_LIB, o);
  ASSERT_TRUE(r.ok()) << what << ": " << r.error().message();
  report_pause(*r, what);
  EXPECT_TRUE(maps_mention(pid, fs::path(HP_INJECT_LIB).filename().string())) << what;
  auto u = unload_library(pid, r->handle, o);
  EXPECT_TRUE(u.ok()) << what << ": " << u.error().message();
}

TEST(InjectIdle, BashWaitingForItsChild) {
  Program p({"bash", "-c", "sleep 30; true"});
  ASSERT_TRUE(p.blocked_in(SYS_wait4)) << "bash did not start waiting for sleep";
  expect_injects_within_a_second(p.pid(), "bash in wait4");
}

TEST(InjectIdle, PythonSleepingAfterJsonDumps) {
  Program p({"python3", "-c",
             "import json, time\n"
             "s = json.dumps({'k': [i * 1.5 for i in range(1000)], 'n': 'x' * 5000})\n"
             "print('ready', len(s), flush=True)\n"
             "time.sleep(30)\n"});
  ASSERT_TRUE(p.line().starts_with("ready"));
  ASSERT_TRUE(p.blocked_in(SYS_clock_nanosleep) || p.blocked_in(SYS_select) ||
              p.blocked_in(SYS_pselect6))
      << read_file("/proc/" + std::to_string(p.pid()) + "/syscall");
  expect_injects_within_a_second(p.pid(), "python3 in time.sleep");
}

TEST(InjectIdle, ProgramBlockedReadingStdin) {
  Program p({"sqlite3", ":memory:"});
  ASSERT_TRUE(p.blocked_in(SYS_read)) << "sqlite3 did not block reading its stdin";
  expect_injects_within_a_second(p.pid(), "sqlite3 in read");
  // It goes on reading its input afterwards.
  const std::string q = "select 6*7;\n";
  ASSERT_EQ(::write(p.in(), q.data(), q.size()), static_cast<ssize_t>(q.size()));
  EXPECT_EQ(p.line(), "42");
}

// An injector killed at any instant (SIGKILL, or SIGINT with its default action) leaves
// the target running as it was, and a later injection works. The injector runs in a loop
// (load, call, unload) and is killed 1-60 ms after it starts, at instants from a fixed
// seed. HP_INJECT_KILL_TEST_SENTINEL=1 runs the injector with the legacy sentinel return
// (Options::test_sentinel_return), and then the target dies: that is what the test is
// for.
TEST(InjectKill, KilledInjectorNeverHurtsTheTarget) {
  const bool sentinel = std::getenv("HP_INJECT_KILL_TEST_SENTINEL") != nullptr;
  Target t({"threads", "2"});
  ASSERT_TRUE(t.ready());
  std::mt19937 rng(20261207);
  std::uniform_int_distribution<int> instant_us(1000, 60000);
  constexpr int kRounds = 30;
  for (int i = 0; i < kRounds; ++i) {
    int err[2];
    ASSERT_EQ(::pipe2(err, O_CLOEXEC), 0);
    const pid_t d = ::fork();
    if (d == 0) {
      ::dup2(err[1], 2);
      const std::string id = std::to_string(t.pid());
      std::vector<char*> argv{const_cast<char*>(HP_INJECT_DRIVER), const_cast<char*>(id.c_str()),
                              const_cast<char*>(HP_INJECT_LIB)};
      if (sentinel) argv.push_back(const_cast<char*>("sentinel"));
      argv.push_back(nullptr);
      ::signal(SIGINT, SIG_DFL);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    ::close(err[1]);
    const int sig = i == kRounds - 1 ? SIGINT : SIGKILL;
    std::this_thread::sleep_for(std::chrono::microseconds(instant_us(rng)));
    ::kill(d, sig);
    int status = 0;
    ASSERT_EQ(::waitpid(d, &status, 0), d);
    char buf[512] = {};
    const ssize_t n = ::read(err[0], buf, sizeof buf - 1);
    ::close(err[0]);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == sig)
        << "round " << i << ": the injector ended by itself: " << std::string(buf, n > 0 ? n : 0);
    // The target lives on (a thread left at a sentinel return faults within microseconds).
    const int target = t.wait_exit(20ms);
    ASSERT_EQ(target, -1) << "round " << i << ": the target died (status " << target << ")";
  }
  std::cout << "[ kill     ] " << kRounds << " injectors killed 1-60 ms after their start\n";
  // A later injection works, and the program ends normally.
  auto r = load_library(t.pid(), HP_INJECT_LIB);
  ASSERT_TRUE(r.ok()) << r.error().message();
  auto v = call_function(t.pid(), HP_INJECT_LIB, "hp_test_entry", 5);
  ASSERT_TRUE(v.ok()) << v.error().message();
  EXPECT_EQ(*v, 16);
  t.send("q\n");
  const int status = t.wait_exit();
  ASSERT_TRUE(WIFEXITED(status)) << "the target died: status " << status;
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

// Root refuses a library that another user could replace (OpenSSH's secure-path rule):
// in a world-writable directory, or writable by its group; nothing is loaded.
TEST(InjectSecurity, LibraryOthersCanWriteIsRefusedForRoot) {
  if (::geteuid() != 0) GTEST_SKIP() << "the rule applies to root";
  Target t({"idle"});
  ASSERT_TRUE(t.ready());
  char dir_template[] = "/tmp/hp_inject_ww_XXXXXX";
  ASSERT_NE(::mkdtemp(dir_template), nullptr);
  const std::string dir = dir_template;
  ASSERT_EQ(::chmod(dir.c_str(), 0777), 0);
  const std::string lib = dir + "/libhp_ww.so";
  fs::copy_file(HP_INJECT_LIB, lib);
  ::chmod(lib.c_str(), 0755);
  auto r = load_library(t.pid(), lib);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), Errc::permission_denied);
  EXPECT_NE(r.error().message().find("refusing to load " + lib), std::string::npos)
      << r.error().message();
  EXPECT_NE(r.error().message().find("is writable by everyone"), std::string::npos)
      << r.error().message();
  EXPECT_NE(r.error().message().find("only root can write"), std::string::npos)
      << r.error().message();
  // The file itself group-writable, in a directory only root writes.
  const std::string safe_dir = secure_temp_path("hp_inject_gw");
  fs::create_directory(safe_dir);
  ::chmod(safe_dir.c_str(), 0755);
  const std::string lib2 = safe_dir + "/libhp_gw.so";
  fs::copy_file(HP_INJECT_LIB, lib2);
  ::chmod(lib2.c_str(), 0775);
  auto r2 = load_library(t.pid(), lib2);
  ASSERT_FALSE(r2.ok());
  EXPECT_NE(r2.error().message().find("is writable by its group"), std::string::npos)
      << r2.error().message();
  EXPECT_FALSE(maps_mention(t.pid(), "libhp_ww.so"));
  EXPECT_FALSE(maps_mention(t.pid(), "libhp_gw.so"));
  // Mode 0755: loads.
  ::chmod(lib2.c_str(), 0755);
  auto ok = load_library(t.pid(), lib2);
  EXPECT_TRUE(ok.ok()) << ok.error().message();
  fs::remove_all(dir);
  fs::remove_all(safe_dir);
}

// A directory of root's with the sticky bit (as /tmp, or a `mktemp -d` checkout below it)
// is safe above a root-owned library: only an entry's owner can rename it there. The same
// directory owned by another user is not (that user could rename the entries), nor is one
// without the sticky bit (covered above).
TEST(InjectSecurity, RootsStickyDirectoryIsSafeAnotherUsersIsNot) {
  if (::geteuid() != 0) GTEST_SKIP() << "the rule applies to root";
  Target t({"idle"});
  ASSERT_TRUE(t.ready());
  const std::string top = secure_temp_path("hp_inject_sticky");
  ASSERT_TRUE(fs::create_directory(top));
  ASSERT_EQ(::chmod(top.c_str(), 01777), 0);
  const std::string inner = top + "/inner";  // as `mktemp -d` makes it: root's, 0700
  ASSERT_TRUE(fs::create_directory(inner));
  ASSERT_EQ(::chmod(inner.c_str(), 0700), 0);
  const std::string lib = inner + "/libhp_sticky.so";
  fs::copy_file(HP_INJECT_LIB, lib);
  ::chmod(lib.c_str(), 0755);
  auto ok = load_library(t.pid(), lib);
  EXPECT_TRUE(ok.ok()) << ok.error().message();
  EXPECT_TRUE(maps_mention(t.pid(), "libhp_sticky.so"));

  // The sticky directory belongs to user nobody: refused, naming it.
  ASSERT_EQ(::chown(top.c_str(), 65534, 65534), 0);
  const std::string lib2 = inner + "/libhp_sticky2.so";
  fs::copy_file(HP_INJECT_LIB, lib2);
  ::chmod(lib2.c_str(), 0755);
  auto r = load_library(t.pid(), lib2);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), Errc::permission_denied);
  EXPECT_NE(r.error().message().find("directory " + top), std::string::npos) << r.error().message();
  EXPECT_NE(r.error().message().find("belongs to uid 65534"), std::string::npos)
      << r.error().message();
  EXPECT_FALSE(maps_mention(t.pid(), "libhp_sticky2.so"));
  fs::remove_all(top);
}

// The process exits after the checks and its PID goes to another process before the
// stop (staged with Options::after_checks and /proc/sys/kernel/ns_last_pid): the
// injector sees that the stopped process is not the one it checked and injects nothing.
TEST(InjectIdentity, PidReusedAfterTheChecksIsRefused) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to write ns_last_pid";
  if (::access("/proc/sys/kernel/ns_last_pid", W_OK) != 0) GTEST_SKIP() << "no ns_last_pid";
  Target t({"idle"});
  ASSERT_TRUE(t.ready());
  const pid_t pid = t.pid();
  pid_t impostor = -1;
  Options o;
  o.after_checks = [&] {
    ::kill(pid, SIGKILL);
    t.wait_exit();
    for (int attempt = 0; attempt < 100 && impostor < 0; ++attempt) {
      std::ofstream("/proc/sys/kernel/ns_last_pid") << pid - 1;
      const pid_t c = ::fork();
      if (c == 0) {
        for (;;)
          ::pause();
      }
      if (c == pid) {
        impostor = c;
      } else {
        ::kill(c, SIGKILL);
        ::waitpid(c, nullptr, 0);
      }
    }
  };
  auto r = load_library(pid, HP_INJECT_LIB, o);
  if (impostor < 0) GTEST_SKIP() << "could not give PID " << pid << " to a new process";
  ASSERT_FALSE(r.ok()) << "injected into the process that took over the PID";
  EXPECT_NE(r.error().message().find("now belongs to another process"), std::string::npos)
      << r.error().message();
  EXPECT_FALSE(maps_mention(impostor, fs::path(HP_INJECT_LIB).filename().string()));
  ::kill(impostor, SIGKILL);
  ::waitpid(impostor, nullptr, 0);
}

// The process executes another program after the checks: refused, nothing injected.
TEST(InjectIdentity, ExecAfterTheChecksIsRefused) {
  Program p({"sh", "-c", "read x; exec sleep 30"});
  ASSERT_TRUE(p.blocked_in(SYS_read));
  Options o;
  o.after_checks = [&] {
    ASSERT_EQ(::write(p.in(), "go\n", 3), 3);
    for (int i = 0; i < 5000; ++i) {
      if (fs::read_symlink("/proc/" + std::to_string(p.pid()) + "/exe").filename() == "sleep") {
        break;
      }
      std::this_thread::sleep_for(1ms);
    }
  };
  auto r = load_library(p.pid(), HP_INJECT_LIB, o);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("executed another program"), std::string::npos)
      << r.error().message();
  EXPECT_FALSE(maps_mention(p.pid(), fs::path(HP_INJECT_LIB).filename().string()));
}

}  // namespace
}  // namespace hp::inject
