// The modules (executable and shared libraries) loaded in a process, how users name them,
// and where their file offsets lie in memory.
//
// A ModuleList is a snapshot of /proc/PID/maps grouped by mapped file: one Module per
// (device, inode) with at least one executable mapping. For this process the snapshot
// is taken under the dynamic linker's lock (inside dl_iterate_phdr) and cross-checked
// with it: every object the loader lists must be mapped, and gets its load bias and the
// name the loader knows it by. Take a new snapshot after dlopen/dlclose; a snapshot
// never changes.
//
//   auto mods = hp::elf::ModuleList::of_self();
//   auto libc = mods->resolve("libc");                    // or "libc.so.6", a path, ""
//   auto elf = mods->elf(**libc);                         // cached symbol table
//   auto t = (*elf)->lookup_one("strlen");
//   auto addr = (*libc)->offset_to_address(t->file_offset);
//
// Modules of another process (`attach -p`) are read the same way, without the loader
// cross-check (its state is in the other address space) and without IFUNC resolution.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/error.h"
#include "elf/elf_file.h"
#include "elf/maps.h"

namespace hp::elf {

struct Module {
  ModuleKey key;
  std::string path;               // as the kernel reports it; may end in " (deleted)"
  std::vector<Mapping> mappings;  // this file's mappings, by address
  bool is_main = false;           // the program's executable
  // This process only: the dynamic linker lists it, with this load bias (dlpi_addr, so
  // runtime address = link-time vaddr + load_bias) and name (dlpi_name; "" for main).
  bool dl_loaded = false;
  std::uintptr_t load_bias = 0;
  std::string loader_name;

  // The file name without directories (and without " (deleted)").
  std::string_view name() const;
  std::uintptr_t start() const { return mappings.front().start; }
  std::uintptr_t end() const { return mappings.back().end; }
  // Whether `addr` lies in one of this file's mappings (not in its anonymous .bss tail).
  bool contains(std::uintptr_t addr) const;
  // Where file offset `offset` is mapped; when a file page is mapped twice, the
  // executable mapping wins (that is where code runs). not_found if not mapped.
  Result<std::uintptr_t> offset_to_address(std::uint64_t offset) const;
  // The file offset mapped at `addr`; not_found if `addr` is outside this module's files.
  Result<std::uint64_t> address_to_offset(std::uintptr_t addr) const;
};

// What an address is: module, file offset and, when a function covers it, the function.
struct Location {
  const Module* module = nullptr;
  std::uint64_t file_offset = 0;
  std::shared_ptr<const ElfFile> elf;  // null when the file could not be read
  const Symbol* symbol = nullptr;      // points into *elf
  std::uint64_t offset_in_symbol = 0;
};

// Where an IFUNC symbol resolves to in this process.
struct IfuncTarget {
  std::uintptr_t address = 0;
  const Module* module = nullptr;  // the module holding the implementation
  std::uint64_t file_offset = 0;   // the implementation's file offset in `module`
};

class ModuleList {
 public:
  // This process, cross-checked with dl_iterate_phdr.
  static Result<ModuleList> of_self();
  // Another process (or this one without the loader cross-check).
  static Result<ModuleList> of_process(pid_t pid);
  // From given maps, for tests: `exe_path` names the main executable's path as it
  // appears in the maps.
  static ModuleList from_maps(pid_t pid, std::vector<Mapping> maps, std::string_view exe_path);

  pid_t pid() const { return pid_; }
  bool is_self() const { return self_; }
  std::span<const Module> modules() const { return modules_; }
  std::span<const Mapping> mappings() const { return maps_; }

  const Module* main() const;  // null if no module is known to be the executable
  const Module* find(ModuleKey key) const;
  const Module* containing(std::uintptr_t addr) const;

  // A module as users write it:
  //   ""                 the main executable
  //   /path, ./rel/path  that file (relative to the current directory), by device and inode
  //   libc.so.6          a file name or SONAME, exactly
  //   libc               a short name: matches libc.so.6 or libc-2.36.so (NAME. or NAME-)
  //   redis-server       the program's name as started (argv[0]'s last part), or a command
  //                      found in PATH: symlinks lead to the file the maps name
  // Exact names win over short names. Not found and ambiguous are errors that list the
  // loaded modules or the candidates.
  Result<const Module*> resolve(std::string_view spec) const;

  // The symbol table of a module (cached per file). This process: its path, then
  // /proc/self/map_files/... when the path no longer names the mapped file. Another
  // process: /proc/PID/map_files/..., then /proc/PID/root/PATH, never PATH itself. Every
  // file is opened as elf::open_regular_file does and must be the mapped (device, inode).
  Result<std::shared_ptr<const ElfFile>> elf(const Module& m) const;

  // Runtime load bias from the maps and the ELF program headers: address = vaddr + bias.
  Result<std::uintptr_t> compute_load_bias(const Module& m) const;

  // Module, file offset and function at `addr`; not_found outside every module.
  Result<Location> locate(std::uintptr_t addr) const;
  // "libc.so.6!strlen+0x10", "libfoo.so+0x1234" or "0x7f..." (never fails: for messages and
  // backtraces).
  std::string describe(std::uintptr_t addr) const;

  // `len` bytes at file offset `offset` of the module's file, read from disk (to compare
  // with memory after a patch was undone); through map_files when the path was replaced.
  Result<std::vector<std::uint8_t>> read_file_bytes(const Module& m, std::uint64_t offset,
                                                    std::size_t len) const;

  // The implementation an IFUNC symbol of `m` selects in this process. The dynamic linker
  // has already run the resolver; dlsym/dlvsym on an IFUNC returns the resolved target
  // (glibc runs the resolver again, as lazy binding would), so hotprobe never calls a
  // resolver itself. Only for this process and for exported (.dynsym) symbols.
  Result<IfuncTarget> resolve_ifunc(const Module& m, const Symbol& sym) const;

  // The implementation an IFUNC symbol of `m` selects in this process (resolve_ifunc),
  // located: its module, file offset and function. The one IFUNC resolver of hotprobe:
  // Engine::attach probes what it returns and resolve_functions names it, so the two
  // agree. Fails, naming the IFUNC and why, where the choice cannot be known (another
  // process, a symbol the loader does not export, a module it did not load).
  Result<Location> implementation_of(const Module& m, const Symbol& sym) const;

  // "ld-linux-x86-64.so.2, libc.so.6, ..." (main first), for error messages.
  std::string names() const;

  // /proc/PID/map_files/START-END of the module's first mapping: the mapped file itself,
  // even when its path was deleted or replaced (a path to read it by that does not depend
  // on the process's mount namespace).
  std::string map_files_path(const Module& m) const;

 private:
  static ModuleList group(pid_t pid, bool self, std::vector<Mapping> maps);
  // Where the module's file is read from, in order: see "Which files root opens, and
  // how" in docs/design/security.md.
  std::vector<std::string> file_paths(const Module& m) const;

  pid_t pid_ = 0;
  bool self_ = false;
  std::vector<Mapping> maps_;
  std::vector<Module> modules_;  // by start address
};

// What changed between two snapshots of one process (dlopen, dlclose): core applies
// pending probes to `added` modules and returns probes of `removed` ones to pending.
struct ModuleChanges {
  std::vector<const Module*> added;    // points into `after`
  std::vector<const Module*> removed;  // points into `before`
};
ModuleChanges diff_modules(const ModuleList& before, const ModuleList& after);

}  // namespace hp::elf
