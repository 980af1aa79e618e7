// The builtins, one row each: the type the checker gives, and the node function the
// lowerer picks. A new builtin is an ast::Builtin with its name (ast::kBuiltinNames), a
// row here (in the enum's order) and its node function (run_nodes.*); which probes may
// use it, where that is limited, is said in Checker::builtin (check_calls.cc).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "hotprobe/regs.h"

#include "script/ast.h"
#include "script/run_misc.h"
#include "script/run_nodes.h"

namespace hotprobe::script {

struct BuiltinDef {
  ast::Builtin id;
  std::uint32_t str_size;  // 0: an integer; else a string of at most this many bytes
  IntFn i;                 // the node function of an integer
  StrFn s;                 // of a string
};

inline constexpr std::array<BuiltinDef, ast::kBuiltinNames.size()> kBuiltins = {{
    {ast::Builtin::arg0, 0, nodes::i_arg<0>, nullptr},
    {ast::Builtin::arg1, 0, nodes::i_arg<1>, nullptr},
    {ast::Builtin::arg2, 0, nodes::i_arg<2>, nullptr},
    {ast::Builtin::arg3, 0, nodes::i_arg<3>, nullptr},
    {ast::Builtin::arg4, 0, nodes::i_arg<4>, nullptr},
    {ast::Builtin::arg5, 0, nodes::i_arg<5>, nullptr},
    {ast::Builtin::retval, 0, nodes::i_retval, nullptr},
    {ast::Builtin::tid, 0, nodes::i_tid, nullptr},
    {ast::Builtin::pid, 0, nodes::i_pid, nullptr},
    {ast::Builtin::comm, ast::kCommSize, nullptr, nodes::s_comm},
    {ast::Builtin::nsecs, 0, nodes::i_nsecs, nullptr},
    {ast::Builtin::elapsed, 0, nodes::i_elapsed, nullptr},
    {ast::Builtin::func, ast::kDefaultStrSize, nullptr, nodes::s_func},
    {ast::Builtin::probe, ast::kDefaultStrSize, nullptr, nodes::s_probe},
    {ast::Builtin::cpu, 0, nodes::i_cpu, nullptr},
    {ast::Builtin::uid, 0, nodes::i_uid, nullptr},
    {ast::Builtin::gid, 0, nodes::i_gid, nullptr},
    {ast::Builtin::ncpus, 0, nodes::i_ncpus, nullptr},
    {ast::Builtin::rand, 0, nodes::i_rand, nullptr},
    {ast::Builtin::username, ast::kDefaultStrSize, nullptr, nodes::s_username},
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

// reg("NAME"): bpftrace's x86-64 register names and where each is in hotprobe::Regs.
// bpftrace's orig_ax, cs and ss are kernel entry state that a user-space probe does not
// have; `flags` is meaningful where the probed instruction's flags are live (not at a
// function's entry).
struct RegName {
  std::string_view name;
  std::size_t offset;  // in Regs
};
// `pc` is bpftrace's alias of `ip`. One per line (clang-format would fill the lines).
// clang-format off
inline constexpr std::array<RegName, 19> kRegNames = {{
    {"r15", offsetof(Regs, r15)},
    {"r14", offsetof(Regs, r14)},
    {"r13", offsetof(Regs, r13)},
    {"r12", offsetof(Regs, r12)},
    {"bp", offsetof(Regs, rbp)},
    {"bx", offsetof(Regs, rbx)},
    {"r11", offsetof(Regs, r11)},
    {"r10", offsetof(Regs, r10)},
    {"r9", offsetof(Regs, r9)},
    {"r8", offsetof(Regs, r8)},
    {"ax", offsetof(Regs, rax)},
    {"cx", offsetof(Regs, rcx)},
    {"dx", offsetof(Regs, rdx)},
    {"si", offsetof(Regs, rsi)},
    {"di", offsetof(Regs, rdi)},
    {"ip", offsetof(Regs, rip)},
    {"pc", offsetof(Regs, rip)},
    {"flags", offsetof(Regs, rflags)},
    {"sp", offsetof(Regs, rsp)},
}};
// clang-format on
inline const RegName* find_reg(std::string_view name) {
  for (const RegName& r : kRegNames)
    if (r.name == name) return &r;
  return nullptr;
}

}  // namespace hotprobe::script
