// The agent's end of `hotprobe attach`'s channel: see attach_channel.h.
#include "agent/attach_channel.h"

#include <fcntl.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <new>

#include "agent/session.h"

namespace hp::agent {

long attach_channel_start(const char* request) {
  if (request == nullptr) return -EINVAL;
  auto req = parse_attach_request(std::string_view(request, ::strnlen(request, 256)));
  if (!req) return -EINVAL;
  // Non-blocking: this runs on a thread hijacked by the injector, which must never wait
  // here (a queue filled by someone else answers EAGAIN at once).
  int fd = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return -errno;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  const std::string name = attach_socket_name(req->name);
  std::memcpy(addr.sun_path + 1, name.data(), name.size());
  const auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), len) != 0) {
    const int e = errno;
    ::close(fd);
    return -e;
  }
  // The listener's credentials as the kernel recorded them at listen(): only the hotprobe
  // that injected us, running as root or as this process's user, gets the session.
  ucred cred{};
  socklen_t cl = sizeof cred;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) != 0 ||
      cred.pid != static_cast<pid_t>(req->hotprobe_pid) ||
      (cred.uid != 0 && cred.uid != ::getuid())) {
    ::close(fd);
    return -EPERM;
  }
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0) {
    const int e = errno;
    ::close(fd);
    return -e;
  }
  return start_attached_session(fd);
}

int start_attached_session(int fd) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, [] { pthread_atfork(&fork_prepare, &fork_parent, &fork_child); });
  pthread_t t;
  auto* arg = new (std::nothrow) int(fd);  // never throws on the program's thread
  if (!arg) {
    ::close(fd);
    return -ENOMEM;
  }
  // Its own stack size, whatever RLIMIT_STACK the program runs with: it compiles.
  const int rc = start_agent_thread(
      &t,
      [](void* p) -> void* {
        const int cfd = *static_cast<int*>(p);
        delete static_cast<int*>(p);
        auto s = Session::start(cfd, /*attached=*/true);
        (void)s;  // an error was reported to hotprobe; the process goes on untraced
        return nullptr;
      },
      arg);
  if (rc != 0) {
    delete arg;
    ::close(fd);
    return -rc;
  }
  return 0;
}

}  // namespace hp::agent
