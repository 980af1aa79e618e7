// system() and cat() of a script run with --unsafe: the agent asks, hotprobe runs them in
// its own process (never in the traced one) and prints what they print (cli.h).
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include "cli/cli.h"
#include "script/output.h"
#include "script/program.h"

namespace hp::cli {

namespace {

// What cat() prints of a file at most (bpftrace's default for BPFTRACE_CAT_BYTES_MAX).
constexpr std::size_t kCatBytesMax = 10240;

// What `fd` gives until its end, `max` bytes at most.
std::string read_up_to(int fd, std::size_t max) {
  std::string text;
  char buf[4096];
  while (text.size() < max) {
    const ssize_t n = ::read(fd, buf, std::min(sizeof buf, max - text.size()));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    text.append(buf, static_cast<std::size_t>(n));
  }
  return text;
}

// The standard output of `/bin/sh -c command`; its standard error is hotprobe's, and a
// command that fails prints what it printed (bpftrace's system()).
std::string run_shell(const std::string& command) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    std::fprintf(stderr, "hotprobe: system(): cannot make a pipe: %s\n", std::strerror(errno));
    return {};
  }
  const pid_t child = ::fork();
  if (child == 0) {
    ::dup2(fds[1], STDOUT_FILENO);
    ::close_range(3, ~0u, 0);  // not the agent's channel, nor hotprobe's files
    ::execl("/bin/sh", "sh", "-c", command.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ::close(fds[1]);
  std::string text;
  if (child < 0) {
    std::fprintf(stderr, "hotprobe: system(): cannot start /bin/sh: %s\n", std::strerror(errno));
  } else {
    text = read_up_to(fds[0], std::string::npos);
    while (::waitpid(child, nullptr, 0) < 0 && errno == EINTR) {
    }
  }
  ::close(fds[0]);
  return text;
}

// At most kCatBytesMax bytes of `path`; a file that cannot be read is said on stderr and
// tracing goes on (bpftrace's cat()).
std::string read_for_cat(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  std::string text;
  if (fd < 0) {
    std::string shown;
    hotprobe::script::append_text_escaped(shown, path);
    std::fprintf(stderr, "hotprobe: cat(): cannot open '%s': %s\n", shown.c_str(),
                 std::strerror(errno));
    return text;
  }
  text = read_up_to(fd, kCatBytesMax);
  ::close(fd);
  return text;
}

}  // namespace

bool request_from_own_user(pid_t pid, long sender_uid, const char* command) {
  // The sender's uid as the kernel gave it (-1: not known), and every uid of the process
  // while it is there (real, effective, saved, filesystem), must be hotprobe's: a process
  // of another user could write a forged request on the channel, which hotprobe would run
  // as its own user.
  bool same = sender_uid < 0 || sender_uid == static_cast<long>(::getuid());
  bool seen = sender_uid >= 0;
  if (std::FILE* f = std::fopen(("/proc/" + std::to_string(pid) + "/status").c_str(), "re")) {
    char line[256];
    unsigned long ids[4];
    while (std::fgets(line, sizeof line, f)) {
      if (std::sscanf(line, "Uid: %lu %lu %lu %lu", &ids[0], &ids[1], &ids[2], &ids[3]) != 4)
        continue;
      seen = true;
      same = same && std::all_of(std::begin(ids), std::end(ids),
                                 [](unsigned long id) { return id == ::getuid(); });
      break;
    }
    std::fclose(f);
  }
  static bool said = false;
  if ((!same || !seen) && !said) {
    said = true;
    std::fprintf(stderr,
                 "hotprobe %s: system() and cat() requests from process %d are not run: it "
                 "does not run as hotprobe's user (uid %u), and a process of another user "
                 "could forge them (run hotprobe as that process's user to use them)\n",
                 command, static_cast<int>(pid), static_cast<unsigned>(::getuid()));
  }
  return same && seen;
}

std::string run_command_request(std::string_view payload, hotprobe::script::OutputFormat format) {
  namespace script = hotprobe::script;
  if (payload.empty()) return {};
  const auto kind = static_cast<script::Sink::Request>(payload[0]);
  const std::string arg(payload.substr(1));
  const bool system = kind == script::Sink::Request::system;
  if (!system && kind != script::Sink::Request::cat) return {};
  std::fflush(stdout);  // the command's standard error after what hotprobe printed
  std::string text = system ? run_shell(arg) : read_for_cat(arg);
  if (format == script::OutputFormat::text) return text;
  std::string out;
  script::append_message(out, system ? "syscall" : "cat", text, format);
  return out;
}

}  // namespace hp::cli
