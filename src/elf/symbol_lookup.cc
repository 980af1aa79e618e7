// ElfFile's lookups: the name index, NAME, globs, NAME+OFF and the address forms.
#include <fcntl.h>
#include <fnmatch.h>
#include <gelf.h>
#include <libelf.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <tuple>

#include "base/assert.h"
#include "elf/data_symbols.h"
#include "elf/elf_file.h"
#include "elf/elf_util.h"

namespace hp::elf {

using detail::hex;
using detail::parse_number;

namespace {

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

constexpr std::string_view kFileOffsetPrefix = "fileoff:";

bool is_hex_number(std::string_view s) {
  return s.size() > 1 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X');
}

// The fragments a glob may match: only those it names itself.
bool glob_names_fragments(std::string_view pattern) {
  return pattern.find(".cold") != std::string_view::npos;
}

}  // namespace

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

bool ElfFile::is_go() const {
  return !find("runtime.goexit").empty() || !find("runtime.goexit.abi0").empty() ||
         !find("runtime.morestack").empty();
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

std::optional<DataSymbol> find_symbol(const std::string& path, std::string_view name) {
  if (elf_version(EV_CURRENT) == EV_NONE) return std::nullopt;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  Elf* e = elf_begin(fd, ELF_C_READ_MMAP, nullptr);
  std::optional<DataSymbol> found;
  for (const Elf64_Word kind : {SHT_SYMTAB, SHT_DYNSYM}) {
    for (Elf_Scn* scn = e ? elf_nextscn(e, nullptr) : nullptr; scn && !found;
         scn = elf_nextscn(e, scn)) {
      GElf_Shdr sh;
      if (!gelf_getshdr(scn, &sh) || sh.sh_type != kind || sh.sh_entsize == 0) continue;
      Elf_Data* data = elf_getdata(scn, nullptr);
      const std::size_t n = sh.sh_size / sh.sh_entsize;
      for (std::size_t i = 1; data && i < n; ++i) {
        GElf_Sym sym;
        if (!gelf_getsym(data, static_cast<int>(i), &sym) || sym.st_shndx == SHN_UNDEF) continue;
        const char* s = elf_strptr(e, sh.sh_link, sym.st_name);
        if (s && name == s) {
          found = DataSymbol{sym.st_value, sym.st_size};
          break;
        }
      }
    }
    if (found) break;
  }
  if (e) elf_end(e);
  ::close(fd);
  return found;
}

}  // namespace hp::elf
