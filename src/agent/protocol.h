// The channel between `hotprobe` and its agent: one SOCK_SEQPACKET connection (a
// socketpair inherited at exec, or a unix socket for `attach`), so every send is one
// message whose boundary the reader keeps. A message is one type byte and a payload;
// integers are little-endian (both ends are the same machine). docs/design/agent.md has
// the whole conversation.
//
//   hotprobe -> agent: 'S' start (options, filename, script), 'G' go, 'X' stop
//   agent -> hotprobe: 'A' attached, 'E' error, 'O' output, 'L' lost, 'R' ready, 'D' done,
//                      'M' maps (a followed child's), 'N' exec'd, 'P' probe never placed, 'Q'
//                      placed (a child's), 'F' followed exec, 'U' resumed, 'C' command (system(),
//                      cat())
//
// Header-only: the CLI includes it without linking the agent.
#pragma once

#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace hp::agent {

enum class Msg : char {
  start = 'S',     // -> agent: StartOptions + filename + script source
  go = 'G',        // -> agent: hotprobe printed everything before 'R'; main may run
  stop = 'X',      // -> agent: stop tracing now (Ctrl-C), END, print maps, done
  attached = 'A',  // <- agent: u32 probes attached (as bpftrace counts), u32 pid,
                   //    u32 of the sites, how many are traps (int3 mode)
  error = 'E',     // <- agent: a rendered error; the agent then _exit()s
  output = 'O',    // <- agent: text for hotprobe's output, as the script formatted it
  lost = 'L',      // <- agent: u64 events that could not be delivered since the last 'L'
  ready = 'R',     // <- agent: BEGIN ran and its output was sent; waits for 'G'
  done = 'D',      // <- agent: u32 pid; that process's tracing is over (END and maps sent)
  maps = 'M',      // <- agent: a followed child's maps as data (agent/map_data.h)
  exec = 'N',      // <- agent: u32 pid, the path it exec'd (the new image is not traced)
  never = 'P',     // <- agent: a probe's target whose module never loaded in the process
  placed = 'Q',    // <- agent: a probe's target a followed child's process loaded
  // <- agent: u32 pid, u32 length + the path the program is about to exec, then the
  //    targets whose probes were placed in the image it leaves (NUL-terminated each): the
  //    new image's agent takes the session over (docs/design/agent.md, "Exec")
  followed = 'F',
  resumed = 'U',  // <- agent: u32 pid; the exec'd image's agent traces on, maps and all
  // <- agent: a kind byte ('s' system, 'c' cat: script::Sink::Request) and the command or
  //    path, for hotprobe to run after the output sent before it (docs/design/agent.md)
  command = 'C',
};

// What hotprobe says when `n` of a session's sites are traps (int3 mode: neither a 5-byte
// jump nor a 2-byte one to nearby padding fits there). The kernel kills a thread that blocks
// SIGTRAP when it runs into one.
inline std::string trap_sites_warning(std::uint32_t n) {
  return "hotprobe: warning: " + std::to_string(n) + " probe site" + (n == 1 ? " is" : "s are") +
         " a trap (int3: no jump fits there, not even a 2-byte one to padding nearby); a thread "
         "that blocks SIGTRAP (one that blocks every signal, or glibc's exiting threads) is "
         "killed by the kernel if it runs into one: probe another instruction of the function "
         "(uprobe:BIN:FUNC+OFFSET) if the program has such threads\n";
}

// The largest message either side sends (SOCK_SEQPACKET messages must fit the socket
// buffer whole); output is cut into messages of at most this size.
inline constexpr std::size_t kMaxMessage = 64 * 1024;
// The environment variables hotprobe sets for the preloaded agent (which removes them).
inline constexpr const char* kEnvFd = "HOTPROBE_AGENT_FD";
// Set by the agent for the image the program exec's: a memfd holding the start message,
// which that image's agent reads instead of waiting for hotprobe's.
inline constexpr const char* kEnvExecStart = "HOTPROBE_EXEC_START_FD";
// Set with it when the exec'ing process is a followed child: the new image is one too
// (its maps its own, sent as data at its end).
inline constexpr const char* kEnvExecChild = "HOTPROBE_EXEC_CHILD";
// With --follow-forks the execs of followed children (fork and vfork children: a shell's
// commands) are followed as well, their new images counting as children; "0", set by the
// user, ends a child's tracing at its exec instead.
inline constexpr const char* kEnvFollowChildExecs = "HOTPROBE_FOLLOW_CHILD_EXECS";
// The user's own LD_PRELOAD, to put back (absent: LD_PRELOAD was not set).
inline constexpr const char* kEnvSavedPreload = "HOTPROBE_SAVED_LD_PRELOAD";

// `hotprobe attach`: the directory of user `uid`'s attach sockets (hotprobe makes it 0700
// and checks its owner and mode) and the socket for attach `id` (hotprobe's pid).
inline std::string attach_socket_dir(unsigned uid) {
  return "/tmp/hotprobe-" + std::to_string(uid);
}
inline std::string attach_socket_path(unsigned uid, long id) {
  return attach_socket_dir(uid) + "/attach-" + std::to_string(id) + ".sock";
}

struct StartOptions {
  std::uint8_t format = 0;          // script::OutputFormat
  std::uint8_t follow_forks = 0;    // trace forked children too
  std::uint8_t unsafe = 0;          // --unsafe
  std::vector<std::string> params;  // the script's positional parameters $1.. $N
};

inline std::string encode(Msg type, std::string_view payload = {}) {
  std::string m;
  m.reserve(1 + payload.size());
  m.push_back(static_cast<char>(type));
  m.append(payload);
  return m;
}

template <class T>
inline void put(std::string& out, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  out.append(b, sizeof(T));
}

// Reads a T at `pos` of `in`, advancing; nullopt past the end.
template <class T>
inline std::optional<T> get(std::string_view in, std::size_t& pos) {
  if (in.size() < pos + sizeof(T)) return std::nullopt;
  T v;
  std::memcpy(&v, in.data() + pos, sizeof(T));
  pos += sizeof(T);
  return v;
}

inline std::string encode_start(const StartOptions& o, std::string_view filename,
                                std::string_view source) {
  std::string p;
  put<std::uint8_t>(p, o.format);
  put<std::uint8_t>(p, o.follow_forks);
  put<std::uint8_t>(p, o.unsafe);
  put<std::uint32_t>(p, static_cast<std::uint32_t>(filename.size()));
  p.append(filename);
  put<std::uint32_t>(p, static_cast<std::uint32_t>(o.params.size()));
  for (const std::string& w : o.params) {
    put<std::uint32_t>(p, static_cast<std::uint32_t>(w.size()));
    p.append(w);
  }
  p.append(source);
  return encode(Msg::start, p);
}

struct Start {
  StartOptions options;
  std::string filename;
  std::string source;
};

inline std::optional<Start> decode_start(std::string_view payload) {
  std::size_t pos = 0;
  Start s;
  auto f = get<std::uint8_t>(payload, pos);
  auto ff = get<std::uint8_t>(payload, pos);
  auto un = get<std::uint8_t>(payload, pos);
  auto n = get<std::uint32_t>(payload, pos);
  if (!f || !ff || !un || !n || payload.size() < pos + *n) return std::nullopt;
  s.options.format = *f;
  s.options.follow_forks = *ff;
  s.options.unsafe = *un;
  s.filename.assign(payload.substr(pos, *n));
  pos += *n;
  auto count = get<std::uint32_t>(payload, pos);
  if (!count || *count > payload.size()) return std::nullopt;
  for (std::uint32_t k = 0; k < *count; ++k) {
    auto len = get<std::uint32_t>(payload, pos);
    if (!len || payload.size() < pos + *len) return std::nullopt;
    s.options.params.emplace_back(payload.substr(pos, *len));
    pos += *len;
  }
  s.source.assign(payload.substr(pos));
  return s;
}

// One whole message; false when the peer is gone. Retries EINTR; never raises SIGPIPE.
inline bool send_message(int fd, std::string_view m) {
  for (;;) {
    ssize_t n = ::send(fd, m.data(), m.size(), MSG_NOSIGNAL);
    if (n >= 0) return static_cast<std::size_t>(n) == m.size();
    if (errno != EINTR) return false;
  }
}

// One whole message carrying descriptor `passed` (SCM_RIGHTS): `hotprobe attach`'s start
// message brings the session's map region (docs/design/attach.md). False when not sent.
inline bool send_message_with_fd(int fd, std::string_view m, int passed) {
  iovec iov{const_cast<char*>(m.data()), m.size()};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr h{};
  h.msg_iov = &iov;
  h.msg_iovlen = 1;
  h.msg_control = control;
  h.msg_controllen = sizeof control;
  cmsghdr* c = CMSG_FIRSTHDR(&h);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(c), &passed, sizeof(int));
  for (;;) {
    ssize_t n = ::sendmsg(fd, &h, MSG_NOSIGNAL);
    if (n >= 0) return static_cast<std::size_t>(n) == m.size();
    if (errno != EINTR) return false;
  }
}

// Output text, cut into messages of at most kMaxMessage.
inline bool send_text(int fd, Msg type, std::string_view text) {
  while (!text.empty()) {
    std::size_t n = std::min(text.size(), kMaxMessage - 1);
    if (!send_message(fd, encode(type, text.substr(0, n)))) return false;
    text.remove_prefix(n);
  }
  return true;
}

// The descriptors an SCM_RIGHTS control message carried: the first into *keep (when
// keep is not null and holds -1), the rest closed.
inline void close_passed_fds(const cmsghdr& c, int* keep) {
  const std::size_t count = (c.cmsg_len - CMSG_LEN(0)) / sizeof(int);
  for (std::size_t i = 0; i < count; ++i) {
    int d;
    std::memcpy(&d, CMSG_DATA(&c) + i * sizeof(int), sizeof(int));
    if (keep && *keep < 0)
      *keep = d;
    else
      ::close(d);
  }
}

// Receives one message into `out` (resized to it) with recvmsg(2), handing each control
// message to `visit`. 0: peer closed; -1: error (errno); 1: a message.
template <std::size_t ControlBytes, class Visit>
int recv_message_control(int fd, std::string& out, int flags, Visit&& visit) {
  out.resize(kMaxMessage * 4);
  alignas(cmsghdr) char control[ControlBytes];
  for (;;) {
    iovec iov{out.data(), out.size()};
    msghdr h{};
    h.msg_iov = &iov;
    h.msg_iovlen = 1;
    h.msg_control = control;
    h.msg_controllen = sizeof control;
    ssize_t n = ::recvmsg(fd, &h, flags);
    if (n < 0 && errno == EINTR) continue;
    for (cmsghdr* c = n >= 0 ? CMSG_FIRSTHDR(&h) : nullptr; c; c = CMSG_NXTHDR(&h, c))
      visit(*c);
    if (n > 0) {
      out.resize(static_cast<std::size_t>(n));
      return 1;
    }
    out.clear();
    return n == 0 ? 0 : -1;
  }
}

// Receives one message into `out` (resized to it). 0: peer closed; -1: error (errno);
// 1: a message. `flags` as recv(2) (MSG_DONTWAIT).
inline int recv_message(int fd, std::string& out, int flags = 0) {
  return recv_message_control<CMSG_SPACE(sizeof(int))>(
      fd, out, flags | MSG_CMSG_CLOEXEC, [](const cmsghdr& c) {
        // A descriptor nobody asked for.
        if (c.cmsg_level == SOL_SOCKET && c.cmsg_type == SCM_RIGHTS) close_passed_fds(c, nullptr);
      });
}

// recv_message, and the one descriptor the message carried (SCM_RIGHTS, received
// close-on-exec) in *passed, or -1. Descriptors beyond the first are closed.
inline int recv_message_with_fd(int fd, std::string& out, int* passed) {
  *passed = -1;
  return recv_message_control<CMSG_SPACE(sizeof(int) * 4)>(
      fd, out, MSG_CMSG_CLOEXEC, [passed](const cmsghdr& c) {
        if (c.cmsg_level == SOL_SOCKET && c.cmsg_type == SCM_RIGHTS) close_passed_fds(c, passed);
      });
}

// Who sent a message, as the kernel says (SCM_CREDENTIALS on a socket with SO_PASSCRED):
// a process cannot forge it.
struct Sender {
  bool known = false;
  std::uint32_t pid = 0, uid = 0, gid = 0;
};

// recv_message, with the sender's credentials in `from`.
inline int recv_message_from(int fd, std::string& out, Sender& from, int flags = 0) {
  from = Sender{};
  return recv_message_control<CMSG_SPACE(sizeof(ucred)) + CMSG_SPACE(sizeof(int))>(
      fd, out, flags | MSG_CMSG_CLOEXEC, [&from](const cmsghdr& c) {
        if (c.cmsg_level != SOL_SOCKET) return;
        if (c.cmsg_type == SCM_CREDENTIALS) {
          ucred cr;
          std::memcpy(&cr, CMSG_DATA(&c), sizeof cr);
          from = Sender{true, static_cast<std::uint32_t>(cr.pid), cr.uid, cr.gid};
        } else if (c.cmsg_type == SCM_RIGHTS) {
          close_passed_fds(c, nullptr);
        }
      });
}

}  // namespace hp::agent
