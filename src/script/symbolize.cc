#include "script/symbolize.h"

#include <cxxabi.h>
#include <elf.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <mutex>

#include "hotprobe/symbols.h"
#include "script/maps.h"
#include "script/output.h"
#include "script/run_stack.h"

namespace hotprobe::script {
namespace {

std::mutex g_mu;
std::string g_region_text;  // the adopted region's module list (guarded by g_mu)
bool g_use_region = false;
std::atomic<SourceLookup> g_source_lookup{nullptr};
std::atomic<bool> g_show_debug_info{false};
std::atomic<bool> g_places_by_reader{false};

std::string read_self_maps() {
  std::string text;
  const int fd = ::open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return text;
  char buf[8192];
  for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;)
    text.append(buf, static_cast<std::size_t>(n));
  ::close(fd);
  return text;
}

std::string demangle(const std::string& name) {
  if (!name.starts_with("_Z")) return name;
  int status = 0;
  char* out = abi::__cxa_demangle(name.c_str(), nullptr, nullptr, &status);
  if (status != 0 || !out) return name;
  std::string s(out);
  std::free(out);
  return s;
}

// The GNU build id of the ELF file at `path` in hex, or "" when it has none.
std::string build_id_hex(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return {};
  std::string out;
  Elf64_Ehdr eh;
  if (::pread(fd, &eh, sizeof eh, 0) == sizeof eh &&
      std::memcmp(eh.e_ident, ELFMAG, SELFMAG) == 0 && eh.e_ident[EI_CLASS] == ELFCLASS64 &&
      eh.e_phentsize == sizeof(Elf64_Phdr)) {
    for (unsigned i = 0; i < eh.e_phnum && out.empty(); ++i) {
      Elf64_Phdr ph;
      if (::pread(fd, &ph, sizeof ph, static_cast<off_t>(eh.e_phoff + i * sizeof ph)) != sizeof ph)
        break;
      if (ph.p_type != PT_NOTE || ph.p_filesz > 4096) continue;
      std::vector<unsigned char> notes(ph.p_filesz);
      if (::pread(fd, notes.data(), notes.size(), static_cast<off_t>(ph.p_offset)) !=
          static_cast<ssize_t>(notes.size()))
        continue;
      for (std::size_t at = 0; at + sizeof(Elf64_Nhdr) <= notes.size();) {
        Elf64_Nhdr nh;
        std::memcpy(&nh, notes.data() + at, sizeof nh);
        const std::size_t name_at = at + sizeof nh;
        const std::size_t desc_at = name_at + ((nh.n_namesz + 3) & ~3u);
        const std::size_t next = desc_at + ((nh.n_descsz + 3) & ~3u);
        if (next > notes.size()) break;
        if (nh.n_type == NT_GNU_BUILD_ID && nh.n_namesz == 4 &&
            std::memcmp(notes.data() + name_at, "GNU", 4) == 0 && nh.n_descsz > 1) {
          char hex[3];
          for (std::size_t k = 0; k < nh.n_descsz; ++k) {
            std::snprintf(hex, sizeof hex, "%02x", notes[desc_at + k]);
            out += hex;
          }
          break;
        }
        at = next;
      }
    }
  }
  ::close(fd);
  return out;
}

// The separate debug file of the ELF file at `path` (by its GNU build id, where
// distributions install them), or "" when it has no build id.
std::string debug_file(const std::string& path) {
  const std::string id = build_id_hex(path);
  if (id.size() < 4) return {};
  return "/usr/lib/debug/.build-id/" + id.substr(0, 2) + "/" + id.substr(2) + ".debug";
}

// The PT_LOAD segments of the ELF file `fd`: file offset <-> virtual address.
struct Segment {
  std::uint64_t offset, vaddr, size;
};
std::vector<Segment> load_segments(int fd) {
  std::vector<Segment> out;
  Elf64_Ehdr eh;
  if (::pread(fd, &eh, sizeof eh, 0) != sizeof eh || eh.e_phentsize != sizeof(Elf64_Phdr))
    return out;
  for (unsigned i = 0; i < eh.e_phnum; ++i) {
    Elf64_Phdr ph;
    if (::pread(fd, &ph, sizeof ph, static_cast<off_t>(eh.e_phoff + i * sizeof ph)) != sizeof ph)
      break;
    if (ph.p_type == PT_LOAD) out.push_back(Segment{ph.p_offset, ph.p_vaddr, ph.p_filesz});
  }
  return out;
}

template <typename T>
bool read_array(int fd, std::uint64_t off, std::size_t count, std::vector<T>& out) {
  if (count > (std::size_t{64} << 20) / sizeof(T)) return false;
  out.resize(count);
  const std::size_t bytes = count * sizeof(T);
  return ::pread(fd, out.data(), bytes, static_cast<off_t>(off)) == static_cast<ssize_t>(bytes);
}

// The functions of `debug`'s .symtab (a separate debug file: its sections hold no code),
// at the file offsets of the loaded file `path` (through path's PT_LOAD segments).
template <typename Add>
void debug_functions(const std::string& path, const std::string& debug, Add add) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  const std::vector<Segment> segs = load_segments(fd);
  ::close(fd);
  const int dfd = ::open(debug.c_str(), O_RDONLY | O_CLOEXEC);
  if (dfd < 0) return;
  Elf64_Ehdr eh;
  std::vector<Elf64_Shdr> sh;
  if (::pread(dfd, &eh, sizeof eh, 0) == sizeof eh && eh.e_shentsize == sizeof(Elf64_Shdr) &&
      read_array(dfd, eh.e_shoff, eh.e_shnum, sh)) {
    for (const Elf64_Shdr& s : sh) {
      if (s.sh_type != SHT_SYMTAB || s.sh_link >= sh.size()) continue;
      std::vector<Elf64_Sym> syms;
      std::vector<char> names;
      const Elf64_Shdr& str = sh[s.sh_link];
      if (!read_array(dfd, s.sh_offset, s.sh_size / sizeof(Elf64_Sym), syms) ||
          !read_array(dfd, str.sh_offset, str.sh_size, names) || names.empty())
        continue;
      names.back() = 0;
      for (const Elf64_Sym& y : syms) {
        if (ELF64_ST_TYPE(y.st_info) != STT_FUNC || y.st_value == 0 || y.st_name >= names.size())
          continue;
        for (const Segment& g : segs) {
          if (y.st_value >= g.vaddr && y.st_value < g.vaddr + g.size) {
            // A versioned name (__libc_start_main@@GLIBC_2.34) is shown without its
            // version: the function, not the ABI it is bound to.
            const int bind = ELF64_ST_BIND(y.st_info);
            const char* name = &names[y.st_name];
            add(y.st_value - g.vaddr + g.offset, y.st_size,
                std::string(name, std::strcspn(name, "@")),
                bind == STB_GLOBAL ? 0
                : bind == STB_WEAK ? 1
                                   : 2);
            break;
          }
        }
      }
    }
  }
  ::close(dfd);
}

}  // namespace

Symbolizer::Symbolizer(std::string_view text) {
  // START-END PERMS OFFSET DEV INODE PATH
  while (!text.empty()) {
    const std::size_t eol = text.find('\n');
    std::string line(text.substr(0, eol));
    text.remove_prefix(eol == std::string_view::npos ? text.size() : eol + 1);
    unsigned long long start = 0, end = 0, off = 0, inode = 0;
    char perms[8] = {};
    int path_at = 0;
    if (std::sscanf(line.c_str(), "%llx-%llx %7s %llx %*s %llu %n", &start, &end, perms, &off,
                    &inode, &path_at) < 5 ||
        path_at <= 0 || perms[2] != 'x' || inode == 0)
      continue;
    std::string path = line.substr(static_cast<std::size_t>(path_at));
    if (path.empty() || path[0] != '/') continue;
    std::size_t m = 0;
    while (m < modules_.size() && modules_[m].path != path)
      ++m;
    if (m == modules_.size()) modules_.push_back(Module{path, false, {}, false, {}});
    ranges_.push_back(Range{start, end, off, m});
  }
  std::sort(ranges_.begin(), ranges_.end(),
            [](const Range& a, const Range& b) { return a.start < b.start; });
}

Symbolizer Symbolizer::current() {
  {
    std::lock_guard lock(g_mu);
    if (g_use_region) return Symbolizer(g_region_text);
  }
  return Symbolizer(read_self_maps());
}

Symbolizer::Name Symbolizer::name(std::uint64_t addr) {
  if (auto it = cache_.find(addr); it != cache_.end()) return it->second;
  Name n;
  auto r = std::upper_bound(ranges_.begin(), ranges_.end(), addr,
                            [](std::uint64_t a, const Range& x) { return a < x.start; });
  if (r != ranges_.begin() && addr < (--r)->end) {
    Module& m = modules_[r->module];
    n.module = m.path;
    if (!m.loaded) {
      m.loaded = true;
      // A stripped library's separate debug file (by build id) has every function, its
      // local ones too (__libc_start_call_main), with their bindings: a global name is
      // shown before a weak or local alias at the same address (__getpid, not getpid or
      // __GI_getpid), as bpftrace shows them. Else the file's own symbols, fragments
      // (NAME.cold) included: a frame may stand in one.
      if (const std::string debug = debug_file(m.path); !debug.empty()) {
        debug_functions(m.path, debug,
                        [&](std::uint64_t off, std::uint64_t size, std::string n, int rank) {
                          m.functions.push_back(Function{off, size, std::move(n), rank});
                        });
      }
      if (m.functions.empty()) {
        for (const char* glob : {"*", "*.cold*"}) {
          auto fns = list_functions(m.path, glob);
          if (!fns) break;
          for (FunctionInfo& f : *fns)
            m.functions.push_back(Function{f.file_offset, f.size, std::move(f.name), 1});
        }
      }
      std::stable_sort(
          m.functions.begin(), m.functions.end(), [](const Function& a, const Function& b) {
            return a.file_offset != b.file_offset ? a.file_offset < b.file_offset : a.rank < b.rank;
          });
    }
    const std::uint64_t off = addr - r->start + r->file_offset;
    n.file_offset = off;
    auto f = std::upper_bound(m.functions.begin(), m.functions.end(), off,
                              [](std::uint64_t o, const Function& x) { return o < x.file_offset; });
    // The nearest function at or below, when its extent holds the address (a symbol
    // without a size holds only its first byte).
    while (f != m.functions.begin()) {
      --f;
      if (off < f->file_offset + std::max<std::uint64_t>(f->size, 1)) {
        while (f != m.functions.begin() && std::prev(f)->file_offset == f->file_offset &&
               std::prev(f)->size != 0)
          --f;  // the best ranked name at this address
        n.symbol = demangle(f->name);
        n.offset = off - f->file_offset;
        break;
      }
      if (f->size != 0) break;
    }
  }
  cache_.emplace(addr, n);
  return n;
}

bool Symbolizer::file_place(std::uint64_t addr, std::string& build_id, std::uint64_t& offset) {
  auto r = std::upper_bound(ranges_.begin(), ranges_.end(), addr,
                            [](std::uint64_t a, const Range& x) { return a < x.start; });
  if (r == ranges_.begin() || addr >= (--r)->end) return false;
  Module& m = modules_[r->module];
  if (!m.build_id_read) {
    m.build_id_read = true;
    m.build_id = build_id_hex(m.path);
  }
  if (m.build_id.empty()) return false;
  build_id = m.build_id;
  offset = addr - r->start + r->file_offset;
  return true;
}

const std::vector<Symbolizer::SourcePlace>& Symbolizer::source(std::uint64_t addr) {
  if (auto it = source_cache_.find(addr); it != source_cache_.end()) return it->second;
  std::vector<SourcePlace> places;
  auto r = std::upper_bound(ranges_.begin(), ranges_.end(), addr,
                            [](std::uint64_t a, const Range& x) { return a < x.start; });
  if (const SourceLookup lookup = g_source_lookup.load(std::memory_order_acquire);
      lookup && r != ranges_.begin() && addr < (--r)->end)
    places = lookup(modules_[r->module].path, addr - r->start + r->file_offset);
  return source_cache_.emplace(addr, std::move(places)).first->second;
}

void set_source_lookup(SourceLookup lookup) {
  g_source_lookup.store(lookup, std::memory_order_release);
}

void set_show_debug_info(bool on) {
  g_show_debug_info.store(on, std::memory_order_relaxed);
}

bool show_debug_info() {
  return g_show_debug_info.load(std::memory_order_relaxed);
}

void set_places_by_reader(bool on) {
  g_places_by_reader.store(on, std::memory_order_relaxed);
}

bool places_by_reader() {
  return g_places_by_reader.load(std::memory_order_relaxed) &&
         !g_source_lookup.load(std::memory_order_acquire);  // a process with a lookup names them
}

bool has_place_requests(std::string_view text) {
  return text.find(kPlaceRequest) != std::string_view::npos ||
         text.find("\\u001d") != std::string_view::npos;
}

namespace {
// The places of (module, offset), looked up once: a stack printed at every hit names the
// same frames again. Bounded: emptied when it holds kPlacesCached addresses.
constexpr std::size_t kPlacesCached = 1 << 16;
std::vector<Symbolizer::SourcePlace> cached_places(SourceLookup lookup, const std::string& module,
                                                   std::uint64_t off) {
  if (!lookup) return {};
  static std::mutex mu;
  static auto* cache = new std::map<std::pair<std::string, std::uint64_t>,
                                    std::vector<Symbolizer::SourcePlace>>;  // never freed
  std::lock_guard lock(mu);
  if (cache->size() >= kPlacesCached) cache->clear();
  auto [it, fresh] = cache->try_emplace({module, off});
  if (fresh) it->second = lookup(module, off);
  return it->second;
}

// "@FILE:LINE" of a place, "" when it names no file.
std::string place_suffix(const Symbolizer::SourcePlace& p) {
  return p.file.empty() ? std::string() : "@" + p.file + ":" + std::to_string(p.line);
}
}  // namespace

std::string_view with_source_places(std::string_view text, std::string& named) {
  if (!has_place_requests(text)) return text;
  named.assign(text);
  name_source_places(named);
  return named;
}

void name_source_places(std::string& text) {
  if (!has_place_requests(text)) return;
  const SourceLookup lookup = g_source_lookup.load(std::memory_order_acquire);
  // A request as text output has it, or inside a JSON string (JSON-escaped, as the
  // agent's reader escapes what it names there): delimiters, line end, and how text added
  // to it is written.
  struct Syntax {
    std::string_view request, field, newline;
    bool json;
  };
  static constexpr Syntax kRaw{"\x1d", "\x1c", "\n", false};
  static constexpr Syntax kJson{"\\u001d", "\\u001c", "\\n", true};
  std::string out;
  out.reserve(text.size() + text.size() / 2);
  auto add = [&out](const Syntax& x, const std::string& s) {
    if (x.json) {
      json_escape(out, s);
    } else {
      out += s;
    }
  };
  // In JSON the sequence must be an escape itself, not a program string's backslash
  // (escaped as two) followed by the letters "u001d".
  auto find = [&text](const Syntax& x, std::string_view what, std::size_t from) {
    for (std::size_t at = text.find(what, from); at != std::string::npos;
         at = text.find(what, at + 1)) {
      std::size_t slashes = 0;
      while (x.json && at > slashes && text[at - slashes - 1] == '\\')
        ++slashes;
      if (slashes % 2 == 0) return at;
    }
    return std::string::npos;
  };
  std::size_t i = 0;
  while (i < text.size()) {
    const std::size_t raw = find(kRaw, kRaw.request, i), esc = find(kJson, kJson.request, i);
    if (raw == std::string::npos && esc == std::string::npos) break;
    const Syntax& x = raw < esc ? kRaw : kJson;
    const std::size_t req = std::min(raw, esc);
    out.append(text, i, req - i);
    const std::size_t end = find(x, x.request, req + x.request.size());
    if (end == std::string::npos) {  // a request cut off: the rest as it is
      i = req;
      break;
    }
    // MODULE field OFFSET field FORM
    const std::string_view body(text.data() + req + x.request.size(), end - req - x.request.size());
    // The module is a path without escapes (else dropped below): its first field mark ends it.
    const std::size_t f1 = body.find(x.field);
    const std::size_t f2 =
        f1 == std::string_view::npos ? f1 : body.find(x.field, f1 + x.field.size());
    i = end + x.request.size();
    const std::size_t form_at = f2 + x.field.size();
    // Malformed, or a module path JSON had to escape: dropped (the frame prints without).
    if (f2 == std::string_view::npos || form_at >= body.size() ||
        (x.json && body.substr(0, f1).find('\\') != std::string_view::npos))
      continue;
    const std::string module(body.substr(0, f1));
    const std::uint64_t off = std::strtoull(
        std::string(body.substr(f1 + x.field.size(), f2 - f1 - x.field.size())).c_str(), nullptr,
        16);
    const char form = body[form_at];
    const std::string arg(body.substr(form_at + 1));
    const std::vector<Symbolizer::SourcePlace> places = cached_places(lookup, module, off);
    if (places.empty()) continue;
    for (std::size_t k = 0; k + 1 < places.size(); ++k) {
      if (form == 'p') {
        add(x, "\t" + arg + " " + places[k].function + " (inlined)\n");
      } else {
        add(x, std::string(std::min<std::size_t>(std::strtoul(arg.c_str(), nullptr, 10), 64), ' ') +
                   "[inlined] " + places[k].function + place_suffix(places[k]) + "\n");
      }
    }
    if (form != 'p') {  // the frame's line, with its place at the end
      const std::size_t nl = find(x, x.newline, i);
      const std::size_t stop = nl == std::string::npos ? text.size() : nl;
      out.append(text, i, stop - i);
      add(x, place_suffix(places.back()));
      i = stop;
    }
  }
  out.append(text, i, std::string::npos);
  text = std::move(out);
}

std::string frame_text(const Symbolizer::Name& n, std::uint64_t addr) {
  char buf[32];
  if (n.symbol.empty()) {
    std::snprintf(buf, sizeof buf, "0x%" PRIx64, addr);
    return buf;
  }
  return n.symbol + "+" + std::to_string(n.offset);
}

// The block at modules_off: [uint64 length][the maps text][padding to 8], then the stack
// table's words (run_stack.h, export_stacks) as [uint64 count][words...], so that
// hotprobe names the stack values the maps hold (their ids are this process's).
void publish_modules(SharedRegion& r) {
  if (!r.shared()) return;
  const std::string text = read_self_maps();
  std::vector<std::uint64_t> stacks;
  export_stacks(stacks);
  const std::uint64_t text_words = (text.size() + 7) / 8;
  std::uint64_t bytes = (2 + text_words + stacks.size()) * sizeof(std::uint64_t);
  // Never past the end: a failed allocation counts as refused, which says maps are lost.
  const std::uint64_t top = r.header().top.load(std::memory_order_relaxed);
  if (top > r.size() || bytes + region::kAlign > r.size() - top) {
    stacks.resize(1);  // the frames do not fit: the nonce alone (they print empty)
    bytes = (3 + text_words) * sizeof(std::uint64_t);
  }
  const std::uint64_t off = r.alloc(bytes);
  if (!off) return;  // no room: hotprobe prints the addresses
  char* p = r.at<char>(off);
  const std::uint64_t len = text.size(), count = stacks.size();
  std::memcpy(p, &len, sizeof len);
  std::memcpy(p + sizeof len, text.data(), text.size());
  p += sizeof len + text_words * sizeof(std::uint64_t);
  std::memcpy(p, &count, sizeof count);
  std::memcpy(p + sizeof count, stacks.data(), stacks.size() * sizeof(std::uint64_t));
  r.header().modules_off.store(off, std::memory_order_release);
}

void use_region_modules(const SharedRegion& r) {
  const std::uint64_t off = r.header().modules_off.load(std::memory_order_acquire);
  std::uint64_t len = 0, count = 0;
  if (!off || !r.contains(off, sizeof len)) return;
  std::memcpy(&len, r.at<char>(off), sizeof len);
  if (!r.contains(off + sizeof len, len)) return;
  {
    std::lock_guard lock(g_mu);
    g_region_text.assign(r.at<char>(off) + sizeof len, len);
    g_use_region = true;
  }
  const std::uint64_t at = off + sizeof len + (len + 7) / 8 * sizeof(std::uint64_t);
  if (!r.contains(at, sizeof count)) return;
  std::memcpy(&count, r.at<char>(at), sizeof count);
  if (count > (r.size() - at) / sizeof(std::uint64_t) ||
      !r.contains(at + sizeof count, count * sizeof(std::uint64_t)))
    return;
  std::vector<std::uint64_t> words(count);
  std::memcpy(words.data(), r.at<char>(at + sizeof count), count * sizeof(std::uint64_t));
  adopt_stacks(words);
}

}  // namespace hotprobe::script
