// The resolver: where a probe target ("MODULE:WHAT", hotprobe::ProbeSpec::target)
// becomes places to probe (symbols, globs, +offsets, nm addresses, file offsets, IFUNCs,
// NAME.cold fragments, USDT probes' sites, addresses in this process, and files not
// loaded yet).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "base/error.h"
#include "core/site.h"
#include "core/site_key.h"
#include "elf/modules.h"
#include "elf/usdt.h"
#include "hotprobe/probe.h"

namespace hp::core {

using hotprobe::ProbeSpec;

std::string hex(std::uint64_t v);

// A resolved place to probe, in this process.
struct Target : Place {
  std::uintptr_t function = 0;  // the containing function's address (0: pending)
  bool pending = false;         // the module is not loaded yet: applied when it is
  // For resolve_functions: the module's path (as the maps name it, or as the target named
  // a file not loaded) and the symbol the target named (empty: none). Views into the
  // module list, the Resolver's symbol tables and the target string: valid while those
  // live.
  std::string_view module_path;
  std::string_view symbol;
  // Filled in by attach() under the registry lock: the site already there, or the index
  // of the batch's job that builds one.
  Site* known = nullptr;
  std::size_t job = 0;
};

// Module specs already resolved in this batch, with their symbol tables (a batch of
// 10,000 probes on one library resolves its module and finds its table once, not 10,000
// times). Batches name few modules, mostly one after the other: a short list, last first.
class ModuleCache {
 public:
  struct Entry {
    std::string spec;
    const elf::Module* module;
    std::shared_ptr<const elf::ElfFile> elf;  // null until first asked for
    std::string_view name;                    // module->name()
  };
  Entry* find(std::string_view spec) {
    if (last_ < entries_.size() && entries_[last_].spec == spec) return &entries_[last_];
    for (std::size_t i = 0; i < entries_.size(); i++) {
      if (entries_[i].spec == spec) return &entries_[(last_ = i)];
    }
    return nullptr;
  }
  Entry* add(std::string_view spec, const elf::Module* m) {
    entries_.push_back({std::string(spec), m, nullptr, m->name()});
    last_ = entries_.size() - 1;
    return &entries_.back();
  }
  // The symbol table of the module found last (null before the first).
  const elf::ElfFile* last_elf() const {
    return last_ < entries_.size() ? entries_[last_].elf.get() : nullptr;
  }
  // Scratch list for ElfFile::lookup, reused by every spec of the batch.
  std::vector<elf::Target>& found() { return found_; }
  // Keeps a symbol table the batch's targets name into (an IFUNC's implementation in
  // another file, a file not loaded yet).
  void hold(std::shared_ptr<const elf::ElfFile> f) {
    if (held_.empty() || held_.back() != f) held_.push_back(std::move(f));
  }

 private:
  std::vector<Entry> entries_;
  std::vector<std::shared_ptr<const elf::ElfFile>> held_;
  std::vector<elf::Target> found_;
  std::size_t last_ = 0;
};

// The one place a probe target becomes places: Engine::attach and resolve_functions
// (symbols.cc) both resolve through it, so what a script names and what is probed agree.
// One Resolver per batch: it caches the modules and symbol tables the batch names.
class Resolver {
 public:
  explicit Resolver(const elf::ModuleList& mods) : mods_(mods) {}
  // Appends the places `target` names to `out` (one list for a whole batch); on failure
  // `out` may hold some of them (the caller drops them). `return_probe`: the places must
  // be function entries reached by a call.
  Result<void> resolve(std::string_view target, bool return_probe, std::vector<Target>& out);
  // The notes a USDT target ("MODULE:usdt:WHAT", split at ":usdt:") names: the file (the
  // loaded module's, or a path on disk), the module when loaded (else null) and the
  // matching notes. No notes, or none matching, are errors naming the file and the way to
  // list its probes.
  struct UsdtMatch {
    std::shared_ptr<const elf::ElfFile> file;
    const elf::Module* module = nullptr;
    std::vector<elf::UsdtProbe> notes;
  };
  Result<UsdtMatch> usdt_notes(std::string_view module_spec, std::string_view what);
  // The same for every file a module spec names, as bpftrace takes a usdt target with a
  // process: "" or "*" every module of the process whose notes match (the others are
  // skipped), a glob ("./prog*", "*/libfoo.so") the loaded modules whose path matches it
  // (a relative glob from the current directory; none loaded: the files on disk it
  // matches), anything else usdt_notes. Nothing matching anywhere is an error naming where
  // it looked and how to list the probes there.
  Result<std::vector<UsdtMatch>> usdt_matches(std::string_view module_spec, std::string_view what);
  // The symbol table of the module resolved last (null before the first), for prefetching.
  const elf::ElfFile* last_elf() const { return cache_.last_elf(); }

 private:
  // MODULE:usdt:PROVIDER:NAME: an instruction probe at each site of each matching note.
  Result<void> resolve_usdt(std::string_view module_spec, std::string_view what,
                            std::vector<Target>& out);
  // MODULE:WHAT with MODULE "*" (every module of the process) or a glob of paths (a
  // relative one from the current directory): WHAT in each matching module that has it, as
  // bpftrace takes uprobe:*:FUNC with a process. None having it is an error.
  Result<void> resolve_module_glob(std::string_view module_spec, std::string_view rest,
                                   bool return_probe, std::vector<Target>& out);
  // The sites of one file's notes; `module_spec` finds the file again.
  Result<void> resolve_usdt_sites(const std::string& module_spec, const UsdtMatch& match,
                                  std::vector<Target>& out);
  // @0xADDR: an address in this process, inside a function of a loaded module.
  Result<void> resolve_address(std::string_view target, bool return_probe,
                               std::vector<Target>& out);

  const elf::ModuleList& mods_;
  ModuleCache cache_;
};

}  // namespace hp::core
