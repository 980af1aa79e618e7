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
#include "elf/elf_util.h"

namespace hp::elf {

using detail::hex;

namespace {

std::string elf_error(const std::string& path, const char* what) {
  return path + ": " + what + ": " + elf_errmsg(-1);
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

namespace detail {

void init_libelf() {
  static std::once_flag once;
  std::call_once(once, [] { (void)elf_version(EV_CURRENT); });
}

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
}  // namespace detail

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
  detail::init_libelf();
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