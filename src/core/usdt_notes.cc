// hotprobe::resolve_usdt (include/hotprobe/usdt.h): the Resolver's notes of a USDT target,
// with each site's address and argument specs in this process.
#include <string>

#include "core/resolver.h"
#include "elf/elf_file.h"
#include "elf/modules.h"
#include "elf/usdt.h"
#include "hotprobe/usdt.h"

namespace hotprobe {

namespace {

UsdtArgSpec arg_spec(const hp::elf::UsdtArg& a, std::int64_t bias, std::uint64_t site_address) {
  using hp::elf::UsdtArgKind;
  UsdtArgSpec s;
  s.size = static_cast<std::uint8_t>(a.size);
  s.is_signed = a.is_signed;
  switch (a.kind) {
    case UsdtArgKind::reg:
      s.kind = UsdtArgSpec::Kind::reg;
      s.reg = static_cast<std::int8_t>(a.reg);
      s.shift = static_cast<std::uint8_t>(a.reg_shift);
      break;
    case UsdtArgKind::memory:
      s.kind = UsdtArgSpec::Kind::memory;
      s.index = static_cast<std::int8_t>(a.index);
      s.scale = static_cast<std::uint8_t>(a.scale);
      s.disp = a.offset;
      if (a.reg_name == "rip") {
        // sym(%rip): the symbol's run-time address; N(%rip): after the site's 1-byte nop.
        s.disp += a.symbol.empty() ? static_cast<std::int64_t>(site_address + 1)
                                   : static_cast<std::int64_t>(a.symbol_vaddr) + bias;
      } else {
        s.reg = static_cast<std::int8_t>(a.reg);
      }
      break;
    case UsdtArgKind::constant:
      s.kind = UsdtArgSpec::Kind::constant;
      s.disp = a.value;
      break;
  }
  return s;
}

}  // namespace

Result<std::vector<UsdtSite>> resolve_usdt(std::string_view target) {
  constexpr std::string_view kForm = ":usdt:";
  const std::size_t at = target.find(kForm);
  if (at == std::string_view::npos) {
    return Error(Errc::invalid_argument, "'" + std::string(target) +
                                             "' is not a USDT target: write "
                                             "MODULE:usdt:PROVIDER:NAME");
  }
  auto mods = hp::elf::ModuleList::of_self();
  if (!mods.ok()) return mods.error();
  hp::core::Resolver resolver(*mods);
  auto matches = resolver.usdt_matches(target.substr(0, at), target.substr(at + kForm.size()));
  if (!matches.ok()) return matches.error();
  std::vector<UsdtSite> out;
  for (const hp::core::Resolver::UsdtMatch& match : *matches) {
    for (const hp::elf::UsdtProbe& n : match.notes) {
      UsdtSite s;
      s.provider = n.provider;
      s.name = n.name;
      s.module = match.module ? match.module->path : match.file->path();
      s.file_offset = n.file_offset;
      if (match.module) {
        auto a = match.module->offset_to_address(n.file_offset);
        if (a.ok()) s.address = *a;
      }
      const std::int64_t bias = static_cast<std::int64_t>(s.address - n.pc);
      for (const hp::elf::UsdtArg& a : n.args)
        s.args.push_back(arg_spec(a, bias, s.address));
      out.push_back(std::move(s));
    }
  }
  return out;
}

}  // namespace hotprobe
