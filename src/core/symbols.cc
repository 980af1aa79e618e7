// <hotprobe/symbols.h>: probe targets resolved without attaching.
#include "hotprobe/symbols.h"

#include <fnmatch.h>
#include <unistd.h>

#include <algorithm>
#include <memory>

#include "elf/elf_file.h"
#include "elf/modules.h"

namespace hotprobe {
namespace {

FunctionInfo info_of(const std::string& module, const hp::elf::Target& t) {
  FunctionInfo f;
  f.module = module;
  if (t.symbol) {
    f.name = std::string(t.symbol->name);
    f.size = t.symbol->size;
  }
  f.offset = t.offset_in_symbol;
  f.file_offset = t.file_offset - t.offset_in_symbol;
  return f;
}

}  // namespace

Result<std::vector<FunctionInfo>> resolve_functions(std::string_view target) {
  auto colon = target.find(':');
  if (colon == std::string_view::npos) {
    return Error(Errc::invalid_argument,
                 "probe target '" + std::string(target) +
                     "' has no ':': write MODULE:SYMBOL, MODULE:SYMBOL+OFFSET, "
                     "MODULE:0xADDRESS (as nm prints it) or MODULE:fileoff:0xOFFSET (MODULE "
                     "may be empty for the program)");
  }
  std::string_view module_spec = target.substr(0, colon);
  std::string_view rest = target.substr(colon + 1);
  auto mods = hp::elf::ModuleList::of_self();
  if (!mods.ok()) return mods.error();
  auto mod = mods->resolve(module_spec);
  std::vector<FunctionInfo> out;
  if (!mod.ok()) {
    // A library named by its path that is not loaded yet: read it from disk.
    if (mod.error().code() == Errc::not_found && module_spec.find('/') != std::string_view::npos &&
        ::access(std::string(module_spec).c_str(), R_OK) == 0) {
      auto elf = hp::elf::load_elf(std::string(module_spec));
      if (!elf.ok()) return elf.error();
      auto found = (*elf)->lookup(rest);
      if (!found.ok()) return found.error();
      for (const auto& t : *found) {
        if (t.symbol && t.symbol->is_ifunc()) {
          // As the engine says: the implementation is chosen when the file is loaded.
          return Error(Errc::unsupported,
                       std::string(t.symbol->name) +
                           " is an IFUNC, whose implementation is known only once " +
                           std::string(module_spec) + " is loaded: ask after it is loaded");
        }
        out.push_back(info_of(std::string(module_spec), t));
      }
      return out;
    }
    return mod.error();
  }
  const hp::elf::Module* m = *mod;
  auto elf = mods->elf(*m);
  if (!elf.ok()) return elf.error();
  auto found = (*elf)->lookup(rest);
  if (!found.ok()) return found.error();
  for (const auto& t : *found) {
    FunctionInfo f = info_of(m->path, t);
    std::uint64_t file_offset = t.file_offset;
    const hp::elf::Module* where = m;
    std::shared_ptr<const hp::elf::ElfFile> holder;  // keeps the implementation's symbol
    if (t.symbol && t.symbol->is_ifunc()) {
      // What the engine probes (the same resolver): the implementation the loader chose.
      auto impl = mods->implementation_of(*m, *t.symbol);
      if (!impl.ok()) return impl.error();
      where = impl->module;
      holder = impl->elf;
      file_offset = impl->file_offset + t.offset_in_symbol;
      f.module = where->path;
      if (impl->symbol) {
        f.size = impl->symbol->size;
        f.offset = file_offset - impl->symbol->file_offset;
        f.file_offset = impl->symbol->file_offset;
      } else {
        f.file_offset = impl->file_offset;
      }
    }
    auto addr = where->offset_to_address(file_offset);
    if (addr.ok()) f.address = *addr - f.offset;
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
