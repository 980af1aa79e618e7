#include "elf/usdt.h"

#include <fnmatch.h>
#include <gelf.h>
#include <libelf.h>
#include <unistd.h>

#include <array>
#include <cstddef>
#include <cstring>
#include <unordered_map>

#include "elf/elf_file.h"
#include "elf/elf_util.h"
#include "hotprobe/regs.h"

namespace hp::elf {

namespace {

using detail::hex;

constexpr std::uint32_t kNtStapsdt = 3;

// Slots of hotprobe::Regs (include/hotprobe/regs.h) as an array of uint64_t.
constexpr int kRax = detail::regs_slot(offsetof(hotprobe::Regs, rax));
constexpr int kRcx = detail::regs_slot(offsetof(hotprobe::Regs, rcx));
constexpr int kRdx = detail::regs_slot(offsetof(hotprobe::Regs, rdx));
constexpr int kRsi = detail::regs_slot(offsetof(hotprobe::Regs, rsi));
constexpr int kRdi = detail::regs_slot(offsetof(hotprobe::Regs, rdi));
constexpr int kR8 = detail::regs_slot(offsetof(hotprobe::Regs, r8));
constexpr int kR9 = detail::regs_slot(offsetof(hotprobe::Regs, r9));
constexpr int kR10 = detail::regs_slot(offsetof(hotprobe::Regs, r10));
constexpr int kR11 = detail::regs_slot(offsetof(hotprobe::Regs, r11));
constexpr int kRbx = detail::regs_slot(offsetof(hotprobe::Regs, rbx));
constexpr int kRbp = detail::regs_slot(offsetof(hotprobe::Regs, rbp));
constexpr int kR12 = detail::regs_slot(offsetof(hotprobe::Regs, r12));
constexpr int kR13 = detail::regs_slot(offsetof(hotprobe::Regs, r13));
constexpr int kR14 = detail::regs_slot(offsetof(hotprobe::Regs, r14));
constexpr int kR15 = detail::regs_slot(offsetof(hotprobe::Regs, r15));
constexpr int kRsp = detail::regs_slot(offsetof(hotprobe::Regs, rsp));
constexpr int kRip = detail::regs_slot(offsetof(hotprobe::Regs, rip));

struct LegacyReg {
  const char* q;  // 64-bit name
  const char* d;  // 32
  const char* w;  // 16
  const char* b;  // low 8
  const char* h;  // high 8 (or null)
  int slot;
};
constexpr std::array<LegacyReg, 8> kLegacy{{
    {"rax", "eax", "ax", "al", "ah", kRax},
    {"rbx", "ebx", "bx", "bl", "bh", kRbx},
    {"rcx", "ecx", "cx", "cl", "ch", kRcx},
    {"rdx", "edx", "dx", "dl", "dh", kRdx},
    {"rsi", "esi", "si", "sil", nullptr, kRsi},
    {"rdi", "edi", "di", "dil", nullptr, kRdi},
    {"rbp", "ebp", "bp", "bpl", nullptr, kRbp},
    {"rsp", "esp", "sp", "spl", nullptr, kRsp},
}};
constexpr std::array<int, 8> kNumbered{kR8, kR9, kR10, kR11, kR12, kR13, kR14, kR15};

// Registers that exist but that hotprobe's frame does not hold.
bool other_register(std::string_view n) {
  for (std::string_view p : {"xmm", "ymm", "zmm", "st", "mm", "k"}) {
    if (n.size() > p.size() && n.starts_with(p) &&
        n.find_first_not_of("0123456789", p.size()) == std::string_view::npos)
      return true;
  }
  for (std::string_view s : {"cs", "ds", "es", "fs", "gs", "ss", "eflags"}) {
    if (n == s) return true;
  }
  return false;
}

bool parse_signed(std::string_view s, std::int64_t& out) {
  bool neg = false;
  if (!s.empty() && (s[0] == '-' || s[0] == '+')) {
    neg = s[0] == '-';
    s.remove_prefix(1);
  }
  std::uint64_t v = 0;
  if (!detail::parse_number(s, v) || v > (std::uint64_t{1} << 63) - (neg ? 0 : 1)) return false;
  out = neg ? static_cast<std::int64_t>(0 - v) : static_cast<std::int64_t>(v);
  return true;
}

// "%NAME": the register `name` and its slot; an error for anything else.
Result<void> parse_register(std::string_view text, std::string& name, int& slot, unsigned& width,
                            unsigned& shift, const std::string& where) {
  if (text.size() < 2 || text[0] != '%') {
    return Error(Errc::invalid_argument,
                 where + ": '" + std::string(text) + "' is not a register (%NAME)");
  }
  name = std::string(text.substr(1));
  if (usdt_register(name, slot, width, shift)) return {};
  if (other_register(name)) {
    slot = -1;
    width = 8;
    shift = 0;
    return {};
  }
  return Error(Errc::invalid_argument,
               where + ": '" + std::string(text) + "' is not an x86-64 register");
}

std::string arg_where(std::size_t position, std::string_view text) {
  return "USDT argument " + std::to_string(position + 1) + " '" + std::string(text) + "'";
}

// Fills UsdtArg::symbol_vaddr of every argument that names a symbol, from .symtab or
// .dynsym (any symbol type: the operands name variables).
void resolve_symbols(Elf* elf, std::vector<UsdtProbe>& probes) {
  std::unordered_map<std::string, std::uint64_t> wanted;
  for (const UsdtProbe& p : probes) {
    for (const UsdtArg& a : p.args) {
      if (!a.symbol.empty()) wanted.emplace(a.symbol, 0);
    }
  }
  if (wanted.empty()) return;
  for (Elf_Scn* scn = elf_nextscn(elf, nullptr); scn; scn = elf_nextscn(elf, scn)) {
    GElf_Shdr sh;
    if (!gelf_getshdr(scn, &sh) || (sh.sh_type != SHT_SYMTAB && sh.sh_type != SHT_DYNSYM) ||
        sh.sh_entsize == 0)
      continue;
    Elf_Data* data = elf_getdata(scn, nullptr);
    if (!data) continue;
    const std::size_t n = sh.sh_size / sh.sh_entsize;
    for (std::size_t i = 0; i < n; ++i) {
      GElf_Sym sym;
      if (!gelf_getsym(data, static_cast<int>(i), &sym) || sym.st_shndx == SHN_UNDEF) continue;
      const char* name = elf_strptr(elf, sh.sh_link, sym.st_name);
      if (!name) continue;
      auto it = wanted.find(name);
      if (it != wanted.end() && it->second == 0) it->second = sym.st_value;
    }
  }
  for (UsdtProbe& p : probes) {
    for (UsdtArg& a : p.args) {
      if (!a.symbol.empty()) a.symbol_vaddr = wanted[a.symbol];
    }
  }
}

}  // namespace

bool usdt_register(std::string_view n, int& slot, unsigned& width, unsigned& shift) {
  shift = 0;
  if (n == "rip") {
    slot = kRip;
    width = 8;
    return true;
  }
  for (const LegacyReg& r : kLegacy) {
    slot = r.slot;
    if (n == r.q) return width = 8, true;
    if (n == r.d) return width = 4, true;
    if (n == r.w) return width = 2, true;
    if (n == r.b) return width = 1, true;
    if (r.h && n == r.h) return width = 1, shift = 8, true;
  }
  // r8..r15 with an optional d, w or b (or l, as some assemblers write the byte).
  if (n.size() >= 2 && n[0] == 'r' && n[1] >= '0' && n[1] <= '9') {
    std::size_t i = 1;
    unsigned num = 0;
    while (i < n.size() && n[i] >= '0' && n[i] <= '9')
      num = num * 10 + static_cast<unsigned>(n[i++] - '0');
    if (num < 8 || num > 15 || i + 1 < n.size()) return false;
    const char suffix = i < n.size() ? n[i] : 'q';
    switch (suffix) {
      case 'q':
        width = 8;
        break;
      case 'd':
        width = 4;
        break;
      case 'w':
        width = 2;
        break;
      case 'b':
      case 'l':
        width = 1;
        break;
      default:
        return false;
    }
    slot = kNumbered[num - 8];
    return true;
  }
  return false;
}

Result<UsdtArg> parse_usdt_arg(std::string_view text, std::size_t position) {
  const std::string where = arg_where(position, text);
  UsdtArg a;
  a.text = std::string(text);
  const auto at = text.find('@');
  if (at == std::string_view::npos) {
    return Error(Errc::invalid_argument,
                 where +
                     ": no SIZE@ before the operand (the form is [-]SIZE@OPERAND, such as "
                     "-4@%edi; notes written without sizes are not supported)");
  }
  std::string_view size = text.substr(0, at);
  std::string_view op = text.substr(at + 1);
  if (size.starts_with('-')) {
    a.is_signed = true;
    size.remove_prefix(1);
  }
  if (size.ends_with('f')) {
    a.is_float = true;
    size.remove_suffix(1);
  }
  std::uint64_t bytes = 0;
  if (!detail::parse_number(size, bytes) ||
      (bytes != 1 && bytes != 2 && bytes != 4 && bytes != 8)) {
    return Error(Errc::invalid_argument,
                 where + ": size '" + std::string(size) + "' is not 1, 2, 4 or 8 bytes");
  }
  a.size = static_cast<unsigned>(bytes);
  if (op.empty()) return Error(Errc::invalid_argument, where + ": no operand after '@'");

  if (op[0] == '$') {
    a.kind = UsdtArgKind::constant;
    if (!parse_signed(op.substr(1), a.value)) {
      return Error(Errc::invalid_argument,
                   where + ": '" + std::string(op) +
                       "' is not a constant this reader knows ($ and a decimal or 0x number; "
                       "a symbol's address is not supported)");
    }
    return a;
  }
  if (op[0] == '%') {
    a.kind = UsdtArgKind::reg;
    if (auto r = parse_register(op, a.reg_name, a.reg, a.reg_width, a.reg_shift, where); !r.ok())
      return r.error();
    return a;
  }

  // DISP(BASE[,INDEX[,SCALE]]), DISP being a number, a symbol, or symbol+number.
  a.kind = UsdtArgKind::memory;
  const auto open = op.find('(');
  if (open == std::string_view::npos || !op.ends_with(')')) {
    return Error(Errc::invalid_argument,
                 where + ": '" + std::string(op) +
                     "' is not an operand this reader knows (%REG, $CONST or "
                     "DISP(%BASE[,%INDEX[,SCALE]]))");
  }
  std::string_view disp = op.substr(0, open);
  if (!disp.empty() && !parse_signed(disp, a.offset)) {
    // A symbol, perhaps with +N or -N after it.
    const auto sign = disp.find_first_of("+-", 1);
    a.symbol = std::string(disp.substr(0, sign));
    const bool symbol_ok =
        !a.symbol.empty() && a.symbol.find_first_of("()%$, ") == std::string::npos;
    if (!symbol_ok ||
        (sign != std::string_view::npos && !parse_signed(disp.substr(sign), a.offset))) {
      return Error(Errc::invalid_argument, where + ": displacement '" + std::string(disp) +
                                               "' is neither a number nor SYMBOL[+-N]");
    }
  }
  std::string_view inside = op.substr(open + 1, op.size() - open - 2);
  std::array<std::string_view, 3> parts{};
  std::size_t count = 0;
  while (true) {
    const auto comma = inside.find(',');
    if (count == parts.size()) {
      return Error(Errc::invalid_argument,
                   where + ": more than BASE, INDEX and SCALE in '" + std::string(op) + "'");
    }
    parts[count++] = inside.substr(0, comma);
    if (comma == std::string_view::npos) break;
    inside.remove_prefix(comma + 1);
  }
  unsigned width = 0, shift = 0;
  if (!parts[0].empty()) {
    if (auto r = parse_register(parts[0], a.reg_name, a.reg, width, shift, where); !r.ok())
      return r.error();
    if (width != 8) {
      return Error(Errc::invalid_argument,
                   where + ": base register '" + std::string(parts[0]) + "' is not 64-bit");
    }
  } else {
    a.reg = -1;
  }
  if (count >= 2) {
    if (auto r = parse_register(parts[1], a.index_name, a.index, width, shift, where); !r.ok())
      return r.error();
    if (width != 8 || a.index_name == "rip") {
      return Error(Errc::invalid_argument, where + ": index register '" + std::string(parts[1]) +
                                               "' is not a 64-bit general-purpose register");
    }
  }
  if (count == 3) {
    std::uint64_t scale = 0;
    if (!detail::parse_number(parts[2], scale) ||
        (scale != 1 && scale != 2 && scale != 4 && scale != 8)) {
      return Error(Errc::invalid_argument,
                   where + ": scale '" + std::string(parts[2]) + "' is not 1, 2, 4 or 8");
    }
    a.scale = static_cast<unsigned>(scale);
  }
  if (a.reg_name.empty() && a.index_name.empty()) {
    return Error(Errc::invalid_argument,
                 where + ": a memory operand without a base or index register");
  }
  return a;
}

Result<std::vector<UsdtArg>> parse_usdt_args(std::string_view text) {
  std::vector<UsdtArg> out;
  std::size_t pos = 0;
  while (true) {
    while (pos < text.size() && text[pos] == ' ')
      ++pos;
    if (pos >= text.size()) break;
    auto end = text.find(' ', pos);
    if (end == std::string_view::npos) end = text.size();
    auto arg = parse_usdt_arg(text.substr(pos, end - pos), out.size());
    if (!arg.ok()) return arg.error();
    out.push_back(std::move(*arg));
    pos = end;
  }
  return out;
}

Result<std::vector<UsdtProbe>> read_usdt(const ElfFile& file, const std::string& open_path) {
  auto opened = open_regular_file(open_path.empty() ? file.path() : open_path, file.key());
  if (!opened.ok()) return opened.error();
  const int fd = *opened;
  detail::init_libelf();
  Elf* elf = elf_begin(fd, ELF_C_READ_MMAP, nullptr);
  struct Closer {
    int fd;
    Elf* elf;
    ~Closer() {
      if (elf) elf_end(elf);
      ::close(fd);
    }
  } closer{fd, elf};
  if (!elf) return Error(Errc::invalid_argument, file.path() + ": " + elf_errmsg(-1));
  std::size_t shstrndx = 0;
  if (elf_getshdrstrndx(elf, &shstrndx) != 0)
    return Error(Errc::invalid_argument, file.path() + ": no section name table");

  // .stapsdt.base's address as the section headers have it now.
  std::uint64_t base_now = 0;
  bool have_base = false;
  std::vector<Elf_Scn*> notes;
  for (Elf_Scn* scn = elf_nextscn(elf, nullptr); scn; scn = elf_nextscn(elf, scn)) {
    GElf_Shdr sh;
    if (!gelf_getshdr(scn, &sh)) continue;
    const char* n = elf_strptr(elf, shstrndx, sh.sh_name);
    if (!n) continue;
    if (std::strcmp(n, ".stapsdt.base") == 0) {
      base_now = sh.sh_addr;
      have_base = true;
    } else if (sh.sh_type == SHT_NOTE && std::strcmp(n, ".note.stapsdt") == 0) {
      notes.push_back(scn);
    }
  }

  std::vector<UsdtProbe> out;
  for (Elf_Scn* scn : notes) {
    Elf_Data* data = elf_getdata(scn, nullptr);
    if (!data || !data->d_buf) continue;
    const auto* bytes = static_cast<const char*>(data->d_buf);
    GElf_Nhdr nh;
    std::size_t name_off = 0, desc_off = 0;
    for (std::size_t off = 0, next = 0;
         (next = gelf_getnote(data, off, &nh, &name_off, &desc_off)) > 0; off = next) {
      if (nh.n_type != kNtStapsdt || nh.n_namesz != 8 ||
          std::memcmp(bytes + name_off, "stapsdt", 8) != 0)
        continue;
      const std::size_t descsz = nh.n_descsz;
      const char* d = bytes + desc_off;
      const char* end = d + descsz;
      UsdtProbe p;
      std::uint64_t base_then = 0;
      if (descsz < 3 * 8 + 3) {
        return Error(Errc::invalid_argument, file.path() + ": a .note.stapsdt note of " +
                                                 std::to_string(descsz) +
                                                 " bytes is too short for a probe");
      }
      std::memcpy(&p.pc, d, 8);
      std::memcpy(&base_then, d + 8, 8);
      std::memcpy(&p.semaphore, d + 16, 8);
      const char* s = d + 24;
      std::string_view fields[3];
      for (auto& f : fields) {
        const void* nul = std::memchr(s, 0, static_cast<std::size_t>(end - s));
        if (!nul) {
          return Error(Errc::invalid_argument,
                       file.path() + ": a .note.stapsdt note at " + hex(p.pc) +
                           " is cut off (provider, name or arguments not NUL-terminated)");
        }
        f = std::string_view(s, static_cast<const char*>(nul) - s);
        s = static_cast<const char*>(nul) + 1;
      }
      p.provider = std::string(fields[0]);
      p.name = std::string(fields[1]);
      p.args_text = std::string(fields[2]);
      // Prelink moved the file: shift by how far .stapsdt.base moved.
      if (have_base && base_then != 0) {
        p.pc += base_now - base_then;
        if (p.semaphore) p.semaphore += base_now - base_then;
      }
      auto off_pc = file.vaddr_to_offset(p.pc);
      if (!off_pc.ok()) {
        return Error(Errc::invalid_argument, file.path() + ": USDT probe " + p.provider + ":" +
                                                 p.name + " at " + hex(p.pc) +
                                                 " lies in no loadable segment");
      }
      p.file_offset = *off_pc;
      if (p.semaphore) {
        auto off_sem = file.vaddr_to_offset(p.semaphore);
        if (!off_sem.ok()) {
          return Error(Errc::invalid_argument,
                       file.path() + ": the semaphore of USDT probe " + p.provider + ":" + p.name +
                           " at " + hex(p.semaphore) + " lies in no loadable segment");
        }
        p.semaphore_offset = *off_sem;
      }
      auto args = parse_usdt_args(p.args_text);
      if (!args.ok()) {
        return Error(args.error().code(), file.path() + ": USDT probe " + p.provider + ":" +
                                              p.name + " at " + hex(p.pc) + ": " +
                                              args.error().message());
      }
      p.args = std::move(*args);
      out.push_back(std::move(p));
    }
  }
  resolve_symbols(elf, out);
  return out;
}

namespace {

// A field written in double quotes ("\"probe1\"", bpftrace's way to name a probe whose
// name holds quotes or colons): its text with C escapes (\" \\ \n \t) decoded. False when
// the quotes are not closed.
bool unquote(std::string_view& rest, std::string& out) {
  out.clear();
  for (std::size_t i = 1; i < rest.size(); i++) {
    char c = rest[i];
    if (c == '"') {
      rest.remove_prefix(i + 1);
      return true;
    }
    if (c == '\\' && i + 1 < rest.size()) {
      c = rest[++i];
      c = c == 'n' ? '\n' : c == 't' ? '\t' : c;
    }
    out += c;
  }
  return false;
}

}  // namespace

Result<UsdtWhat> parse_usdt_what(std::string_view what) {
  auto bad = [&]() {
    return Error(Errc::invalid_argument, "'" + std::string(what) +
                                             "' does not name a USDT probe: write "
                                             "PROVIDER:NAME, NAME (any provider), :NAME (the same) "
                                             "or * (every probe), with wildcards in each; a "
                                             "name in double quotes may hold ':' and '\\\"'");
  };
  // The fields, split at ':' outside double quotes.
  std::vector<std::string> fields(1);
  std::vector<bool> quoted(1, false);
  for (std::string_view rest = what; !rest.empty();) {
    if (rest.front() == '"' && fields.back().empty() && !quoted.back()) {
      if (!unquote(rest, fields.back())) return bad();
      quoted.back() = true;
      if (!rest.empty() && rest.front() != ':') return bad();
      continue;
    }
    if (rest.front() == ':') {
      fields.emplace_back();
      quoted.push_back(false);
    } else if (quoted.back()) {
      return bad();
    } else {
      fields.back() += rest.front();
    }
    rest.remove_prefix(1);
  }
  if (fields.size() > 2 || (fields.back().empty() && !quoted.back())) return bad();
  UsdtWhat w;
  w.name = fields.back();
  if (fields.size() == 2) w.provider = fields.front();  // empty: any, as bpftrace's usdt:P::N
  return w;
}

std::vector<const UsdtProbe*> find_usdt(const std::vector<UsdtProbe>& probes,
                                        std::string_view provider, std::string_view name) {
  const std::string prov(provider), nm(name);
  auto match = [](const std::string& pattern, const std::string& s) {
    return pattern.empty() || ::fnmatch(pattern.c_str(), s.c_str(), 0) == 0;
  };
  std::vector<const UsdtProbe*> out;
  for (const UsdtProbe& p : probes) {
    if (match(prov, p.provider) && match(nm, p.name)) out.push_back(&p);
  }
  return out;
}

}  // namespace hp::elf
