// Symbols of any kind (data objects as well as functions) by name, read from an ELF file
// on disk: what the script's uaddr("NAME") names. ElfFile indexes functions only (the
// probe targets); this reads the symbol tables once per call, for the few names a script
// asks for when it is compiled.
//
//   auto s = hp::elf::find_symbol("/usr/bin/prog", "GLOBAL_A");  // {value, size}
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace hp::elf {

struct DataSymbol {
  std::uint64_t value = 0;  // st_value: the link-time address (add the load bias)
  std::uint64_t size = 0;
};

// A defined symbol named `name` in `path`'s .symtab, else its .dynsym; nullopt when the
// file cannot be read or has none.
std::optional<DataSymbol> find_symbol(const std::string& path, std::string_view name);

}  // namespace hp::elf
