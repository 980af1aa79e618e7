// The resolver (core/resolver.h).
#include "core/resolver.h"

#include <fnmatch.h>
#include <glob.h>
#include <limits.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <optional>
#include <span>

#include "arch/x86_64/decode.h"
#include "core/usdt_semaphore.h"
#include "elf/elf_file.h"
#include "elf/usdt.h"

namespace hp::core {

std::string hex(std::uint64_t v) {
  char b[32];
  std::snprintf(b, sizeof b, "0x%lx", static_cast<unsigned long>(v));
  return b;
}

namespace {

// Code written in assembly shares tails between functions: glibc's __mempcpy_* jumps to
// the second instruction of __memcpy_*, from outside memcpy's FDE. A place that only its
// FDE sizes is checked against the FDEs around it (kNeighbourBytes each way, decoded from
// their starts, which are instruction boundaries) for a branch into its first bytes
// (lo, hi), where a jump would displace instructions; one found, or code that does not
// decode, sends the site to int3 mode (the caller clears the size).
bool neighbours_branch_into(const elf::ElfFile& file, const elf::ElfFile::Extent& own,
                            std::uintptr_t bias, std::uintptr_t lo, std::uintptr_t hi) {
  constexpr std::uint64_t kNeighbourBytes = 4096;
  auto branches_in = [&](const elf::ElfFile::Extent& e) {
    const std::uintptr_t start = e.file_offset + bias, end = start + e.size;
    for (std::uintptr_t a = start; a < end;) {
      auto insn = arch::decode_shape(
          std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(a),
                                        std::min<std::uintptr_t>(end - a, arch::kMaxInsnLength)),
          a);
      if (!insn.ok()) return true;  // cannot tell: assume the worst
      if (insn->is_relative_branch() && insn->target > lo && insn->target < hi) return true;
      a += insn->length;
    }
    return false;
  };
  // Backwards from the FDE before `own`, forwards from the one after it, over the padding
  // between functions (up to kGap bytes, where the next FDE starts aligned).
  constexpr std::uint64_t kGap = 64;
  auto fde_before = [&](std::uint64_t off) -> std::optional<elf::ElfFile::Extent> {
    for (std::uint64_t k = 1; k <= kGap && k <= off; k++)
      if (auto e = file.cfi_extent(off - k); e && e->size && e->file_offset < off) return e;
    return std::nullopt;
  };
  auto fde_after = [&](std::uint64_t off) -> std::optional<elf::ElfFile::Extent> {
    for (std::uint64_t k = 0; k < kGap; k++)
      if (auto e = file.cfi_extent(off + k); e && e->size && e->file_offset >= off) return e;
    return std::nullopt;
  };
  for (auto e = fde_before(own.file_offset);
       e && own.file_offset - e->file_offset < kNeighbourBytes; e = fde_before(e->file_offset)) {
    if (branches_in(*e)) return true;
  }
  const std::uint64_t own_end = own.file_offset + own.size;
  for (auto e = fde_after(own_end); e && e->file_offset - own_end < kNeighbourBytes;
       e = fde_after(e->file_offset + e->size)) {
    if (branches_in(*e)) return true;
  }
  return false;
}

// A return probe needs a function's entry, reached by a call: not an offset into one, not
// an address outside every function, not a fragment (NAME.cold, reached by a jump: a
// return probe there would take its function's return address as its own).
Result<void> check_return_place(bool return_probe, const Target& tg, const elf::Symbol* sym) {
  if (!return_probe) return {};
  if (sym && sym->fragment && tg.offset == 0) {
    std::string_view name = sym->name;
    const std::string parent(name.substr(0, name.find(".cold")));
    return Error(Errc::invalid_argument,
                 "a return probe goes on a function's entry, and '" + tg.describe +
                     "' is a fragment of " + parent +
                     " (its unlikely path, which the compiler moved out of line): it is entered "
                     "by a jump, not a call, so it has no return of its own; probe the return "
                     "of " +
                     parent + " instead, or use an entry probe on the fragment");
  }
  if (tg.offset != 0 || (!sym && !tg.cfi_entry)) {
    return Error(Errc::invalid_argument,
                 "a return probe goes on a function's entry, and '" + tg.describe +
                     "' is not one: drop the offset, or use an entry probe there");
  }
  return {};
}

// A target in a file that is not loaded: applied when a dlopen maps it.
Result<void> resolve_pending(std::string_view path, std::string_view rest, bool return_probe,
                             ModuleCache& cache, std::vector<Target>& out) {
  auto elf = elf::load_elf(std::string(path));
  if (!elf.ok()) return elf.error();
  auto found = (*elf)->lookup(rest);
  if (!found.ok()) return found.error();
  cache.hold(*elf);  // the targets' symbol names point into it
  std::string base(path.substr(path.rfind('/') + 1));
  for (const elf::Target& t : *found) {
    if (t.symbol && t.symbol->is_ifunc()) {
      return Error(Errc::unsupported, std::string(t.symbol->name) +
                                          " is an IFUNC, whose implementation is known only once " +
                                          base + " is loaded: attach after it is loaded");
    }
    Target tg;
    tg.key = {(*elf)->key().dev, (*elf)->key().ino, t.file_offset};
    tg.pending = true;
    tg.offset = t.offset_in_symbol;
    tg.has_symbol = t.symbol != nullptr;
    tg.function_file_offset = t.file_offset - t.offset_in_symbol;
    tg.function_size = t.symbol ? t.symbol->size : 0;
    tg.fragment = t.symbol && t.symbol->fragment;
    tg.describe = base + ":" + (t.symbol ? std::string(t.symbol->name) : std::string());
    if (t.symbol && tg.offset) tg.describe += "+" + hex(tg.offset);
    if (!t.symbol) tg.describe += "fileoff:" + hex(t.file_offset);
    if (!t.symbol) {
      if (auto ext = (*elf)->cfi_extent(t.file_offset)) {  // as resolve() does
        tg.offset = t.file_offset - ext->file_offset;
        tg.function_file_offset = ext->file_offset;
        // Not loaded: the neighbours cannot be read from memory to look for branches into
        // the first bytes (neighbours_branch_into), so the size stays unknown (int3 mode).
        tg.function_size = 0;
        tg.fragment = true;  // an FDE may start a fragment: no entry assumptions
      }
    }
    tg.module_path = path;
    if (t.symbol) tg.symbol = t.symbol->name;
    HP_TRY(check_return_place(return_probe, tg, t.symbol));
    out.push_back(std::move(tg));
  }
  return {};
}

}  // namespace

Result<Resolver::UsdtMatch> Resolver::usdt_notes(std::string_view module_spec,
                                                 std::string_view what) {
  UsdtMatch m;
  // The file: the loaded module, or a file named by its path that is not loaded yet.
  if (ModuleCache::Entry* cached = cache_.find(module_spec); cached && cached->elf) {
    m.file = cached->elf;
    m.module = cached->module;
  } else if (auto mod = mods_.resolve(module_spec); mod.ok()) {
    auto loaded = mods_.elf(**mod);
    if (!loaded.ok()) return loaded.error();
    m.file = std::move(*loaded);
    m.module = *mod;
  } else if (mod.error().code() == Errc::not_found &&
             module_spec.find('/') != std::string_view::npos &&
             ::access(std::string(module_spec).c_str(), R_OK) == 0) {
    auto loaded = elf::load_elf(std::string(module_spec));
    if (!loaded.ok()) return loaded.error();
    m.file = std::move(*loaded);
  } else if (mod.error().code() == Errc::not_found &&
             module_spec.find('/') == std::string_view::npos) {
    return Error(Errc::not_found, mod.error().message() +
                                      "; to probe a library before it is loaded, name it by its "
                                      "path");
  } else {
    return mod.error();
  }
  auto parsed = elf::parse_usdt_what(what);
  if (!parsed.ok()) return parsed.error();
  auto probes = elf::read_usdt(*m.file);
  if (!probes.ok()) return probes.error();
  const std::string& path = m.file->path();
  if (probes->empty()) {
    return Error(Errc::not_found, path +
                                      " has no USDT probes (no .note.stapsdt notes): it was "
                                      "built without <sys/sdt.h> probes");
  }
  for (const elf::UsdtProbe* p : elf::find_usdt(*probes, parsed->provider, parsed->name))
    m.notes.push_back(*p);
  if (m.notes.empty()) {
    return Error(Errc::not_found, "no USDT probe '" + std::string(what) + "' in " + path +
                                      ": list its probes with hotprobe list 'usdt:" + path + ":*'");
  }
  return m;
}

namespace {

// "./prog*" from the current directory, without its "./" and "dir/../" parts, for
// fnmatch(3) against the absolute paths /proc/PID/maps gives.
std::string absolute_glob(std::string_view pattern) {
  std::string in(pattern);
  if (!in.starts_with('/') && !in.starts_with('*')) {
    char cwd[PATH_MAX];
    if (::getcwd(cwd, sizeof cwd)) in = std::string(cwd) + "/" + in;
  }
  std::vector<std::string> parts;
  for (std::size_t pos = 0; pos <= in.size();) {
    std::size_t slash = in.find('/', pos);
    if (slash == std::string::npos) slash = in.size();
    std::string part = in.substr(pos, slash - pos);
    if (part == "..") {
      if (!parts.empty() && !parts.back().empty()) parts.pop_back();
    } else if (part != "." && !(part.empty() && !parts.empty())) {
      parts.push_back(std::move(part));
    }
    pos = slash + 1;
  }
  std::string out;
  for (std::size_t i = 0; i < parts.size(); i++)
    out += (i ? "/" : "") + parts[i];
  return out.empty() ? "/" : out;
}

bool has_glob(std::string_view s) {
  return s.find_first_of("*?[") != std::string_view::npos;
}

}  // namespace

Result<std::vector<Resolver::UsdtMatch>> Resolver::usdt_matches(std::string_view module_spec,
                                                                std::string_view what) {
  std::vector<UsdtMatch> out;
  if (!module_spec.empty() && module_spec != "*" && !has_glob(module_spec)) {
    auto one = usdt_notes(module_spec, what);
    if (!one.ok()) return one.error();
    out.push_back(std::move(*one));
    return out;
  }
  auto parsed = elf::parse_usdt_what(what);
  if (!parsed.ok()) return parsed.error();
  const bool every = module_spec.empty() || module_spec == "*";
  const std::string pattern = every ? std::string() : absolute_glob(module_spec);
  std::string first_error;
  auto add = [&](std::shared_ptr<const elf::ElfFile> file, const elf::Module* module) {
    auto probes = elf::read_usdt(*file);
    if (!probes.ok()) {
      if (first_error.empty()) first_error = probes.error().message();
      return;
    }
    UsdtMatch m;
    for (const elf::UsdtProbe* p : elf::find_usdt(*probes, parsed->provider, parsed->name))
      m.notes.push_back(*p);
    if (m.notes.empty()) return;
    m.file = std::move(file);
    m.module = module;
    out.push_back(std::move(m));
  };
  std::size_t looked = 0;
  for (const elf::Module& mod : mods_.modules()) {
    if (!every && ::fnmatch(pattern.c_str(), mod.path.c_str(), 0) != 0) continue;
    auto file = mods_.elf(mod);
    if (!file.ok()) continue;  // a module whose file cannot be read has no probes to offer
    ++looked;
    add(std::move(*file), &mod);
  }
  if (!every && looked == 0) {
    // No loaded module matches: the files on disk the glob names, probed when loaded.
    glob_t g{};
    if (::glob(pattern.c_str(), 0, nullptr, &g) == 0) {
      for (std::size_t i = 0; i < g.gl_pathc; ++i) {
        auto file = elf::load_elf(g.gl_pathv[i]);
        if (!file.ok()) continue;
        ++looked;
        add(std::move(*file), nullptr);
      }
    }
    ::globfree(&g);
  }
  if (out.empty()) {
    if (looked == 0 && !every) {
      return Error(Errc::not_found, "no file matches '" + std::string(module_spec) + "' (" +
                                        pattern + ": not a module of this process nor a file)");
    }
    if (!first_error.empty() && !every) return Error(Errc::invalid_argument, first_error);
    if (every) {
      // Named by the program first: most targets without a module mean its probes.
      const elf::Module* main = mods_.main();
      const std::string prog = main ? main->path : std::string("the program");
      return Error(Errc::not_found, "no USDT probe '" + std::string(what) + "' in " + prog +
                                        " or any other module of this process: list its "
                                        "probes with hotprobe list 'usdt:" +
                                        prog +
                                        ":*' (every module's: hotprobe list -p PID "
                                        "'usdt:*')");
    }
    return Error(Errc::not_found, "no USDT probe '" + std::string(what) + "' in any of the " +
                                      std::to_string(looked) + " files matching '" +
                                      std::string(module_spec) + "': list their probes with " +
                                      "hotprobe list 'usdt:" + std::string(module_spec) + ":*'");
  }
  return out;
}

Result<void> Resolver::resolve_module_glob(std::string_view module_spec, std::string_view rest,
                                           bool return_probe, std::vector<Target>& out) {
  const bool every = module_spec == "*";
  const std::string pattern = every ? std::string() : absolute_glob(module_spec);
  std::size_t looked = 0;
  const std::size_t first = out.size();
  for (const elf::Module& mod : mods_.modules()) {
    if (!every && ::fnmatch(pattern.c_str(), mod.path.c_str(), 0) != 0) continue;
    if (mod.path.ends_with(" (deleted)")) continue;  // found again by its path below
    ++looked;
    auto r = resolve(mod.path + ":" + std::string(rest), return_probe, out);
    // A module without the function is skipped, as bpftrace skips it; other errors stand.
    if (!r.ok() && r.error().code() != Errc::not_found) return r;
  }
  if (out.size() > first) return {};
  if (looked == 0) {
    return Error(Errc::not_found, "no module of this process matches '" + std::string(module_spec) +
                                      "' (" + pattern + "); loaded modules: " + mods_.names());
  }
  return Error(Errc::not_found,
               "no function '" + std::string(rest) + "' in " +
                   (every ? std::string("any module of this process")
                          : "the modules matching '" + std::string(module_spec) + "'") +
                   ": list them with hotprobe list -p PID 'uprobe:" + std::string(module_spec) +
                   ":" + std::string(rest) + "'");
}

Result<void> Resolver::resolve_usdt(std::string_view module_spec, std::string_view what,
                                    std::vector<Target>& out) {
  auto matches = usdt_matches(module_spec, what);
  if (!matches.ok()) return matches.error();
  for (const UsdtMatch& match : *matches) {
    // A file named by a glob or by no name is found again by its path.
    const std::string spec = match.module ? match.module->path
                             : has_glob(module_spec) || module_spec.empty() || module_spec == "*"
                                 ? match.file->path()
                                 : std::string(module_spec);
    HP_TRY(resolve_usdt_sites(spec, match, out));
  }
  return {};
}

Result<void> Resolver::resolve_usdt_sites(const std::string& module_spec, const UsdtMatch& match,
                                          std::vector<Target>& out) {
  const std::shared_ptr<const elf::ElfFile>& file = match.file;
  const std::string& path = file->path();
  cache_.hold(file);  // the targets' symbol names point into it
  std::vector<std::uint64_t> seen;
  for (const elf::UsdtProbe& note : match.notes) {
    const elf::UsdtProbe* p = &note;
    // Two notes at one address (a glob matching both) are one place.
    if (std::find(seen.begin(), seen.end(), p->file_offset) != seen.end()) continue;
    seen.push_back(p->file_offset);
    const std::size_t first = out.size();
    // The site is a nop inside a function: an instruction probe at its file offset.
    const std::string place = module_spec + ":fileoff:" + hex(p->file_offset);
    if (auto r = resolve(place, false, out); !r.ok()) {
      return Error(r.error().code(), "USDT probe " + p->provider + ":" + p->name + " at " +
                                         hex(p->pc) + " of " + path + ": " + r.error().message());
    }
    for (std::size_t i = first; i < out.size(); i++) {
      Target& t = out[i];
      t.describe = "usdt:" + path + ":" + p->provider + ":" + p->name + " (" + t.describe + ")";
      // Its semaphore, counted while the site is probed (core/usdt_semaphore.h).
      if (p->semaphore) {
        note_usdt_semaphore(t.key, p->semaphore,
                            t.pending ? 0 : usdt_semaphore_address(mods_, t.key, p->semaphore));
      }
    }
  }
  return {};
}

Result<void> Resolver::resolve_address(std::string_view target, bool return_probe,
                                       std::vector<Target>& out) {
  std::string_view text = target.substr(1);
  std::uintptr_t addr = 0;
  const bool hex_digits = text.size() > 2 && text[0] == '0' && (text[1] == 'x' || text[1] == 'X') &&
                          text.size() <= 18 &&
                          text.find_first_not_of("0123456789abcdefABCDEF", 2) == text.npos;
  if (!hex_digits) {
    return Error(Errc::invalid_argument,
                 "probe target '" + std::string(target) +
                     "' is not an address: write @0xADDRESS (an address in this process, "
                     "e.g. of a function pointer plus an offset)");
  }
  addr = std::stoull(std::string(text.substr(2)), nullptr, 16);
  auto loc = mods_.locate(addr);
  if (!loc.ok()) {
    return Error(Errc::not_found, "address " + hex(addr) +
                                      " is in no module of this process (not code of a "
                                      "file mapped here: JIT code, the heap or a stack?)");
  }
  if (!loc->module->contains(addr)) {
    return Error(Errc::not_found, "address " + hex(addr) + " is in no file mapping of " +
                                      std::string(loc->module->name()));
  }
  const std::string place = loc->module->path + ":fileoff:" + hex(loc->file_offset);
  const std::size_t first = out.size();
  if (auto r = resolve(place, return_probe, out); !r.ok()) {
    return Error(r.error().code(), "address " + hex(addr) + ": " + r.error().message());
  }
  for (std::size_t i = first; i < out.size(); i++)
    out[i].describe += " (at " + hex(addr) + ")";
  return {};
}

Result<void> Resolver::resolve(std::string_view target, bool return_probe,
                               std::vector<Target>& out) {
  const elf::ModuleList& mods = mods_;
  ModuleCache& cache = cache_;
  if (target.starts_with('@')) return resolve_address(target, return_probe, out);
  auto colon = target.find(':');
  if (colon == std::string_view::npos) {
    return Error(Errc::invalid_argument,
                 "probe target '" + std::string(target) +
                     "' has no ':': write MODULE:SYMBOL, MODULE:SYMBOL+OFFSET, MODULE:0xADDRESS "
                     "(as nm prints it), MODULE:fileoff:0xOFFSET (MODULE may be empty for "
                     "the program), MODULE:usdt:PROVIDER:NAME or @0xADDRESS (in this process)");
  }
  std::string_view module_spec = target.substr(0, colon);
  std::string_view rest = target.substr(colon + 1);
  if (rest.empty()) {
    return Error(Errc::invalid_argument,
                 "probe target '" + std::string(target) + "' names no symbol after ':'");
  }
  if (rest.starts_with(elf::kUsdtPrefix)) {
    if (return_probe) {
      return Error(Errc::invalid_argument,
                   "'" + std::string(target) +
                       "' is a USDT probe, a place inside a function: it takes an entry "
                       "handler, not a return handler");
    }
    return resolve_usdt(module_spec, rest.substr(elf::kUsdtPrefix.size()), out);
  }
  if (module_spec == "*" || (has_glob(module_spec) && !cache.find(module_spec)))
    return resolve_module_glob(module_spec, rest, return_probe, out);
  ModuleCache::Entry* cached = cache.find(module_spec);
  auto mod = cached ? Result<const elf::Module*>(cached->module) : mods.resolve(module_spec);
  if (mod.ok() && !cached) cached = cache.add(module_spec, *mod);
  if (!mod.ok()) {
    // A path to a library that is not loaded yet: the probe waits for its dlopen.
    if (mod.error().code() == Errc::not_found && module_spec.find('/') != std::string_view::npos &&
        ::access(std::string(module_spec).c_str(), R_OK) == 0) {
      return resolve_pending(module_spec, rest, return_probe, cache, out);
    }
    if (mod.error().code() == Errc::not_found && module_spec.find('/') == std::string_view::npos) {
      return Error(
          Errc::not_found,
          mod.error().message() + "; to probe a library before it is loaded, name it by its path");
    }
    return mod.error();
  }
  if (!cached->elf) {
    auto loaded = mods.elf(**mod);
    if (!loaded.ok()) return loaded.error();
    cached->elf = std::move(*loaded);
  }
  // Found into the batch's list, reused from spec to spec (not a vector per spec).
  std::vector<elf::Target>& found = cache.found();
  found.clear();
  HP_TRY(cached->elf->lookup(rest, found));
  for (const elf::Target& t : found) {
    const elf::Module* m = *mod;
    std::uint64_t file_offset = t.file_offset;
    const elf::Symbol* sym = t.symbol;
    std::uint64_t in_sym = t.offset_in_symbol;
    // An IFUNC's implementation may be in another file: hold it while `sym` is used (the
    // module's own file is held by the cache).
    std::shared_ptr<const elf::ElfFile> holder;
    if (sym && sym->is_ifunc()) {
      // Probe the implementation the loader selected (elf::ModuleList::implementation_of,
      // which resolve_functions uses too).
      auto impl = mods.implementation_of(*m, *sym);
      if (!impl.ok()) return impl.error();
      m = impl->module;
      file_offset = impl->file_offset + in_sym;
      sym = impl->symbol;
      holder = impl->elf;
      in_sym = sym ? file_offset - sym->file_offset : 0;
    }
    auto addr = m->offset_to_address(file_offset);
    if (!addr.ok()) return addr.error();
    Target tg;
    tg.key = {m->key.dev, m->key.ino, file_offset};
    tg.offset = in_sym;
    tg.function_file_offset = file_offset - in_sym;
    tg.has_symbol = sym != nullptr;
    tg.fragment = sym && sym->fragment;
    if (sym) {
      tg.function = *addr - in_sym;
      tg.function_size = sym->size;
      // The module's name, found once per batch (a search for the path's last '/').
      const std::string_view name = m == cached->module ? cached->name : m->name();
      tg.describe.reserve(name.size() + 1 + sym->name.size());
      tg.describe.append(name).append(":").append(sym->name);
      if (in_sym) tg.describe += "+" + hex(in_sym);
    } else {
      tg.function = *addr;
      tg.function_size = 0;
      tg.describe = std::string(m->name()) + ":fileoff:" + hex(file_offset);
      if (holder) {  // name the IFUNC the user wrote, and where its implementation is
        tg.describe = std::string(cached->name) + ":" + std::string(t.symbol->name) +
                      " (its implementation at " + tg.describe + ")";
      }
      // No symbol sizes the code (an IFUNC's implementation written in assembly, a
      // stripped file): its FDE does, and the jump needs the whole function (to find the
      // branches into the bytes it displaces).
      const elf::ElfFile* file = holder ? holder.get() : cached->elf.get();
      if (auto ext = file->cfi_extent(file_offset)) {
        tg.offset = file_offset - ext->file_offset;
        tg.function = *addr - tg.offset;
        tg.function_file_offset = ext->file_offset;
        tg.function_size = ext->size;
        // What the loader returned for an IFUNC is a function's entry; an FDE of a
        // stripped file may as well start a fragment (NAME.cold), entered by a jump.
        tg.cfi_entry = holder != nullptr;
        tg.fragment = !tg.cfi_entry;
        if (tg.offset) tg.describe += " (+" + hex(tg.offset) + " into its FDE)";
        // The jump displaces at most the instructions that start below its 5th byte.
        const std::uintptr_t at = *addr;
        if (neighbours_branch_into(*file, *ext, at - file_offset, at, at + 5 + 15)) {
          tg.function_size = 0;  // int3 mode: a neighbour enters the bytes a jump would take
          tg.describe += " (a neighbouring function jumps into its first bytes)";
        }
      }
    }
    tg.module_path = m->path;
    tg.symbol = t.symbol ? t.symbol->name : std::string_view();  // the name the target used
    if (holder) cache.hold(std::move(holder));
    HP_TRY(check_return_place(return_probe, tg, sym));
    out.push_back(std::move(tg));
  }
  return {};
}

}  // namespace hp::core
