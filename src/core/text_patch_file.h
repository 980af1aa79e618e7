// A site's code against its module's file (text_patch_file.cc): what hotprobe copies into
// a trampoline as "original" must be the file's bytes, not what another tracer (a kernel
// uprobe's int3, a debugger's breakpoint, another patcher) wrote over them in memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace hp::core {

// The first address of [addr, addr + len) whose byte differs from the file's at
// `file_offset` onwards (the module (dev, ino), whose path is `path`, or where empty the
// one the dynamic linker names for `addr`), or 0 when every byte is the file's or the
// file cannot be read (there is nothing to compare with). Each file is mapped read-only
// once and kept for the life of the process.
std::uintptr_t first_byte_unlike_file(std::uint64_t dev, std::uint64_t ino, std::string_view path,
                                      std::uint64_t file_offset, std::uintptr_t addr,
                                      std::size_t len);

}  // namespace hp::core
