#include "elf/dwarf.h"

#include <dwarf.h>
#include <elfutils/libdw.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdio>
#include <mutex>
#include <unordered_map>

#include "elf/elf_file.h"
#include "elf/elf_util.h"
#include "hotprobe/regs.h"

namespace hp::elf {

namespace {

// Regs slots (include/hotprobe/regs.h) of the System V integer argument registers, in
// order.
constexpr std::array<int, 6> kArgRegs{detail::regs_slot(offsetof(hotprobe::Regs, rdi)),
                                      detail::regs_slot(offsetof(hotprobe::Regs, rsi)),
                                      detail::regs_slot(offsetof(hotprobe::Regs, rdx)),
                                      detail::regs_slot(offsetof(hotprobe::Regs, rcx)),
                                      detail::regs_slot(offsetof(hotprobe::Regs, r8)),
                                      detail::regs_slot(offsetof(hotprobe::Regs, r9))};
constexpr std::array<const char*, 6> kArgRegNames{"rdi", "rsi", "rdx", "rcx", "r8", "r9"};

std::string die_name(Dwarf_Die* die) {
  Dwarf_Attribute attr;
  const char* n = dwarf_formstring(dwarf_attr_integrate(die, DW_AT_name, &attr));
  return n ? n : "";
}

// The DIE DW_AT_type refers to; false for none (void).
bool type_of(Dwarf_Die* die, Dwarf_Die* out) {
  Dwarf_Attribute attr;
  return dwarf_attr_integrate(die, DW_AT_type, &attr) && dwarf_formref_die(&attr, out);
}

// Follows typedefs and const/volatile/restrict to the type underneath.
Dwarf_Die strip(Dwarf_Die t) {
  for (int i = 0; i < 64; ++i) {
    const int tag = dwarf_tag(&t);
    if (tag != DW_TAG_typedef && tag != DW_TAG_const_type && tag != DW_TAG_volatile_type &&
        tag != DW_TAG_restrict_type && tag != DW_TAG_atomic_type)
      break;
    Dwarf_Die next;
    if (!type_of(&t, &next)) break;
    t = next;
  }
  return t;
}

std::uint64_t type_size(Dwarf_Die* t) {
  Dwarf_Word size = 0;
  if (dwarf_aggregate_size(t, &size) == 0) return size;
  const int tag = dwarf_tag(t);
  if (tag == DW_TAG_pointer_type || tag == DW_TAG_reference_type ||
      tag == DW_TAG_rvalue_reference_type)
    return 8;
  return 0;
}

// The type's name as bpftrace writes it; `t` null is void.
std::string type_name(Dwarf_Die* t, int depth = 0) {
  if (!t) return "void";
  if (depth > 32) return "?";
  Dwarf_Die inner;
  const bool has_inner = type_of(t, &inner);
  Dwarf_Die* in = has_inner ? &inner : nullptr;
  switch (dwarf_tag(t)) {
    case DW_TAG_base_type:
    case DW_TAG_typedef:
      return die_name(t);
    case DW_TAG_pointer_type:
      return type_name(in, depth + 1) + "*";
    case DW_TAG_reference_type:
      return type_name(in, depth + 1) + "&";
    case DW_TAG_rvalue_reference_type:
      return type_name(in, depth + 1) + "&&";
    case DW_TAG_const_type:
      return "const " + type_name(in, depth + 1);
    case DW_TAG_volatile_type:
      return "volatile " + type_name(in, depth + 1);
    case DW_TAG_restrict_type:
    case DW_TAG_atomic_type:
      return type_name(in, depth + 1);
    case DW_TAG_structure_type:
    case DW_TAG_class_type:
      return "struct " + die_name(t);
    case DW_TAG_union_type:
      return "union " + die_name(t);
    case DW_TAG_enumeration_type:
      return "enum " + die_name(t);
    case DW_TAG_array_type: {
      std::string dims;
      Dwarf_Die sub;
      if (dwarf_child(t, &sub) == 0) {
        do {
          if (dwarf_tag(&sub) != DW_TAG_subrange_type) continue;
          Dwarf_Attribute attr;
          Dwarf_Word v = 0;
          if (dwarf_formudata(dwarf_attr(&sub, DW_AT_count, &attr), &v) == 0) {
            dims += "[" + std::to_string(v) + "]";
          } else if (dwarf_formudata(dwarf_attr(&sub, DW_AT_upper_bound, &attr), &v) == 0) {
            dims += "[" + std::to_string(v + 1) + "]";
          } else {
            dims += "[]";
          }
        } while (dwarf_siblingof(&sub, &sub) == 0);
      }
      return type_name(in, depth + 1) + dims;
    }
    case DW_TAG_subroutine_type:
      return type_name(in, depth + 1) + "(*)()";
    default:
      return die_name(t);
  }
}

// System V classes of one eightbyte.
enum class Cls : std::uint8_t { none, integer, sse, memory };

Cls merge(Cls a, Cls b) {
  if (a == b || b == Cls::none) return a;
  if (a == Cls::none) return b;
  if (a == Cls::memory || b == Cls::memory) return Cls::memory;
  if (a == Cls::integer || b == Cls::integer) return Cls::integer;
  return Cls::sse;
}

// Classifies the scalar leaves of `t` placed at byte `base` into the eightbytes `cls`.
void classify(Dwarf_Die t, std::uint64_t base, std::array<Cls, 2>& cls, int depth = 0) {
  t = strip(t);
  const std::uint64_t size = type_size(&t);
  auto put = [&](Cls c) {
    if (size == 0) return;
    for (std::uint64_t b = base / 8; b <= (base + size - 1) / 8 && b < 2; ++b)
      cls[b] = merge(cls[b], c);
  };
  const int tag = dwarf_tag(&t);
  if (depth > 16) return put(Cls::memory);
  if (tag == DW_TAG_structure_type || tag == DW_TAG_class_type || tag == DW_TAG_union_type) {
    Dwarf_Die m;
    if (dwarf_child(&t, &m) != 0) return;
    do {
      if (dwarf_tag(&m) != DW_TAG_member) continue;
      Dwarf_Attribute attr;
      Dwarf_Word off = 0;
      dwarf_formudata(dwarf_attr(&m, DW_AT_data_member_location, &attr), &off);
      Dwarf_Die mt;
      if (type_of(&m, &mt)) classify(mt, base + off, cls, depth + 1);
    } while (dwarf_siblingof(&m, &m) == 0);
    return;
  }
  if (tag == DW_TAG_array_type) {
    Dwarf_Die et;
    if (type_of(&t, &et)) {
      const std::uint64_t es = type_size(&et);
      for (std::uint64_t o = 0; es && o < size; o += es)
        classify(et, base + o, cls, depth + 1);
    }
    return;
  }
  if (tag == DW_TAG_base_type) {
    Dwarf_Attribute attr;
    Dwarf_Word enc = 0;
    dwarf_formudata(dwarf_attr(&t, DW_AT_encoding, &attr), &enc);
    if (enc == DW_ATE_float) return put(size > 8 ? Cls::memory : Cls::sse);
    if (enc == DW_ATE_complex_float) return put(Cls::sse);
  }
  put(Cls::integer);
}

struct Allocator {
  unsigned next_int = 0;
  unsigned next_sse = 0;
  std::int64_t stack = 8;  // the return address is at rsp + 0

  ArgLocation place(Dwarf_Die* type, std::uint64_t size) {
    ArgLocation loc;
    std::array<Cls, 2> cls{Cls::none, Cls::none};
    if (type) classify(*type, 0, cls);
    const bool in_memory = size > 16 || cls[0] == Cls::memory || cls[1] == Cls::memory;
    unsigned ints = 0, sses = 0;
    for (std::size_t i = 0; i < (size + 7) / 8 && i < 2; ++i) {
      ints += cls[i] == Cls::integer;
      sses += cls[i] == Cls::sse;
    }
    if (!in_memory && next_int + ints <= 6 && next_sse + sses <= 8 && ints + sses > 0) {
      std::string where;
      for (std::size_t i = 0; i < (size + 7) / 8 && i < 2; ++i) {
        if (!where.empty()) where += "+";
        if (cls[i] == Cls::integer) {
          (loc.reg < 0 ? loc.reg : loc.reg2) = kArgRegs[next_int];
          where += kArgRegNames[next_int++];
        } else {
          where += "xmm" + std::to_string(next_sse++);
        }
      }
      loc.kind = sses ? ArgLocation::Kind::other : ArgLocation::Kind::reg;
      loc.where = where;
      return loc;
    }
    loc.kind = ArgLocation::Kind::stack;
    loc.stack_offset = stack;
    loc.where = "rsp+" + std::to_string(stack);
    stack += static_cast<std::int64_t>((std::max<std::uint64_t>(size, 1) + 7) / 8 * 8);
    return loc;
  }
};

// A function DIE's parameters: its own formal_parameter children, or, for a concrete
// instance that lists none, those of its abstract origin.
std::vector<Dwarf_Die> param_dies(Dwarf_Die* fn) {
  std::vector<Dwarf_Die> out;
  Dwarf_Die c;
  if (dwarf_child(fn, &c) == 0) {
    do {
      if (dwarf_tag(&c) == DW_TAG_formal_parameter) out.push_back(c);
    } while (dwarf_siblingof(&c, &c) == 0);
  }
  Dwarf_Attribute attr;
  Dwarf_Die origin;
  if (out.empty() && dwarf_attr(fn, DW_AT_abstract_origin, &attr) &&
      dwarf_formref_die(&attr, &origin))
    return param_dies(&origin);
  return out;
}

DwarfFunction describe(Dwarf_Die* fn) {
  DwarfFunction f;
  f.name = die_name(fn);
  Dwarf_Addr low = 0;
  if (dwarf_entrypc(fn, &low) == 0 || dwarf_lowpc(fn, &low) == 0) f.low_pc = low;
  Dwarf_Die ret;
  const bool has_ret = type_of(fn, &ret);
  f.return_type = type_name(has_ret ? &ret : nullptr);
  Allocator alloc;
  if (has_ret) {
    Dwarf_Die r = strip(ret);
    std::array<Cls, 2> cls{Cls::none, Cls::none};
    classify(r, 0, cls);
    const int tag = dwarf_tag(&r);
    const bool aggregate =
        tag == DW_TAG_structure_type || tag == DW_TAG_class_type || tag == DW_TAG_union_type;
    if (aggregate && (type_size(&r) > 16 || cls[0] == Cls::memory || cls[1] == Cls::memory))
      alloc.next_int = 1;  // rdi holds where the result goes
  }
  for (Dwarf_Die& pd : param_dies(fn)) {
    DwarfParam p;
    p.name = die_name(&pd);
    Dwarf_Die t;
    const bool has_type = type_of(&pd, &t);
    p.type = type_name(has_type ? &t : nullptr);
    if (has_type) {
      Dwarf_Die s = strip(t);
      p.size = type_size(&s);
      int tag = dwarf_tag(&s);
      p.is_pointer = tag == DW_TAG_pointer_type;
      if (p.is_pointer) {
        Dwarf_Die pointee;
        if (type_of(&s, &pointee)) {
          s = strip(pointee);
          tag = dwarf_tag(&s);
        }
      }
      if (tag == DW_TAG_structure_type || tag == DW_TAG_class_type) {
        p.struct_name = "struct " + die_name(&s);
      } else if (tag == DW_TAG_union_type) {
        p.struct_name = "union " + die_name(&s);
      }
      Dwarf_Die st = strip(t);
      Dwarf_Attribute attr;
      Dwarf_Word enc = 0;
      p.is_float = dwarf_tag(&st) == DW_TAG_base_type &&
                   dwarf_formudata(dwarf_attr(&st, DW_AT_encoding, &attr), &enc) == 0 &&
                   enc == DW_ATE_float;
    }
    p.location = alloc.place(has_type ? &t : nullptr, p.size ? p.size : 8);
    f.params.push_back(std::move(p));
  }
  return f;
}

// The members of struct or union `t`, offsets in bytes (bit fields: DwarfMember).
std::vector<DwarfMember> members_of(Dwarf_Die* t) {
  std::vector<DwarfMember> out;
  Dwarf_Die m;
  if (dwarf_child(t, &m) == 0) {
    do {
      if (dwarf_tag(&m) != DW_TAG_member) continue;
      DwarfMember mem;
      mem.name = die_name(&m);
      Dwarf_Die mt;
      if (type_of(&m, &mt)) {
        mem.type = type_name(&mt);
        Dwarf_Die st = strip(mt);
        mem.size = type_size(&st);
      }
      Dwarf_Attribute attr;
      Dwarf_Word v = 0;
      if (dwarf_formudata(dwarf_attr(&m, DW_AT_data_member_location, &attr), &v) == 0)
        mem.offset = v;
      if (dwarf_formudata(dwarf_attr(&m, DW_AT_bit_size, &attr), &v) == 0) {
        mem.bit_size = static_cast<std::uint32_t>(v);
        Dwarf_Word bit = 0;
        if (dwarf_formudata(dwarf_attr(&m, DW_AT_data_bit_offset, &attr), &bit) == 0) {
          // DWARF 4+: bits from the start of the struct.
          mem.offset = bit / 8;
          mem.bit_offset = static_cast<std::uint32_t>(bit % 8);
        }
      }
      out.push_back(std::move(mem));
    } while (dwarf_siblingof(&m, &m) == 0);
  }
  return out;
}

bool is_definition(Dwarf_Die* die) {
  return dwarf_hasattr(die, DW_AT_low_pc) || dwarf_hasattr(die, DW_AT_ranges) ||
         dwarf_hasattr(die, DW_AT_entry_pc);
}

// Opens `path` and its DWARF; null (fd closed) when it has none.
Dwarf* begin(const std::string& path, int& fd) {
  auto opened = open_regular_file(path);
  if (!opened.ok()) return nullptr;
  fd = *opened;
  Dwarf* dw = dwarf_begin(fd, DWARF_C_READ);
  if (!dw) {
    ::close(fd);
    fd = -1;
  }
  return dw;
}

}  // namespace

struct DwarfInfo::Impl {
  int fd = -1;
  Dwarf* dw = nullptr;
  std::string path;

  // Indexes built on first use: names of defined functions and of structs, unions and
  // typedefs, each to its DIE (the first seen). With split DWARF (-gsplit-dwarf) the DIEs
  // are in the units' .dwo files, which libdw opens next to the skeleton units of `dw`
  // and keeps open with it; `splits` numbers their Dwarf handles for record keys.
  mutable std::once_flag indexed;
  mutable std::unordered_map<std::string, Dwarf_Die> functions;
  mutable std::unordered_map<std::string, Dwarf_Die> types;
  mutable std::vector<Dwarf*> splits;
  mutable std::string missing_dwo;  // a split unit's .dwo file that libdw did not find

  ~Impl() {
    if (dw) dwarf_end(dw);
    if (fd >= 0) ::close(fd);
  }

  // The DIE `table` (functions or types) has for `name`; false if none.
  bool find(const std::unordered_map<std::string, Dwarf_Die>& table, std::string_view name,
            Dwarf_Die* die) const {
    index();
    auto it = table.find(std::string(name));
    if (it == table.end()) return false;
    *die = it->second;
    return true;
  }

  void index() const {
    std::call_once(indexed, [this] {
      Dwarf_CU* cu = nullptr;
      Dwarf_Die cudie, subdie;
      std::uint8_t unit_type = 0;
      while (dwarf_get_units(dw, cu, &cu, nullptr, &unit_type, &cudie, &subdie) == 0) {
        if (unit_type == DW_UT_skeleton) {
          if (subdie.cu == nullptr) {  // its .dwo was not found
            Dwarf_Attribute a;
            const char* dwo = dwarf_formstring(dwarf_attr(&cudie, DW_AT_dwo_name, &a));
            if (!dwo) dwo = dwarf_formstring(dwarf_attr(&cudie, DW_AT_GNU_dwo_name, &a));
            const char* dir = dwarf_formstring(dwarf_attr(&cudie, DW_AT_comp_dir, &a));
            if (dwo && missing_dwo.empty())
              missing_dwo = (dwo[0] != '/' && dir ? std::string(dir) + "/" : std::string()) + dwo;
            continue;
          }
          walk(&subdie);
        } else {
          walk(&cudie);
        }
      }
    });
  }

  // The key of a record DIE in codes ("r<key>;"): its offset, prefixed by its .dwo file's
  // number when it is in one (offsets start at 0 in each).
  std::string record_key(Dwarf_Die* die) const {
    char buf[40];
    const auto off = static_cast<unsigned long long>(dwarf_dieoffset(die));
    Dwarf* owner = dwarf_cu_getdwarf(die->cu);
    if (owner == dw) {
      std::snprintf(buf, sizeof buf, "%llx", off);
      return buf;
    }
    std::size_t n = 0;
    while (n < splits.size() && splits[n] != owner)
      ++n;
    if (n == splits.size()) splits.push_back(owner);
    std::snprintf(buf, sizeof buf, "s%zu.%llx", n, off);
    return buf;
  }

  void walk(Dwarf_Die* cu) const {
    Dwarf_Die c;
    if (dwarf_child(cu, &c) != 0) return;
    do {
      const int tag = dwarf_tag(&c);
      if (tag == DW_TAG_subprogram) {
        if (is_definition(&c)) {
          const std::string n = die_name(&c);
          if (!n.empty()) functions.emplace(n, c);
        }
      } else if (tag == DW_TAG_structure_type || tag == DW_TAG_class_type ||
                 tag == DW_TAG_union_type || tag == DW_TAG_typedef) {
        if (dwarf_hasattr(&c, DW_AT_declaration)) continue;
        const std::string n = die_name(&c);
        if (n.empty()) continue;
        const char* kind = tag == DW_TAG_union_type ? "union "
                           : tag == DW_TAG_typedef  ? ""
                                                    : "struct ";
        types.emplace(kind + n, c);
      } else if (tag == DW_TAG_namespace) {
        walk(&c);
      }
    } while (dwarf_siblingof(&c, &c) == 0);
  }
};

namespace {

// Writes types' codes (dwarf.h, DwarfMember) and collects the records they name.
struct Coder {
  const DwarfInfo::Impl& impl;
  std::vector<DwarfRecord>& records;
  std::unordered_map<std::string, bool> seen;  // record DIEs queued, by key
  std::vector<std::pair<std::string, Dwarf_Die>> pending;

  // A struct declared only here (`struct foo;`): its definition elsewhere, by name.
  Dwarf_Die definition(Dwarf_Die t) const {
    if (!dwarf_hasattr(&t, DW_AT_declaration)) return t;
    const std::string n = die_name(&t);
    Dwarf_Die def;
    if (!n.empty() &&
        impl.find(impl.types, (dwarf_tag(&t) == DW_TAG_union_type ? "union " : "struct ") + n,
                  &def))
      return def;
    return t;
  }

  std::string code(Dwarf_Die* type, int depth = 0) {
    if (!type) return "v";
    Dwarf_Die t = strip(*type);
    if (depth > 32) return "x8";
    Dwarf_Die inner;
    const bool has_inner = type_of(&t, &inner);
    switch (dwarf_tag(&t)) {
      case DW_TAG_base_type: {
        Dwarf_Attribute attr;
        Dwarf_Word enc = 0;
        dwarf_formudata(dwarf_attr(&t, DW_AT_encoding, &attr), &enc);
        const std::uint64_t size = type_size(&t);
        if (enc == DW_ATE_float) return "f" + std::to_string(size);
        const bool sign = enc == DW_ATE_signed || enc == DW_ATE_signed_char;
        if (size == 1 || size == 2 || size == 4 || size == 8)
          return (sign ? "i" : "u") + std::to_string(size);
        return "x" + std::to_string(size);
      }
      case DW_TAG_enumeration_type: {
        const std::uint64_t size = type_size(&t);
        bool sign = false;
        if (has_inner) {
          Dwarf_Die base = strip(inner);
          Dwarf_Attribute attr;
          Dwarf_Word enc = 0;
          dwarf_formudata(dwarf_attr(&base, DW_AT_encoding, &attr), &enc);
          sign = enc == DW_ATE_signed || enc == DW_ATE_signed_char;
        }
        return (sign ? "i" : "u") + std::to_string(size ? size : 4);
      }
      case DW_TAG_pointer_type:
        return "p" + code(has_inner ? &inner : nullptr, depth + 1);
      case DW_TAG_array_type: {
        std::vector<std::uint64_t> dims;
        Dwarf_Die sub;
        if (dwarf_child(&t, &sub) == 0) {
          do {
            if (dwarf_tag(&sub) != DW_TAG_subrange_type) continue;
            Dwarf_Attribute attr;
            Dwarf_Word v = 0;
            if (dwarf_formudata(dwarf_attr(&sub, DW_AT_count, &attr), &v) == 0) {
              dims.push_back(v);
            } else if (dwarf_formudata(dwarf_attr(&sub, DW_AT_upper_bound, &attr), &v) == 0) {
              dims.push_back(v + 1);
            } else {
              dims.push_back(0);
            }
          } while (dwarf_siblingof(&sub, &sub) == 0);
        }
        std::string out;
        for (std::uint64_t d : dims)
          out += "a" + std::to_string(d) + ",";
        return out + code(has_inner ? &inner : nullptr, depth + 1);
      }
      case DW_TAG_structure_type:
      case DW_TAG_class_type:
      case DW_TAG_union_type: {
        Dwarf_Die def = definition(t);
        std::string key = impl.record_key(&def);
        if (!dwarf_hasattr(&def, DW_AT_declaration) && !seen.count(key) &&
            seen.size() < DwarfFunction::kMaxRecords) {
          seen.emplace(key, true);
          pending.emplace_back(key, def);
        }
        return "r" + key + ";";
      }
      default:
        return "x" + std::to_string(type_size(&t));
    }
  }

  // The records queued by code(), and those their members name in turn.
  void collect() {
    for (std::size_t i = 0; i < pending.size(); ++i) {
      Dwarf_Die t = pending[i].second;
      DwarfRecord r;
      r.key = pending[i].first;
      const bool is_union = dwarf_tag(&t) == DW_TAG_union_type;
      r.is_union = is_union;
      const std::string n = die_name(&t);
      r.name = std::string(is_union ? "union " : "struct ") + (n.empty() ? "(anonymous)" : n);
      r.size = type_size(&t);
      r.members = members_of(&t);
      for (DwarfMember& m : r.members) {
        Dwarf_Die md;
        if (!member_die(&t, m.name, m.offset, &md)) continue;
        Dwarf_Die mt;
        m.code = type_of(&md, &mt) ? code(&mt) : "v";
      }
      records.push_back(std::move(r));
    }
  }

  // The member DIE of `t` with this name and offset.
  static bool member_die(Dwarf_Die* t, const std::string& name, std::uint64_t offset,
                         Dwarf_Die* out) {
    Dwarf_Die m;
    if (dwarf_child(t, &m) != 0) return false;
    do {
      if (dwarf_tag(&m) != DW_TAG_member || die_name(&m) != name) continue;
      if (!name.empty()) {
        *out = m;
        return true;
      }
      Dwarf_Attribute attr;
      Dwarf_Word v = 0;
      if (dwarf_formudata(dwarf_attr(&m, DW_AT_data_member_location, &attr), &v) == 0 &&
          v == offset) {
        *out = m;
        return true;
      }
    } while (dwarf_siblingof(&m, &m) == 0);
    return false;
  }
};

// The codes of `fn`'s parameters (param_dies order, as describe() lists them) and the
// records they reach.
void add_codes(const DwarfInfo::Impl& impl, Dwarf_Die* die, DwarfFunction& f) {
  Coder coder{impl, f.records, {}, {}};
  std::size_t i = 0;
  for (Dwarf_Die& pd : param_dies(die)) {
    if (i >= f.params.size()) break;
    Dwarf_Die t;
    f.params[i++].code = type_of(&pd, &t) ? coder.code(&t) : "v";
  }
  coder.collect();
}

}  // namespace

std::vector<DwarfRecord> DwarfInfo::type_records(std::string_view name) const {
  std::vector<DwarfRecord> out;
  Dwarf_Die die;
  if (!impl_->find(impl_->types, name, &die)) return out;
  Dwarf_Die t = strip(die);
  const int tag = dwarf_tag(&t);
  if (tag != DW_TAG_structure_type && tag != DW_TAG_class_type && tag != DW_TAG_union_type)
    return out;
  Coder coder{*impl_, out, {}, {}};
  coder.code(&t);
  coder.collect();
  return out;
}

DwarfInfo::DwarfInfo(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
DwarfInfo::~DwarfInfo() = default;

const std::string& DwarfInfo::debug_path() const {
  return impl_->path;
}

Result<std::unique_ptr<DwarfInfo>> DwarfInfo::open(const std::string& path) {
  auto opened = open_regular_file(path);
  if (!opened.ok()) return opened.error();
  ::close(*opened);
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  impl->dw = begin(path, impl->fd);
  if (!impl->dw) {
    for (const std::string& candidate : debug_candidates(path)) {
      impl->dw = begin(candidate, impl->fd);
      if (impl->dw) {
        impl->path = candidate;
        break;
      }
    }
  }
  if (!impl->dw) {
    return Error(Errc::not_found, path +
                                      " has no DWARF debug info (install its -dbgsym package or "
                                      "build with -g)");
  }
  return std::unique_ptr<DwarfInfo>(new DwarfInfo(std::move(impl)));
}

Result<DwarfFunction> DwarfInfo::function(std::string_view name) const {
  Dwarf_Die die;
  if (!impl_->find(impl_->functions, name, &die)) {
    const std::string dwp = impl_->path + ".dwp";
    if (!impl_->missing_dwo.empty() && ::access(dwp.c_str(), R_OK) == 0) {
      return Error(Errc::not_found,
                   "the debug info of " + impl_->path + " has no function '" + std::string(name) +
                       "': its split DWARF is in the package " + dwp +
                       ", which this libdw (elfutils before 0.191) cannot read; keep the .dwo "
                       "files instead, or build without -gsplit-dwarf");
    }
    return Error(Errc::not_found,
                 "the debug info of " + impl_->path + " has no function '" + std::string(name) +
                     (impl_->missing_dwo.empty()
                          ? "' (it may be inlined everywhere, or built without -g)"
                          : "' (it is split DWARF, and its file " + impl_->missing_dwo +
                                " is missing: keep the .dwo files where the build put them, or "
                                "build without -gsplit-dwarf)"));
  }
  DwarfFunction f = describe(&die);
  add_codes(*impl_, &die, f);
  return f;
}

Result<DwarfFunction> DwarfInfo::function_at(std::uint64_t pc) const {
  Dwarf_Die cu;
  if (dwarf_addrdie(impl_->dw, pc, &cu)) {
    Dwarf_Die sub;
    std::uint8_t unit_type = 0;
    if (dwarf_cu_info(cu.cu, nullptr, &unit_type, nullptr, &sub, nullptr, nullptr, nullptr) == 0 &&
        unit_type == DW_UT_skeleton && sub.cu != nullptr)
      cu = sub;  // split DWARF: the functions are in the .dwo's unit
    struct Ctx {
      std::uint64_t pc;
      Dwarf_Die found;
      bool ok = false;
    } ctx{pc, {}, false};
    dwarf_getfuncs(
        &cu,
        [](Dwarf_Die* fn, void* arg) {
          auto* c = static_cast<Ctx*>(arg);
          if (dwarf_haspc(fn, c->pc) > 0) {
            c->found = *fn;
            c->ok = true;
            return static_cast<int>(DWARF_CB_ABORT);
          }
          return static_cast<int>(DWARF_CB_OK);
        },
        &ctx, 0);
    if (ctx.ok) {
      DwarfFunction f = describe(&ctx.found);
      add_codes(*impl_, &ctx.found, f);
      return f;
    }
  }
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(pc));
  return Error(Errc::not_found, "the debug info of " + impl_->path + " has no function at " + buf);
}

std::vector<std::string> DwarfInfo::function_names(std::string_view glob) const {
  impl_->index();
  const std::string pattern(glob.empty() ? "*" : glob);
  std::vector<std::string> out;
  for (const auto& [name, off] : impl_->functions) {
    if (::fnmatch(pattern.c_str(), name.c_str(), 0) == 0) out.push_back(name);
  }
  std::sort(out.begin(), out.end());
  return out;
}

Result<DwarfStruct> DwarfInfo::struct_type(std::string_view name) const {
  Dwarf_Die die;
  if (!impl_->find(impl_->types, name, &die)) {
    return Error(Errc::not_found, "the debug info of " + impl_->path + " has no type '" +
                                      std::string(name) +
                                      "' (write 'struct NAME' or 'union NAME')");
  }
  Dwarf_Die t = strip(die);
  const int tag = dwarf_tag(&t);
  if (tag != DW_TAG_structure_type && tag != DW_TAG_class_type && tag != DW_TAG_union_type) {
    return Error(Errc::invalid_argument, "'" + std::string(name) + "' in " + impl_->path + " is " +
                                             type_name(&t) + ", not a struct or union");
  }
  DwarfStruct s;
  s.name = type_name(&t);
  s.size = type_size(&t);
  s.members = members_of(&t);
  return s;
}

std::string format_params(const DwarfFunction& fn) {
  std::string out;
  for (const DwarfParam& p : fn.params)
    out += "    " + p.type + " " + p.name + "\n";
  return out;
}

}  // namespace hp::elf

namespace hp::elf {

int arg_register_position(int reg) {
  for (std::size_t i = 0; i < kArgRegs.size(); ++i)
    if (kArgRegs[i] == reg) return static_cast<int>(i);
  return -1;
}

}  // namespace hp::elf
