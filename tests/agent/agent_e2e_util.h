// Helpers of the end-to-end tests of tests/agent and tests/realprogs: run a command with
// its output captured and a bound on its time, read a count map's value from hotprobe's
// or bpftrace's output, and get bpftrace's counts on the same command (the reference).
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace hp::agent_test {

inline std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline std::string temp_dir(const std::string& what) {
  static int serial = 0;
  std::string d = ::testing::TempDir() + "hp_agent_" + std::to_string(::getpid()) + "_" + what +
                  "_" + std::to_string(++serial);
  ::mkdir(d.c_str(), 0755);
  return d;
}

struct RunResult {
  int status = -1;  // exit status, 128+N for signal N, -1: did not end in time (killed)
  std::string out, err;
};

// Runs args[0] with `args` (extra `env` entries "NAME=value" added), stdin /dev/null,
// stdout and stderr captured; kills it (and its process group) after `limit`.
inline RunResult run_command(const std::vector<std::string>& args,
                             const std::vector<std::string>& env, std::chrono::seconds limit) {
  RunResult r;
  std::string dir = temp_dir("run");
  std::string out_path = dir + "/out", err_path = dir + "/err";
  pid_t pid = ::fork();
  if (pid == 0) {
    ::setpgid(0, 0);
    int in = ::open("/dev/null", O_RDONLY);
    int o = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int e = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (in < 0 || o < 0 || e < 0) ::_exit(98);
    ::dup2(in, 0);
    ::dup2(o, 1);
    ::dup2(e, 2);
    for (const auto& kv : env)
      ::putenv(const_cast<char*>(kv.c_str()));
    std::vector<char*> argv;
    for (const auto& a : args)
      argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execvp(argv[0], argv.data());
    ::_exit(127);
  }
  auto deadline = std::chrono::steady_clock::now() + limit;
  int status = 0;
  for (;;) {
    pid_t w = ::waitpid(pid, &status, WNOHANG);
    if (w == pid) break;
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(-pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      r.out = read_file(out_path);
      r.err = read_file(err_path) + "\n(killed: did not end within the limit)";
      return r;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = read_file(out_path);
  r.err = read_file(err_path);
  return r;
}

// The value of count map `@name` in bpftrace's text output ("@name: N"); 0 when it is not
// printed (a map never written; bpftrace prints "@name: 0" for it, hotprobe nothing).
inline long map_value(const std::string& out, const std::string& name) {
  std::istringstream in(out);
  std::string line;
  const std::string prefix = "@" + name + ": ";
  while (std::getline(in, line))
    if (line.rfind(prefix, 0) == 0) return std::atol(line.c_str() + prefix.size());
  return 0;
}

// Empty when bpftrace can run here; else why not (the reason for GTEST_SKIP).
inline std::string bpftrace_usable() {
  static const std::string why = [] {
    if (::geteuid() != 0) return std::string("bpftrace needs root");
    if (::access("/usr/bin/bpftrace", X_OK) != 0 && ::access("/usr/sbin/bpftrace", X_OK) != 0)
      return std::string("bpftrace is not installed");
    RunResult r =
        run_command({"bpftrace", "-e", "BEGIN { exit(); }"}, {}, std::chrono::seconds(60));
    if (r.status != 0) return "bpftrace does not run here: " + r.err;
    return std::string();
  }();
  return why;
}

// bpftrace's count of calls of each libc function `fns` made by `command` (its process
// only: /pid == cpid/), or nothing when bpftrace failed.
inline std::optional<std::map<std::string, long>> bpftrace_counts(
    const std::vector<std::string>& fns, const std::vector<std::string>& command,
    const std::string& module = "libc") {
  std::string script;
  for (const auto& f : fns)
    script += "uprobe:" + module + ":" + f + " /pid == cpid/ { @" + f + " = count(); } ";
  std::string cmd;
  for (const auto& a : command)
    cmd += (cmd.empty() ? "" : " ") + a;
  RunResult r = run_command({"bpftrace", "-e", script, "-c", cmd}, {}, std::chrono::seconds(120));
  if (r.status != 0 || r.out.find("Attaching") == std::string::npos) {
    ADD_FAILURE() << "bpftrace failed (" << r.status << "): " << r.err << r.out;
    return std::nullopt;
  }
  std::map<std::string, long> counts;
  for (const auto& f : fns)
    counts[f] = map_value(r.out, f);
  return counts;
}

// Counts libc's `fns` in `command` under bpftrace and under `hotprobe run` (the binary
// `hotprobe`) and expects them equal.
inline void expect_counts_equal_bpftrace(const std::string& hotprobe,
                                         const std::vector<std::string>& fns,
                                         const std::vector<std::string>& command) {
  auto want = bpftrace_counts(fns, command);
  ASSERT_TRUE(want.has_value()) << "bpftrace did not run";
  std::string script;
  for (const auto& f : fns)
    script += "uprobe:libc:" + f + " { @" + f + " = count(); } ";
  std::vector<std::string> args{hotprobe, "run", "-e", script, "--"};
  args.insert(args.end(), command.begin(), command.end());
  RunResult r = run_command(args, {}, std::chrono::seconds(60));
  ASSERT_EQ(r.status, 0) << r.err;
  for (const auto& f : fns)
    EXPECT_EQ(map_value(r.out, f), (*want)[f]) << f << "\n" << r.out;
}

}  // namespace hp::agent_test
