// `hotprobe attach -p PID`: inject the agent into a running process, run the script until
// Ctrl-C (or exit(), or the process's end), then remove every probe. docs/design/agent.md.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>

#include <fmt/format.h>

#include "agent/protocol.h"
#include "cli/cli.h"
#include "cli/output_file.h"
#include "inject/inject.h"

namespace hp::cli {
namespace {

namespace agent = hp::agent;

int g_attach_pipe[2] = {-1, -1};

void on_attach_signal(int sig) {
  int saved = errno;
  char c = static_cast<char>(sig);
  ssize_t r = ::write(g_attach_pipe[1], &c, 1);
  (void)r;
  errno = saved;
}

// The user's private socket directory: made 0700, and refused if someone else owns it or
// it is open to others (a planted directory).
bool private_dir(const std::string& dir) {
  ::mkdir(dir.c_str(), 0700);
  struct stat st;
  if (::lstat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != ::getuid() ||
      (st.st_mode & 077) != 0) {
    std::fprintf(stderr,
                 "hotprobe attach: '%s' must be a directory of yours with mode 0700; remove it "
                 "and try again\n",
                 dir.c_str());
    return false;
  }
  return true;
}

}  // namespace

int attach(const AttachOptions& o, const std::string& source, const std::string& filename,
           const std::string& agent_path, int format) {
  if (auto ok = hp::inject::check_can_trace(o.pid); !ok) {
    std::fprintf(stderr, "hotprobe attach: %s\n", ok.error().message().c_str());
    return kExitError;
  }
  std::string dir = agent::attach_socket_dir(::getuid());
  if (!private_dir(dir)) return kExitError;
  std::string path = agent::attach_socket_path(::getuid(), ::getpid());
  ::unlink(path.c_str());
  int lfd = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path.c_str());
  mode_t old_mask = ::umask(077);  // the socket is 0600 from birth
  bool bound = lfd >= 0 && ::bind(lfd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
               ::listen(lfd, 4) == 0;
  ::umask(old_mask);
  if (!bound) {
    std::fprintf(stderr, "hotprobe attach: cannot listen on %s: %s\n", path.c_str(),
                 std::strerror(errno));
    return kExitError;
  }
  auto cleanup = [&] { ::unlink(path.c_str()); };

  auto loaded = hp::inject::load_library(o.pid, agent_path);
  if (!loaded) {
    cleanup();
    std::fprintf(stderr, "hotprobe attach: %s\n", loaded.error().message().c_str());
    return kExitError;
  }
  std::fprintf(stderr, "hotprobe attach: process %d was stopped %.2f ms to load the agent\n", o.pid,
               loaded->pause_ms);
  auto started = hp::inject::call_function(o.pid, agent_path, "hotprobe_agent_attach",
                                           static_cast<long>(::getpid()));
  if (!started || *started != 0) {
    cleanup();
    std::fprintf(
        stderr, "hotprobe attach: the agent did not start in %d: %s\n", o.pid,
        started ? std::strerror(static_cast<int>(-*started)) : started.error().message().c_str());
    return kExitError;
  }
  pollfd lp{lfd, POLLIN, 0};
  int sock = -1;
  if (::poll(&lp, 1, 10000) == 1) sock = ::accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
  ::close(lfd);
  cleanup();
  ucred cred{};
  socklen_t len = sizeof cred;
  if (sock < 0 || ::getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 ||
      cred.pid != o.pid || cred.uid != ::getuid()) {
    std::fprintf(stderr, "hotprobe attach: process %d did not connect back (or another did)\n",
                 o.pid);
    if (sock >= 0) ::close(sock);
    return kExitError;
  }

  if (::pipe2(g_attach_pipe, O_CLOEXEC | O_NONBLOCK) != 0) return kExitError;
  struct sigaction sa {};
  sa.sa_handler = &on_attach_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  for (int sig : {SIGINT, SIGTERM, SIGHUP})
    sigaction(sig, &sa, nullptr);

  FILE* out = stdout;
  if (!o.output.empty() && !(out = open_output_file(o.output))) {
    std::fprintf(stderr, "hotprobe attach: cannot write '%s': %s\n", o.output.c_str(),
                 std::strerror(errno));
    return kExitError;
  }
  agent::StartOptions so;
  so.format = static_cast<std::uint8_t>(format);
  agent::send_message(sock, agent::encode_start(so, filename, source));
  bool error = false, done = false, stop_sent = false;
  std::uint64_t lost = 0;
  std::string msg;
  using Clock = std::chrono::steady_clock;
  // --duration counts from the moment the probes are attached.
  auto deadline = Clock::time_point::max();
  while (!done) {
    pollfd p[2] = {{sock, POLLIN, 0}, {g_attach_pipe[0], POLLIN, 0}};
    int timeout = -1;
    if (!stop_sent && deadline != Clock::time_point::max()) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      timeout = static_cast<int>(std::max<long long>(0, left.count()));
    }
    int n = ::poll(p, 2, timeout);
    if (n < 0 && errno != EINTR) break;
    bool stop = !stop_sent && Clock::now() >= deadline;  // --duration is over
    if (n > 0 && (p[1].revents & POLLIN)) {
      char sigs[16];
      while (::read(g_attach_pipe[0], sigs, sizeof sigs) > 0) {
      }
      stop = !stop_sent;
    }
    if (stop) {
      agent::send_message(sock, agent::encode(agent::Msg::stop));
      stop_sent = true;
    }
    if (n <= 0) continue;
    if (!(p[0].revents & (POLLIN | POLLHUP | POLLERR))) continue;
    if (agent::recv_message(sock, msg, MSG_DONTWAIT) != 1) break;  // the process is gone
    std::string_view payload = std::string_view(msg).substr(1);
    std::size_t pos = 0;
    switch (static_cast<agent::Msg>(msg[0])) {
      case agent::Msg::attached: {
        if (o.duration > 0) {
          deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                        std::chrono::duration<double>(o.duration));
        }
        auto n = agent::get<std::uint32_t>(payload, pos).value_or(0);
        std::string line =
            format == 1
                ? fmt::format("{{\"type\": \"attached_probes\", \"data\": {{\"probes\": {}}}}}\n",
                              n)
                : fmt::format("Attaching {} probe{}...\n", n, n == 1 ? "" : "s");
        std::fputs(line.c_str(), out);
        break;
      }
      case agent::Msg::error:
        error = true;
        std::fprintf(stderr, "%.*s\n", static_cast<int>(payload.size()), payload.data());
        done = true;
        break;
      case agent::Msg::output:
        std::fwrite(payload.data(), 1, payload.size(), out);
        break;
      case agent::Msg::lost:
        lost += agent::get<std::uint64_t>(payload, pos).value_or(0);
        break;
      case agent::Msg::ready:
        agent::send_message(sock, agent::encode(stop_sent ? agent::Msg::stop : agent::Msg::go));
        break;
      case agent::Msg::done:
        done = true;
        break;
      default:
        break;
    }
    std::fflush(out);
  }
  if (lost > 0) std::fprintf(out, "Lost %llu events\n", static_cast<unsigned long long>(lost));
  std::fflush(out);
  if (out != stdout) std::fclose(out);
  ::close(sock);
  return error ? kExitError : kExitOk;
}

}  // namespace hp::cli
