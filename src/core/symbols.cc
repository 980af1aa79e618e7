// <hotprobe/symbols.h>: probe targets resolved without attaching.
#include "hotprobe/symbols.h"

#include <fnmatch.h>
#include <unistd.h>

#include <algorithm>
#include <memory>

#include "core/resolver.h"
#include "elf/elf_file.h"
#include "elf/modules.h"

namespace hotprobe {

Result<std::vector<FunctionInfo>> resolve_functions(std::string_view target) {
  auto mods = hp::elf::ModuleList::of_self();
  if (!mods.ok()) return mods.error();
  // The engine's resolver: what this names is what Engine::attach probes.
  hp::core::Resolver resolver(*mods);
  std::vector<hp::core::Target> places;
  HP_TRY(resolver.resolve(target, /*return_probe=*/false, places));
  std::vector<FunctionInfo> out;
  out.reserve(places.size());
  for (const hp::core::Target& t : places) {
    FunctionInfo f;
    f.module = std::string(t.module_path);
    f.name = std::string(t.symbol);
    f.file_offset = t.function_file_offset;
    f.size = t.function_size;
    f.address = t.pending ? 0 : t.function;
    f.offset = t.offset;
    out.push_back(std::move(f));
  }
  return out;
}

Result<std::vector<FunctionInfo>> list_functions(std::string_view path, std::string_view glob) {
  auto elf = hp::elf::load_elf(std::string(path));
  if (!elf.ok()) return elf.error();
  if ((*elf)->symbols().empty()) {
    // Nothing to list is not an empty answer: say why, and what would help.
    return Error(Errc::not_found,
                 std::string(path) + " has no function hotprobe can name: " +
                     ((*elf)->has_symtab() ? std::string("its symbol table lists none")
                                           : "it is stripped: " + hp::elf::stripped_advice(**elf)));
  }
  std::string pattern(glob.empty() ? "*" : glob);
  // As globs in probe targets: fragments (NAME.cold) only when the pattern names them.
  const bool fragments = pattern.find(".cold") != std::string::npos;
  std::vector<FunctionInfo> out;
  for (const hp::elf::Symbol& s : (*elf)->symbols()) {
    if (s.fragment && !fragments) continue;
    std::string name(s.name);
    if (::fnmatch(pattern.c_str(), name.c_str(), 0) != 0) continue;
    FunctionInfo f;
    f.module = std::string(path);
    f.name = std::move(name);
    f.file_offset = s.file_offset;
    f.size = s.size;
    out.push_back(std::move(f));
  }
  std::sort(out.begin(), out.end(), [](const FunctionInfo& a, const FunctionInfo& b) {
    return a.name != b.name ? a.name < b.name : a.file_offset < b.file_offset;
  });
  out.erase(std::unique(out.begin(), out.end(),
                        [](const FunctionInfo& a, const FunctionInfo& b) {
                          return a.name == b.name && a.file_offset == b.file_offset;
                        }),
            out.end());
  return out;
}

Result<FunctionInfo> function_at(std::uintptr_t address) {
  auto mods = hp::elf::ModuleList::of_self();
  if (!mods.ok()) return mods.error();
  auto loc = mods->locate(address);
  if (!loc.ok()) return loc.error();
  if (!loc->symbol) {
    return Error(Errc::not_found, "no function contains " + mods->describe(address));
  }
  FunctionInfo f;
  f.module = loc->module->path;
  f.name = std::string(loc->symbol->name);
  f.size = loc->symbol->size;
  f.file_offset = loc->symbol->file_offset;
  f.offset = loc->offset_in_symbol;
  f.address = address - loc->offset_in_symbol;
  return f;
}

}  // namespace hotprobe
