// The checks before a process is stopped (inject.cc's first step): whether this process
// may trace it (check_can_trace, inject.h), whether it is dying, and the library's path as
// the process sees it, owned so that no other user can replace it. From /proc only.
#pragma once

#include <sys/stat.h>
#include <sys/types.h>

#include <array>
#include <cstdint>
#include <string>

#include "base/error.h"

namespace hp::inject {

std::string proc(pid_t pid, const char* what);

// The fields of /proc/PID/status the checks need.
struct Status {
  std::string name;
  char state = '?';
  pid_t tgid = 0;
  pid_t ppid = 0;
  pid_t tracer = 0;
  std::array<long, 4> uid{-1, -1, -1, -1};  // real, effective, saved, fs
  std::array<long, 4> gid{-1, -1, -1, -1};
  int threads = 0;
  std::uint64_t cap_eff = 0;
  std::uint64_t sig_ign = 0;
  bool core_dumping = false;  // CoreDumping: 1 (Linux 4.15 and later)
};

Result<Status> read_status(const std::string& path);

// Whether thread `tid` of `pid` can still run user code: not a zombie or dead, not on its
// way out, and without SIGKILL pending (the kernel sends it to every thread of a process
// that exits).
bool thread_live(pid_t pid, const std::string& tid);

// A thread of `pid` that can still run user code (the leader of a process whose other
// threads go on shows as a zombie), as its /proc/PID/task/ entry; "" when none.
std::string a_live_thread(pid_t pid);

// The path `library` as process `pid` sees it, checked to exist there.
struct TargetPath {
  // The process's root and mount namespace as seen from here: /proc/PID/ (or, once the
  // leader has exited and only its zombie entry remains, /proc/PID/task/TID/ of a thread
  // that runs on: the leader's root and namespaces went with it).
  std::string task_dir;
  std::string through_root;  // TASK_DIR/root/...: the same file, from here
  struct stat file {};       // stat() of it
  bool other_mount_ns = false;
};

// An absolute path to a regular file that exists in the process's file system, owned as
// OpenSSH's secure-path rule asks (check_library_owners in process_checks.cc).
Result<TargetPath> check_library_path(pid_t pid, const std::string& library);

}  // namespace hp::inject
