// The public library's own translation unit: thin entry points over the layers.
#include "hotprobe/hotprobe.h"
#include "hotprobe/probe.h"

#include <array>
#include <cstddef>

#include "base/compiler.h"
#include "sync/schemes.h"

namespace hotprobe {

const char* version() noexcept {
  return "0.1.0";
}

namespace {
constexpr auto kSchemeList = [] {
  std::array<Scheme, hp::sync::kSchemeCount> a{};
  for (std::size_t i = 0; i < a.size(); i++)
    a[i] = hp::sync::kSchemes[i].scheme;
  return a;
}();
}  // namespace

std::span<const Scheme> all_schemes() noexcept {
  return kSchemeList;
}

std::string_view to_string(Scheme s) noexcept {
  const std::size_t i = hp::sync::scheme_index(s);
  return i < hp::sync::kSchemeCount ? hp::sync::kSchemes[i].name : "unknown";
}

Result<Scheme> parse_scheme(std::string_view name) {
  std::string names;
  for (const auto& row : hp::sync::kSchemes) {
    if (row.name == name) return row.scheme;
    names += names.empty() ? "" : ", ";
    names += row.name;
  }
  return Error(Errc::invalid_argument,
               "unknown scheme '" + std::string(name) + "' (schemes: " + names + ")");
}

}  // namespace hotprobe
