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
#include "inject/process_checks.h"
#include "inject/return_stub.h"
#include "inject/safe_point.h"
#include "inject/tracee.h"

namespace hp::inject {

namespace {

constexpr std::uint64_t kGlibcRtldDlopen = 0x80000000;  // __RTLD_DLOPEN, for __libc_dlopen_mode

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

}  // namespace

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

namespace {

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
