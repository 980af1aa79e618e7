// The agent's end of `hotprobe attach`'s channel (docs/design/attach.md, "The channel").
//
// hotprobe binds a unix seqpacket socket in the abstract namespace under a random name
// and passes that name and its own PID to the agent in the injected call
// (hotprobe_agent_attach). The agent connects, accepts the other end only if the
// kernel's SO_PEERCRED says it is that PID running as root or as the agent's own user,
// and then starts a session on its own thread. The agent never listens. No file-system
// path is involved, so neither the socket's name nor a directory can be planted or
// squatted: a name that hotprobe has bound cannot be bound by anyone else.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace hp::agent {

// "hotprobe-attach 1 PID NAME": what hotprobe passes (NUL-terminated) to
// hotprobe_agent_attach. NAME is 32 lowercase hex digits; the socket's abstract address
// is "\0hotprobe-attach-NAME".
inline constexpr std::string_view kAttachRequestTag = "hotprobe-attach 1 ";
inline constexpr std::size_t kAttachNameLength = 32;

struct AttachRequest {
  long hotprobe_pid = 0;
  std::string name;  // the 32 hex digits
};

inline std::string encode_attach_request(long hotprobe_pid, const std::string& name) {
  return std::string(kAttachRequestTag) + std::to_string(hotprobe_pid) + " " + name;
}

inline std::optional<AttachRequest> parse_attach_request(std::string_view text) {
  if (text.substr(0, kAttachRequestTag.size()) != kAttachRequestTag) return std::nullopt;
  text.remove_prefix(kAttachRequestTag.size());
  const std::size_t space = text.find(' ');
  if (space == std::string_view::npos || space == 0 || space > 10) return std::nullopt;
  AttachRequest r;
  for (char c : text.substr(0, space)) {
    if (c < '0' || c > '9') return std::nullopt;
    r.hotprobe_pid = r.hotprobe_pid * 10 + (c - '0');
  }
  const std::string_view name = text.substr(space + 1);
  if (name.size() != kAttachNameLength) return std::nullopt;
  for (char c : name) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return std::nullopt;
  }
  r.name = std::string(name);
  return r;
}

// The abstract socket address's bytes after the leading NUL.
inline std::string attach_socket_name(const std::string& name) {
  return "hotprobe-attach-" + name;
}

// Connects to the channel that `request` names, checks the listener's credentials and
// starts a session thread on the connection: 0, or a negative errno (-EINVAL: a malformed
// request; -EPERM: the listener is not that hotprobe; -EAGAIN: its queue is full; what
// connect() said otherwise). Nothing is left running on failure.
long attach_channel_start(const char* request);

// Runs an attached session on a thread of its own over the connected channel `fd`, which
// it owns from here (closed on failure): 0, or a negative errno.
int start_attached_session(int fd);

}  // namespace hp::agent
