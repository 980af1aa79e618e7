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
// /usr/lib/debug/DIR. Addresses in either are the file's link-time virtual addresses.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "base/error.h"

namespace hp::elf {

struct DwarfMember {
  std::string name;  // empty for an anonymous struct or union member
  std::string type;
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
  std::uint64_t size = 0;
  // The struct or union the type is or points to ("struct hp_point" for both
  // `struct hp_point` and `struct hp_point*`), for DwarfInfo::struct_type; empty if none.
  std::string struct_name;
  bool is_pointer = false;
  bool is_float = false;
  ArgLocation location;
};

struct DwarfFunction {
  std::string name;
  std::uint64_t low_pc = 0;  // link-time address of its first instruction
  std::string return_type;   // "void" when none
  std::vector<DwarfParam> params;
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

 private:
  struct Impl;
  explicit DwarfInfo(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// `bpftrace -lv`'s lines for the function's parameters: "    TYPE NAME" each.
std::string format_params(const DwarfFunction& fn);

}  // namespace hp::elf
