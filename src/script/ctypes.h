// The C types of the script language: the integer types (int8..uint64), pointers, arrays,
// and the struct/union/enum definitions a script writes (docs/design/script-language.md,
// "C types"). The parser builds the table as it reads the definitions and casts; the
// checker types expressions with it; the lowering turns a field read into a load at a
// constant offset.
//
//   TypeTable t;
//   int u32 = t.integer(4, false);                  // "uint32"
//   int p = t.pointer(t.record_type(rec));         // "struct foo *"
//   t.name(p)                                      // "struct foo *"
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace hotprobe::script::ast {

struct CType {
  enum class Kind : std::uint8_t {
    void_,    // only behind a pointer
    integer,  // size 1, 2, 4 or 8; is_signed
    pointer,  // to `inner`; 8 bytes
    array,    // `count` elements of `inner`
    record,   // struct or union `record`
  };
  Kind kind = Kind::integer;
  std::uint32_t size = 8;
  std::uint32_t align = 8;
  bool is_signed = true;
  int inner = -1;           // pointer: pointee; array: element
  std::uint32_t count = 0;  // array
  int record = -1;          // record: index in TypeTable::records
  std::string name;         // integers: bpftrace's name ("uint32"), or the C name written
};

struct Field {
  std::string name;
  int type = -1;
  std::uint32_t offset = 0;      // bytes from the record's start (of the storage unit, for bits)
  std::uint32_t bit_offset = 0;  // bit fields: first bit within the unit at `offset`
  std::uint32_t bit_width = 0;   // 0: not a bit field
};

struct Record {
  std::string name;  // "foo" (anonymous: "(anonymous)")
  bool is_union = false;
  bool complete = false;  // its body was read
  std::vector<Field> fields;
  std::uint32_t size = 0;
  std::uint32_t align = 1;
  // A record only current bpftrace has (`args` as a whole, check_args.h; a named tuple
  // (a=1, b=x); a tuple inside a tuple): printed as current bpftrace prints it, pointers
  // in hex and, as a map key, spaced as a value ({ .p = 0x7ffd..., .n = 1 }).
  bool current_form = false;
  bool tuple = false;  // a tuple inside a tuple: its fields unnamed, printed (1, x)
  // buf()'s value (TypeTable::buffer): the length read, then the bytes; printed as
  // bpftrace prints a buffer (printable ASCII as it is, every other byte as \xNN).
  bool buffer = false;
  // ustack(raw) as a map key (TypeTable::raw_stack): [frames, return addresses...],
  // printed as bpftrace prints a raw stack (each address in hex on a line of its own).
  bool raw_stack = false;
};

// buf()'s largest length: bpftrace's (BPFTRACE_STRLEN's default, 64).
inline constexpr std::uint32_t kMaxBufLength = 64;

// What the hotprobe command learned from a probed file's DWARF for uprobe `args`, and the
// C headers a script includes (script/check_args.h): read from the text after the
// script's kTypeFactsMarker line, the same in the command and in the agent.
struct ArgParam {
  std::string name;
  int type = -1;       // TypeTable type
  int position = -1;   // arg0..arg5 register; -1: elsewhere (`where`)
  int position2 = -1;  // the second register of a struct in two, -1 otherwise
  std::string where;   // "rdi", "rsi+rdx", "rsp+8", "xmm0"
};
struct ArgFunction {
  std::string module;   // as the probe writes it
  std::string pattern;  // the probe's function (or glob)
  std::string name;     // the function it names
  std::vector<ArgParam> params;
};
struct TypeFacts {
  std::vector<ArgFunction> functions;
  std::map<std::string, std::string> errors;        // module + '\t' + pattern -> why none
  std::map<std::string, std::string> headers;       // "<x.h>" or "\"x.h\"" -> its text
  std::map<std::string, std::string> header_paths;  // same keys -> the file read
  std::map<std::string, std::uint64_t> lines;       // module + '\t' + "@FILE:LINE" -> address
  std::vector<std::string> implicit_includes;       // --include FILE: "<FILE>", before the script
};

struct TypeTable {
  std::vector<CType> types;
  std::vector<Record> records;
  std::map<std::string, int> struct_tags;           // "struct foo" / "union foo" -> record
  std::map<std::string, int> enum_tags;             // "enum foo" -> its integer type
  std::map<std::string, int> typedefs;              // "foo_t" -> type
  std::map<std::string, std::int64_t> enumerators;  // "RED" -> 0

  // An integer type: uint8..int64 (size 1, 2, 4, 8).
  int integer(std::uint32_t size, bool is_signed) {
    return intern(CType{CType::Kind::integer, size, size, is_signed, -1, 0, -1,
                        std::string(is_signed ? "int" : "uint") + std::to_string(size * 8)});
  }
  int void_type() { return intern(CType{CType::Kind::void_, 1, 1, false, -1, 0, -1, "void"}); }
  int pointer(int to) { return intern(CType{CType::Kind::pointer, 8, 8, false, to, 0, -1, ""}); }
  int array(int of, std::uint32_t n) {
    const CType& e = types[static_cast<std::size_t>(of)];
    return intern(CType{CType::Kind::array, e.size * n, e.align, false, of, n, -1, ""});
  }
  // One type per record whether it is complete yet or not (its size and alignment are
  // the record's: size_of, align_of), so `struct s *` written inside struct s's body and
  // after it are the same type.
  int record_type(int rec) {
    return intern(CType{CType::Kind::record, 0, 0, false, -1, 0, rec, ""});
  }
  // The record named `tag` ("struct foo"), created incomplete on first mention.
  int record(const std::string& tag, bool is_union) {
    auto [it, inserted] = struct_tags.try_emplace(tag, static_cast<int>(records.size()));
    if (inserted) {
      Record r;
      r.name = tag;
      r.is_union = is_union;
      records.push_back(std::move(r));
    }
    return it->second;
  }

  // The type of record `r`, made by the checker (no tag names it): the type of an equal
  // record made before (the same fields, offsets, size and form), else a new one.
  int made_record(Record r) {
    for (std::size_t i = 0; i < records.size(); ++i) {
      const Record& o = records[i];
      bool same = o.complete && o.name == r.name && o.size == r.size && o.align == r.align &&
                  o.current_form == r.current_form && o.tuple == r.tuple && o.buffer == r.buffer &&
                  o.raw_stack == r.raw_stack && o.fields.size() == r.fields.size();
      for (std::size_t k = 0; same && k < o.fields.size(); ++k) {
        same = o.fields[k].name == r.fields[k].name && o.fields[k].type == r.fields[k].type &&
               o.fields[k].offset == r.fields[k].offset;
      }
      if (same) return record_type(static_cast<int>(i));
    }
    records.push_back(std::move(r));
    return record_type(static_cast<int>(records.size() - 1));
  }

  // buf(P, N)'s type: { uint8 len; uint8 data[N]; } marked as a buffer (Record::buffer).
  int buffer(std::uint32_t n) {
    Record r;
    r.name = "buffer";
    r.complete = true;
    r.buffer = true;
    r.fields.push_back(Field{"len", integer(1, false), 0, 0, 0});
    r.fields.push_back(Field{"data", array(integer(1, false), n), 1, 0, 0});
    r.size = 1 + n;
    return made_record(std::move(r));
  }
  // ustack(raw)'s key part: { uint64 n; uint64 frames[N]; } marked Record::raw_stack.
  int raw_stack(std::uint32_t frames) {
    Record r;
    r.name = "raw_stack";
    r.complete = true;
    r.raw_stack = true;
    r.align = 8;
    r.fields.push_back(Field{"n", integer(8, false), 0, 0, 0});
    r.fields.push_back(Field{"frames", array(integer(8, false), frames), 8, 0, 0});
    r.size = 8 * (1 + frames);
    return made_record(std::move(r));
  }
  bool is_raw_stack(int t) const {
    return t >= 0 && at(t).kind == CType::Kind::record && at(t).record >= 0 &&
           records[static_cast<std::size_t>(at(t).record)].raw_stack;
  }
  bool is_buffer(int t) const {
    return t >= 0 && at(t).kind == CType::Kind::record && at(t).record >= 0 &&
           records[static_cast<std::size_t>(at(t).record)].buffer;
  }

  const CType& at(int t) const { return types[static_cast<std::size_t>(t)]; }
  // The record type's size and alignment follow its record (completed after first use).
  std::uint32_t size_of(int t) const {
    const CType& c = at(t);
    if (c.kind == CType::Kind::record) return records[static_cast<std::size_t>(c.record)].size;
    if (c.kind == CType::Kind::array) return c.count * size_of(c.inner);
    return c.size;
  }
  std::uint32_t align_of(int t) const {
    const CType& c = at(t);
    if (c.kind == CType::Kind::record) return records[static_cast<std::size_t>(c.record)].align;
    if (c.kind == CType::Kind::array) return align_of(c.inner);
    return c.align;
  }
  bool is_complete(int t) const {
    const CType& c = at(t);
    if (c.kind == CType::Kind::record) return records[static_cast<std::size_t>(c.record)].complete;
    if (c.kind == CType::Kind::array) return is_complete(c.inner);
    return c.kind != CType::Kind::void_;
  }
  // As bpftrace names it: "uint32", "struct foo *", "int8[16]".
  std::string name(int t) const {
    const CType& c = at(t);
    switch (c.kind) {
      case CType::Kind::void_:
      case CType::Kind::integer:
        return c.name;
      case CType::Kind::pointer:
        return name(c.inner) + " *";
      case CType::Kind::array:
        return name(c.inner) + "[" + std::to_string(c.count) + "]";
      case CType::Kind::record:
        return records[static_cast<std::size_t>(c.record)].name;
    }
    return "?";
  }
  // A field of record `rec` by name, searching anonymous members too; its offset from the
  // record's start in `offset`. Null when absent.
  const Field* field(int rec, const std::string& fname, std::uint32_t& offset) const {
    for (const Field& f : records[static_cast<std::size_t>(rec)].fields) {
      if (f.name == fname) {
        offset = f.offset;
        return &f;
      }
      if (f.name.empty() && at(f.type).kind == CType::Kind::record) {
        std::uint32_t inner = 0;
        if (const Field* g = field(at(f.type).record, fname, inner)) {
          offset = f.offset + inner;
          return g;
        }
      }
    }
    return nullptr;
  }

 private:
  int intern(CType c) {
    for (std::size_t i = 0; i < types.size(); ++i) {
      const CType& t = types[i];
      if (t.kind == c.kind && t.size == c.size && t.is_signed == c.is_signed &&
          t.inner == c.inner && t.count == c.count && t.record == c.record && t.name == c.name)
        return static_cast<int>(i);
    }
    types.push_back(std::move(c));
    return static_cast<int>(types.size() - 1);
  }
};

}  // namespace hotprobe::script::ast
