// The agent's entry points: the preload constructor (hotprobe run) and
// hotprobe_agent_start (hotprobe attach, called by the injector). This file is linked
// after the script library (src/agent/CMakeLists.txt) so that its constructor runs after
// every static initializer of the libraries linked into the agent.
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <string_view>
#include <vector>

#include "agent/attach_channel.h"
#include "agent/protocol.h"
#include "agent/rendezvous.h"
#include "agent/session.h"
#include "core/thread_state.h"

extern char** environ;

namespace hp::agent {
namespace {

std::atomic<Session*> g_preload{nullptr};

void die(const char* what) {
  ::write(2, "hotprobe agent: ", 16);
  ::write(2, what, std::strlen(what));
  ::write(2, "\n", 1);
  ::_exit(1);
}

// Ctrl-C where the program kept SIGINT's default action: the final report first (bounded
// wait), then SIGINT's default action, so the program dies of it as it would have.
void on_sigint(int sig) {
  int saved = errno;
  if (Session* s = g_preload.load(std::memory_order_acquire))
    s->finish(Session::Reason::signal, std::chrono::seconds(2));
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  sigaction(sig, &dfl, nullptr);
  ::raise(sig);  // blocked while this handler runs: delivered when it returns
  errno = saved;
}

void install_sigint() {
  struct sigaction old {};
  if (sigaction(SIGINT, nullptr, &old) != 0) return;
  if ((old.sa_flags & SA_SIGINFO) || old.sa_handler != SIG_DFL) return;  // the program's own
  struct sigaction sa {};
  sa.sa_handler = &on_sigint;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGINT, &sa, nullptr);
}

// Children start clean: the channel's variable out of the environment, the user's
// LD_PRELOAD back. The other HOTPROBE_* variables (the engine's and the script layer's
// settings: HOTPROBE_SIGNAL, HOTPROBE_DEBUG, ...) go once the session has started and
// they have been read (remove_hotprobe_variables).
void restore_environment() {
  env_remove(kEnvFd);
  if (const char* saved = env_value(kEnvSavedPreload)) {
    std::string v = saved;
    env_remove(kEnvSavedPreload);
    env_set("LD_PRELOAD", v.c_str());
  } else {
    env_remove("LD_PRELOAD");
  }
}

// Every HOTPROBE_* variable: the program's main and what it runs see none of them.
void remove_hotprobe_variables() {
  constexpr std::string_view kPrefix = "HOTPROBE_";
  std::vector<std::string> names;
  for (char** e = environ; e && *e; ++e) {
    std::string_view entry = *e;
    if (entry.starts_with(kPrefix)) names.emplace_back(entry.substr(0, entry.find('=')));
  }
  for (const auto& n : names)
    env_remove(n.c_str());
}

__attribute__((constructor)) void agent_preload_init() {
  const char* fd_text = env_value(kEnvFd);
  if (!fd_text) return;  // loaded without hotprobe run: nothing to do
  // hotprobe's own work on the program's main thread, before main: no probe counts it.
  hp::core::OwnWork own;
  char* end = nullptr;
  long fd = std::strtol(fd_text, &end, 10);
  // An exec'd image of the program: the image before handed the session over.
  int exec_start_fd = -1;
  if (const char* e = env_value(kEnvExecStart)) {
    char* e_end = nullptr;
    const long v = std::strtol(e, &e_end, 10);
    if (e_end && *e_end == '\0' && v >= 0 && v < 1 << 20) exec_start_fd = static_cast<int>(v);
    env_remove(kEnvExecStart);
  }
  // LD_PRELOAD as hotprobe set it, without the program's own part: what an exec'd image
  // needs first in its LD_PRELOAD (a sanitizer-built agent's runtime, then the agent).
  if (const char* all = env_value("LD_PRELOAD")) {
    std::string_view preload = all;
    const char* user = env_value(kEnvSavedPreload);
    if (user && *user && preload.ends_with(std::string(":") + user))
      preload.remove_suffix(std::strlen(user) + 1);
    set_agent_preload(preload);
  }
  if (const char* rv = env_value(kEnvRendezvous)) set_rendezvous(rv);
  const std::string channel_id = env_value(kEnvChannelId) ? env_value(kEnvChannelId) : "";
  restore_environment();
  if (!end || *end != '\0' || fd < 3 || fd > 1 << 20) die("HOTPROBE_AGENT_FD is not a descriptor");
  int ifd = static_cast<int>(fd);
  // The channel, if the descriptor still is it: the program before this image may have
  // closed it (every descriptor, before its exec), and the number may be a file of its own
  // now. Then hotprobe's rendezvous gives it back.
  const char* id = channel_id.empty() ? nullptr : channel_id.c_str();
  if (!is_channel(ifd, id)) {
    ifd = rendezvous() ? rendezvous_channel(*rendezvous()) : -1;
    if (ifd >= 0 && !is_channel(ifd, id)) {
      ::close(ifd);
      ifd = -1;
    }
    if (ifd < 0 && exec_start_fd < 0) die("hotprobe agent: the channel to hotprobe is not open");
    if (ifd < 0) {
      // Untraced: hotprobe says at the end that this image did not resume.
      ::close(exec_start_fd);
      remove_hotprobe_variables();
      return;
    }
  }
  ::fcntl(ifd, F_SETFD, FD_CLOEXEC);  // programs this one execs do not inherit the channel
  pthread_atfork(&fork_prepare, &fork_parent, &fork_child);
  auto s = Session::start(ifd, false, exec_start_fd);
  if (!s && exec_start_fd >= 0) {
    // An exec'd image: the program has been running since hotprobe started it, and goes on,
    // untraced; hotprobe prints the error ('E'), or says that this image never resumed.
    remove_hotprobe_variables();
    return;
  }
  if (!s) {
    // The error went to hotprobe ('E') when the channel works; stderr otherwise.
    if (s.error().code() == hotprobe::Errc::timed_out ||
        s.error().code() == hotprobe::Errc::io_error)
      die(s.error().message().c_str());
    ::_exit(1);
  }
  g_preload.store(*s, std::memory_order_release);
  install_sigint();
  remove_hotprobe_variables();
}

// The fallback for an end that no exit probe will see: a session without its _exit hook.
// With it, the report waits for _exit: the destructors of the libraries initialized before
// the agent run after this one, and their calls count.
__attribute__((destructor)) void agent_preload_fini() {
  Session* s = g_preload.load(std::memory_order_acquire);
  if (s && !s->reports_at_process_end())
    s->finish(Session::Reason::exiting, std::chrono::seconds(10));
}

}  // namespace
}  // namespace hp::agent

// For `hotprobe attach` (the injector calls it in the target): connects to hotprobe's
// unix socket and runs a session on its own thread. 0, or a negative errno.
extern "C" __attribute__((visibility("default"))) long hotprobe_agent_start(
    const char* socket_path) {
  int fd = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (std::strlen(socket_path) >= sizeof addr.sun_path) {
    ::close(fd);
    return -ENAMETOOLONG;
  }
  std::strcpy(addr.sun_path, socket_path);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    int e = errno;
    ::close(fd);
    return -e;
  }
  return hp::agent::start_attached_session(fd);
}

// For `hotprobe attach`: the injector calls it with the request hotprobe wrote onto the
// thread's stack ("hotprobe-attach 1 PID NAME", src/agent/attach_channel.h). Connects to
// hotprobe's abstract socket, checks that its listener is that hotprobe, and runs a
// session on its own thread. 0, or a negative errno.
extern "C" __attribute__((visibility("default"))) long hotprobe_agent_attach(const char* request) {
  return hp::agent::attach_channel_start(request);
}
