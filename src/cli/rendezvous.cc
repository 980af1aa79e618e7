#include "cli/rendezvous.h"

#include <fcntl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>
#include <string>
#include <string_view>

#include "agent/rendezvous.h"

namespace hp::cli {

Rendezvous::Rendezvous(int channel) {
  if (channel < 0) return;
  unsigned char r[16];
  if (::getrandom(r, sizeof r, 0) != static_cast<ssize_t>(sizeof r)) return;
  std::string name = "hotprobe-" + std::to_string(::getpid()) + "-";
  for (unsigned char c : r) {
    char hex[3];
    std::snprintf(hex, sizeof hex, "%02x", c);
    name += hex;
  }
  const int s = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (s < 0) return;
  sockaddr_un a;
  const socklen_t len = agent::rendezvous_address(name, a);
  const int c = ::fcntl(channel, F_DUPFD_CLOEXEC, 3);
  if (c < 0 || ::bind(s, reinterpret_cast<const sockaddr*>(&a), len) != 0 || ::listen(s, 64) != 0) {
    ::close(s);
    if (c >= 0) ::close(c);
    return;
  }
  listen_fd_ = s;
  channel_ = c;
  name_ = std::move(name);
}

bool Rendezvous::wanted() {
  const char* v = std::getenv("HOTPROBE_RUN_RENDEZVOUS");
  return !(v && std::string_view(v) == "0");
}

Rendezvous::~Rendezvous() {
  if (listen_fd_ >= 0) ::close(listen_fd_);
  if (channel_ >= 0) ::close(channel_);
}

void Rendezvous::serve(const std::function<bool(pid_t)>& may_have) {
  if (listen_fd_ < 0) return;
  for (;;) {
    const int c = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) return;  // none pending (EAGAIN), or an error: the next poll says
    ucred cred{};
    socklen_t cl = sizeof cred;
    if (::getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cred, &cl) == 0 && cred.pid > 0 &&
        may_have(cred.pid)) {
      (void)agent::send_message_with_fd(c, "C", channel_);
    }
    ::close(c);
  }
}

}  // namespace hp::cli
