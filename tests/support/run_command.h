// Running a command from an end-to-end test: the built hotprobe (or a wrapper of it) in
// its own process group, its stdout and stderr captured in files, stdin from a string or
// /dev/null, with a bound after which the whole group is killed and the test fails.
//
//   hp::test::Command c{{HP_HOTPROBE, "run", "-e", script, "--", target}};
//   c.env = {{"HOTPROBE_AGENT", HP_AGENT}};
//   hp::test::CommandResult r = hp::test::run_command(c);
//   EXPECT_EQ(r.code, 0) << r.err;
//
// The bound is not a timing assertion: it only stops a broken run from hanging until
// ctest's timeout, and says which command did not end.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <functional>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace hp::test {

struct CommandResult {
  int code = -1;  // exit status, 128+N for signal N, -1 when it did not end in time
  std::string out, err;
};

struct Command {
  std::vector<std::string> argv;  // argv[0] without a '/' is looked up in PATH
  // Set in the command's environment, or removed from it (nullopt).
  std::vector<std::pair<std::string, std::optional<std::string>>> env = {};
  std::optional<std::string> input = {};  // written to a pipe on its stdin; else /dev/null
  // Descriptors 3-63 are closed in the command except this one (-1: all of them); without
  // it the command inherits the test's descriptors.
  std::optional<int> close_fds_but = {};
  std::function<void()> in_child = {};  // runs in the child before exec (setrlimit, ...)
  // Runs while the command runs, with its pid and the path of its stdout file.
  std::function<void(pid_t, const std::string&)> during = {};
  std::chrono::seconds timeout{60};
};

inline std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline bool contains(const std::string& s, const std::string& what) {
  return s.find(what) != std::string::npos;
}

// A path in the test's temporary directory, named by `what` and this process.
inline std::string temp_path(const std::string& what) {
  return ::testing::TempDir() + "hp_test_" + std::to_string(::getpid()) + "_" + what;
}

inline CommandResult run_command(const Command& c) {
  CommandResult r;
  if (c.argv.empty()) {
    ADD_FAILURE() << "run_command: no command";
    return r;
  }
  const std::string out_path = temp_path("command_out"), err_path = temp_path("command_err");
  int in_pipe[2] = {-1, -1};
  if (c.input && ::pipe(in_pipe) != 0) {
    ADD_FAILURE() << "run_command: pipe: " << std::strerror(errno);
    return r;
  }
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::setpgid(0, 0);
    if (c.input) {
      ::dup2(in_pipe[0], 0);
      ::close(in_pipe[0]);
      ::close(in_pipe[1]);
    } else {
      const int null = ::open("/dev/null", O_RDONLY);
      ::dup2(null, 0);
    }
    const int o = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    const int e = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ::dup2(o, 1);
    ::dup2(e, 2);
    if (c.close_fds_but) {
      for (int fd = 3; fd < 64; ++fd)
        if (fd != *c.close_fds_but) ::close(fd);
    }
    for (const auto& [name, value] : c.env) {
      if (value)
        ::setenv(name.c_str(), value->c_str(), 1);
      else
        ::unsetenv(name.c_str());
    }
    if (c.in_child) c.in_child();
    std::vector<char*> argv;
    for (const auto& a : c.argv)
      argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execvp(argv[0], argv.data());
    ::_exit(99);
  }
  ::setpgid(pid, pid);
  if (c.input) {
    ::close(in_pipe[0]);
    if (!c.input->empty()) {
      const ssize_t n = ::write(in_pipe[1], c.input->data(), c.input->size());
      (void)n;
    }
    ::close(in_pipe[1]);
  }
  if (c.during) c.during(pid, out_path);
  const auto deadline = std::chrono::steady_clock::now() + c.timeout;
  int status = 0;
  while (::waitpid(pid, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(-pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      ADD_FAILURE() << c.argv[0] << " did not end within " << c.timeout.count() << " s";
      status = -1;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (status != -1) r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = read_file(out_path);
  r.err = read_file(err_path);
  ::unlink(out_path.c_str());
  ::unlink(err_path.c_str());
  return r;
}

// The built hotprobe with `args`, its agent named (HOTPROBE_AGENT): for test programs
// compiled with HP_HOTPROBE and HP_AGENT defined.
#if defined(HP_HOTPROBE) && defined(HP_AGENT)
inline CommandResult hotprobe(const std::vector<std::string>& args) {
  Command c{{HP_HOTPROBE}};
  c.argv.insert(c.argv.end(), args.begin(), args.end());
  c.env = {{"HOTPROBE_AGENT", HP_AGENT}};
  return run_command(c);
}
#endif

}  // namespace hp::test
