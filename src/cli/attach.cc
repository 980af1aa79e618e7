// `hotprobe attach -p PID`: inject the agent into a running process, run the script until
// Ctrl-C (or exit(), or the process's end), then remove every probe. docs/design/agent.md,
// docs/design/attach.md (the channel between hotprobe and the agent).
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include <fmt/format.h>

#include "agent/attach_channel.h"
#include "agent/protocol.h"
#include "agent/region_maps.h"
#include "cli/cli.h"
#include "cli/output_file.h"
#include "cli/prepare.h"
#include "inject/inject.h"
#include "script/output.h"
#include "script/symbolize.h"

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

constexpr int kStopSignals[] = {SIGINT, SIGTERM, SIGHUP};

// `hotprobe attach` takes the stop signals over before main() (before the command line is
// parsed and the script compiled, which takes milliseconds): a SIGINT inherited as ignored
// would otherwise swallow a Ctrl-C that comes early. Only for the attach command.
__attribute__((constructor)) void attach_default_stop_signals() {
  char buf[256];
  const int fd = ::open("/proc/self/cmdline", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  const ssize_t n = ::read(fd, buf, sizeof buf - 1);
  ::close(fd);
  if (n <= 0) return;
  buf[n] = 0;
  const char* arg1 = buf + std::strlen(buf) + 1;
  if (arg1 >= buf + n || std::strcmp(arg1, "attach") != 0) return;
  struct sigaction sa {};
  sa.sa_handler = SIG_DFL;
  sigemptyset(&sa.sa_mask);
  for (int sig : kStopSignals)
    sigaction(sig, &sa, nullptr);
}

// For hotprobe's whole run, whatever it inherited (a script's `hotprobe attach ... &`
// starts it with SIGINT ignored): until the session runs, the default action, so that
// Ctrl-C ends hotprobe at once (the process it injects into never depends on hotprobe:
// docs/design/inject.md); from then on the handler, which ends the session cleanly.
void set_stop_signals(void (*handler)(int)) {
  struct sigaction sa {};
  sa.sa_handler = handler;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  for (int sig : kStopSignals)
    sigaction(sig, &sa, nullptr);
  sigset_t set;
  sigemptyset(&set);
  for (int sig : kStopSignals)
    sigaddset(&set, sig);
  sigprocmask(SIG_UNBLOCK, &set, nullptr);
}

// The listening end of the channel (docs/design/attach.md): a unix seqpacket socket in
// the abstract namespace under 128 random bits, created in the target's network
// namespace (abstract names are per network namespace).
struct Channel {
  int fd = -1;
  std::string name;  // the 32 hex digits
  std::string error;
};

Channel listen_channel(pid_t pid) {
  Channel c;
  unsigned char random[agent::kAttachNameLength / 2];
  if (::getrandom(random, sizeof random, 0) != static_cast<ssize_t>(sizeof random)) {
    c.error =
        std::string("cannot read random bytes for the channel's name: ") + std::strerror(errno);
    return c;
  }
  static const char kHex[] = "0123456789abcdef";
  for (unsigned char b : random) {
    c.name += kHex[b >> 4];
    c.name += kHex[b & 15];
  }
  // Enter the target's network namespace for the socket() call when it has its own.
  int self_ns = -1;
  struct stat mine {
  }, theirs{};
  const std::string their_ns = "/proc/" + std::to_string(pid) + "/ns/net";
  if (::stat("/proc/self/ns/net", &mine) == 0 && ::stat(their_ns.c_str(), &theirs) == 0 &&
      mine.st_ino != theirs.st_ino) {
    self_ns = ::open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
    const int target_ns = ::open(their_ns.c_str(), O_RDONLY | O_CLOEXEC);
    const bool entered = self_ns >= 0 && target_ns >= 0 && ::setns(target_ns, CLONE_NEWNET) == 0;
    const int err = errno;
    if (target_ns >= 0) ::close(target_ns);
    if (!entered) {
      if (self_ns >= 0) ::close(self_ns);
      c.error = "process " + std::to_string(pid) +
                " runs in another network namespace, which hotprobe cannot enter (" +
                std::strerror(err) +
                "): its agent could not reach hotprobe; run hotprobe as root, or inside "
                "that namespace (nsenter -n -t " +
                std::to_string(pid) + ")";
      return c;
    }
  }
  c.fd = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  int err = errno;
  if (self_ns >= 0) {
    if (::setns(self_ns, CLONE_NEWNET) != 0) err = errno;
    ::close(self_ns);
  }
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  const std::string name = agent::attach_socket_name(c.name);
  std::memcpy(addr.sun_path + 1, name.data(), name.size());
  const auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
  if (c.fd < 0 || ::bind(c.fd, reinterpret_cast<sockaddr*>(&addr), len) != 0 ||
      ::listen(c.fd, 16) != 0) {
    if (c.fd >= 0) err = errno;
    if (c.fd >= 0) ::close(c.fd);
    c.fd = -1;
    c.error = std::string("cannot listen on the channel's socket: ") + std::strerror(err);
  }
  return c;
}

// The connection the agent made, from the accept queue: a connection from any other
// process (anyone can connect to an abstract name they can see) is closed and skipped.
int accept_agent(int lfd, pid_t pid, int& refused) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return -1;
    pollfd lp{lfd, POLLIN, 0};
    if (::poll(&lp, 1, static_cast<int>(left.count())) <= 0) continue;
    int sock = ::accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
    if (sock < 0) continue;
    ucred cred{};
    socklen_t len = sizeof cred;
    if (::getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 && cred.pid == pid) {
      return sock;
    }
    ++refused;
    ::close(sock);
  }
}

std::string agent_start_error(long rc) {
  switch (-rc) {
    case EPERM:
      return "the agent refused the channel: its listener was not this hotprobe";
    case EAGAIN:
      return "the channel's queue was full (other processes connected to it); try again";
    case ECONNREFUSED:
    case ENOENT:
      return "the agent could not reach hotprobe's channel (is the process in a network "
             "namespace hotprobe did not enter?)";
    case EINVAL:
      return "the agent did not understand the request (an agent library of another "
             "hotprobe version?)";
    default:
      return std::strerror(static_cast<int>(-rc));
  }
}

// The session's maps, in a region of memory hotprobe made and passed to the agent with
// the start message (docs/design/script-runtime.md): printed from here exactly once, at
// the agent's final report ('D') or when the session ended without one (the process died):
// then END runs here.
struct AttachMaps {
  std::unique_ptr<hotprobe::script::SharedRegion> region;
  bool printed = false;
  bool channel_lost = false;

  void print(FILE* out, pid_t pid, const std::string& source,
             const hotprobe::script::CompileOptions& copts, bool run_end) {
    if (!region || printed) return;
    agent::RegionMaps r =
        agent::read_region_maps(*region, source, copts, run_end, {}, &run_command_request);
    if (!r.laid_out) return;  // the agent kept its maps in its own memory (and sent them)
    printed = true;
    channel_lost = r.channel_lost;
    if (!r.error.empty()) {
      std::fprintf(stderr, "hotprobe attach: cannot read the maps process %d left: %s\n", pid,
                   r.error.c_str());
    }
    std::fwrite(r.text.data(), 1, r.text.size(), out);
    if (r.refused > 0) {
      std::fprintf(stderr,
                   "hotprobe attach: the memory the maps share with process %d (%zu MiB) ran "
                   "out: %llu tables or records stayed in the process's own memory, so maps "
                   "printed after its end may miss entries; raise HOTPROBE_MAP_MEMORY (MiB) or "
                   "use fewer keys\n",
                   pid, region->size() >> 20, static_cast<unsigned long long>(r.refused));
    }
  }

  // The channel ended without the final report. The process is gone, or the agent lost
  // its channel and is making its report into the region: wait (at most 10 s, as the
  // agent's own exit hook waits) until the process has ended or the report is there, so
  // that END runs once, there or here.
  void wait_for_report(int pidfd) const {
    if (!region || pidfd < 0) return;
    const auto& h = region->header();
    for (int waited = 0; waited < 10000; waited += 5) {
      if (h.state.load(std::memory_order_acquire) != 1 ||
          h.phase.load(std::memory_order_acquire) != hotprobe::script::region::kTracing)
        return;
      pollfd p{pidfd, POLLIN, 0};
      if (::poll(&p, 1, 5) > 0) return;  // the process has ended
    }
  }
};

}  // namespace

int attach(const AttachOptions& o, const std::string& source, const std::string& filename,
           const std::string& agent_path, int format) {
  set_stop_signals(SIG_DFL);
  if (auto ok = hp::inject::check_can_trace(o.pid); !ok) {
    std::fprintf(stderr, "hotprobe attach: %s\n", ok.error().message().c_str());
    return kExitError;
  }
  std::size_t map_bytes;
  if (!agent::map_region_bytes("attach", map_bytes)) return kExitError;
  AttachMaps maps;
  if (agent::shared_maps_wanted()) {
    std::string why;
    maps.region = hotprobe::script::SharedRegion::create(map_bytes, &why);
    if (!maps.region) {
      std::fprintf(stderr,
                   "hotprobe attach: cannot make the memory the maps share with the process "
                   "(%s); the maps print only if the session ends normally\n",
                   why.c_str());
    }
  }
  // The process's end, seen without polling its PID (which could be reused).
  const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, o.pid, 0));
  struct PidfdCloser {
    int fd;
    ~PidfdCloser() {
      if (fd >= 0) ::close(fd);
    }
  } pidfd_closer{pidfd};
  Channel ch = listen_channel(o.pid);
  if (ch.fd < 0) {
    std::fprintf(stderr, "hotprobe attach: %s\n", ch.error.c_str());
    return kExitError;
  }
  const int lfd = ch.fd;

  auto loaded = hp::inject::load_library(o.pid, agent_path);
  if (!loaded) {
    ::close(lfd);
    std::fprintf(stderr, "hotprobe attach: %s\n", loaded.error().message().c_str());
    return kExitError;
  }
  std::fprintf(stderr, "hotprobe attach: process %d was stopped %.2f ms to load the agent\n", o.pid,
               loaded->pause_ms);
  const std::string request = agent::encode_attach_request(::getpid(), ch.name);
  const std::uint64_t args[] = {hp::inject::kDataArgument};
  auto started = hp::inject::call_function_with_data(o.pid, agent_path, "hotprobe_agent_attach",
                                                     args, {request.c_str(), request.size() + 1});
  int sock = -1, refused = 0;
  if (started && *started == 0) sock = accept_agent(lfd, o.pid, refused);
  ::close(lfd);
  if (sock < 0) {
    std::string why = !started        ? started.error().message()
                      : *started != 0 ? agent_start_error(*started)
                                      : "process " + std::to_string(o.pid) +
                                            " did not connect to hotprobe's channel within 5 s";
    // The agent refused and returned: no code of it runs, so take back this load, and a
    // refused attach leaves the process as it was (an agent another session still uses
    // stays, by its count). Not when the call failed or the agent connected (its
    // session thread then ends by itself when hotprobe's end closes): its code may run.
    std::string unload_note;
    if (started && *started != 0) {
      if (auto unloaded = hp::inject::unload_library(o.pid, loaded->handle); !unloaded)
        unload_note = "; unloading it failed: " + unloaded.error().message();
    }
    std::fprintf(stderr, "hotprobe attach: the agent did not start in %d: %s%s\n", o.pid,
                 why.c_str(), unload_note.c_str());
    return kExitError;
  }
  if (refused > 0) {
    std::fprintf(stderr,
                 "hotprobe attach: refused %d connection%s to the channel from other processes\n",
                 refused, refused == 1 ? "" : "s");
  }

  if (::pipe2(g_attach_pipe, O_CLOEXEC | O_NONBLOCK) != 0) return kExitError;
  set_stop_signals(&on_attach_signal);

  FILE* out = stdout;
  if (!o.output.empty() && !(out = open_output_file(o.output))) {
    std::fprintf(stderr, "hotprobe attach: cannot write '%s': %s\n", o.output.c_str(),
                 std::strerror(errno));
    return kExitError;
  }
  agent::StartOptions so;
  so.format = static_cast<std::uint8_t>(format);
  hotprobe::script::CompileOptions copts;
  copts.filename = filename;
  copts.format = static_cast<hotprobe::script::OutputFormat>(format);
  copts.params = o.params;
  copts.unsafe = o.unsafe;
  so.params = o.params;
  so.unsafe = o.unsafe;
  // The region travels only over this checked channel: it has no path a third user could
  // open (docs/design/security.md).
  const std::string start = agent::encode_start(so, filename, source);
  if (maps.region) {
    agent::send_message_with_fd(sock, start, maps.region->fd());
  } else {
    agent::send_message(sock, start);
  }
  // A stop asked for before the agent's `ready` is its answer to `ready` (the agent reads
  // nothing else before then).
  bool error = false, done = false, stop_sent = false, ready_seen = false, stop_pending = false;
  bool attached = false;
  std::uint64_t lost = 0;
  std::string msg;
  using Clock = std::chrono::steady_clock;
  // --duration counts from the moment the probes are attached.
  auto deadline = Clock::time_point::max();
  while (!done) {
    pollfd p[2] = {{sock, POLLIN, 0}, {g_attach_pipe[0], POLLIN, 0}};
    int timeout = -1;
    if (!stop_sent && !stop_pending && deadline != Clock::time_point::max()) {
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
    if (stop && !ready_seen) {
      stop_pending = true;
    } else if (stop) {
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
        attached = true;
        if (o.duration > 0) {
          deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                        std::chrono::duration<double>(o.duration));
        }
        auto n = agent::get<std::uint32_t>(payload, pos).value_or(0);
        (void)agent::get<std::uint32_t>(payload, pos);  // the pid
        if (auto traps = agent::get<std::uint32_t>(payload, pos).value_or(0))
          std::fputs(agent::trap_sites_warning(traps).c_str(), stderr);
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
      case agent::Msg::output: {
        std::string named;  // show_debug_info's places, named here
        const std::string_view text = hotprobe::script::with_source_places(payload, named);
        std::fwrite(text.data(), 1, text.size(), out);
        break;
      }
      case agent::Msg::command: {        // system(), cat(): run here, never in the traced process
        if (payload.starts_with("w")) {  // a runtime warning: stderr, as bpftrace's
          std::fflush(out);
          std::fwrite(payload.data() + 1, 1, payload.size() - 1, stderr);
          break;
        }
        ucred peer{};
        socklen_t len = sizeof peer;
        const long uid =
            ::getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &peer, &len) == 0 ? peer.uid : -1;
        if (!copts.unsafe || !request_from_own_user(o.pid, uid, "attach")) break;
        const std::string text = run_command_request(payload, copts.format);
        std::fwrite(text.data(), 1, text.size(), out);
        break;
      }
      case agent::Msg::lost:
        lost += agent::get<std::uint64_t>(payload, pos).value_or(0);
        break;
      case agent::Msg::exec: {
        // The agent goes with the old image: what the session counted is printed below.
        auto p = agent::get<std::uint32_t>(payload, pos).value_or(0);
        std::string path;
        hotprobe::script::append_text_escaped(path, payload.substr(pos));
        std::fprintf(stderr,
                     "hotprobe attach: process %u exec'd '%s': the session ends there (the new "
                     "image is not traced; attach again to trace it)\n",
                     p, path.c_str());
        break;
      }
      case agent::Msg::ready:
        ready_seen = true;
        stop_sent = stop_sent || stop_pending;
        agent::send_message(sock, agent::encode(stop_sent ? agent::Msg::stop : agent::Msg::go));
        break;
      case agent::Msg::done:
        done = true;
        // The final report is out (END ran there): the maps from the region now.
        if (attached && !error) maps.print(out, o.pid, source, copts, /*run_end=*/false);
        break;
      default:
        break;
    }
    std::fflush(out);
  }
  // Ended without the final report (the process was killed, aborted, or closed the
  // channel): the maps from the region, END run here if it did not run there.
  if (!done && attached && !error && maps.region) {
    maps.wait_for_report(pidfd);
    maps.print(out, o.pid, source, copts, /*run_end=*/true);
  }
  if (lost > 0) std::fprintf(out, "Lost %llu events\n", static_cast<unsigned long long>(lost));
  std::fflush(out);
  if (out != stdout) std::fclose(out);
  ::close(sock);
  if (error) return kExitError;
  if (maps.channel_lost) {
    std::fprintf(stderr,
                 "hotprobe attach: process %d closed hotprobe's channel to its agent, which "
                 "stopped tracing then: the maps above hold what was counted until that "
                 "moment\n",
                 o.pid);
    return kExitError;
  }
  return kExitOk;
}

int attach_command(const AttachOptions& o) {
  auto loaded = load_script("attach", o.script_text, o.script_file, o.format, o.params, o.unsafe);
  if (!loaded) return kExitError;
  std::string agent_path = find_agent();
  char real[PATH_MAX];
  if (agent_path.empty() || !::realpath(agent_path.c_str(), real)) {
    std::fprintf(stderr, "hotprobe attach: cannot find libhotprobe_agent.so; set HOTPROBE_AGENT\n");
    return kExitError;
  }
  return attach(o, loaded->source, loaded->filename, real, static_cast<int>(loaded->copts.format));
}

}  // namespace hp::cli
