#include "inject/process_checks.h"

#include <dirent.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <climits>
#include <cstdio>
#include <cstring>
#include <optional>
#include <vector>

#include "elf/maps.h"
#include "inject/inject.h"

namespace hp::inject {

namespace {

constexpr int kCapSysPtrace = 19;

}  // namespace

std::string proc(pid_t pid, const char* what) {
  return "/proc/" + std::to_string(pid) + "/" + what;
}

Result<Status> read_status(const std::string& path) {
  auto text = elf::read_proc_file(path);
  if (!text.ok()) return text.error();
  Status st;
  std::string_view rest = *text;
  while (!rest.empty()) {
    const std::size_t nl = rest.find('\n');
    std::string_view line = rest.substr(0, nl);
    rest = nl == std::string_view::npos ? std::string_view() : rest.substr(nl + 1);
    const std::size_t colon = line.find(':');
    if (colon == std::string_view::npos) continue;
    const std::string_view key = line.substr(0, colon);
    std::string_view value = line.substr(colon + 1);
    while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) {
      value.remove_prefix(1);
    }
    auto number = [&](auto& out, int base = 10) {
      std::from_chars(value.data(), value.data() + value.size(), out, base);
    };
    auto four = [&](std::array<long, 4>& out) {
      std::string_view v = value;
      for (long& x : out) {
        while (!v.empty() && (v.front() == ' ' || v.front() == '\t'))
          v.remove_prefix(1);
        auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), x);
        if (ec != std::errc()) break;
        v.remove_prefix(static_cast<std::size_t>(p - v.data()));
      }
    };
    if (key == "Name") st.name = std::string(value);
    if (key == "State" && !value.empty()) st.state = value.front();
    if (key == "Tgid") number(st.tgid);
    if (key == "PPid") number(st.ppid);
    if (key == "TracerPid") number(st.tracer);
    if (key == "Uid") four(st.uid);
    if (key == "Gid") four(st.gid);
    if (key == "Threads") number(st.threads);
    if (key == "CapEff") number(st.cap_eff, 16);
    if (key == "SigIgn") number(st.sig_ign, 16);
    if (key == "CoreDumping") st.core_dumping = value == "1";
  }
  return st;
}

namespace {

std::string process_name(pid_t pid) {
  auto st = read_status(proc(pid, "status"));
  return st.ok() ? st->name : std::string("?");
}

// A thread's state letter, kernel flags and private pending signals (fields 3, 9 and 31 of
// /proc/PID/task/TID/stat).
struct TaskState {
  char state = '?';
  unsigned long flags = 0;
  unsigned long pending = 0;
};
std::optional<TaskState> task_state(const std::string& stat_path) {
  auto text = elf::read_proc_file(stat_path);
  if (!text.ok()) return std::nullopt;
  const std::size_t paren = text->rfind(')');
  if (paren == std::string::npos) return std::nullopt;
  std::string_view rest = std::string_view(*text).substr(paren + 1);
  TaskState ts;
  for (int field = 3; field <= 31 && !rest.empty(); ++field) {
    rest.remove_prefix(std::min(rest.size(), rest.find_first_not_of(' ')));
    const std::string_view word = rest.substr(0, std::min(rest.size(), rest.find(' ')));
    if (field == 3 && !word.empty()) ts.state = word.front();
    if (field == 9) std::from_chars(word.data(), word.data() + word.size(), ts.flags);
    if (field == 31) std::from_chars(word.data(), word.data() + word.size(), ts.pending);
    rest.remove_prefix(word.size());
  }
  return ts;
}

// The kernel's task flags of a thread on its way out: PF_EXITING (in do_exit(), past
// exit_signals()), PF_POSTCOREDUMP (do_exit() has begun, Linux 5.16 and later: a thread
// its tracer holds at PTRACE_EVENT_EXIT has it and not yet PF_EXITING), PF_SIGNALED (it
// took a fatal signal).
constexpr unsigned long kPfExiting = 0x4, kPfPostCoreDump = 0x8, kPfSignaled = 0x400;

// How many threads a check that reads the process through one of its threads (its leader
// has exited) tries, each chosen after the one before ended in the middle.
constexpr int kLiveThreadTries = 100;

}  // namespace

// Whether thread `tid` of `pid` can still run user code: not a zombie or dead, not on its
// way out (the flags above), and without SIGKILL pending (the kernel sends it to every
// thread of a process that exits).
bool thread_live(pid_t pid, const std::string& tid) {
  auto ts = task_state(proc(pid, "task/") + tid + "/stat");
  return ts && ts->state != 'Z' && ts->state != 'X' &&
         !(ts->flags & (kPfExiting | kPfPostCoreDump | kPfSignaled)) &&
         !(ts->pending & (1ul << (SIGKILL - 1)));
}

// A thread of `pid` that can still run user code (the leader of a process whose other
// threads go on shows as a zombie), as its /proc/PID/task/ entry; "" when none. In a
// program whose threads come and go every thread of one listing may have ended by the
// time it is read: the listing is read again then (a bounded number of times).
std::string a_live_thread(pid_t pid) {
  std::vector<std::string> seen;  // every entry of the listings so far
  for (int scan = 0; scan < 50; ++scan) {
    DIR* dir = ::opendir(proc(pid, "task").c_str());
    if (!dir) return {};
    std::string live;
    bool changed = false;
    while (const dirent* e = ::readdir(dir)) {
      if (e->d_name[0] == '.') continue;
      if (thread_live(pid, e->d_name)) {
        live = e->d_name;
        break;
      }
      if (std::find(seen.begin(), seen.end(), e->d_name) == seen.end()) {
        seen.emplace_back(e->d_name);
        changed = true;
      }
    }
    ::closedir(dir);
    // No new thread since the listing before: the process makes none, it is dying.
    if (!live.empty() || (scan > 0 && !changed)) return live;
  }
  return {};
}

namespace {

// What is true of a process that is dying ("" when it is not): every thread of a process
// in exit (exit_group, a fatal signal) is a zombie or in the kernel's exit path, and while
// its core is dumped its threads wait for the dump. Its /proc/PID/root and ns/mnt are gone
// or going, so the checks that read them must not run first and misname the cause.
std::string dying_reason(pid_t pid, const Status& st) {
  const std::string who = "process " + std::to_string(pid) + " (" + st.name + ")";
  if (st.core_dumping) {
    return who + " is dumping core: it is ending; there is nothing to inject into";
  }
  if (!a_live_thread(pid).empty()) return {};
  if (st.state == 'Z') {
    return who + " is a zombie: it has exited and waits for its parent (PID " +
           std::to_string(st.ppid) + ") to reap it; there is nothing to inject into";
  }
  return who + " is exiting: its threads are in the kernel's exit path; there is nothing to " +
         "inject into";
}

// dying_reason() of `pid` now, for a check that failed unexpectedly ("" when it is not
// dying, or is gone).
std::string dying_reason_now(pid_t pid) {
  auto st = read_status(proc(pid, "status"));
  return st.ok() ? dying_reason(pid, *st) : std::string();
}

std::optional<int> yama_scope() {
  auto text = elf::read_proc_file("/proc/sys/kernel/yama/ptrace_scope");
  if (!text.ok() || text->empty()) return std::nullopt;
  return (*text)[0] - '0';
}

std::uint64_t inode_of(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 ? st.st_ino : 0;
}

Result<void> check_library_owners(pid_t pid, const std::string& library, const TargetPath& tp,
                                  const struct stat& file);

Result<TargetPath> check_library_path_once(pid_t pid, const std::string& library,
                                           const std::string& task_dir);

}  // namespace

bool is_descendant(pid_t pid, pid_t ancestor) {
  for (int depth = 0; pid > 1 && depth < 4096; ++depth) {
    if (pid == ancestor) return true;
    auto st = read_status(proc(pid, "status"));
    if (!st.ok()) return false;
    pid = st->ppid;
  }
  return false;
}

Result<TargetPath> check_library_path(pid_t pid, const std::string& library) {
  if (library.empty() || library.front() != '/') {
    return Error(Errc::invalid_argument,
                 "library path '" + library +
                     "' is not absolute: give the full path as the target process sees it");
  }
  if (inode_of(proc(pid, "root")) != 0) return check_library_path_once(pid, library, proc(pid, ""));
  // Through a thread that runs on; one that ends in the middle of the checks is replaced.
  for (int tries = 0; tries < kLiveThreadTries; ++tries) {
    const std::string live = a_live_thread(pid);
    if (live.empty()) {
      if (std::string dying = dying_reason_now(pid); !dying.empty()) {
        return Error(Errc::not_found, dying);
      }
      continue;  // every thread listed had ended by the time it was read
    }
    auto tp = check_library_path_once(pid, library, proc(pid, "task/") + live + "/");
    if (tp.ok() || thread_live(pid, live)) return tp;
  }
  return check_library_path_once(pid, library, proc(pid, ""));
}

namespace {

Result<TargetPath> check_library_path_once(pid_t pid, const std::string& library,
                                           const std::string& task_dir) {
  TargetPath tp;
  tp.task_dir = task_dir;
  const std::uint64_t self_ns = inode_of("/proc/self/ns/mnt");
  const std::uint64_t target_ns = inode_of(tp.task_dir + "ns/mnt");
  tp.other_mount_ns = self_ns != 0 && target_ns != 0 && self_ns != target_ns;
  tp.through_root = tp.task_dir + "root" + library;
  struct stat st;
  if (::stat(tp.through_root.c_str(), &st) != 0) {
    const int err = errno;
    const std::string id = std::to_string(pid);
    // A process that died since the checks has no root to look through: say that.
    if (std::string dying = dying_reason_now(pid); !dying.empty()) {
      return Error(Errc::not_found, dying);
    }
    if (::kill(pid, 0) != 0 && errno == ESRCH) {
      return Error(Errc::not_found, "process " + id + " exited (no process with PID " + id + ")");
    }
    if (tp.other_mount_ns || inode_of("/proc/self/root") != inode_of(tp.task_dir + "root")) {
      return Error(Errc::not_found,
                   "process " + id + " runs in another mount namespace (or root), where " +
                       library + " does not exist (" + std::strerror(err) +
                       "): copy the library into its file system, for example to /proc/" + id +
                       "/root/tmp/, and pass the path as the process sees it (/tmp/...)");
    }
    return sys_error(library + " (as process " + id + " sees it)", err);
  }
  if (!S_ISREG(st.st_mode)) {
    return Error(Errc::invalid_argument, library + " is not a regular file");
  }
  HP_TRY(check_library_owners(pid, library, tp, st));
  tp.file = st;
  return tp;
}

// OpenSSH's secure-path rule, for a library that root loads or that runs in a process
// more privileged than the library's owner: the file and every directory above it must
// belong to root or to the target's user and be writable by nobody else (no group or
// other write bit). Otherwise another user could replace the library, or a directory on
// its path, between the check and the dlopen, and run code as the target.
// One refinement over OpenSSH: a directory of root's with the sticky bit (/tmp) passes
// although others may write in it. There, only an entry's owner (or root) can rename or
// remove the entry, and the entry below it on the path is checked as well, so nobody
// else can put another file or directory in its place (a checkout in `mktemp -d`).
Result<void> check_library_owners(pid_t pid, const std::string& library, const TargetPath& tp,
                                  const struct stat& file) {
  auto st = read_status(proc(pid, "status"));
  if (!st.ok()) return st.error();
  const uid_t target_uid = static_cast<uid_t>(st->uid[1]);
  const bool strict = ::geteuid() == 0 || file.st_uid != target_uid;
  if (!strict) return {};
  // Walk the resolved path (symlinks followed) when the target shares our view of the
  // file system; otherwise the path's own components through /proc/PID/root.
  std::string walk = library, prefix = tp.task_dir + "root";
  if (!tp.other_mount_ns) {
    char real[PATH_MAX];
    if (::realpath(tp.through_root.c_str(), real) != nullptr) {
      walk = real;
      prefix.clear();
    }
  }
  const std::string way_out =
      ": another user could replace it and run code in process " + std::to_string(pid) +
      ". Install the agent in a directory that only root can write (owned by root, mode 0755, "
      "for example the installed lib/hotprobe directory) and point HOTPROBE_AGENT there";
  for (std::size_t end = walk.size();;) {
    const std::string part = walk.substr(0, end == 0 ? 1 : end);
    struct stat ds;
    if (::stat((prefix + part).c_str(), &ds) != 0) return sys_error(part);
    const bool owner_ok = ds.st_uid == 0 || ds.st_uid == target_uid;
    const bool root_sticky_dir =
        part != walk && S_ISDIR(ds.st_mode) && ds.st_uid == 0 && (ds.st_mode & S_ISVTX) != 0;
    if (!owner_ok || ((ds.st_mode & (S_IWGRP | S_IWOTH)) && !root_sticky_dir)) {
      char mode[8];
      std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(ds.st_mode & 07777));
      const std::string what = part == walk ? "the library " + library
                                            : "directory " + part + " (above " + library + ")";
      const std::string why =
          !owner_ok
              ? "belongs to uid " + std::to_string(ds.st_uid) +
                    ", neither root nor the process's user (uid " + std::to_string(target_uid) + ")"
              : std::string("is writable by ") +
                    ((ds.st_mode & S_IWOTH) ? "everyone" : "its group") + " (mode " + mode + ")";
      return Error(Errc::permission_denied, "refusing to load " + library + " into process " +
                                                std::to_string(pid) + ": " + what + " " + why +
                                                way_out);
    }
    if (end <= 1) break;
    end = walk.rfind('/', end - 1);
    if (end == std::string::npos) break;
  }
  return {};
}

}  // namespace

Result<void> check_can_trace(pid_t pid) {
  const std::string id = std::to_string(pid);
  if (pid <= 0) return Error(Errc::invalid_argument, "invalid PID " + id);
  if (pid == ::getpid()) {
    return Error(Errc::invalid_argument,
                 "process " + id +
                     " is this process: a process cannot ptrace itself; use the "
                     "library API in-process instead");
  }
  auto st = read_status(proc(pid, "status"));
  if (!st.ok()) {
    if (st.error().code() == Errc::not_found) {
      return Error(Errc::not_found, "no process with PID " + id);
    }
    return st.error();
  }
  if (st->tgid != pid) {
    return Error(Errc::invalid_argument,
                 id + " is a thread of process " + std::to_string(st->tgid) +
                     ": pass the process ID (and Options::tid to choose this thread)");
  }
  const std::string who = "process " + id + " (" + st->name + ")";
  if (std::string dying = dying_reason(pid, *st); !dying.empty()) {
    return Error(Errc::not_found, dying);
  }
  // The leader has exited and other threads run on: their tracer and state are what count
  // (the leader's zombie entry keeps the tracer it had, even one that seized it just
  // before it exited).
  if (!thread_live(pid, id)) {
    for (int tries = 0; tries < kLiveThreadTries; ++tries) {
      const std::string live = a_live_thread(pid);
      if (live.empty()) break;
      auto other = read_status(proc(pid, "task/") + live + "/status");
      if (!other.ok()) continue;  // it ended meanwhile: another
      st->tracer = other->tracer;
      st->state = other->state;
      break;
    }
  }
  if (st->tracer != 0 && st->tracer != ::getpid()) {
    return Error(Errc::busy, who + " is being traced by PID " + std::to_string(st->tracer) + " (" +
                                 process_name(st->tracer) +
                                 "); detach that tracer (debugger, strace) first");
  }
  if (st->tracer == ::getpid()) {
    return Error(Errc::busy, who + " is being traced by PID " + std::to_string(st->tracer) +
                                 " (this process): detach it first");
  }
  if (st->state == 'T' || st->state == 't') {
    return Error(Errc::busy,
                 who + " is stopped (job control): resume it with `kill -CONT " + id + "` first");
  }
  auto self = read_status("/proc/self/status");
  if (!self.ok()) return self.error();
  const bool cap_ptrace = (self->cap_eff >> kCapSysPtrace) & 1;
  const auto scope = yama_scope();
  if (scope && *scope >= 3) {
    return Error(Errc::permission_denied,
                 "ptrace is disabled on this system (kernel.yama.ptrace_scope=3, which only a "
                 "reboot resets): injection into running processes is impossible; start the "
                 "program under `hotprobe run` instead");
  }
  if (!cap_ptrace) {
    if (scope && *scope == 2) {
      return Error(Errc::permission_denied,
                   "kernel.yama.ptrace_scope=2 allows only root (CAP_SYS_PTRACE) to trace: run "
                   "as root, or `sysctl kernel.yama.ptrace_scope=1` (or 0)");
    }
    const long uid = self->uid[0];
    const long gid = self->gid[0];
    const bool same_uid =
        std::all_of(st->uid.begin(), st->uid.begin() + 3, [&](long u) { return u == uid; });
    const bool same_gid =
        std::all_of(st->gid.begin(), st->gid.begin() + 3, [&](long g) { return g == gid; });
    if (!same_uid || !same_gid) {
      return Error(Errc::permission_denied,
                   who + " runs as uid " + std::to_string(st->uid[1]) + " (gid " +
                       std::to_string(st->gid[1]) + ") and this process as uid " +
                       std::to_string(uid) + " (gid " + std::to_string(gid) +
                       ") without CAP_SYS_PTRACE: run as that user, or as root");
    }
    if (scope && *scope == 1 && !is_descendant(pid, ::getpid())) {
      return Error(Errc::permission_denied,
                   "kernel.yama.ptrace_scope=1 lets a process trace only its descendants, and " +
                       who +
                       " is not one: run as root (CAP_SYS_PTRACE), or `sysctl "
                       "kernel.yama.ptrace_scope=0`, or have the program call "
                       "prctl(PR_SET_PTRACER, ...)");
    }
  }
  return {};
}

}  // namespace hp::inject
