// The USDT probes (<sys/sdt.h>) a probe target names, without attaching: each site and how
// to read its arguments from a hit's registers and memory. For scripts (argN, probe) and
// tools; Engine::attach resolves the same target ("MODULE:usdt:PROVIDER:NAME", as
// ProbeSpec::target) to the same sites.
//
//   auto sites = hotprobe::resolve_usdt("libstdc++:usdt:libstdcxx:throw");
//   for (const UsdtSite& s : *sites) ... s.address, s.args[0].kind, s.args[0].size ...
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "hotprobe/api.h"
#include "hotprobe/result.h"

namespace hotprobe {

// One argument of one site, as the note's "[-]SIZE@OPERAND" says, with this process's
// addresses filled in.
struct UsdtArgSpec {
  enum class Kind : std::uint8_t {
    reg,       // (regs[reg] >> shift), SIZE bytes of it
    memory,    // SIZE bytes at disp (+ regs[reg]) (+ regs[index] * scale)
    constant,  // disp
  };
  Kind kind = Kind::constant;
  std::uint8_t size = 8;   // bytes: 1, 2, 4 or 8; the value is truncated to them, then
  bool is_signed = false;  // sign- or zero-extended
  // Slots of hotprobe::Regs read as an array of uint64_t; -1: none (a register hotprobe's
  // frame does not hold, such as %xmm0, reads as 0).
  std::int8_t reg = -1;
  std::uint8_t shift = 0;  // reg: the bit position of the part the note names (%ah: 8)
  std::int8_t index = -1;
  std::uint8_t scale = 1;
  // memory: the displacement, a rip-relative symbol's run-time address included;
  // constant: the value.
  std::int64_t disp = 0;
};

struct UsdtSite {
  std::string provider, name;
  std::string module;             // the file's path
  std::uint64_t file_offset = 0;  // of the site's nop
  std::uintptr_t address = 0;     // in this process; 0 where the file is not loaded
  std::vector<UsdtArgSpec> args;  // addresses in them are valid when `address` is not 0
};

// Every site of the notes "MODULE:usdt:PROVIDER:NAME" matches (usdt:NAME any provider,
// usdt:* all; fnmatch(3) wildcards), in the file's note order. Errors as Engine::attach
// reports them (no such file, no notes, no match).
HOTPROBE_API Result<std::vector<UsdtSite>> resolve_usdt(std::string_view target);

}  // namespace hotprobe
