// Small helpers shared by the ELF layer's source files (not part of its interface).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace hp::elf::detail {

// "0x" and the value in lower-case hex, as messages write addresses.
std::string hex(std::uint64_t v);
// "123" or "0x7b" in full; false for anything else (including overflow).
bool parse_number(std::string_view s, std::uint64_t& out);
// The index of the hotprobe::Regs field at byte `offset` (include/hotprobe/regs.h), the
// frame seen as an array of uint64_t: regs_slot(offsetof(hotprobe::Regs, rdi)).
constexpr int regs_slot(std::size_t offset) {
  return static_cast<int>(offset / sizeof(std::uint64_t));
}
// elf_version(EV_CURRENT), once per process, before the first elf_begin.
void init_libelf();

}  // namespace hp::elf::detail
