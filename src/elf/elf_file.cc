#include "elf/elf_file.h"

#include <fcntl.h>
#include <fnmatch.h>
#include <gelf.h>
#include <libelf.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <unordered_map>

#include "base/assert.h"
#include "base/thread_annotations.h"

namespace hp::elf {

namespace {

std::string hex(std::uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

// "123" or "0x7b" in full; false for anything else (including overflow).
bool parse_number(std::string_view s, std::uint64_t& out) {
  int base = 10;
  if (s.size() > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
    s.remove_prefix(2);
    base = 16;
  }
  if (s.empty()) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out, base);
  return ec == std::errc() && p == s.data() + s.size();
}

bool is_glob(std::string_view s) {
  // One pass over the name (find_first_of searches the name once per character of it).
  for (char c : s) {
    if (c == '*' || c == '?' || c == '[') return true;
  }
  return false;
}

// Among aliases (one address, several names) the one to show: a global, exported,
// unversioned name, then the shortest, then the first alphabetically.
bool better_name(const Symbol& a, const Symbol& b) {
  auto rank = [](const Symbol& s) {
    return std::make_tuple(!s.global, !s.dynamic, s.name.find('@') != std::string_view::npos,
                           s.name.size(), s.name);
  };
  return rank(a) < rank(b);
}

std::string elf_error(const std::string& path, const char* what) {
  return path + ": " + what + ": " + elf_errmsg(-1);
}

void init_libelf() {
  static std::once_flag once;
  std::call_once(once, [] { (void)elf_version(EV_CURRENT); });
}

// A symbol as read, before merging; `name` views libelf's mapped string table or a
// string in `versioned`.
struct RawSymbol {
  std::string_view name;
  std::uint64_t value;
  std::uint64_t size;
  std::uint64_t file_offset;
  SymbolKind kind;
  bool global;
  bool dynamic;
};

std::atomic<std::uint64_t> g_parsed{0};

constexpr std::string_view kFileOffsetPrefix = "fileoff:";

bool is_hex_number(std::string_view s) {
  return s.size() > 1 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X');
}

// The fragments a glob may match: only those it names itself.
bool glob_names_fragments(std::string_view pattern) {
  return pattern.find(".cold") != std::string_view::npos;
}

ModuleKey key_of(const struct stat& st) {
  return ModuleKey{static_cast<std::uint64_t>(st.st_dev), static_cast<std::uint64_t>(st.st_ino)};
}

const char* file_type(mode_t mode) {
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISLNK(mode)) return "a symbolic link";
  return "not a regular file";
}

}  // namespace

bool is_fragment_name(std::string_view name) {
  if (std::size_t at = name.find('@'); at != std::string_view::npos) name = name.substr(0, at);
  constexpr std::string_view kCold = ".cold";
  for (std::size_t pos = name.find(kCold); pos != std::string_view::npos;
       pos = name.find(kCold, pos + 1)) {
    if (pos == 0) continue;
    std::string_view rest = name.substr(pos + kCold.size());
    if (rest.empty()) return true;
    if (rest.size() > 1 && rest[0] == '.' &&
        std::all_of(rest.begin() + 1, rest.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      return true;
    }
  }
  return false;
}

std::string stripped_advice(const ElfFile& file) {
  std::string msg = "it has no symbol table (.symtab)";
  msg +=
      file.symbols().empty() ? " and exports no function" : ", only exported functions are known";
  msg += "; what would help: ";
  if (!file.debuglink().empty()) {
    msg += "its separate debug file " + file.debuglink() +
           " (named by .gnu_debuglink; install the distribution's debug symbols package, or "
           "fetch it with debuginfod-find debuginfo " +
           file.path() + "), then probe that file's functions by address (MODULE:0xADDR)";
  } else {
    msg +=
        "its debug symbols (the distribution's -dbg/-dbgsym package, or debuginfod-find "
        "debuginfo " +
        file.path() + "), then probe by address (MODULE:0xADDR)";
  }
  msg += ", or a build with symbols (without -s or strip)";
  return msg;
}

Result<int> open_regular_file(const std::string& path, ModuleKey key, bool no_follow) {
  // Looked at before it is opened: opening a device or a FIFO can itself have effects.
  struct stat before;
  if ((no_follow ? ::lstat(path.c_str(), &before) : ::stat(path.c_str(), &before)) != 0)
    return sys_error("cannot open " + path);
  if (!S_ISREG(before.st_mode)) {
    return Error(Errc::invalid_argument, path + " is " + file_type(before.st_mode) +
                                             ", not a regular file, so not an ELF module");
  }
  int flags = O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC;
  if (no_follow) flags |= O_NOFOLLOW;
  const int fd = ::open(path.c_str(), flags);
  if (fd < 0) return sys_error("cannot open " + path);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return sys_error("cannot stat " + path, err);
  }
  // What was opened is what was looked at, and what the caller expects.
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return Error(Errc::invalid_argument, path + " is " + file_type(st.st_mode) +
                                             ", not a regular file, so not an ELF module");
  }
  const ModuleKey got = key_of(st);
  if (got != key_of(before) && key == ModuleKey{}) {
    ::close(fd);
    return Error(Errc::busy, path + " was replaced while it was being opened; try again");
  }
  if (key != ModuleKey{} && got != key) {
    ::close(fd);
    return Error(Errc::not_found, path + " is now the file " + got.to_string() + ", not " +
                                      key.to_string() + ": it was replaced on disk");
  }
  return fd;
}

ElfFile::~ElfFile() = default;

Result<std::shared_ptr<const ElfFile>> load_elf_uncached(int fd, std::string path) {
  init_libelf();
  struct Closer {
    int fd;
    Elf* elf = nullptr;
    ~Closer() {
      if (elf) elf_end(elf);
      ::close(fd);
    }
  } closer{fd};

  struct stat st;
  if (::fstat(fd, &st) != 0) return sys_error("cannot stat " + path);
  if (!S_ISREG(st.st_mode)) {
    return Error(Errc::invalid_argument, path + " is not a regular file, so not an ELF module");
  }
  Elf* e = elf_begin(fd, ELF_C_READ, nullptr);
  if (!e) return Error(Errc::io_error, elf_error(path, "cannot read ELF"));
  closer.elf = e;
  if (elf_kind(e) != ELF_K_ELF) {
    return Error(Errc::invalid_argument, path + " is not an ELF file");
  }
  GElf_Ehdr eh;
  if (!gelf_getehdr(e, &eh))
    return Error(Errc::invalid_argument, elf_error(path, "bad ELF header"));
  if (eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_machine != EM_X86_64) {
    return Error(Errc::unsupported, path + " is not an x86-64 ELF64 file (machine " +
                                        std::to_string(eh.e_machine) + ")");
  }
  if (eh.e_type != ET_EXEC && eh.e_type != ET_DYN) {
    return Error(Errc::unsupported,
                 path + " is neither an executable nor a shared object (ELF type " +
                     std::to_string(eh.e_type) + "): only loadable files can be probed");
  }

  std::shared_ptr<ElfFile> f(new ElfFile());
  f->path_ = std::move(path);
  f->key_ = ModuleKey{static_cast<std::uint64_t>(st.st_dev), static_cast<std::uint64_t>(st.st_ino)};
  f->file_size_ = static_cast<std::uint64_t>(st.st_size);
  f->pic_ = eh.e_type == ET_DYN;

  std::size_t phnum = 0;
  if (elf_getphdrnum(e, &phnum) != 0) {
    return Error(Errc::invalid_argument, elf_error(f->path_, "bad program headers"));
  }
  for (std::size_t i = 0; i < phnum; ++i) {
    GElf_Phdr ph;
    if (!gelf_getphdr(e, static_cast<int>(i), &ph)) continue;
    if (ph.p_type == PT_GNU_EH_FRAME) {
      f->eh_frame_hdr_ = Segment{ph.p_vaddr, ph.p_memsz, ph.p_offset, ph.p_filesz, false};
      continue;
    }
    if (ph.p_type != PT_LOAD) continue;
    f->segments_.push_back(
        Segment{ph.p_vaddr, ph.p_memsz, ph.p_offset, ph.p_filesz, (ph.p_flags & PF_X) != 0});
  }
  if (f->segments_.empty()) {
    return Error(Errc::invalid_argument, f->path_ + " has no PT_LOAD segment");
  }

  std::size_t shstrndx = 0;
  if (elf_getshdrstrndx(e, &shstrndx) != 0) shstrndx = 0;

  Elf_Scn* symtab = nullptr;
  Elf_Scn* dynsym = nullptr;
  Elf_Scn* versym = nullptr;
  Elf_Scn* verdef = nullptr;
  for (Elf_Scn* scn = elf_nextscn(e, nullptr); scn; scn = elf_nextscn(e, scn)) {
    GElf_Shdr sh;
    if (!gelf_getshdr(scn, &sh)) continue;
    switch (sh.sh_type) {
      case SHT_SYMTAB:
        symtab = scn;
        break;
      case SHT_DYNSYM:
        dynsym = scn;
        break;
      case SHT_GNU_versym:
        versym = scn;
        break;
      case SHT_GNU_verdef:
        verdef = scn;
        break;
      case SHT_DYNAMIC: {
        Elf_Data* d = elf_getdata(scn, nullptr);
        if (!d || sh.sh_entsize == 0) break;
        for (std::size_t i = 0; i < sh.sh_size / sh.sh_entsize; ++i) {
          GElf_Dyn dyn;
          if (!gelf_getdyn(d, static_cast<int>(i), &dyn)) break;
          if (dyn.d_tag == DT_NULL) break;
          if (dyn.d_tag == DT_SONAME) {
            const char* s = elf_strptr(e, sh.sh_link, dyn.d_un.d_val);
            if (s) f->soname_ = s;
          }
        }
        break;
      }
      case SHT_PROGBITS: {
        const char* name = shstrndx ? elf_strptr(e, shstrndx, sh.sh_name) : nullptr;
        if (name && std::string_view(name) == ".gnu_debuglink") {
          Elf_Data* d = elf_getdata(scn, nullptr);
          if (d && d->d_buf && d->d_size > 0) {
            const char* s = static_cast<const char*>(d->d_buf);
            f->debuglink_.assign(s, ::strnlen(s, d->d_size));
          }
        }
        break;
      }
      default:
        break;
    }
  }
  f->has_symtab_ = symtab != nullptr;

  // Version definitions: index -> name, to name non-default versions "name@VERSION".
  std::vector<std::string_view> version_names;
  if (verdef) {
    GElf_Shdr sh;
    Elf_Data* d = elf_getdata(verdef, nullptr);
    if (d && gelf_getshdr(verdef, &sh)) {
      std::size_t off = 0;
      for (std::size_t n = 0; n < sh.sh_info && off < d->d_size; ++n) {
        GElf_Verdef vd;
        GElf_Verdaux vda;
        if (!gelf_getverdef(d, static_cast<int>(off), &vd)) break;
        if (vd.vd_cnt > 0 && gelf_getverdaux(d, static_cast<int>(off + vd.vd_aux), &vda)) {
          const char* s = elf_strptr(e, sh.sh_link, vda.vda_name);
          if (s) {
            if (version_names.size() <= vd.vd_ndx) version_names.resize(vd.vd_ndx + 1u);
            version_names[vd.vd_ndx] = s;
          }
        }
        if (vd.vd_next == 0) break;
        off += vd.vd_next;
      }
    }
  }

  std::vector<RawSymbol> raw;
  std::deque<std::string> versioned;  // storage for "name@VERSION"
  auto read_table = [&](Elf_Scn* scn, bool dynamic) {
    GElf_Shdr sh;
    if (!gelf_getshdr(scn, &sh) || sh.sh_entsize == 0) return;
    Elf_Data* d = elf_getdata(scn, nullptr);
    if (!d) return;
    Elf_Data* vs = nullptr;
    if (dynamic && versym) vs = elf_getdata(versym, nullptr);
    const std::size_t count = sh.sh_size / sh.sh_entsize;
    raw.reserve(raw.size() + count);
    for (std::size_t i = 1; i < count; ++i) {
      GElf_Sym sym;
      if (!gelf_getsym(d, static_cast<int>(i), &sym)) break;
      const int type = GELF_ST_TYPE(sym.st_info);
      if (type != STT_FUNC && type != STT_GNU_IFUNC) continue;
      if (sym.st_shndx == SHN_UNDEF || sym.st_name == 0) continue;
      const char* cname = elf_strptr(e, sh.sh_link, sym.st_name);
      if (!cname || !*cname) continue;
      auto off = f->vaddr_to_offset(sym.st_value);
      if (!off.ok()) continue;  // not in the file (should not happen for code)
      std::string_view name = cname;
      if (vs) {
        GElf_Versym ver;
        if (gelf_getversym(vs, static_cast<int>(i), &ver)) {
          const unsigned idx = ver & 0x7fff;
          if ((ver & 0x8000) && idx >= 2 && idx < version_names.size() &&
              !version_names[idx].empty()) {
            versioned.push_back(std::string(name) + "@" + std::string(version_names[idx]));
            name = versioned.back();
          }
        }
      }
      const int bind = GELF_ST_BIND(sym.st_info);
      raw.push_back(RawSymbol{name, sym.st_value, sym.st_size, *off,
                              type == STT_GNU_IFUNC ? SymbolKind::ifunc : SymbolKind::function,
                              bind != STB_LOCAL, dynamic});
    }
  };
  if (symtab) read_table(symtab, false);
  if (dynsym) read_table(dynsym, true);

  // Merge the two tables: one entry per (name, value).
  std::sort(raw.begin(), raw.end(), [](const RawSymbol& a, const RawSymbol& b) {
    if (a.file_offset != b.file_offset) return a.file_offset < b.file_offset;
    return a.name < b.name;
  });
  std::vector<RawSymbol> merged;
  merged.reserve(raw.size());
  std::size_t name_bytes = 0;
  for (const RawSymbol& r : raw) {
    if (!merged.empty() && merged.back().file_offset == r.file_offset &&
        merged.back().name == r.name) {
      RawSymbol& m = merged.back();
      m.size = std::max(m.size, r.size);
      m.global = m.global || r.global;
      m.dynamic = m.dynamic || r.dynamic;
      if (r.kind == SymbolKind::ifunc) m.kind = SymbolKind::ifunc;
      continue;
    }
    merged.push_back(r);
    name_bytes += r.name.size() + 1;
  }

  // Copy names into one block owned by the ElfFile; libelf's mapping goes away below.
  f->names_.reserve(name_bytes);
  std::vector<std::size_t> name_at;
  name_at.reserve(merged.size());
  for (const RawSymbol& r : merged) {
    name_at.push_back(f->names_.size());
    f->names_.append(r.name);
    f->names_.push_back('\0');
  }
  f->symbols_.reserve(merged.size());
  for (std::size_t i = 0; i < merged.size(); ++i) {
    const RawSymbol& r = merged[i];
    const std::string_view name(f->names_.data() + name_at[i], r.name.size());
    f->symbols_.push_back(Symbol{name, r.value, r.size, r.file_offset, r.kind, r.global, r.dynamic,
                                 is_fragment_name(name)});
  }
  // Sort (name, index) pairs side by side rather than indices through symbols_: the
  // comparisons stay in one array.
  std::vector<std::pair<std::string_view, std::uint32_t>> order;
  order.reserve(f->symbols_.size());
  for (std::uint32_t i = 0; i < f->symbols_.size(); ++i)
    order.emplace_back(f->symbols_[i].name, i);
  std::sort(order.begin(), order.end());
  f->by_name_.reserve(order.size());
  for (const auto& [name, i] : order)
    f->by_name_.push_back(i);
  f->index_names();
  return std::shared_ptr<const ElfFile>(std::move(f));
}

Result<std::uint64_t> ElfFile::vaddr_to_offset(std::uint64_t vaddr) const {
  for (const Segment& s : segments_) {
    if (vaddr >= s.vaddr && vaddr - s.vaddr < s.filesz) return s.offset + (vaddr - s.vaddr);
  }
  return Error(Errc::not_found, "virtual address " + hex(vaddr) + " is not backed by " + path_ +
                                    " (outside the file part of every PT_LOAD segment)");
}

Result<std::uint64_t> ElfFile::offset_to_vaddr(std::uint64_t offset) const {
  for (const Segment& s : segments_) {
    if (offset >= s.offset && offset - s.offset < s.filesz) return s.vaddr + (offset - s.offset);
  }
  return Error(Errc::not_found, "file offset " + hex(offset) + " of " + path_ +
                                    " is not loaded (outside every PT_LOAD segment)");
}

bool ElfFile::offset_is_code(std::uint64_t offset) const {
  for (const Segment& s : segments_) {
    if (s.executable && offset >= s.offset && offset - s.offset < s.filesz) return true;
  }
  return false;
}

// Open addressing over the distinct names, at most half full: a batch of 10,000 probes
// finds each name with one hash and about one comparison, where a binary search over
// 50,000 names compares 16 strings that share their first bytes. A slot holds the upper
// half of the name's hash, so a probe of the table skips other names without reading
// them, and a name of one function holds that function itself: the lookup reads the slot,
// the symbol and its name (three cache misses in a batch, not six).
void ElfFile::index_names() {
  HP_CHECK(symbols_.size() < NameSlot::kOne);
  std::size_t slots = 16;
  while (slots < 2 * by_name_.size())
    slots *= 2;
  name_index_.assign(slots, NameSlot{});
  const std::size_t mask = slots - 1;
  for (std::size_t pos = 0; pos < by_name_.size();) {
    const std::string_view name = symbols_[by_name_[pos]].name;
    std::size_t end = pos + 1;
    while (end < by_name_.size() && symbols_[by_name_[end]].name == name)
      ++end;
    const std::size_t h = std::hash<std::string_view>()(name);
    std::size_t i = h & mask;
    while (name_index_[i].ref != 0)
      i = (i + 1) & mask;
    name_index_[i].tag = static_cast<std::uint32_t>(h >> 32);
    name_index_[i].ref =
        end - pos == 1 ? NameSlot::kOne | by_name_[pos] : static_cast<std::uint32_t>(pos + 1);
    pos = end;
  }
}

void ElfFile::prefetch_slot(std::string_view name) const {
  if (name_index_.empty()) return;
  const std::size_t h = std::hash<std::string_view>()(name);
  __builtin_prefetch(&name_index_[h & (name_index_.size() - 1)]);
}

void ElfFile::prefetch_symbol(std::string_view name) const {
  if (name_index_.empty()) return;
  const std::size_t h = std::hash<std::string_view>()(name);
  const NameSlot slot = name_index_[h & (name_index_.size() - 1)];
  if ((slot.ref & NameSlot::kOne) && slot.tag == static_cast<std::uint32_t>(h >> 32)) {
    const Symbol& s = symbols_[slot.ref & ~NameSlot::kOne];
    __builtin_prefetch(&s);
    __builtin_prefetch(s.name.data());
  }
}

ElfFile::NameHit ElfFile::name_hit(std::string_view name) const {
  if (name_index_.empty()) return {};
  const std::size_t mask = name_index_.size() - 1;
  const std::size_t h = std::hash<std::string_view>()(name);
  const auto tag = static_cast<std::uint32_t>(h >> 32);
  for (std::size_t i = h & mask; name_index_[i].ref != 0; i = (i + 1) & mask) {
    const NameSlot slot = name_index_[i];
    if (slot.tag != tag) continue;
    if (slot.ref & NameSlot::kOne) {
      const Symbol* one = &symbols_[slot.ref & ~NameSlot::kOne];
      if (one->name == name) return {one, 0, 0};
      continue;
    }
    const std::size_t first = slot.ref - 1;
    if (symbols_[by_name_[first]].name != name) continue;
    std::size_t last = first + 1;
    while (last < by_name_.size() && symbols_[by_name_[last]].name == name)
      ++last;
    return {nullptr, first, last};
  }
  return {};
}

std::vector<const Symbol*> ElfFile::find(std::string_view name) const {
  const NameHit hit = name_hit(name);
  if (hit.one) return {hit.one};
  std::vector<const Symbol*> out;
  out.reserve(hit.last - hit.first);
  for (std::size_t pos = hit.first; pos < hit.last; ++pos)
    out.push_back(&symbols_[by_name_[pos]]);
  return out;
}

const Symbol* ElfFile::containing_offset(std::uint64_t offset) const {
  auto it =
      std::upper_bound(symbols_.begin(), symbols_.end(), offset,
                       [](std::uint64_t off, const Symbol& s) { return off < s.file_offset; });
  const Symbol* best = nullptr;
  // Look back a little: aliases share a start, and rarely a symbol nests in another.
  for (int budget = 64; it != symbols_.begin() && budget > 0; --budget) {
    --it;
    if (it->contains_offset(offset) &&
        (!best || (best->file_offset == it->file_offset ? better_name(*it, *best)
                                                        : it->file_offset > best->file_offset))) {
      best = &*it;
    }
  }
  return best;
}

std::vector<std::string_view> ElfFile::suggestions(std::string_view name, std::size_t max) const {
  // Close enough to be a typo: a third of the name, at least 2, at most 4 edits.
  const std::size_t limit = std::clamp<std::size_t>(name.size() / 3, 2, 4);
  std::vector<std::pair<std::size_t, std::string_view>> close;
  std::string_view prev;
  for (std::uint32_t i : by_name_) {
    std::string_view n = symbols_[i].name;
    if (n == prev) continue;
    prev = n;
    const std::size_t diff =
        n.size() > name.size() ? n.size() - name.size() : name.size() - n.size();
    if (diff > limit) continue;
    const std::size_t d = edit_distance(name, n);
    if (d <= limit && d > 0) close.emplace_back(d, n);
  }
  std::sort(close.begin(), close.end());
  std::vector<std::string_view> out;
  for (std::size_t i = 0; i < close.size() && out.size() < max; ++i)
    out.push_back(close[i].second);
  return out;
}

Error ElfFile::no_such_function(std::string_view name) const {
  std::string msg = "no function '" + std::string(name) + "' in " + path_;
  auto near = suggestions(name);
  if (!near.empty()) {
    msg += "; did you mean ";
    for (std::size_t i = 0; i < near.size(); ++i) {
      if (i) msg += i + 1 == near.size() ? " or " : ", ";
      msg += "'" + std::string(near[i]) + "'";
    }
    msg += "?";
  }
  if (!has_symtab_) msg += " (the file is stripped: " + stripped_advice(*this) + ")";
  return Error(Errc::not_found, std::move(msg));
}

bool ElfFile::is_address_spec(std::string_view spec) {
  return is_hex_number(spec) || spec.starts_with(kFileOffsetPrefix);
}

Result<Target> ElfFile::place_at(std::uint64_t off, std::string_view spec, bool is_vaddr) const {
  Target t;
  t.file_offset = off;
  t.vaddr = offset_to_vaddr(off).value();
  t.symbol = containing_offset(off);
  if (t.symbol) {
    t.offset_in_symbol = off - t.symbol->file_offset;
    return t;
  }
  auto before =
      std::upper_bound(symbols_.begin(), symbols_.end(), off,
                       [](std::uint64_t o, const Symbol& s) { return o < s.file_offset; });
  if (before != symbols_.begin() && std::prev(before)->size == 0) {
    // After a function whose size was not recorded (assembly without .size): taken as
    // inside it, as NAME+OFFSET would be; decoding from its start still checks the place.
    t.symbol = &*std::prev(before);
    t.offset_in_symbol = off - t.symbol->file_offset;
    return t;
  }
  if (!has_symtab_) return t;  // stripped: its functions are not known, so taken as given
  // Between functions (padding, or code no symbol covers): no function start to decode
  // from, so no way to know it starts an instruction.
  const std::string where = is_vaddr ? "address " + hex(t.vaddr) : "file offset " + hex(off);
  std::string msg = where + " ('" + std::string(spec) + "') is in no function of " + path_;
  if (before != symbols_.begin()) {
    const Symbol& p = *std::prev(before);
    msg += "; the function before it, " + std::string(p.name) + ", spans " +
           (is_vaddr ? hex(p.value) + "-" + hex(p.value + p.size)
                     : hex(p.file_offset) + "-" + hex(p.file_offset + p.size));
  }
  msg += ": probes go on instructions of functions (NAME, NAME+OFFSET or an address inside one)";
  return Error(Errc::invalid_argument, std::move(msg));
}

Result<std::vector<Target>> ElfFile::lookup(std::string_view spec) const {
  std::vector<Target> out;
  HP_TRY(lookup(spec, out));
  return out;
}

Result<void> ElfFile::lookup(std::string_view spec, std::vector<Target>& out) const {
  if (spec.empty()) {
    return Error(Errc::invalid_argument,
                 "empty function spec: give a function name, a glob such as 'handle_*', "
                 "NAME+OFFSET, an address such as 0x1140 (as nm prints it) or a file offset "
                 "such as fileoff:0x1140");
  }

  if (is_hex_number(spec)) {
    std::uint64_t vaddr;
    if (!parse_number(spec, vaddr)) {
      return Error(Errc::invalid_argument,
                   "'" + std::string(spec) +
                       "' is not a hexadecimal address (write 0x1140, a virtual address as nm "
                       "prints it)");
    }
    auto off = vaddr_to_offset(vaddr);
    if (!off.ok() || !offset_is_code(*off)) {
      std::string ranges;
      for (const Segment& s : segments_) {
        if (!s.executable) continue;
        if (!ranges.empty()) ranges += ", ";
        ranges += hex(s.vaddr) + "-" + hex(s.vaddr + s.filesz);
      }
      return Error(Errc::invalid_argument, "address " + hex(vaddr) + " is not code in " + path_ +
                                               ": its executable segments span addresses " +
                                               ranges + " (addresses as nm prints them)");
    }
    auto t = place_at(*off, spec, true);
    if (!t.ok()) return t.error();
    out.push_back(*t);
    return {};
  }
  if (spec.starts_with(kFileOffsetPrefix)) {
    const std::string_view num = spec.substr(kFileOffsetPrefix.size());
    std::uint64_t off;
    if (!is_hex_number(num) || !parse_number(num, off)) {
      return Error(Errc::invalid_argument, "'" + std::string(spec) +
                                               "' is not a hexadecimal file offset (write " +
                                               std::string(kFileOffsetPrefix) + "0x1140)");
    }
    if (!offset_is_code(off)) {
      std::string ranges;
      for (const Segment& s : segments_) {
        if (!s.executable) continue;
        if (!ranges.empty()) ranges += ", ";
        ranges += hex(s.offset) + "-" + hex(s.offset + s.filesz);
      }
      return Error(Errc::invalid_argument, "file offset " + hex(off) + " is not code in " + path_ +
                                               ": its executable segments span file offsets " +
                                               ranges);
    }
    auto t = place_at(off, spec, false);
    if (!t.ok()) return t.error();
    out.push_back(*t);
    return {};
  }

  // NAME+OFFSET: the '+' splits only when a number follows it.
  std::string_view name = spec;
  std::uint64_t add = 0;
  bool has_add = false;
  if (std::size_t plus = spec.rfind('+'); plus != std::string_view::npos) {
    std::string_view num = spec.substr(plus + 1);
    if (!parse_number(num, add)) {
      return Error(Errc::invalid_argument, "bad offset '" + std::string(num) + "' in '" +
                                               std::string(spec) + "': write NAME+16 or NAME+0x10");
    }
    name = spec.substr(0, plus);
    has_add = true;
    if (name.empty()) {
      return Error(Errc::invalid_argument, "'" + std::string(spec) +
                                               "' has an offset but no function name; for an "
                                               "address write " +
                                               hex(add) + ", for a file offset " +
                                               std::string(kFileOffsetPrefix) + hex(add));
    }
  }

  if (is_glob(name)) {
    if (has_add) {
      return Error(Errc::invalid_argument, "'" + std::string(spec) +
                                               "': a glob cannot take +OFFSET (each function "
                                               "has its own size)");
    }
    const std::string pattern(name);
    const bool fragments = glob_names_fragments(pattern);
    std::vector<const Symbol*> hits;
    std::string_view current;
    bool have = false;
    bool match = false;
    for (std::uint32_t i : by_name_) {
      const Symbol& s = symbols_[i];
      if (!have || s.name != current) {
        have = true;
        current = s.name;
        // names_ holds a NUL after every name, so data() is a C string.
        match = ::fnmatch(pattern.c_str(), s.name.data(), 0) == 0;
      }
      if (match && (fragments || !s.fragment)) hits.push_back(&s);
    }
    if (hits.empty()) {
      std::string msg = "no function in " + path_ + " matches '" + pattern + "'";
      if (!has_symtab_) msg += " (the file is stripped: " + stripped_advice(*this) + ")";
      return Error(Errc::not_found, std::move(msg));
    }
    // One target per address: aliases would otherwise put two probes on one site.
    std::sort(hits.begin(), hits.end(), [](const Symbol* a, const Symbol* b) {
      if (a->file_offset != b->file_offset) return a->file_offset < b->file_offset;
      return better_name(*a, *b);
    });
    const std::size_t start = out.size();
    for (const Symbol* s : hits) {
      if (out.size() > start && out.back().file_offset == s->file_offset) continue;
      out.push_back(Target{s, 0, s->file_offset, s->value});
    }
    return {};
  }

  // Most names are one function: found without building a list (a batch of 10,000).
  const NameHit hit = name_hit(name);
  if (!hit.one && hit.first == hit.last) return no_such_function(name);
  const Symbol* s = hit.one ? hit.one : &symbols_[by_name_[hit.first]];
  if (!hit.one) {
    std::vector<const Symbol*> found = find(name);
    std::sort(found.begin(), found.end(), [](const Symbol* a, const Symbol* b) {
      if (a->file_offset != b->file_offset) return a->file_offset < b->file_offset;
      return better_name(*a, *b);
    });
    if (found.front()->file_offset != found.back()->file_offset) {
      std::string msg = "'" + std::string(name) + "' names " + std::to_string(found.size()) +
                        " functions in " + path_ + ":";
      for (const Symbol* f : found) {
        msg += " " + hex(f->value) + " (" + (f->global ? "global" : "local") + ", " +
               std::to_string(f->size) + " bytes)";
      }
      msg += "; choose one by its address, e.g. " + hex(found.front()->value);
      return Error(Errc::invalid_argument, std::move(msg));
    }
    s = found.front();
  }
  if (has_add) {
    if (s->is_ifunc() && add != 0) {
      return Error(Errc::invalid_argument,
                   "'" + std::string(name) +
                       "' is an IFUNC: its code is the resolver that picks an implementation, "
                       "so +OFFSET would land in the resolver; probe the implementation instead");
    }
    if (s->size > 0 && add >= s->size) {
      return Error(Errc::invalid_argument, "offset " + hex(add) + " is beyond the end of '" +
                                               std::string(name) + "' (" + std::to_string(s->size) +
                                               " bytes, so at most " + hex(s->size - 1) + ")");
    }
    if (s->size == 0 && !offset_is_code(s->file_offset + add)) {
      return Error(Errc::invalid_argument, "offset " + hex(add) + " from '" + std::string(name) +
                                               "' (whose size is not recorded) leaves the code");
    }
  }
  out.push_back(Target{s, add, s->file_offset + add, s->value + add});
  return {};
}

Result<Target> ElfFile::lookup_one(std::string_view spec) const {
  if (is_glob(spec) && !is_address_spec(spec)) {
    return Error(Errc::invalid_argument,
                 "'" + std::string(spec) + "' is a glob, but one function is needed here");
  }
  auto r = lookup(spec);
  if (!r.ok()) return r.error();
  HP_CHECK(r->size() == 1);
  return r->front();
}

Result<std::vector<std::uint8_t>> read_file_bytes(const std::string& path, ModuleKey key,
                                                  std::uint64_t offset, std::size_t len) {
  auto opened = open_regular_file(path, key);
  if (!opened.ok()) return opened.error();
  const int fd = *opened;
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st;
  if (::fstat(fd, &st) != 0) return sys_error("cannot stat " + path);
  const auto size = static_cast<std::uint64_t>(st.st_size);
  if (offset > size || len > size - offset) {
    return Error(Errc::invalid_argument, "cannot read " + std::to_string(len) + " bytes at " +
                                             hex(offset) + " of " + path + ": the file has " +
                                             std::to_string(size) + " bytes");
  }
  std::vector<std::uint8_t> out(len);
  std::size_t done = 0;
  while (done < len) {
    ssize_t n = ::pread(fd, out.data() + done, len - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return sys_error("cannot read " + path, n < 0 ? errno : EIO);
    done += static_cast<std::size_t>(n);
  }
  return out;
}

Result<std::vector<std::uint8_t>> ElfFile::read_bytes(std::uint64_t offset, std::size_t len) const {
  return read_file_bytes(path_, key_, offset, len);
}

namespace {

// DWARF pointer encodings (DW_EH_PE_*) as .eh_frame and .eh_frame_hdr use them.
constexpr std::uint8_t kPeOmit = 0xff;
constexpr std::uint8_t kPePcrel = 0x10, kPeDatarel = 0x30;

bool read_uleb(const std::uint8_t*& p, const std::uint8_t* end, std::uint64_t& out) {
  out = 0;
  for (unsigned shift = 0; p < end && shift < 64; shift += 7) {
    const std::uint8_t b = *p++;
    out |= static_cast<std::uint64_t>(b & 0x7f) << shift;
    if (!(b & 0x80)) return true;
  }
  return false;
}

// Reads one encoded pointer at `p` (whose link-time address is `at`); `data_base` is
// what DW_EH_PE_datarel is relative to. False for an encoding this reader does not know.
bool read_encoded(const std::uint8_t*& p, const std::uint8_t* end, std::uint8_t enc,
                  std::uint64_t at, std::uint64_t data_base, std::uint64_t& out) {
  if (enc == kPeOmit) return false;
  std::uint64_t v = 0;
  std::size_t n = 0;
  bool sign = false;
  switch (enc & 0x0f) {
    case 0x00:  // absptr
    case 0x04:  // udata8
    case 0x0c:  // sdata8
      n = 8;
      break;
    case 0x02:  // udata2
      n = 2;
      break;
    case 0x0a:  // sdata2
      n = 2, sign = true;
      break;
    case 0x03:  // udata4
      n = 4;
      break;
    case 0x0b:  // sdata4
      n = 4, sign = true;
      break;
    case 0x01:  // uleb128
      if (!read_uleb(p, end, v)) return false;
      break;
    default:
      return false;
  }
  if (n) {
    if (static_cast<std::size_t>(end - p) < n) return false;
    for (std::size_t i = 0; i < n; ++i)
      v |= static_cast<std::uint64_t>(p[i]) << (8 * i);
    if (sign && n < 8 && (v >> (8 * n - 1)) & 1) v |= ~std::uint64_t{0} << (8 * n);
    p += n;
  }
  switch (enc & 0x70) {
    case 0x00:
      break;
    case kPePcrel:
      v += at;
      break;
    case kPeDatarel:
      v += data_base;
      break;
    default:
      return false;
  }
  out = v;
  return true;
}

}  // namespace

std::optional<ElfFile::Extent> ElfFile::cfi_extent(std::uint64_t offset) const {
  const Segment& h = eh_frame_hdr_;
  if (h.filesz < 12 || h.filesz > (std::uint64_t{64} << 20)) return std::nullopt;
  auto vaddr = offset_to_vaddr(offset);
  if (!vaddr.ok()) return std::nullopt;
  auto hdr = read_bytes(h.offset, h.filesz);
  if (!hdr.ok()) return std::nullopt;
  const std::uint8_t* p = hdr->data();
  const std::uint8_t* end = p + hdr->size();
  const auto at = [&](const std::uint8_t* q) { return h.vaddr + (q - hdr->data()); };
  if (p[0] != 1) return std::nullopt;  // version
  const std::uint8_t ptr_enc = p[1], count_enc = p[2], table_enc = p[3];
  p += 4;
  std::uint64_t ignored = 0, count = 0;
  if (!read_encoded(p, end, ptr_enc, at(p), h.vaddr, ignored)) return std::nullopt;
  if (!read_encoded(p, end, count_enc, at(p), h.vaddr, count)) return std::nullopt;
  // The table linkers write: (initial location, FDE address) pairs of 4-byte signed
  // offsets from the header, sorted by location.
  if (table_enc != (kPeDatarel | 0x0b)) return std::nullopt;
  if (count == 0 || count > static_cast<std::uint64_t>(end - p) / 8) return std::nullopt;
  const auto entry = [&](std::uint64_t i, int field) {
    std::int32_t v;
    std::memcpy(&v, p + 8 * i + 4 * field, 4);
    return h.vaddr + static_cast<std::uint64_t>(static_cast<std::int64_t>(v));
  };
  // The last entry whose location is <= vaddr.
  std::uint64_t lo = 0, hi = count;
  while (lo < hi) {
    const std::uint64_t mid = lo + (hi - lo) / 2;
    if (entry(mid, 0) <= *vaddr) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  if (lo == 0) return std::nullopt;
  const std::uint64_t fde_vaddr = entry(lo - 1, 1);

  // Reads a CFI record (FDE or CIE) at a link-time address: its bytes after the length.
  const auto record = [&](std::uint64_t rec_vaddr,
                          std::uint64_t& body_vaddr) -> std::optional<std::vector<std::uint8_t>> {
    auto off = vaddr_to_offset(rec_vaddr);
    if (!off.ok()) return std::nullopt;
    auto len_bytes = read_bytes(*off, 4);
    if (!len_bytes.ok()) return std::nullopt;
    std::uint32_t len = 0;
    std::memcpy(&len, len_bytes->data(), 4);
    if (len == 0 || len >= 0xfffffff0u || len > 4096) return std::nullopt;  // 64-bit DWARF: none
    body_vaddr = rec_vaddr + 4;
    auto body = read_bytes(*off + 4, len);
    if (!body.ok()) return std::nullopt;
    return std::move(*body);
  };
  std::uint64_t fde_body = 0;
  auto fde = record(fde_vaddr, fde_body);
  if (!fde || fde->size() < 4) return std::nullopt;
  std::uint32_t cie_ptr = 0;
  std::memcpy(&cie_ptr, fde->data(), 4);
  if (cie_ptr == 0 || cie_ptr > fde_body) return std::nullopt;  // a CIE, not an FDE
  std::uint64_t cie_body = 0;
  auto cie = record(fde_body - cie_ptr, cie_body);
  if (!cie || cie->size() < 6) return std::nullopt;
  // The CIE's augmentation names the encoding of the FDE's addresses ('R').
  const std::uint8_t* c = cie->data() + 4;  // after the CIE id
  const std::uint8_t* cend = cie->data() + cie->size();
  const std::uint8_t version = *c++;
  const auto* aug = c;
  while (c < cend && *c)
    ++c;
  if (c == cend) return std::nullopt;
  const std::string_view augmentation(reinterpret_cast<const char*>(aug), c - aug);
  ++c;
  std::uint64_t skip = 0;
  if (!read_uleb(c, cend, skip) || !read_uleb(c, cend, skip)) return std::nullopt;  // alignments
  if (version == 1) {
    if (c == cend) return std::nullopt;
    ++c;  // return address register
  } else if (!read_uleb(c, cend, skip)) {
    return std::nullopt;
  }
  std::uint8_t fde_enc = 0;  // absptr
  if (!augmentation.empty() && augmentation[0] == 'z') {
    if (!read_uleb(c, cend, skip)) return std::nullopt;  // augmentation data length
    for (char a : augmentation.substr(1)) {
      if (c >= cend) return std::nullopt;
      if (a == 'R') {
        fde_enc = *c++;
      } else if (a == 'L') {
        ++c;
      } else if (a == 'P') {
        const std::uint8_t penc = *c++;
        std::uint64_t personality = 0;
        if (!read_encoded(c, cend, penc & 0x7f, 0, 0, personality)) return std::nullopt;
      } else if (a != 'S' && a != 'B') {
        return std::nullopt;
      }
    }
  } else if (!augmentation.empty()) {
    return std::nullopt;
  }
  const std::uint8_t* q = fde->data() + 4;
  const std::uint8_t* qend = fde->data() + fde->size();
  std::uint64_t begin = 0, range = 0;
  if (!read_encoded(q, qend, fde_enc, fde_body + 4, h.vaddr, begin)) return std::nullopt;
  if (!read_encoded(q, qend, fde_enc & 0x0f, 0, 0, range)) return std::nullopt;
  if (*vaddr < begin || *vaddr - begin >= range) return std::nullopt;  // in a gap
  auto start = vaddr_to_offset(begin);
  if (!start.ok() || !offset_is_code(*start)) return std::nullopt;
  return Extent{*start, range};
}

// The cache: one slot per file; the slot's own lock serializes its first load, so a
// file is parsed once however many threads ask for it at the same time.
namespace {

struct Slot {
  Mutex mu;  // taken after Cache::mu is released; never both at once
  std::shared_ptr<const ElfFile> file HP_GUARDED_BY(mu);
};

struct Cache {
  Mutex mu;
  std::unordered_map<ModuleKey, std::shared_ptr<Slot>, ModuleKeyHash> slots HP_GUARDED_BY(mu);
};

Cache& cache() {
  static Cache* c = new Cache();  // never destroyed: used until the process exits
  return *c;
}

}  // namespace

std::uint64_t elf_files_parsed() {
  return g_parsed.load(std::memory_order_relaxed);
}

Result<std::shared_ptr<const ElfFile>> load_elf(ModuleKey key, const std::string& path,
                                                std::string_view name) {
  std::shared_ptr<Slot> slot;
  {
    Cache& c = cache();
    MutexLock l(c.mu);
    auto& s = c.slots[key];
    if (!s) s = std::make_shared<Slot>();
    slot = s;
  }
  MutexLock l(slot->mu);
  if (slot->file) return slot->file;
  auto opened = open_regular_file(path, key);
  if (!opened.ok()) return opened.error();
  const int fd = *opened;
  auto r = load_elf_uncached(fd, name.empty() ? path : std::string(name));
  if (!r.ok()) return r.error();
  g_parsed.fetch_add(1, std::memory_order_relaxed);
  slot->file = *r;
  return slot->file;
}

Result<std::shared_ptr<const ElfFile>> load_elf(const std::string& path) {
  // A path a user gave: looked at (through symlinks) before anything opens it, so a FIFO
  // or a device there is refused unopened; load_elf(key, ...) checks what it opens.
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return sys_error("cannot open " + path);
  if (!S_ISREG(st.st_mode)) {
    return Error(Errc::invalid_argument, path + " is " + file_type(st.st_mode) +
                                             ", not a regular file, so not an ELF module");
  }
  return load_elf(key_of(st), path);
}

}  // namespace hp::elf
