#include "elf/source_frames.h"

#include <dwarf.h>
#include <elfutils/libdw.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>

#include "elf/dwarf.h"
#include "elf/elf_file.h"

namespace hp::elf {
namespace {

// A module's DWARF, opened once (null `dw`: it has none).
struct Opened {
  std::shared_ptr<const ElfFile> elf;
  int fd = -1;
  Dwarf* dw = nullptr;
};

std::mutex g_mu;
std::map<std::string, std::unique_ptr<Opened>>* g_opened = nullptr;  // never freed

Opened& opened(const std::string& module) {
  if (!g_opened) g_opened = new std::map<std::string, std::unique_ptr<Opened>>;
  std::unique_ptr<Opened>& o = (*g_opened)[module];
  if (o) return *o;
  o = std::make_unique<Opened>();
  auto elf = load_elf(module);
  auto info = DwarfInfo::open(module);
  if (!elf.ok() || !info.ok()) return *o;
  o->elf = *elf;
  o->fd = ::open((*info)->debug_path().c_str(), O_RDONLY | O_CLOEXEC);
  if (o->fd >= 0) o->dw = dwarf_begin(o->fd, DWARF_C_READ);
  return *o;
}

// `path` as the DWARF names it, made absolute by the unit's directory.
std::string absolute(const char* path, Dwarf_Die* cu) {
  if (!path || !*path) return {};
  std::filesystem::path p(path);
  Dwarf_Attribute a;
  const char* dir = dwarf_formstring(dwarf_attr(cu, DW_AT_comp_dir, &a));
  if (p.is_relative() && dir) p = std::filesystem::path(dir) / p;
  return p.lexically_normal().string();
}

}  // namespace

std::vector<SourceFrame> source_frames(const std::string& module, std::uint64_t file_offset) {
  std::vector<SourceFrame> out;
  std::lock_guard lock(g_mu);
  Opened& o = opened(module);
  if (!o.dw) return out;
  auto vaddr = o.elf->offset_to_vaddr(file_offset);
  if (!vaddr.ok()) return out;
  Dwarf_Die cu;
  if (!dwarf_addrdie(o.dw, *vaddr, &cu)) return out;
  SourceFrame here;
  if (Dwarf_Line* line = dwarf_getsrc_die(&cu, *vaddr)) {
    int lineno = 0;
    dwarf_lineno(line, &lineno);
    here.file = absolute(dwarf_linesrc(line, nullptr, nullptr), &cu);
    here.line = static_cast<std::uint32_t>(lineno);
  }
  Dwarf_Files* files = nullptr;
  std::size_t nfiles = 0;
  if (dwarf_getsrcfiles(&cu, &files, &nfiles) != 0) files = nullptr;
  // The innermost scope at the address, then the concrete scopes that contain it (an
  // inlined instance's callers included: dwarf_getscopes itself goes on through the
  // abstract definition's scopes after the first inlined instance).
  Dwarf_Die* scopes = nullptr;
  int n = dwarf_getscopes(&cu, *vaddr, &scopes);
  if (n > 0) {
    Dwarf_Die innermost = scopes[0];
    std::free(scopes);
    scopes = nullptr;
    n = dwarf_getscopes_die(&innermost, &scopes);
  }
  // Innermost first: each inlined function at its place, which then moves to its call.
  for (int i = 0; i < n; ++i) {
    const int tag = dwarf_tag(&scopes[i]);
    if (tag == DW_TAG_subprogram) break;
    if (tag != DW_TAG_inlined_subroutine) continue;  // a lexical block
    Dwarf_Attribute a;
    const char* name = dwarf_formstring(dwarf_attr_integrate(&scopes[i], DW_AT_name, &a));
    here.function = name ? name : "??";
    out.push_back(here);
    here = SourceFrame{};
    Dwarf_Word file = 0, line = 0;
    if (files && dwarf_formudata(dwarf_attr(&scopes[i], DW_AT_call_file, &a), &file) == 0 &&
        file < nfiles)
      here.file = absolute(dwarf_filesrc(files, file, nullptr, nullptr), &cu);
    if (dwarf_formudata(dwarf_attr(&scopes[i], DW_AT_call_line, &a), &line) == 0)
      here.line = static_cast<std::uint32_t>(line);
  }
  std::free(scopes);
  here.function.clear();
  out.push_back(here);
  return out;
}

}  // namespace hp::elf
