// What a probe target names, without attaching: for `hotprobe list`, for scripts that
// need a probe's function name, and for messages.
//
//   auto fns = hotprobe::resolve_functions("libc:str*");      // in this process
//   auto all = hotprobe::list_functions("/usr/bin/ls", "*");  // in a file on disk
//   auto f = hotprobe::function_at(address);                  // symbolize an address
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "hotprobe/api.h"
#include "hotprobe/result.h"

namespace hotprobe {

struct FunctionInfo {
  std::string module;             // the module's path (as /proc/self/maps names it)
  std::string name;               // the function's symbol name
  std::uint64_t file_offset = 0;  // of the function's first byte
  std::uint64_t size = 0;         // symbol size; 0 when unknown
  std::uintptr_t address = 0;     // in this process; 0 for a file that is not loaded
  std::uint64_t offset = 0;       // the probed spot's offset into the function (NAME+OFF)
};

// The functions a probe target ("module:symbol", globs, "+OFF", "module:0xADDR" with the
// address as nm(1) prints it, "module:fileoff:0xOFF", as ProbeSpec::target) names in this
// process. A module that is not loaded but is named by its path is read from disk
// (address 0). Errors as Engine::attach reports them.
HOTPROBE_API Result<std::vector<FunctionInfo>> resolve_functions(std::string_view target);

// Functions of the ELF file at `path` whose names match the fnmatch(3) glob `glob`
// (empty: every function), sorted by name.
HOTPROBE_API Result<std::vector<FunctionInfo>> list_functions(std::string_view path,
                                                              std::string_view glob = {});

// The function containing `address` in this process; not_found outside every function.
HOTPROBE_API Result<FunctionInfo> function_at(std::uintptr_t address);

}  // namespace hotprobe
