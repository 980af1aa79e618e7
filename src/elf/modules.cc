#include "elf/modules.h"

#include <dlfcn.h>
#include <elf.h>
#include <link.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>

namespace hp::elf {

namespace {

constexpr std::string_view kDeleted = " (deleted)";

std::string hex(std::uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

std::string_view base_name(std::string_view path) {
  if (path.ends_with(kDeleted)) path.remove_suffix(kDeleted.size());
  std::size_t slash = path.rfind('/');
  return slash == std::string_view::npos ? path : path.substr(slash + 1);
}

// "libc" matches "libc.so.6" and "libc-2.36.so", not "libcap.so.2".
bool short_name_matches(std::string_view spec, std::string_view name) {
  return name.size() > spec.size() && name.starts_with(spec) &&
         (name[spec.size()] == '.' || name[spec.size()] == '-');
}

std::string proc_path(pid_t pid, const char* what) {
  return pid == 0 ? std::string("/proc/self/") + what : "/proc/" + std::to_string(pid) + "/" + what;
}

// The program's argv[0], from /proc/PID/cmdline ("" if unreadable).
std::string argv0(pid_t pid) {
  auto cmdline = read_proc_file(proc_path(pid, "cmdline"));
  if (!cmdline.ok()) return {};
  return std::string(cmdline->c_str());  // up to the first NUL
}

// The file `name` names as a command: the first PATH entry holding an executable file of
// that name, seen from `root` ("" for this process's root, else /proc/PID/root).
// Symlinks are followed by stat: the key is the real file's.
bool find_command(std::string_view name, const std::string& root, ModuleKey& key) {
  const char* path = std::getenv("PATH");  // NOLINT(concurrency-mt-unsafe): read only
  std::string_view dirs = path ? path : "/usr/local/bin:/usr/bin:/bin";
  while (true) {
    const std::size_t colon = dirs.find(':');
    std::string dir(dirs.substr(0, colon));
    if (!dir.empty() && dir.front() == '/') {
      const std::string candidate = root + dir + "/" + std::string(name);
      struct stat st;
      if (::stat(candidate.c_str(), &st) == 0 && S_ISREG(st.st_mode) && (st.st_mode & 0111)) {
        key =
            ModuleKey{static_cast<std::uint64_t>(st.st_dev), static_cast<std::uint64_t>(st.st_ino)};
        return true;
      }
    }
    if (colon == std::string_view::npos) return false;
    dirs.remove_prefix(colon + 1);
  }
}

// Objects the dynamic linker lists, read inside dl_iterate_phdr together with the maps,
// so both come from one moment: the loader holds its list lock across the callbacks.
struct LoaderObject {
  std::uintptr_t bias;
  std::uintptr_t first_load;  // runtime address of the first PT_LOAD
  std::string name;
  bool main;
};

struct SelfSnapshot {
  std::vector<LoaderObject> objects;
  Result<std::vector<Mapping>> maps = std::vector<Mapping>();
  bool maps_read = false;
};

int collect_loader_object(dl_phdr_info* info, size_t, void* data) {
  auto* snap = static_cast<SelfSnapshot*>(data);
  if (!snap->maps_read) {
    snap->maps_read = true;
    snap->maps = read_maps(0);
  }
  std::uintptr_t first = 0;
  bool found = false;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    if (info->dlpi_phdr[i].p_type == PT_LOAD) {
      first = info->dlpi_addr + info->dlpi_phdr[i].p_vaddr;
      found = true;
      break;
    }
  }
  if (found) {
    snap->objects.push_back(LoaderObject{
        info->dlpi_addr, first, info->dlpi_name ? info->dlpi_name : "", snap->objects.empty()});
  }
  return 0;
}

}  // namespace

std::string_view Module::name() const {
  return base_name(path);
}

bool Module::contains(std::uintptr_t addr) const {
  for (const Mapping& m : mappings) {
    if (m.contains(addr)) return true;
  }
  return false;
}

Result<std::uintptr_t> Module::offset_to_address(std::uint64_t offset) const {
  const Mapping* best = nullptr;
  for (const Mapping& m : mappings) {
    if (offset >= m.offset && offset - m.offset < m.size()) {
      if (!best || (m.executable() && !best->executable())) best = &m;
    }
  }
  if (!best) {
    std::string ranges;
    for (const Mapping& m : mappings) {
      if (!ranges.empty()) ranges += ", ";
      ranges += hex(m.offset) + "-" + hex(m.offset + m.size());
    }
    return Error(Errc::not_found, "file offset " + hex(offset) + " of " + std::string(name()) +
                                      " is not mapped (mapped file ranges: " + ranges + ")");
  }
  return best->start + (offset - best->offset);
}

Result<std::uint64_t> Module::address_to_offset(std::uintptr_t addr) const {
  for (const Mapping& m : mappings) {
    if (m.contains(addr)) return m.offset + (addr - m.start);
  }
  return Error(Errc::not_found,
               "address " + hex(addr) + " is not in a file mapping of " + std::string(name()));
}

ModuleList ModuleList::group(pid_t pid, bool self, std::vector<Mapping> maps) {
  ModuleList list;
  list.pid_ = pid;
  list.self_ = self;
  list.maps_ = std::move(maps);
  std::map<std::pair<std::uint64_t, std::uint64_t>, std::size_t> index;
  for (const Mapping& m : list.maps_) {
    if (!m.file_backed()) continue;
    const ModuleKey k = m.key();
    auto [it, added] = index.try_emplace({k.dev, k.ino}, list.modules_.size());
    if (added) {
      Module mod;
      mod.key = k;
      mod.path = m.path;
      list.modules_.push_back(std::move(mod));
    }
    list.modules_[it->second].mappings.push_back(m);
  }
  // A module is a file the process may run code from; data files (locale archives,
  // caches) are mapped but never executable.
  std::erase_if(list.modules_, [](const Module& mod) {
    return std::none_of(mod.mappings.begin(), mod.mappings.end(),
                        [](const Mapping& m) { return m.executable(); });
  });
  for (Module& mod : list.modules_) {
    std::sort(mod.mappings.begin(), mod.mappings.end(),
              [](const Mapping& a, const Mapping& b) { return a.start < b.start; });
  }
  std::sort(list.modules_.begin(), list.modules_.end(),
            [](const Module& a, const Module& b) { return a.start() < b.start(); });
  return list;
}

ModuleList ModuleList::from_maps(pid_t pid, std::vector<Mapping> maps, std::string_view exe_path) {
  ModuleList list = group(pid, false, std::move(maps));
  for (Module& mod : list.modules_) {
    if (!exe_path.empty() && mod.path == exe_path) {
      mod.is_main = true;
      break;
    }
  }
  return list;
}

Result<ModuleList> ModuleList::of_process(pid_t pid) {
  auto maps = read_maps(pid);
  if (!maps.ok()) return maps.error();
  char buf[PATH_MAX];
  const std::string exe = proc_path(pid, "exe");
  ssize_t n = ::readlink(exe.c_str(), buf, sizeof buf - 1);
  std::string exe_path = n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string();
  ModuleList list = from_maps(pid, std::move(*maps), exe_path);
  list.pid_ = pid == 0 ? ::getpid() : pid;
  if (!list.main()) {
    // The exe link is unreadable (another user's process) or the executable was run via
    // ld.so: the kernel's AT_ENTRY still points into the program.
    auto auxv = read_proc_file(proc_path(pid, "auxv"));
    if (auxv.ok()) {
      const std::string& a = *auxv;
      for (std::size_t i = 0; i + 2 * sizeof(std::uint64_t) <= a.size();
           i += 2 * sizeof(std::uint64_t)) {
        std::uint64_t type, value;
        std::memcpy(&type, a.data() + i, sizeof type);
        std::memcpy(&value, a.data() + i + sizeof type, sizeof value);
        if (type != AT_ENTRY) continue;
        for (Module& mod : list.modules_) {
          if (mod.contains(value)) mod.is_main = true;
        }
      }
    }
  }
  return list;
}

Result<ModuleList> ModuleList::of_self() {
  SelfSnapshot snap;
  dl_iterate_phdr(collect_loader_object, &snap);
  if (!snap.maps_read) snap.maps = read_maps(0);
  if (!snap.maps.ok()) return snap.maps.error();
  ModuleList list = group(::getpid(), true, std::move(*snap.maps));
  for (const LoaderObject& obj : snap.objects) {
    Module* mod = nullptr;
    for (Module& m : list.modules_) {
      if (m.contains(obj.first_load)) mod = &m;
    }
    if (!mod) {
      // The vDSO is listed by the loader but is no file: expected, skipped.
      const bool anonymous = std::any_of(
          list.maps_.begin(), list.maps_.end(),
          [&](const Mapping& m) { return m.contains(obj.first_load) && !m.file_backed(); });
      if (anonymous) continue;
      return Error(Errc::internal, "the dynamic linker lists '" + obj.name + "' at " +
                                       hex(obj.first_load) +
                                       ", but /proc/self/maps has no file mapped there");
    }
    mod->dl_loaded = true;
    mod->load_bias = obj.bias;
    mod->loader_name = obj.name;
    if (obj.main) mod->is_main = true;
  }
  return list;
}

const Module* ModuleList::main() const {
  for (const Module& m : modules_) {
    if (m.is_main) return &m;
  }
  return nullptr;
}

const Module* ModuleList::find(ModuleKey key) const {
  for (const Module& m : modules_) {
    if (m.key == key) return &m;
  }
  return nullptr;
}

const Module* ModuleList::containing(std::uintptr_t addr) const {
  for (const Module& m : modules_) {
    if (addr >= m.start() && addr < m.end() && m.contains(addr)) return &m;
  }
  return nullptr;
}

std::string ModuleList::names() const {
  std::string out;
  const Module* mainm = main();
  if (mainm) out = std::string(mainm->name()) + " (main)";
  for (const Module& m : modules_) {
    if (&m == mainm) continue;
    if (!out.empty()) out += ", ";
    out += m.name();
  }
  return out.empty() ? std::string("none") : out;
}

Result<const Module*> ModuleList::resolve(std::string_view spec) const {
  const std::string where = self_ ? std::string("this process") : "process " + std::to_string(pid_);
  if (spec.empty()) {
    if (const Module* m = main()) return m;
    return Error(Errc::not_found, "cannot tell which module is the main executable of " + where +
                                      "; name it; loaded modules: " + names());
  }

  if (spec.find('/') != std::string_view::npos) {
    std::string abs(spec);
    if (spec.front() != '/') {
      char cwd[PATH_MAX];
      if (!::getcwd(cwd, sizeof cwd)) return sys_error("cannot get the current directory");
      abs = std::string(cwd) + "/" + abs;
    }
    struct stat st;
    if (::stat(abs.c_str(), &st) != 0) {
      std::string msg = "no such file: '" + std::string(spec) + "'";
      if (abs != spec) msg += " (" + abs + ")";
      return Error(Errc::not_found, std::move(msg));
    }
    const ModuleKey key{static_cast<std::uint64_t>(st.st_dev),
                        static_cast<std::uint64_t>(st.st_ino)};
    if (const Module* m = find(key)) return m;
    // Overlay file systems may report other (device, inode) pairs in maps than stat
    // does; the canonical path still identifies the file.
    char real[PATH_MAX];
    if (::realpath(abs.c_str(), real)) {
      for (const Module& m : modules_) {
        if (m.path == real) return &m;
      }
    }
    return Error(Errc::not_found,
                 "'" + abs + "' is not loaded in " + where + "; loaded modules: " + names());
  }

  auto unique = [&](std::vector<const Module*> hits, const char* how) -> Result<const Module*> {
    std::sort(hits.begin(), hits.end());
    hits.erase(std::unique(hits.begin(), hits.end()), hits.end());
    if (hits.size() == 1) return hits.front();
    std::string msg = "module '" + std::string(spec) + "' is ambiguous (" + how + ") in " + where +
                      ": it matches";
    for (const Module* m : hits)
      msg += " " + m->path;
    msg += "; give a full path or a longer name";
    return Error(Errc::invalid_argument, std::move(msg));
  };

  // Exact file or loader name, then SONAME (which needs the ELF file, so second).
  std::vector<const Module*> hits;
  for (const Module& m : modules_) {
    if (m.name() == spec || (!m.loader_name.empty() && base_name(m.loader_name) == spec)) {
      hits.push_back(&m);
    }
  }
  if (!hits.empty()) return unique(std::move(hits), "several files have that name");
  // The name the program was started by (argv[0]): maps name the file a symlink led to
  // (redis-server is a symlink to redis-check-rdb), the user names the command.
  if (const Module* m = main()) {
    const std::string started_as = argv0(self_ ? 0 : pid_);
    if (!started_as.empty() && base_name(started_as) == spec) return m;
  }
  for (const Module& m : modules_) {
    auto e = elf(m);
    if (e.ok() && (*e)->soname() == spec) hits.push_back(&m);
  }
  if (!hits.empty()) return unique(std::move(hits), "several files have that SONAME");

  // Short names: "libc" for libc.so.6 or libc-2.36.so.
  for (const Module& m : modules_) {
    if (short_name_matches(spec, m.name()) ||
        (!m.loader_name.empty() && short_name_matches(spec, base_name(m.loader_name)))) {
      hits.push_back(&m);
    }
  }
  if (hits.empty()) {
    for (const Module& m : modules_) {
      auto e = elf(m);
      if (e.ok() && short_name_matches(spec, (*e)->soname())) hits.push_back(&m);
    }
  }
  if (!hits.empty()) return unique(std::move(hits), "several modules start with that name");
  // A command in PATH (through its symlinks), seen from the process's root.
  ModuleKey key;
  if (find_command(spec, self_ ? std::string() : proc_path(pid_, "root"), key)) {
    if (const Module* m = find(key)) return m;
  }
  return Error(Errc::not_found, "no module '" + std::string(spec) + "' in " + where +
                                    "; loaded modules: " + names());
}

std::string ModuleList::map_files_path(const Module& m) const {
  const Mapping& first = m.mappings.front();
  char range[64];
  std::snprintf(range, sizeof range, "%lx-%lx", static_cast<unsigned long>(first.start),
                static_cast<unsigned long>(first.end));
  return proc_path(self_ ? 0 : pid_, "map_files/") + range;
}

std::vector<std::string> ModuleList::file_paths(const Module& m) const {
  std::vector<std::string> paths;
  const bool deleted = m.path.ends_with(kDeleted);
  if (self_) {
    // Our own mount namespace: the path first (map_files needs CAP_SYS_ADMIN or
    // CAP_CHECKPOINT_RESTORE, which a traced program rarely has).
    if (!deleted) paths.push_back(m.path);
    paths.push_back(map_files_path(m));
    return paths;
  }
  // Another process: never its path in our own mount namespace, where it may name another
  // file or something that is no file. map_files is the mapped file itself; failing that
  // (no privilege), the path resolved inside the process's root.
  paths.push_back(map_files_path(m));
  if (!deleted) paths.push_back(proc_path(pid_, "root") + m.path);
  return paths;
}

Result<std::shared_ptr<const ElfFile>> ModuleList::elf(const Module& m) const {
  if (self_ && !m.path.ends_with(kDeleted)) {
    // The common case first, with no other path made: the cache holds the file.
    auto r = load_elf(m.key, m.path);
    if (r.ok()) return r;
  }
  // Named by its own path while that names it (a /proc path dies with its process; the
  // cached ElfFile does not).
  const std::string_view name = m.path.ends_with(kDeleted) ? std::string_view() : m.path;
  Error first;
  for (const std::string& path : file_paths(m)) {
    auto r = load_elf(m.key, path, name);
    if (r.ok()) return r;
    if (!first) first = r.error();
  }
  return Error(first.code(), "cannot read the mapped file of " + m.path + ": " + first.message());
}

Result<std::uintptr_t> ModuleList::compute_load_bias(const Module& m) const {
  auto e = elf(m);
  if (!e.ok()) return e.error();
  for (const Mapping& map : m.mappings) {
    auto vaddr = (*e)->offset_to_vaddr(map.offset);
    if (vaddr.ok()) return map.start - *vaddr;
  }
  return Error(Errc::not_found,
               "no mapping of " + m.path + " corresponds to a PT_LOAD segment of the file");
}

Result<Location> ModuleList::locate(std::uintptr_t addr) const {
  const Module* m = containing(addr);
  if (!m) {
    return Error(Errc::not_found,
                 "address " + hex(addr) + " is not in any module of " +
                     (self_ ? std::string("this process") : "process " + std::to_string(pid_)));
  }
  Location loc;
  loc.module = m;
  loc.file_offset = m->address_to_offset(addr).value();
  auto e = elf(*m);
  if (e.ok()) {
    loc.elf = *e;
    loc.symbol = loc.elf->containing_offset(loc.file_offset);
    if (loc.symbol) loc.offset_in_symbol = loc.file_offset - loc.symbol->file_offset;
  }
  return loc;
}

std::string ModuleList::describe(std::uintptr_t addr) const {
  auto loc = locate(addr);
  if (!loc.ok()) return hex(addr);
  std::string out(loc->module->name());
  if (loc->symbol) {
    out += "!" + std::string(loc->symbol->name);
    if (loc->offset_in_symbol) out += "+" + hex(loc->offset_in_symbol);
  } else {
    out += "+" + hex(loc->file_offset);
  }
  return out;
}

Result<std::vector<std::uint8_t>> ModuleList::read_file_bytes(const Module& m, std::uint64_t offset,
                                                              std::size_t len) const {
  Error first;
  for (const std::string& path : file_paths(m)) {
    auto r = elf::read_file_bytes(path, m.key, offset, len);
    if (r.ok() || r.error().code() == Errc::invalid_argument) return r;
    if (!first) first = r.error();
  }
  return first;
}

Result<IfuncTarget> ModuleList::resolve_ifunc(const Module& m, const Symbol& sym) const {
  const std::string what = "IFUNC '" + std::string(sym.name) + "' of " + std::string(m.name());
  if (!self_) {
    return Error(Errc::unsupported,
                 "cannot resolve " + what + " in process " + std::to_string(pid_) +
                     " from outside: its choice is made by that process's loader; resolve it "
                     "in the agent or probe the implementation by name");
  }
  if (!sym.is_ifunc()) {
    return Error(Errc::invalid_argument, "'" + std::string(sym.name) + "' is not an IFUNC");
  }
  if (!sym.dynamic) {
    return Error(Errc::unsupported, "cannot resolve " + what +
                                        ": it is not exported (.dynsym), so dlsym cannot see it "
                                        "and hotprobe does not call resolvers itself");
  }
  if (!m.dl_loaded) {
    return Error(Errc::not_found, "cannot resolve " + what + ": the dynamic linker does not list " +
                                      m.path + " (mapped, but not loaded as a library)");
  }
  void* handle = m.is_main ? ::dlopen(nullptr, RTLD_LAZY)
                           : ::dlopen(m.loader_name.c_str(), RTLD_LAZY | RTLD_NOLOAD);
  if (!handle) {
    const char* err = ::dlerror();  // NOLINT(concurrency-mt-unsafe): per thread in glibc
    return Error(Errc::not_found, "cannot resolve " + what + ": dlopen(RTLD_NOLOAD) failed: " +
                                      (err ? err : "unknown error"));
  }
  std::string name(sym.name);
  void* addr = nullptr;
  if (std::size_t at = name.find('@'); at != std::string::npos) {
    std::string version = name.substr(at + 1);
    name.resize(at);
    addr = ::dlvsym(handle, name.c_str(), version.c_str());
  } else {
    addr = ::dlsym(handle, name.c_str());
  }
  const char* err = addr ? nullptr : ::dlerror();  // NOLINT(concurrency-mt-unsafe): per thread
  ::dlclose(handle);
  if (!addr) {
    return Error(Errc::not_found,
                 "cannot resolve " + what + ": dlsym failed: " + (err ? err : "null address"));
  }
  IfuncTarget t;
  t.address = reinterpret_cast<std::uintptr_t>(addr);
  t.module = containing(t.address);
  if (!t.module) {
    return Error(Errc::internal, what + " resolved to " + hex(t.address) +
                                     ", which is in no module of this process");
  }
  t.file_offset = t.module->address_to_offset(t.address).value();
  return t;
}

Result<Location> ModuleList::implementation_of(const Module& m, const Symbol& sym) const {
  auto impl = resolve_ifunc(m, sym);
  if (!impl.ok()) return impl.error();
  auto loc = locate(impl->address);
  if (!loc.ok()) return loc.error();
  if (!loc->elf) {
    return Error(Errc::not_found, "IFUNC '" + std::string(sym.name) + "' of " +
                                      std::string(m.name()) + " resolved to " +
                                      describe(impl->address) + ", whose file cannot be read");
  }
  return loc;
}

ModuleChanges diff_modules(const ModuleList& before, const ModuleList& after) {
  ModuleChanges c;
  for (const Module& m : after.modules()) {
    const Module* old = before.find(m.key);
    // Same file at another place (unloaded and loaded again between the snapshots) is a
    // removal and an addition: its addresses changed.
    if (!old || old->start() != m.start()) c.added.push_back(&m);
  }
  for (const Module& m : before.modules()) {
    const Module* now = after.find(m.key);
    if (!now || now->start() != m.start()) c.removed.push_back(&m);
  }
  return c;
}

}  // namespace hp::elf
