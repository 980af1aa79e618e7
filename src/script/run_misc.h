// The run pass for loops and the small builtins (docs/design/script-language.md,
// "Positional parameters, loops, small builtins"): their node functions and the
// lowering of them (lower_loops.cc). Internal to the script layer.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include "hotprobe/result.h"
#include "script/ast.h"
#include "script/eval.h"

namespace hotprobe::script {

// bpftrace's settings from the environment (BPFTRACE_STACK_MODE=perf), which take
// precedence over the script's config block: the hotprobe command reads them and adds one
// comment line a setting after the script (`//hotprobe-env stack_mode=perf`), which the
// parser reads, so the command and the agent compile the same program.
inline constexpr std::string_view kEnvSettingPrefix = "\n//hotprobe-env ";
std::string env_settings_line(std::string_view key, std::string_view value);

// The config block's settings the command acts on (empty: not set).
struct ScriptSettings {
  std::string stack_mode;
  std::string missing_probes;  // error, warn or ignore
};
ScriptSettings script_settings(std::string_view source);

// missing_probes = "warn" or "ignore": the command looks each uprobe's function up in its
// module and adds a line `//hotprobe-skip PROBE` (the probe's expanded text) for each one
// it does not find; the parser leaves those probes out.
inline constexpr std::string_view kSkipProbePrefix = "\n//hotprobe-skip ";

// uaddr("NAME"): the command resolves NAME in each uprobe module of the action that uses
// it (the module as written) and adds a line after the script that the checker reads:
// `//hotprobe-uaddr MODULE<TAB>NAME<TAB>VALUE<TAB>SIZE<TAB>PATH` (st_value and st_size in
// hex, PATH the module's file), or VALUE `-` when the file has no such symbol.
inline constexpr std::string_view kUaddrPrefix = "\n//hotprobe-uaddr ";
std::string uaddr_line(std::string_view module, std::string_view name, std::uint64_t value,
                       std::uint64_t size, std::string_view path, bool found);

// Calls `fn` on every expression of `program`'s actions (predicates and statements), each
// before its operands, with the action that holds it.
void for_each_expr(ast::Program& program, const std::function<void(ast::Action&, ast::Expr&)>& fn);

namespace nodes {

// Builtins. ncpus and username are read once, when a script is lowered (misc_init_once);
// rand keeps its state per thread: no hit writes a cache line another thread reads.
std::int64_t i_ncpus(const Node*, Frame&);
std::int64_t i_rand(const Node*, Frame&);
std::uint32_t s_username(const Node*, Frame&, char* out);

// Functions: a, b their arguments, imm strncmp's length.
std::int64_t i_strncmp(const Node* n, Frame& f);
std::int64_t i_strcontains(const Node* n, Frame& f);
std::int64_t i_signal(const Node* n, Frame& f);
// system() and cat() (--unsafe): the command or path, formatted as printf's (n->format,
// n->keys) but unescaped, handed to the sink as a request: the hotprobe command runs it.
std::int64_t i_system(const Node* n, Frame& f);
std::int64_t i_cat(const Node* n, Frame& f);
std::uint32_t s_ntop(const Node* n, Frame& f, char* out);
std::uint32_t s_macaddr(const Node* n, Frame& f, char* out);

// Loops. SNode::count packs the action's hidden slots: the iteration budget (bits 0-7),
// the break/continue flag (8-15), for's variable (16-23).
bool st_while(const SNode* s, Frame& f);
bool st_for(const SNode* s, Frame& f);
// for ($kv : @m): the entries of map s->value->map as they are when the loop starts (a
// snapshot, merged over threads as print(@m) merges them), each in $kv's element slots
// (slot + 1 the key, slot + 2 the value; the slot in bits 16-23 of count).
bool st_for_map(const SNode* s, Frame& f);
// len(@m): the entries of map n->map.
std::int64_t i_len(const Node* n, Frame& f);
bool st_break(const SNode* s, Frame& f);
bool st_continue(const SNode* s, Frame& f);

// sarg0..sarg9 (imm: N): the 8-byte stack slot N above the return address at a function's
// entry, [rsp + 8 * (N + 1)], as bpftrace reads it at a uprobe; unreadable: 0 and a fault.
std::int64_t i_sarg(const Node* n, Frame& f);
// pcomm: the name of the parent process (bpftrace's task->real_parent->comm), read from
// /proc once per parent: a hit checks getppid() against the one it was read for.
// leader_comm: the thread group leader's name (task->group_leader->comm), read once per
// process (getpid()); a leader renamed after the first hit keeps its first name.
std::uint32_t s_pcomm(const Node*, Frame&, char* out);
std::uint32_t s_leader_comm(const Node*, Frame&, char* out);

// ncpus, once per process; username too (once) when `username` is true.
void misc_init_once(bool username);

}  // namespace nodes

namespace lowering {

class Lowerer;

inline bool is_misc_func(ast::Func f) {
  using F = ast::Func;
  return f == F::strncmp || f == F::strcontains || f == F::uptr || f == F::signal || f == F::ntop ||
         f == F::macaddr || f == F::system || f == F::cat || f == F::len;
}
// The call `e` (is_misc_func) into `n`, made for it.
Result<const Node*> lower_misc_call(Lowerer& low, const ast::Expr& e, Node* n);
// ustack(...) or usym(addr) as a value (the checker typed it a string: run_stack.h) into
// `n`, made for it.
Result<const Node*> lower_stack_value(Lowerer& low, const ast::Expr& e, Node* n);
// The builtins named here rather than in kBuiltins (sarg0..sarg9, pcomm, leader_comm): N
// for sargN, kPcomm or kLeaderComm, -1 for another name.
inline constexpr int kPcomm = 100;
inline constexpr int kLeaderComm = 101;
inline int extra_builtin(std::string_view name) {
  if (name == "pcomm") return kPcomm;
  if (name == "leader_comm") return kLeaderComm;
  if (name.size() == 5 && name.starts_with("sarg") && name[4] >= '0' && name[4] <= '9')
    return name[4] - '0';
  return -1;
}
// The node of such a builtin `e` into `n`; false for another.
bool lower_extra_builtin(const ast::Expr& e, Node* n);
// A while, for, break or continue statement.
Result<void> lower_loop(Lowerer& low, const ast::Stmt& st, SNode& out);

}  // namespace lowering

}  // namespace hotprobe::script
