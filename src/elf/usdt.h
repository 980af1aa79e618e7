// USDT probes (statically defined tracing points, <sys/sdt.h>'s DTRACE_PROBE/STAP_PROBE)
// of one ELF file, read from its `.note.stapsdt` notes.
//
//   auto file = hp::elf::load_elf("/usr/bin/python3");
//   auto probes = hp::elf::read_usdt(**file);                 // every probe, in note order
//   auto some = hp::elf::find_usdt(*probes, "python", "func*");  // fnmatch(3) on both
//   for (const UsdtArg& a : some[0]->args) ... a.kind, a.reg, a.offset, a.size ...
//
// A note (type 3, owner "stapsdt") holds the probe's address, the link-time address of
// `.stapsdt.base` and of the probe's semaphore, then provider, name and the argument
// string the compiler wrote: one "[-]SIZE@OPERAND" per argument, separated by spaces,
// OPERAND in AT&T syntax ("%edi", "-8(%rbp)", "16(%rbx,%rcx,8)", "$5", "sym(%rip)").
// When a prelinker moved the file, the address of `.stapsdt.base` in the section headers
// differs from the one in the note; the probe and semaphore addresses move by the same
// difference (as systemtap and bpftrace do).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "base/error.h"

namespace hp::elf {

class ElfFile;

enum class UsdtArgKind : std::uint8_t {
  reg,       // the value of a register
  memory,    // SIZE bytes at base + offset (+ index * scale); base may be %rip
  constant,  // an immediate ($N)
};

// One argument of a probe. Registers are named without '%' as written ("edi", "r9b")
// and mapped to the slot of hotprobe::Regs (include/hotprobe/regs.h) that holds the full
// register (edi -> rdi); `reg_width`/`reg_shift` say which part of it the name means
// (al: width 1 shift 0, ah: width 1 shift 8). A register the frame does not hold (%xmm0,
// %fs) keeps its name with slot -1; the parse does not fail, a reader of the value must.
struct UsdtArg {
  std::string text;   // the argument as written, "-4@%edi"
  unsigned size = 8;  // bytes: 1, 2, 4 or 8
  bool is_signed = false;
  bool is_float = false;  // "8f@%xmm0" (newer <sys/sdt.h> marks floating-point values)
  UsdtArgKind kind = UsdtArgKind::reg;

  // reg: the register; memory: the base register ("rip" for rip-relative, "" for none).
  std::string reg_name;
  int reg = -1;            // index into Regs as an array of uint64_t, -1 when not there
  unsigned reg_width = 8;  // bytes of the register named
  unsigned reg_shift = 0;  // bit position of its low bit in the full register
  // memory: base + offset + index * scale.
  std::int64_t offset = 0;
  std::string symbol;  // "sink" in "8@sink(%rip)": the offset is this symbol's address
  // read_usdt: the symbol's link-time address from .symtab or .dynsym (the run-time
  // address is load bias + this + offset); 0 when the file does not name it (stripped).
  std::uint64_t symbol_vaddr = 0;
  std::string index_name;
  int index = -1;
  unsigned scale = 1;
  // constant
  std::int64_t value = 0;
};

struct UsdtProbe {
  std::string provider;
  std::string name;
  std::uint64_t pc = 0;                // link-time virtual address, after the base adjustment
  std::uint64_t file_offset = 0;       // of the probed instruction (what a uprobe takes)
  std::uint64_t semaphore = 0;         // link-time address of the semaphore, 0 if none
  std::uint64_t semaphore_offset = 0;  // its file offset (the kernel's ref_ctr_offset), 0 if none
  std::string args_text;               // the argument string as written
  std::vector<UsdtArg> args;
};

// A USDT probe as a probe target names it after its module: "usdt:PROVIDER:NAME", or
// "usdt:NAME" and "usdt::NAME" (any provider), fnmatch(3) wildcards in each ("usdt:*":
// every probe). A field in double quotes is taken with its C escapes decoded, so a name
// may hold ':' or '"' (DTRACE_PROBE(test, "probe1") names its probe "probe1" with the
// quotes: usdt:test:"\"probe1\"").
inline constexpr std::string_view kUsdtPrefix = "usdt:";
struct UsdtWhat {
  std::string provider;  // empty: any
  std::string name;
};
// Parses what follows kUsdtPrefix; an error names the text and the forms accepted.
Result<UsdtWhat> parse_usdt_what(std::string_view what);

// Parses one argument ("-4@%edi"). `position` (0-based) only goes into messages.
Result<UsdtArg> parse_usdt_arg(std::string_view text, std::size_t position = 0);
// Parses a whole argument string; an error names the argument (1-based) and its text.
Result<std::vector<UsdtArg>> parse_usdt_args(std::string_view text);

// Every probe of `file`, in the order of its notes (one entry per site: a provider:name
// used at two places is two probes). A file without `.note.stapsdt` has none (empty, not
// an error). An argument string the parser does not understand is an error naming the
// probe, the argument and its text. The notes are read from `open_path` when given (the
// same file reached another way: /proc/PID/map_files/... of a process in another mount
// namespace, where file.path() names nothing), else from file.path().
Result<std::vector<UsdtProbe>> read_usdt(const ElfFile& file, const std::string& open_path = {});

// The probes whose provider and name match the fnmatch(3) patterns (an empty pattern
// matches everything), in the order given.
std::vector<const UsdtProbe*> find_usdt(const std::vector<UsdtProbe>& probes,
                                        std::string_view provider, std::string_view name);

// The Regs slot of a register as AT&T syntax names it without '%' ("rdi", "edi", "di",
// "dil", "r8d", "ah"), with the width and shift of the part named; false for a name that
// is not a general-purpose register or rip/rsp.
bool usdt_register(std::string_view name, int& slot, unsigned& width, unsigned& shift);

}  // namespace hp::elf
