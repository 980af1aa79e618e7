// Where a code address is in the source, with the functions inlined there, from the
// module's DWARF (elfutils libdw): what `show_debug_info` prints for a stack frame
// (docs/design/script-language.md, "Stacks and symbols").
//
//   auto places = hp::elf::source_frames("/usr/bin/prog", 0x1234);  // a file offset
//   // {{"myclock", "/src/prog.c", 12}, {"", "/src/prog.c", 30}}: myclock inlined at
//   // prog.c:12, in a function (named by the symbol table) whose call of it is at line 30
//
// The debug information is the file's own or its separate debug file (dwarf.h,
// debug_candidates). Each file is opened once and kept for the life of the process.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace hp::elf {

struct SourceFrame {
  std::string function;  // an inlined function's name; empty for the containing function
  std::string file;      // the source file's path (absolute when the DWARF says where)
  std::uint32_t line = 0;
};

// The places of the code at `file_offset` in the ELF file `module`: the inlined functions
// at the address, innermost first, each with its place in its own code (the innermost's
// from the line table, the others' where they call the next), then the containing
// function's place (its call of the outermost inlined function, or the line table's row).
// Empty when the file has no DWARF for that address.
std::vector<SourceFrame> source_frames(const std::string& module, std::uint64_t file_offset);

}  // namespace hp::elf
