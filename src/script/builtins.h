// The builtins, one row each: the name the checker resolves, the type it gives, and the
// node function the lowerer picks. A new builtin is an ast::Builtin, a row here (in the
// enum's order) and its node function (run_nodes.*); which probes may use it, where
// that is limited, is said in Checker::builtin (check_calls.cc).
#pragma once

#include <array>
#include <cstdint>
#include <string_view>

#include "script/ast.h"
#include "script/run_nodes.h"

namespace hotprobe::script {

struct BuiltinDef {
  ast::Builtin id;
  std::string_view name;
  std::uint32_t str_size;  // 0: an integer; else a string of at most this many bytes
  IntFn i;                 // the node function of an integer
  StrFn s;                 // of a string
};

inline constexpr std::array<BuiltinDef, 17> kBuiltins = {{
    {ast::Builtin::arg0, "arg0", 0, nodes::i_arg<0>, nullptr},
    {ast::Builtin::arg1, "arg1", 0, nodes::i_arg<1>, nullptr},
    {ast::Builtin::arg2, "arg2", 0, nodes::i_arg<2>, nullptr},
    {ast::Builtin::arg3, "arg3", 0, nodes::i_arg<3>, nullptr},
    {ast::Builtin::arg4, "arg4", 0, nodes::i_arg<4>, nullptr},
    {ast::Builtin::arg5, "arg5", 0, nodes::i_arg<5>, nullptr},
    {ast::Builtin::retval, "retval", 0, nodes::i_retval, nullptr},
    {ast::Builtin::tid, "tid", 0, nodes::i_tid, nullptr},
    {ast::Builtin::pid, "pid", 0, nodes::i_pid, nullptr},
    {ast::Builtin::comm, "comm", ast::kCommSize, nullptr, nodes::s_comm},
    {ast::Builtin::nsecs, "nsecs", 0, nodes::i_nsecs, nullptr},
    {ast::Builtin::elapsed, "elapsed", 0, nodes::i_elapsed, nullptr},
    {ast::Builtin::func, "func", ast::kDefaultStrSize, nullptr, nodes::s_func},
    {ast::Builtin::probe, "probe", ast::kDefaultStrSize, nullptr, nodes::s_probe},
    {ast::Builtin::cpu, "cpu", 0, nodes::i_cpu, nullptr},
    {ast::Builtin::uid, "uid", 0, nodes::i_uid, nullptr},
    {ast::Builtin::gid, "gid", 0, nodes::i_gid, nullptr},
}};

constexpr bool builtins_in_enum_order() {
  for (std::size_t k = 0; k < kBuiltins.size(); ++k)
    if (static_cast<std::size_t>(kBuiltins[k].id) != k) return false;
  return true;
}
static_assert(builtins_in_enum_order(), "kBuiltins: one row per ast::Builtin, in its order");

inline const BuiltinDef& builtin_def(ast::Builtin b) {
  return kBuiltins[static_cast<std::size_t>(b)];
}

// The names, for "did you mean".
inline constexpr std::array<std::string_view, kBuiltins.size()> kBuiltinNames = [] {
  std::array<std::string_view, kBuiltins.size()> names{};
  for (std::size_t k = 0; k < kBuiltins.size(); ++k)
    names[k] = kBuiltins[k].name;
  return names;
}();

}  // namespace hotprobe::script
