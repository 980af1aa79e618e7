// hotprobe run's rendezvous: where an image of the traced program gets its channel back
// when the descriptor it inherited is gone. A program that closes every descriptor before
// it execs (Python's subprocess, daemons' spawn helpers) closes the channel with the
// rest; the image it execs then connects to an abstract unix socket hotprobe listens on,
// and hotprobe, once the kernel's SO_PEERCRED names a process of the traced tree, passes
// it the channel (SCM_RIGHTS). docs/design/agent.md, "The channel and protocol". Header-only: the
// CLI includes it without linking the agent.
#pragma once

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>

#include "agent/protocol.h"

namespace hp::agent {

// The channel's identity (st_dev:st_ino of its socket), set for every image, which
// checks the descriptor it was given before it uses it: a number the program closed and
// reused for a file of its own is not the channel.
inline constexpr const char* kEnvChannelId = "HOTPROBE_AGENT_FD_ID";
// The rendezvous's name (an abstract socket address, without its leading NUL).
inline constexpr const char* kEnvRendezvous = "HOTPROBE_RENDEZVOUS";

inline std::string channel_id(const struct stat& st) {
  return std::to_string(static_cast<unsigned long long>(st.st_dev)) + ":" +
         std::to_string(static_cast<unsigned long long>(st.st_ino));
}

// Whether `fd` is a socket, and the channel `id` names when `id` is given.
inline bool is_channel(int fd, const char* id) {
  struct stat st {};
  if (fd < 0 || ::fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode)) return false;
  return !id || channel_id(st) == id;
}

inline socklen_t rendezvous_address(std::string_view name, sockaddr_un& a) {
  a = sockaddr_un{};
  a.sun_family = AF_UNIX;
  const std::size_t n = std::min(name.size(), sizeof a.sun_path - 1);
  std::memcpy(a.sun_path + 1, name.data(), n);  // sun_path[0] = 0: abstract
  return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + n);
}

// The channel, from hotprobe's rendezvous `name` (close-on-exec, at the lowest free
// number), or -1 when hotprobe does not answer within `timeout_ms` or refuses.
inline int rendezvous_channel(std::string_view name, int timeout_ms = 5000) {
  const int s = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (s < 0) return -1;
  sockaddr_un a;
  const socklen_t len = rendezvous_address(name, a);
  int passed = -1;
  if (::connect(s, reinterpret_cast<const sockaddr*>(&a), len) == 0) {
    pollfd p{s, POLLIN, 0};
    std::string msg;
    if (::poll(&p, 1, timeout_ms) == 1 && recv_message_with_fd(s, msg, &passed) != 1 &&
        passed >= 0) {
      ::close(passed);
      passed = -1;
    }
  }
  ::close(s);
  return passed;
}

}  // namespace hp::agent
