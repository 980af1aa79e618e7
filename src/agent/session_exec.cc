// A session across an exec of the program (docs/design/agent.md, "Exec"): the exec'ing
// thread's side (prepare_exec, note_exec) and the reporter's (exec_handover), which makes the
// environment under which the new image's agent takes the session over.
#include <fcntl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <string>
#include <string_view>
#include <vector>

#include "agent/clock_futex.h"
#include "agent/map_data.h"
#include "agent/protocol.h"
#include "agent/rendezvous.h"
#include "agent/session.h"
#include "core/thread_state.h"
#include "script/maps.h"

namespace hp::agent {

using hp::core::OwnWork;

namespace {

// Whether execve of `path` (relative to `dirfd`) can succeed: the file exists and may be
// executed. The system call: a probe on access must not see hotprobe's check.
bool executable(int dirfd, const char* path) noexcept {
  const int flags = path[0] == '\0' ? AT_EMPTY_PATH : 0;
  return ::syscall(SYS_faccessat2, dirfd, path, X_OK, flags) == 0 ||
         (errno == ENOSYS && ::syscall(SYS_faccessat, dirfd, path, X_OK) == 0);
}

// Whether a tracer is attached to this process (TracerPid in /proc/self/status), with
// system calls only: no allocation on the exec'ing thread.
bool traced() noexcept {
  const int fd =
      static_cast<int>(::syscall(SYS_open, "/proc/thread-self/status", O_RDONLY | O_CLOEXEC));
  if (fd < 0) return false;
  char buf[2048];
  const ssize_t n = ::syscall(SYS_read, fd, buf, sizeof buf - 1);
  ::syscall(SYS_close, fd);
  if (n <= 0) return false;
  buf[n] = '\0';
  const std::string_view text(buf, static_cast<std::size_t>(n));
  const std::size_t at = text.find("TracerPid:");
  if (at == std::string_view::npos) return false;
  std::size_t i = at + 10;
  while (i < text.size() && (text[i] == '\t' || text[i] == ' '))
    ++i;
  return i < text.size() && text[i] >= '1' && text[i] <= '9';
}

// An exec, the program's or a followed child's, of an image started early: hotprobe, told
// by the hand-over ('F', with the exec'ing thread), traces that thread before the execve,
// and starts the new image's agent before that image's libraries' constructors too
// (src/inject/start.cc). At most two seconds;
// after that the exec goes ahead and the new image's agent starts where the loader starts
// a preloaded library.
void wait_for_tracer() noexcept {
  const std::uint64_t deadline = now_ns() + 2'000'000'000ull;
  while (!traced() && now_ns() < deadline) {
    timespec pause{0, 100'000};
    ::nanosleep(&pause, nullptr);
  }
}

}  // namespace

void Session::note_exec(int dirfd, const char* path) noexcept {
  if (!in_own_process()) return;  // a vfork child's exec: the parent traces on
  if (finished() || !reporter_running_.load(std::memory_order_acquire)) return;
  if (path && !executable(dirfd, path)) return;  // execve fails: this image goes on, traced
  std::size_t i = 0;
  // The path is the program's memory: a bad pointer makes execve fail with EFAULT anyway.
  if (path) {
    for (; i + 1 < sizeof exec_path_ && path[i]; ++i)
      exec_path_[i] = path[i];
  }
  exec_path_[i] = '\0';
  finish(Reason::exiting, std::chrono::seconds(10));
}

char** Session::prepare_exec(int dirfd, const char* path, char** envp) noexcept {
  if (attached_ || !path) return nullptr;
  // A path that cannot be exec'd (execvp trying each PATH entry): execve fails and this
  // image goes on, traced; `envp` back, unchanged. The system call: a probe on access
  // must not see the check.
  if (!executable(dirfd, path)) return envp;
  // The program's exec, or a followed child's: a --follow-forks child (its own session
  // here), or a vfork child (posix_spawn, a shell running a command), which runs on this
  // session's memory with descriptors of its own.
  const bool vfork_child = !in_own_process();
  if ((vfork_child || forked_child_) && !follow_child_execs_) return nullptr;
  if (finished()) return nullptr;
  if (!reporter_running_.load(std::memory_order_acquire) || start_message_.empty()) return nullptr;
  OwnWork own;
  // 4: claimed by this thread while it fills the request in. Another thread's exec at the
  // same moment goes ahead unchanged: the kernel lets one exec of the process win and
  // ends the other threads, so the session is the winner's to hand over.
  std::uint32_t state = exec_word_.load(std::memory_order_acquire);
  if (state == 1 || state == 4 || !exec_word_.compare_exchange_strong(state, 4)) return envp;
  // The start message for the new image, in a memfd of this process (a vfork child's
  // descriptors are its own: the reporter's process could not give it one).
  const int start_fd = static_cast<int>(::syscall(SYS_memfd_create, "hotprobe-start", 0));
  bool ok = start_fd >= 0;
  for (std::size_t off = 0; ok && off < start_message_.size();) {
    const ssize_t n = ::write(start_fd, start_message_.data() + off, start_message_.size() - off);
    ok = n > 0;
    off += ok ? static_cast<std::size_t>(n) : 0;
  }
  if (!ok) {
    if (start_fd >= 0) ::close(start_fd);
    exec_word_.store(0, std::memory_order_release);
    return nullptr;
  }
  std::size_t i = 0;
  for (; i + 1 < sizeof exec_path_ && path[i]; ++i)
    exec_path_[i] = path[i];
  exec_path_[i] = '\0';
  exec_envp_in_ = envp;
  exec_start_fd_ = start_fd;
  exec_pid_ = static_cast<pid_t>(::syscall(SYS_getpid));
  exec_tid_ = static_cast<pid_t>(::syscall(SYS_gettid));
  exec_child_ = vfork_child || forked_child_;
  exec_word_.store(1, std::memory_order_release);
  const std::uint64_t deadline = now_ns() + 10'000'000'000ull;
  while (exec_word_.load(std::memory_order_acquire) == 1) {
    const std::uint64_t now = now_ns();
    if (now >= deadline) break;
    futex_wait(exec_word_, 1, static_cast<int>((deadline - now) / 1000000) + 1);
  }
  std::uint32_t expected = 1;
  const bool late = exec_word_.compare_exchange_strong(expected, 3);  // the reporter is late
  if (late || expected != 2) {
    ::close(start_fd);
    exec_path_[0] = '\0';
    return nullptr;
  }
  // Inherited by the new image (and, should the exec fail after all, left open in this one);
  // unless this process closed it (a vfork child that closed every descriptor): the new
  // image then gets it from hotprobe's rendezvous. Never a descriptor of the program's.
  if (holds_channel(fd_)) ::fcntl(fd_, F_SETFD, 0);
  if (!exec_child_ && exec_region_fd_ >= 0) ::fcntl(exec_region_fd_, F_SETFD, 0);
  exec_path_[0] = '\0';  // followed: the final report does not name it
  // hotprobe traces this thread, the one that execs (another thread's exec takes the
  // leader's pid, which a tracer of the leader alone would not follow).
  if (exec_early_) wait_for_tracer();
  return exec_envp_.data();
}

void Session::exec_handover() {
  drain_and_send();
  auto fail = [&] {
    std::uint32_t expected = 1;
    exec_word_.compare_exchange_strong(expected, 3);
    futex_wake_all(exec_word_);
  };
  // A followed child that closed its descriptors (the channel among them) before its exec:
  // the channel back from hotprobe. (This process's only thread of the program waits in
  // its exec, so no open() of the program's races the new descriptor's number.) The
  // program's own exec after it closed them is not followed (the map region went with
  // them): said at its end, once the channel is back.
  if (!holds_channel(fd_) && awaits_channel()) {
    if (!exec_child_ || exec_pid_ != pid_) {
      awaiting_channel_ = true;
      return fail();
    }
    reconnect();
  }
  // A stop already asked for: the session ends here (the exec is said, not followed).
  if (agent_path_.empty() || !channel_ok() || requested_.load() != 0) return fail();
  // A --follow-forks child's counts so far go to hotprobe now (merged there), and its new
  // image counts from zero; the program's stay in the run's region, which its new image
  // takes over.
  exec_region_fd_ = exec_child_ ? -1 : region_ ? region_->fd() : run_region_fd_;
  const bool vfork_child = exec_pid_ != pid_;  // its counts are in this session's maps
  if (!vfork_child && exec_region_fd_ < 0) {
    for (const auto& m : encode_map_data(*program_->runtime().maps))
      send_checked(encode(Msg::maps, m));
    program_->reset_maps();
  }
  // The environment the program passed, without hotprobe's variables; the agent first in
  // LD_PRELOAD (the program's own preload after it, and back in the program's environment
  // once the agent has started there), even when the program cleared LD_PRELOAD or passed
  // an empty environment: the exec'd image is the program, traced as bpftrace traces it.
  std::string user_preload;
  exec_env_.clear();
  for (char** e = exec_envp_in_; e && *e; ++e) {
    std::string_view entry = *e;
    if (entry.starts_with("LD_PRELOAD=")) {
      user_preload = entry.substr(11);
      continue;
    }
    if (entry.starts_with("HOTPROBE_")) continue;
    exec_env_.emplace_back(entry);
  }
  const std::string* preload = agent_preload();
  const std::string& agent = preload && !preload->empty() ? *preload : agent_path_;
  exec_env_.push_back("LD_PRELOAD=" + agent + (user_preload.empty() ? "" : ":" + user_preload));
  if (!user_preload.empty())
    exec_env_.push_back(std::string(kEnvSavedPreload) + "=" + user_preload);
  exec_env_.push_back(std::string(kEnvFd) + "=" + std::to_string(fd_));
  exec_env_.push_back(std::string(kEnvChannelId) + "=" + channel_identity());
  if (const std::string* rv = rendezvous())
    exec_env_.push_back(std::string(kEnvRendezvous) + "=" + *rv);
  exec_env_.push_back(std::string(kEnvExecStart) + "=" + std::to_string(exec_start_fd_));
  if (exec_child_) exec_env_.push_back(std::string(kEnvExecChild) + "=1");
  if (follow_forks_)
    exec_env_.push_back(std::string(kEnvFollowChildExecs) + (follow_child_execs_ ? "=1" : "=0"));
  if (exec_region_fd_ >= 0) {
    exec_env_.push_back(std::string(script::SharedRegion::kEnvFd) + "=" +
                        std::to_string(exec_region_fd_));
  }
  exec_envp_.clear();
  for (auto& e : exec_env_)
    exec_envp_.push_back(e.data());
  exec_envp_.push_back(nullptr);
  // What this image placed: hotprobe does not say at the end that they never attached.
  std::string payload;
  put<std::uint32_t>(payload, static_cast<std::uint32_t>(exec_pid_));
  put<std::uint32_t>(payload, static_cast<std::uint32_t>(exec_tid_));
  const std::string_view path = exec_path_;
  put<std::uint32_t>(payload, static_cast<std::uint32_t>(path.size()));
  payload.append(path);
  for (const auto& t : placed_targets()) {
    payload.append(t);
    payload.push_back('\0');
  }
  if (!send_checked(encode(Msg::followed, payload))) return fail();
  handover_ns_ = now_ns();
  std::uint32_t expected = 1;
  exec_word_.compare_exchange_strong(expected, 2);
  futex_wake_all(exec_word_);
}

}  // namespace hp::agent
