#include "inject/inject.h"

#include <dirent.h>
#include <dlfcn.h>
#include <link.h>
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <climits>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

#include "elf/maps.h"
#include "elf/modules.h"
#include "inject/frames.h"
#include "inject/safe_point.h"
#include "inject/tracee.h"

namespace hp::inject {

namespace {

constexpr int kCapSysPtrace = 19;
constexpr std::uint64_t kGlibcRtldDlopen = 0x80000000;  // __RTLD_DLOPEN, for __libc_dlopen_mode

std::string proc(pid_t pid, const char* what) {
  return "/proc/" + std::to_string(pid) + "/" + what;
}

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

bool is_descendant(pid_t pid, pid_t ancestor) {
  for (int depth = 0; pid > 1 && depth < 4096; ++depth) {
    if (pid == ancestor) return true;
    auto st = read_status(proc(pid, "status"));
    if (!st.ok()) return false;
    pid = st->ppid;
  }
  return false;
}

std::uint64_t inode_of(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 ? st.st_ino : 0;
}

// The path `library` as process `pid` sees it, checked to exist there.
struct TargetPath;
Result<void> check_library_owners(pid_t pid, const std::string& library, const TargetPath& tp,
                                  const struct stat& file);

struct TargetPath {
  // The process's root and mount namespace as seen from here: /proc/PID/ (or, once the
  // leader has exited and only its zombie entry remains, /proc/PID/task/TID/ of a thread
  // that runs on: the leader's root and namespaces went with it).
  std::string task_dir;
  std::string through_root;  // TASK_DIR/root/...: the same file, from here
  struct stat file {};       // stat() of it
  bool other_mount_ns = false;
};

Result<TargetPath> check_library_path_once(pid_t pid, const std::string& library,
                                           const std::string& task_dir);

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
// other write bit, sticky or not). Otherwise another user could replace the library, or
// a directory on its path, between the check and the dlopen, and run code as the target.
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
    if (!owner_ok || (ds.st_mode & (S_IWGRP | S_IWOTH))) {
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

// The loader entry points in the target.
struct LoaderFunctions {
  std::uintptr_t dlopen = 0;
  std::uintptr_t dlclose = 0;
  std::uintptr_t dlerror = 0;  // 0: not available (__libc_dlopen_mode)
  std::uint64_t extra_mode = 0;
};

Result<std::uintptr_t> address_of(const elf::ModuleList& mods, const elf::Module& m,
                                  std::string_view name) {
  auto file = mods.elf(m);
  if (!file.ok()) return file.error();
  auto target = (*file)->lookup_one(name);
  if (!target.ok()) return target.error();
  return m.offset_to_address(target->file_offset);
}

Result<LoaderFunctions> find_loader_functions(const elf::ModuleList& mods) {
  auto libc = mods.resolve("libc");
  if (!libc.ok()) {
    return Error(Errc::unsupported, "process " + std::to_string(mods.pid()) +
                                        " has no libc loaded (static or non-glibc program): "
                                        "injection needs glibc's dlopen. " +
                                        libc.error().message());
  }
  // glibc 2.34 and later: dlopen lives in libc.so.6.
  auto open = address_of(mods, **libc, "dlopen");
  if (open.ok()) {
    auto close = address_of(mods, **libc, "dlclose");
    auto error = address_of(mods, **libc, "dlerror");
    if (close.ok() && error.ok()) return LoaderFunctions{*open, *close, *error, 0};
  }
  // Older glibc: libdl.so.2 when the program links it, else libc's private entry points.
  if (auto libdl = mods.resolve("libdl"); libdl.ok()) {
    auto o = address_of(mods, **libdl, "dlopen");
    auto c = address_of(mods, **libdl, "dlclose");
    auto e = address_of(mods, **libdl, "dlerror");
    if (o.ok() && c.ok() && e.ok()) return LoaderFunctions{*o, *c, *e, 0};
  }
  auto o = address_of(mods, **libc, "__libc_dlopen_mode");
  auto c = address_of(mods, **libc, "__libc_dlclose");
  if (o.ok() && c.ok()) return LoaderFunctions{*o, *c, 0, kGlibcRtldDlopen};
  return Error(Errc::unsupported, "found no dlopen in " + std::string((*libc)->path) +
                                      " of process " + std::to_string(mods.pid()) + ": " +
                                      open.error().message());
}

std::vector<pid_t> list_threads(pid_t pid) {
  std::vector<pid_t> tids;
  DIR* dir = ::opendir(proc(pid, "task").c_str());
  if (!dir) return tids;
  while (const dirent* e = ::readdir(dir)) {
    pid_t tid = 0;
    const std::string_view n = e->d_name;
    auto [p, ec] = std::from_chars(n.data(), n.data() + n.size(), tid);
    if (ec == std::errc() && p == n.data() + n.size() && tid > 0) tids.push_back(tid);
  }
  ::closedir(dir);
  std::sort(tids.begin(), tids.end());
  // The leader first (unless it has exited and only its zombie entry remains).
  auto leader = std::find(tids.begin(), tids.end(), pid);
  if (leader != tids.end()) {
    auto st =
        read_status("/proc/" + std::to_string(pid) + "/task/" + std::to_string(pid) + "/status");
    tids.erase(leader);
    if (!st.ok() || st->state != 'Z') tids.insert(tids.begin(), pid);
  }
  return tids;
}

// The process that check_can_trace looked at, pinned before anything else: a pidfd
// (which refers to that process and no later one with the same PID), its start time
// (field 22 of /proc/PID/stat) and its executable (device and inode of /proc/PID/exe).
// After each stop the injector confirms that the stopped thread still belongs to it: a
// PID reused, or an exec, between the checks and the stop is refused, and the maps are
// read only after that confirmation.
struct Identity {
  pid_t pid = 0;
  int pidfd = -1;
  std::uint64_t start_time = 0;
  dev_t exe_dev = 0;
  ino_t exe_ino = 0;
  Identity() = default;
  Identity(const Identity&) = delete;
  Identity& operator=(const Identity&) = delete;
  ~Identity() {
    if (pidfd >= 0) ::close(pidfd);
  }
};

Result<std::uint64_t> start_time_of(pid_t pid) {
  auto text = elf::read_proc_file(proc(pid, "stat"));
  if (!text.ok()) return text.error();
  const std::size_t paren = text->rfind(')');
  if (paren == std::string::npos) return Error(Errc::io_error, "unreadable " + proc(pid, "stat"));
  // Fields from the third (state) on follow the command's closing parenthesis.
  std::string_view rest = std::string_view(*text).substr(paren + 1);
  for (int field = 3; field < 22; ++field) {
    rest.remove_prefix(std::min(rest.size(), rest.find_first_not_of(' ')));
    rest.remove_prefix(std::min(rest.size(), rest.find(' ')));
  }
  rest.remove_prefix(std::min(rest.size(), rest.find_first_not_of(' ')));
  std::uint64_t v = 0;
  std::from_chars(rest.data(), rest.data() + rest.size(), v);
  return v;
}

Result<void> identify(pid_t pid, Identity& id) {
  id.pid = pid;
  id.pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (id.pidfd < 0 && errno == ESRCH) {
    return Error(Errc::not_found, "no process with PID " + std::to_string(pid));
  }
  // Without pidfd_open (Linux < 5.3) the start time and the executable remain.
  auto t = start_time_of(pid);
  if (!t.ok()) {
    if (t.error().code() == Errc::not_found) {
      return Error(Errc::not_found, "no process with PID " + std::to_string(pid));
    }
    return t.error();
  }
  id.start_time = *t;
  struct stat st;
  if (::stat(proc(pid, "exe").c_str(), &st) == 0) {
    id.exe_dev = st.st_dev;
    id.exe_ino = st.st_ino;
  }
  return {};
}

// That `pid` is still the process `id` recorded (called with one of its threads stopped,
// which keeps the PID from being reused while we look).
Result<void> confirm_identity(const Identity& id) {
  const std::string pid = std::to_string(id.pid);
  const std::string again =
      ": nothing was injected; run the command again with the PID "
      "of the process you mean";
  bool same = true;
  if (id.pidfd >= 0 && ::syscall(SYS_pidfd_send_signal, id.pidfd, 0, nullptr, 0) != 0 &&
      errno == ESRCH) {
    same = false;
  }
  auto t = start_time_of(id.pid);
  if (same && t.ok() && *t != id.start_time) same = false;
  if (!same) {
    return Error(Errc::not_found, "process " + pid + " ended after it was checked, and PID " + pid +
                                      " now belongs to another process" + again);
  }
  struct stat st;
  if (id.exe_ino != 0 && ::stat(proc(id.pid, "exe").c_str(), &st) == 0 &&
      (st.st_dev != id.exe_dev || st.st_ino != id.exe_ino)) {
    char exe[PATH_MAX] = {};
    ssize_t n = ::readlink(proc(id.pid, "exe").c_str(), exe, sizeof exe - 1);
    if (n < 0) n = 0;
    return Error(Errc::busy, "process " + pid + " executed another program (" +
                                 std::string(exe, static_cast<std::size_t>(n)) +
                                 ") after it was checked" + again);
  }
  return {};
}

// What is read from the target once it is confirmed (with a thread stopped).
struct Snapshot {
  elf::ModuleList mods;
  std::uintptr_t load_lock = 0;
  std::uintptr_t stub = 0;  // 0 until placed
  std::unique_ptr<Unwinder> unwinder;
};

// Writes the return stub (tracee.h) into the zero padding that follows the end of an
// executable segment, in libc first (every target has it), then ld.so, the program and
// the other modules. The padding lies in the segment's last page, which is mapped
// executable but holds no code; nothing ever jumps there but our calls. The bytes stay
// (the next injection finds them in place), so two injectors at once never remove code
// the other's thread may still be running.
Result<std::uintptr_t> place_stub(Tracee& t, const elf::ModuleList& mods) {
  const auto code = ReturnStub::code();
  std::vector<const elf::Module*> order;
  for (const elf::Module& m : mods.modules()) {
    if (is_libc(m.name())) order.insert(order.begin(), &m);
  }
  for (const elf::Module& m : mods.modules()) {
    if (is_loader(m.name())) order.push_back(&m);
  }
  for (const elf::Module& m : mods.modules()) {
    if (!is_libc(m.name()) && !is_loader(m.name())) order.push_back(&m);
  }
  for (const elf::Module* m : order) {
    auto file = mods.elf(*m);
    if (!file.ok()) continue;
    for (const elf::Segment& seg : (*file)->segments()) {
      if (!seg.executable || seg.filesz == 0) continue;
      auto last = m->offset_to_address(seg.offset + seg.filesz - 1);
      if (!last.ok()) continue;
      const std::uintptr_t addr = (*last + 16) & ~std::uintptr_t{15};
      const std::uintptr_t page_end = (*last | 4095) + 1;
      if (addr >= page_end || page_end - addr < code.size()) continue;
      const elf::Mapping* map = nullptr;
      for (const elf::Mapping& mp : mods.mappings()) {
        if (mp.contains(addr)) map = &mp;
      }
      if (!map || !map->executable() || map->end < addr + code.size()) continue;
      std::vector<std::uint8_t> now(code.size());
      if (!t.read_memory(addr, now.data(), now.size()).ok()) continue;
      if (std::equal(now.begin(), now.end(), code.begin())) return addr;
      if (!std::all_of(now.begin(), now.end(), [](std::uint8_t b) { return b == 0; })) continue;
      if (!t.write_memory(addr, code.data(), code.size()).ok()) continue;
      if (!t.read_memory(addr, now.data(), now.size()).ok() ||
          !std::equal(now.begin(), now.end(), code.begin())) {
        continue;
      }
      return addr;
    }
  }
  return Error(Errc::unsupported, "process " + std::to_string(mods.pid()) +
                                      " has no executable segment with room for the "
                                      "injector's return stub (" +
                                      std::to_string(code.size()) + " bytes of zero padding)");
}

// Stops one thread of `pid` at a safe point, runs `body` on it, and detaches.
template <class Body>
Result<Report> with_stopped_thread(const Identity& id, std::unique_ptr<Unwinder> unwinder,
                                   const Options& opts, Body&& body) {
  const pid_t pid = id.pid;
  const Clock::time_point deadline = Clock::now() + opts.timeout;
  if (opts.tid != 0) {
    struct stat st;
    const std::string task = "/proc/" + std::to_string(pid) + "/task/" + std::to_string(opts.tid);
    if (::stat(task.c_str(), &st) != 0) {
      return Error(Errc::not_found, "process " + std::to_string(pid) + " has no thread " +
                                        std::to_string(opts.tid) + " (see " + proc(pid, "task") +
                                        ")");
    }
  }
  Report report;
  std::optional<Snapshot> snap;
  std::string last_reason;
  std::size_t next = 0;
  for (;;) {
    std::vector<pid_t> tids = opts.tid ? std::vector<pid_t>{opts.tid} : list_threads(pid);
    if (tids.empty()) return Error(Errc::not_found, "no process with PID " + std::to_string(pid));
    const pid_t tid = tids[next++ % tids.size()];
    ++report.attempts;
    Tracee t(pid, tid, deadline);
    // The process runs on without the chosen thread, which exited (or is exiting): nothing
    // of the process was touched yet; take another thread.
    const auto runs_on = [&] { return confirm_identity(id).ok() && !a_live_thread(pid).empty(); };
    if (auto s = t.seize(); !s.ok()) {
      // A thread that exited between the listing and the seize.
      if (s.error().code() == Errc::not_found && !opts.tid && (tid != pid || runs_on())) continue;
      return s.error();
    }
    if (opts.test_after_seize) opts.test_after_seize(tid);
    if (auto s = t.interrupt(); !s.ok()) {
      // A thread on its way out when it was seized.
      if (t.gone() && !opts.tid && report.threads_exited < kMaxThreadExits && runs_on()) {
        ++report.threads_exited;
        continue;
      }
      return s.error();
    }
    HP_TRY(confirm_identity(id));
    // The leader's entry has no maps once it has exited: they are read through this
    // thread (stopped, so it exists while they are used), again at each stop of another
    // thread (the one before may have ended since).
    if (snap && snap->mods.pid() != pid && snap->mods.pid() != tid) {
      auto mods = elf::ModuleList::of_process(tid);
      if (mods.ok() && !mods->mappings().empty()) snap->mods = std::move(*mods);
    }
    if (!snap) {
      auto mods = elf::ModuleList::of_process(pid);
      if (mods.ok() && mods->mappings().empty() && tid != pid) {
        mods = elf::ModuleList::of_process(tid);
      }
      if (!mods.ok()) return mods.error();
      if (mods->mappings().empty()) {
        return Error(Errc::not_found, "process " + std::to_string(pid) +
                                          " is exiting (it has no memory mappings left)");
      }
      snap.emplace(Snapshot{std::move(*mods), 0, 0, std::move(unwinder)});
      snap->load_lock = target_load_lock(snap->mods);
    }
    std::string reason = unsafe_reason(t, snap->mods, snap->load_lock, snap->unwinder.get());
    if (reason.empty()) {
      if (snap->stub == 0) {
        auto stub = place_stub(t, snap->mods);
        if (!stub.ok()) return stub.error();
        snap->stub = *stub;
      }
      report.tid = tid;
      report.in_syscall = t.in_restartable_syscall();
      auto r = body(t, *snap, report);
      if (!r.ok()) {
        (void)t.restore_and_detach();
        return r.error();
      }
      HP_TRY(t.restore_and_detach());
      report.pause_ms = t.stopped_ms();
      report.stop_latency_ms = t.stop_latency_ms();
      return report;
    }
    HP_TRY(t.detach());
    last_reason = "thread " + std::to_string(tid) + " was " + reason;
    if (Clock::now() + std::chrono::milliseconds(1) >= deadline) {
      return Error(Errc::timed_out,
                   "no thread of process " + std::to_string(pid) + " reached a safe point in " +
                       std::to_string(opts.timeout.count()) + " ms (" +
                       std::to_string(report.attempts) + " tries; last: " + last_reason +
                       "); nothing was injected: try again when the process is less busy");
    }
    // Let it run on out of there.
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

// The target's dlerror() text (its address from the stub's error call), read at the stop.
std::string remote_dlerror(Tracee& t, const LoaderFunctions& f, std::uint64_t msg) {
  if (!f.dlerror) return "no dlerror() in this glibc";
  if (msg == 0) return "dlerror() gave no message";
  auto text = t.read_string(msg);
  return text.ok() ? *text : "dlerror()'s message is unreadable: " + text.error().message();
}

// Pins the process and checks it may be traced. Then, before anything is stopped, the
// slow reading: the ELF files of libc (symbols) and the unwinder's view of the modules
// (CFI) are parsed now, from a preview of the maps, so that the stop only looks addresses
// up in what is cached. Addresses themselves come from the snapshot taken after the stop.
Result<void> prepare(pid_t pid, Identity& id, std::unique_ptr<Unwinder>& unwinder) {
  HP_TRY(identify(pid, id));
  HP_TRY(check_can_trace(pid));
  // A process whose leader has exited is read through a thread that runs on (the leader's
  // entry has no maps).
  pid_t view = pid;
  if (std::string live = a_live_thread(pid);
      !live.empty() && !thread_live(pid, std::to_string(pid))) {
    view = std::stoi(live);
  }
  if (auto preview = elf::ModuleList::of_process(view); preview.ok()) {
    (void)find_loader_functions(*preview);  // fills the ELF cache (load_elf) for libc
  }
  unwinder = std::make_unique<Unwinder>(view);
  unwinder->prepare();
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

Result<Report> load_library(pid_t pid, const std::string& library, const Options& opts) {
  Identity id;
  std::unique_ptr<Unwinder> unwinder;
  HP_TRY(prepare(pid, id, unwinder));
  auto path = check_library_path(pid, library);
  if (!path.ok()) return path.error();
  if (opts.after_checks) opts.after_checks();
  auto report = with_stopped_thread(
      id, std::move(unwinder), opts,
      [&](Tracee& t, const Snapshot& snap, Report& rep) -> Result<void> {
        auto f = find_loader_functions(snap.mods);
        if (!f.ok()) return f.error();
        const std::uint64_t args[] = {Tracee::kDataArg, RTLD_NOW | f->extra_mode};
        auto r = t.call(snap.stub, f->dlopen, args, {library.c_str(), library.size() + 1},
                        f->dlerror, opts.test_sentinel_return);
        if (!r.ok()) return r.error();
        if (r->value == 0) {
          return Error(Errc::io_error, "dlopen(\"" + library + "\") failed in process " +
                                           std::to_string(pid) + ": " +
                                           remote_dlerror(t, *f, r->error_value));
        }
        rep.handle = r->value;
        return {};
      });
  if (report.ok()) report->other_mount_ns = path->other_mount_ns;
  return report;
}

Result<Report> unload_library(pid_t pid, std::uintptr_t handle, const Options& opts) {
  if (handle == 0) return Error(Errc::invalid_argument, "unload_library: null handle");
  Identity id;
  std::unique_ptr<Unwinder> unwinder;
  HP_TRY(prepare(pid, id, unwinder));
  if (opts.after_checks) opts.after_checks();
  return with_stopped_thread(
      id, std::move(unwinder), opts,
      [&](Tracee& t, const Snapshot& snap, Report& rep) -> Result<void> {
        auto f = find_loader_functions(snap.mods);
        if (!f.ok()) return f.error();
        const std::uint64_t args[] = {handle};
        auto rc = t.call(snap.stub, f->dlclose, args, {}, 0, opts.test_sentinel_return);
        if (!rc.ok()) return rc.error();
        if (static_cast<int>(rc->value) != 0) {
          return Error(Errc::io_error, "dlclose failed in process " + std::to_string(pid) +
                                           " (it returned " +
                                           std::to_string(static_cast<int>(rc->value)) + ")");
        }
        rep.handle = handle;
        return {};
      });
}

Result<long> call_function(pid_t pid, const std::string& library_path, std::string_view symbol,
                           long arg, const Options& opts) {
  const std::uint64_t args[] = {static_cast<std::uint64_t>(arg)};
  return call_function_with_data(pid, library_path, symbol, args, {}, opts);
}

Result<long> call_function_with_data(pid_t pid, const std::string& library_path,
                                     std::string_view symbol, std::span<const std::uint64_t> args,
                                     std::span<const char> data, const Options& opts) {
  Identity id;
  std::unique_ptr<Unwinder> unwinder;
  HP_TRY(prepare(pid, id, unwinder));
  auto path = check_library_path(pid, library_path);
  if (!path.ok()) return path.error();
  const struct stat& st = path->file;
  if (opts.after_checks) opts.after_checks();
  long result = 0;
  auto report = with_stopped_thread(
      id, std::move(unwinder), opts, [&](Tracee& t, const Snapshot& snap, Report&) -> Result<void> {
        const elf::Module* m = snap.mods.find(elf::ModuleKey{st.st_dev, st.st_ino});
        if (!m) {
          return Error(Errc::not_found, library_path + " is not loaded in process " +
                                            std::to_string(pid) +
                                            ": load it with load_library first");
        }
        auto fn = address_of(snap.mods, *m, symbol);
        if (!fn.ok()) return fn.error();
        auto r = t.call(snap.stub, *fn, args, data, 0, opts.test_sentinel_return);
        if (!r.ok()) return r.error();
        result = static_cast<long>(r->value);
        return {};
      });
  if (!report.ok()) return report.error();
  return result;
}

}  // namespace hp::inject
