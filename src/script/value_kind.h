// A map's value kind: one type from the checker, which fixes it at the map's first
// assignment (ast::MapInfo::kind), through the maps, which lay out its values
// (MapDesc::kind), to the printers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace hotprobe::script {

enum class ValueKind : std::uint8_t {
  count,
  sum,
  avg,
  min,
  max,
  stats,
  hist,
  lhist,
  integer,  // a plain value: @m = expr (int); also @m++, @m += expr
  string,   // a plain value: @m = expr (string)
  tuple,    // a plain value: @m = (a, b, ...): ast::MapInfo::elems, MapDesc::value_is_string
  record,   // a plain value: @m = an array or struct (script/layout.h), MapDesc::value_layout
};

constexpr bool is_aggregation(ValueKind k) {
  return k != ValueKind::integer && k != ValueKind::string && k != ValueKind::tuple &&
         k != ValueKind::record;
}

// The kind as bpftrace's messages name it ("int64" for an integer).
constexpr std::string_view to_string(ValueKind k) {
  constexpr std::string_view kNames[] = {"count", "sum",   "avg",   "min",    "max",   "stats",
                                         "hist",  "lhist", "int64", "string", "tuple", "record"};
  return kNames[static_cast<std::size_t>(k)];
}

}  // namespace hotprobe::script
