// Small helpers shared by the ELF layer's source files (not part of its interface).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace hp::elf::detail {

// "0x" and the value in lower-case hex, as messages write addresses.
std::string hex(std::uint64_t v);
// "123" or "0x7b" in full; false for anything else (including overflow).
bool parse_number(std::string_view s, std::uint64_t& out);
// elf_version(EV_CURRENT), once per process, before the first elf_begin.
void init_libelf();

}  // namespace hp::elf::detail
