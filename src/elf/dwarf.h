// Function parameters and struct layouts from an ELF file's DWARF debug information
// (elfutils libdw), for uprobe `args` and `hotprobe list -v`.
//
//   auto dw = hp::elf::DwarfInfo::open("/usr/bin/prog");
//   auto fn = (*dw)->function("handle_request");   // or function_at(pc)
//   for (const DwarfParam& p : fn->params)
//     ... p.name, p.type ("const char*"), p.size, p.location.kind, p.location.reg ...
//   auto s = (*dw)->struct_type("struct request");   // members with offsets
//
// Type names are written as bpftrace writes them (`int`, `long unsigned int`,
// `const char*`, `struct foo*`, `struct foo`, `char[16]`), so `hotprobe list -v` prints
// what `bpftrace -lv` prints.
//
// Where a parameter is at the function's first instruction follows from its type and
// position by the System V x86-64 calling convention, not from the DWARF location
// (which at -O0 describes the stack slot the prologue copies it to, valid only after
// the prologue): integers, pointers and small structs of integers take rdi, rsi, rdx,
// rcx, r8, r9 in turn; floating-point values take xmm0..7 (not in hotprobe's frame);
// structs larger than 16 bytes, and whatever finds its registers used up, are in the
// caller's stack frame at rsp + 8 + 8k. A function returning a struct in memory takes
// the address of the result in rdi first.
//
// The debug information is read from the file itself or, when it has none, from a
// separate debug file: /usr/lib/debug/.build-id/xx/yyyy.debug by the file's build id,
// then its .gnu_debuglink name in the file's directory, its .debug/ subdirectory and
// /usr/lib/debug/DIR, then the directories of set_debuginfo_dirs. Addresses in either are
// the file's link-time virtual addresses.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "base/error.h"

namespace hp::elf {

// A type's code: its C layout, typedefs and qualifiers resolved, as the script layer reads
// it (src/script/check_args.h) for uprobe `args`:
//   i1 i2 i4 i8 / u1 u2 u4 u8   signed / unsigned integer of that many bytes (bool, char,
//                               enums included)
//   f4 f8 f16                   floating point
//   v                           void
//   p<code>                     pointer to <code>
//   a<N>,<code>                 array of N (0: flexible or unknown) <code>
//   r<hex>;                     the struct or union DwarfFunction::records keys "<hex>"
//   x<size>                     anything else (function, reference...): `size` opaque bytes
struct DwarfMember {
  std::string name;  // empty for an anonymous struct or union member
  std::string type;
  std::string code;          // the type's code (above)
  std::uint64_t offset = 0;  // bytes from the start of the struct
  std::uint64_t size = 0;
  std::uint32_t bit_offset = 0;  // bitfields: first bit within the bytes at `offset`
  std::uint32_t bit_size = 0;    // 0 when not a bitfield
};

struct DwarfStruct {
  std::string name;  // "struct foo", "union bar"
  std::uint64_t size = 0;
  std::vector<DwarfMember> members;
};

// Where a parameter is at the function's first instruction.
struct ArgLocation {
  enum class Kind : std::uint8_t {
    reg,    // in `reg` (and `reg2` for the second eightbyte of a 9..16-byte struct)
    stack,  // `stack_offset` bytes above rsp (the return address is at rsp + 0)
    other,  // an SSE or x87 register (`where` names it), not in hotprobe's frame
  };
  Kind kind = Kind::reg;
  int reg = -1;   // index into hotprobe::Regs as an array of uint64_t
  int reg2 = -1;  // second register of a two-register struct, -1 otherwise
  std::int64_t stack_offset = 0;
  std::string where;  // "rdi", "rsi+rdx", "rsp+8", "xmm0": for messages and listings
};

struct DwarfParam {
  std::string name;  // empty when the declaration names none
  std::string type;  // as bpftrace writes it
  std::string code;  // the type's code (DwarfMember)
  std::uint64_t size = 0;
  // The struct or union the type is or points to ("struct hp_point" for both
  // `struct hp_point` and `struct hp_point*`), for DwarfInfo::struct_type; empty if none.
  std::string struct_name;
  bool is_pointer = false;
  bool is_float = false;
  ArgLocation location;
};

// A struct or union a parameter's type reaches, keyed as codes name it ("r<key>;").
struct DwarfRecord {
  std::string key;   // hex DIE offset of its definition
  std::string name;  // "struct foo", "union bar", "struct (anonymous)"
  bool is_union = false;
  std::uint64_t size = 0;
  std::vector<DwarfMember> members;  // with codes; bit fields as DwarfMember says
};

struct DwarfFunction {
  std::string name;
  std::uint64_t low_pc = 0;  // link-time address of its first instruction
  std::string return_type;   // "void" when none
  std::vector<DwarfParam> params;
  // Every struct and union the parameters' codes name, and those their members' codes
  // name in turn, up to kMaxRecords (past it, a code names a record not listed: scripts
  // see it as incomplete).
  std::vector<DwarfRecord> records;
  static constexpr std::size_t kMaxRecords = 512;
};

class DwarfInfo {
 public:
  // The DWARF of the ELF file at `path` (or of its separate debug file). An error names
  // the file and what would help when there is none.
  static Result<std::unique_ptr<DwarfInfo>> open(const std::string& path);
  ~DwarfInfo();
  DwarfInfo(const DwarfInfo&) = delete;
  DwarfInfo& operator=(const DwarfInfo&) = delete;

  // The file whose debug information is read (the file itself or its debug file).
  const std::string& debug_path() const;

  // The defined (not only declared, not only inlined) function named `name`; not_found
  // if the debug information has none.
  Result<DwarfFunction> function(std::string_view name) const;
  // The function whose code holds the link-time address `pc`.
  Result<DwarfFunction> function_at(std::uint64_t pc) const;
  // The names of the defined functions matching the fnmatch(3) pattern, sorted.
  std::vector<std::string> function_names(std::string_view glob) const;
  // A struct or union by the name as DwarfParam::struct_name writes it ("struct foo");
  // a typedef of one is followed.
  Result<DwarfStruct> struct_type(std::string_view name) const;
  // The struct or union named `name` ("struct foo", "union bar", a typedef of one) with
  // codes, first, then the records its members reach (up to DwarfFunction::kMaxRecords);
  // empty when the debug information defines none of that name.
  std::vector<DwarfRecord> type_records(std::string_view name) const;

  struct Impl;  // dwarf.cc's

 private:
  explicit DwarfInfo(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// `bpftrace -lv`'s lines for the function's parameters: "    TYPE NAME" each.
std::string format_params(const DwarfFunction& fn);

// More directories to look for separate debug files in (bpftrace's --debuginfo; a
// relative one is below the ELF file's own directory, as elfutils reads it), after the
// standard places: DIR/.build-id/xx/yyyy.debug, and the debug link (or, with none, the
// file's name + ".debug") in DIR and in DIR + the file's own directory. Set once, before
// any DWARF is opened (the command's start).
void set_debuginfo_dirs(std::vector<std::string> dirs);

// The separate debug files to try for the ELF file at `path`, most specific first (the
// order of the header comment above); DwarfInfo::open's list.
std::vector<std::string> debug_candidates(const std::string& path);

// The position (0..5: rdi, rsi, rdx, rcx, r8, r9) of the argument register whose Regs slot
// is `reg` (ArgLocation::reg); -1 for any other.
int arg_register_position(int reg);

}  // namespace hp::elf

namespace hp::elf {

// What uprobe `args` needs from the DWARF of the file `module` (a path, as a probe writes
// it) for the functions matching `pattern` (a name or an fnmatch glob), as the lines
// src/script/check_args.h reads, each ending in '\n', fields separated by tabs:
//   F MODULE PATTERN FUNCTION                  a function, then its parameters:
//   P NAME POS POS2 WHERE CODE                 POS: 0..5 for rdi..r9, -1 elsewhere
//   R KEY NAME SIZE IS_UNION                   a record its codes name, then its members:
//   M NAME OFFSET BIT_OFFSET BIT_SIZE CODE
//   E MODULE PATTERN MESSAGE                   no facts: why, and what would help
// A `pattern` "struct NAME" or "union NAME" (a type the script names but does not define)
// gives the R and M lines of that record and of those it reaches, nothing when the file
// has no DWARF or no such type.
// Record keys are prefixed with `id` ("3:1a2b") so that facts of several files can meet.
// A `pattern` "@FILE:LINE[:COLUMN]" (a source-line probe, MODULE@FILE:LINE) gives instead
//   L MODULE @FILE:LINE ADDRESS                the line's link-time address (decimal)
// or an E line.
std::string dwarf_type_facts(const std::string& module, const std::string& pattern, int id);

// The link-time address of a source line as bpftrace maps it: the compilation unit whose
// source path ends with `file` (whole components; two different ones are an error), the
// first row of its line table for that line (and `column`, unless 0) in that file itself.
// Split DWARF (-gsplit-dwarf) works: the line table stays in the executable.
Result<std::uint64_t> source_line_address(const std::string& module, std::string_view file,
                                          unsigned line, unsigned column);
// The facts line (L or E) for `spec` "@FILE:LINE[:COLUMN]".
std::string dwarf_line_fact(const std::string& module, std::string_view spec);

}  // namespace hp::elf
