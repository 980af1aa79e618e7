// The typed AST of hotprobe's script language (a subset of bpftrace 0.17).
//
// THIS HEADER IS THE CONTRACT BETWEEN THE FRONT END (lexer, parser, checker: src/script/
// lexer, parser, check, diag) AND THE BACK END (evaluator, maps, printers). Additions are
// fine; changing or removing a field needs both sides to agree.
//
//   auto prog = script::parse(source, "trace.bt");     // Result<ast::Program>
//   if (prog) { auto ok = script::check(*prog); }        // annotates types, maps, slots
//
// Shape: plain structs; children are std::unique_ptr<Expr> and std::vector<Stmt>; kinds are
// enums, so the back end lowers with a switch. parse() fills the syntax; check() fills
// everything marked "[check]" below. After a successful check():
//   - every Expr has `type` (integer, string, or none for calls with no value; a map read
//     has the map's value type, see MapInfo::kind) and, for strings, `str_size`;
//   - every map access (Expr::Kind::map) has `map_id`, an index into Program::maps;
//   - every $variable (Expr::Kind::variable) has `slot`, an index into its Action's
//     scratch slots [0, Action::num_slots);
//   - every printf call has its parsed `format`; every call has its `func` enum;
//   - every builtin is a Builtin enum.
// Locations are 1-based line and column, and a length in bytes (on that line).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "script/ctypes.h"
#include "script/format_spec.h"
#include "script/program.h"
#include "script/value_kind.h"

namespace hotprobe::script::ast {

struct Loc {
  int line = 0;    // 1-based
  int column = 0;  // 1-based, in bytes
  int length = 1;  // bytes covered on `line` (at least 1)
};

// The value types of the language. bpftrace's integers are 64-bit; the language
// (like bpftrace's int64 arithmetic) computes in two's complement 64-bit.
enum class Type : std::uint8_t {
  none,     // no value: printf(), delete(), clear(), exit(), ...; or not yet checked
  integer,  // int64
  string,   // a NUL-terminated string of at most str_size bytes (including the NUL)
  object,   // a struct, union or array in the traced program's memory (Expr::ctype says
            // which): only its fields or elements are read; evaluated, it is its address
  // Map key parts only (the checker refuses them anywhere else): the hit stores words,
  // the printer names them (docs/design/script-language.md, "Stacks and symbols").
  ustack,       // ustack / ustack(N) / ustack(bpftrace[, N]): str_size is N
  ustack_perf,  // ustack(perf[, N]): str_size is N
  usym,         // usym(addr): an address, printed as the symbol holding it
  // (a, b, ...): a tuple literal or a $variable holding one (Expr::elems, VarInfo::elems);
  // its elements are integers or strings. A tuple variable's elements live in hidden
  // slots (VarInfo::slot + 1 + k), so `$t.k` reads one slot.
  tuple,
  // An array or a struct/union read whole (`$a = $s->arr`, `@m = *$p`): a copy of its
  // bytes, `ctype` says which type and `str_size` how many (at most kStrBytes). It is
  // carried where strings are (a $variable's string slot, a map key part or value of
  // kStrWords words) and printed by its layout (script/layout.h).
  record,
};

// One element of a tuple type.
struct TupleElem {
  Type type = Type::integer;   // integer, string or record
  std::uint32_t str_size = 0;  // strings: maximum size including the NUL; records: size
  int ctype = -1;
};
// A tuple's elements, at most (each costs a slot of its action and, where a tuple is
// assigned or printed, a string buffer on the probed thread's stack).
inline constexpr std::size_t kMaxTupleElems = 16;

// ustack's limit: bpftrace accepts up to 1024; the frames kept are at most
// kUstackFrames, the kernel's perf_event_max_stack default that bounds bpftrace's stacks
// too (so ustack(200) prints what bpftrace prints). ustack without a limit keeps them all.
inline constexpr std::int64_t kMaxUstackLimit = 1024;
inline constexpr std::uint32_t kUstackFrames = 127;
// join(): the array entries printed at most, and the bytes of each (bpftrace 0.17's).
inline constexpr std::uint32_t kJoinEntries = 16;
inline constexpr std::uint32_t kJoinEntryBytes = 64;

// Default maximum string size (bpftrace's BPFTRACE_STRLEN default), including the NUL.
inline constexpr std::uint32_t kDefaultStrSize = 64;
// printf's values after the format, at most (bpftrace takes 127; each costs the evaluator
// a string buffer on the probed thread's stack).
inline constexpr std::size_t kMaxPrintfArgs = 32;
// comm's size (TASK_COMM_LEN).
inline constexpr std::uint32_t kCommSize = 16;

enum class Builtin : std::uint8_t {
  arg0,
  arg1,
  arg2,
  arg3,
  arg4,
  arg5,
  retval,   // uretprobe only
  tid,      // gettid()
  pid,      // getpid()
  comm,     // string: the thread's name (/proc/self/task/TID/comm)
  nsecs,    // CLOCK_MONOTONIC ns (bpftrace: ktime_get_ns)
  elapsed,  // ns since the program started (run_begin)
  func,     // string: the probed function's name (uprobe/uretprobe only)
  probe,    // string: the probe's full text, e.g. "uprobe:/usr/lib/libc.so.6:malloc"
  cpu,      // sched_getcpu()
  uid,
  gid,
  ncpus,     // the CPUs configured (docs/design/script-language.md, "Loops, ...")
  rand,      // a pseudo-random uint32, from per-thread state
  username,  // string: the name of uid, resolved when the script is lowered
};

// Calls. Aggregations (count..lhist) are only valid as the whole right-hand side of a map
// assignment (`@m[k] = count()`); the checker enforces it.
enum class Func : std::uint8_t {
  count,   // count()
  sum,     // sum(int)
  avg,     // avg(int)
  min,     // min(int)
  max,     // max(int)
  stats,   // stats(int)
  hist,    // hist(int)
  lhist,   // lhist(int, min, max, step): min/max/step are integer literals (MapInfo::lhist)
  del,     // delete(@m[k...]): args[0] is a map access with all its keys
  clear,   // clear(@m): args[0] is a map Expr with no keys (the whole map)
  zero,    // zero(@m): likewise
  print,   // print(@m [, top [, div]]) for a whole map (args[0] map Expr with no keys and
           // MapInfo of it), or print(expr) for a value (args[0] any int/string Expr)
  printf,  // printf("fmt", args...): args[0] is the format string literal; Expr::format
  time,    // time() or time("strftime fmt"): args[0], if any, is a string literal
  exit,    // exit()
  str,     // str(ptr [, len]): string, read from user memory; never faults
  // The small builtins (check_misc.cc, run_misc.*): strncmp(s, t, N), strcontains(s, t),
  // uptr(p), signal(SIG) (--unsafe), system(fmt, ...) and cat(fmt, ...) (--unsafe; run by
  // hotprobe outside the hit), ntop([af,] addr), macaddr(p).
  strncmp,
  strcontains,
  uptr,
  signal,
  system,
  cat,
  ntop,
  macaddr,
  ustack,    // ustack([MODE][, N]) as a map key (Type::ustack / ustack_perf)
  usym,      // usym(addr) as a map key (Type::usym)
  reg,       // reg("name"): integer, a register of the probed thread (bpftrace's names)
  strftime,  // strftime("fmt", nsecs): string, nsecs since boot as local time
  join,      // join(argv [, "sep"]): prints a NULL-ended char* array's strings
  buf,       // buf(ptr, n): string, n bytes with the unprintable ones as \xNN text
  len,       // len(@m): the entries of map @m (args[0] a map Expr with no keys)
};

inline constexpr bool is_aggregation(Func f) {
  return f == Func::count || f == Func::sum || f == Func::avg || f == Func::min || f == Func::max ||
         f == Func::stats || f == Func::hist || f == Func::lhist;
}

enum class UnaryOp : std::uint8_t { neg, lnot, bnot };  // - ! ~

enum class BinaryOp : std::uint8_t {
  mul,
  div,
  mod,
  add,
  sub,
  shl,
  shr,
  lt,
  le,
  gt,
  ge,
  eq,
  ne,
  band,  // &
  bxor,  // ^
  bor,   // |
  land,  // && (short-circuit)
  lor,   // || (short-circuit)
};
inline constexpr std::size_t kBinaryOps = static_cast<std::size_t>(BinaryOp::lor) + 1;

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  Expr() = default;
  Expr(Expr&&) = default;
  Expr& operator=(Expr&&) = default;
  // Frees the subtree with a loop, not a recursion: the stack it uses does not grow with
  // the tree's height.
  ~Expr();

  enum class Kind : std::uint8_t {
    integer,    // literal: `value`
    string,     // literal: `text` (escapes decoded)
    builtin,    // `name` as written; `builtin` [check]
    variable,   // $name: `name` ("$x"), `slot` [check]
    map,        // @name[args...]: `name` ("@x", "@" for the anonymous map), `args` are the
                // keys (empty: no key, or the whole map inside print/clear/zero), `map_id`
    unary,      // `unary` args[0]
    binary,     // `binary` args[0] args[1]
    ternary,    // args[0] ? args[1] : args[2]
    call,       // `name` as written, `func` [check], with `args`
    incdec,     // ++/-- on args[0] (a variable or map access): `increment`, `prefix`
    cast,       // (`cast_type`) args[0]
    deref,      // *args[0]
    field,      // args[0].name, or args[0]->name when `arrow`
    index,      // args[0][args[1]]
    sizeof_,    // sizeof(`cast_type`) or sizeof(args[0]); check() folds it to an integer
    offsetof_,  // offsetof(`cast_type`, `name`: "a.b"); check() folds it to an integer
    tuple,      // (args[0], args[1], ...): two elements or more. `$t.N` is a field whose
                // `name` is the digits N; check() turns it into a read of the element's slot
  };
  Kind kind = Kind::integer;
  Loc loc;

  std::int64_t value = 0;  // integer literal (0xffffffffffffffff is stored as -1)
  std::string text;        // string literal
  std::string name;        // variable "$x", map "@x", call "count" (as written)
  Builtin builtin = Builtin::arg0;
  UnaryOp unary = UnaryOp::neg;
  BinaryOp binary = BinaryOp::add;
  Func func = Func::count;
  bool increment = true;  // incdec: ++ (true) or -- (false)
  bool prefix = false;    // incdec: ++x (true; value after) or x++ (false; value before)
  std::vector<ExprPtr> args;
  std::vector<FormatSpec> format;  // printf: the parsed format [check]
  int height = 1;                  // of this subtree: 1 for a leaf (script/parser.h: kMaxExprDepth)
  int cast_type = -1;              // cast, sizeof_, offsetof_: a type of Program::types
  bool arrow = false;              // field: `->`

  // [check]
  Type type = Type::none;
  std::uint32_t str_size = 0;  // strings: maximum size including the NUL
  int map_id = -1;             // Kind::map
  int slot = -1;               // Kind::variable
  // The C type of an integer or object value (Program::types), -1 for a plain int64 or a
  // string. binary add/sub of a pointer and an integer: `value` is the pointee's size, by
  // which the integer is scaled; binary < <= > >=: `value` 1 compares unsigned (an
  // operand is an unsigned C type or a pointer, as bpftrace compares).
  int ctype = -1;
  int usdt_arg = -1;             // builtin argN of an action of usdt probes: N (script/run_usdt.h)
  std::vector<TupleElem> elems;  // Type::tuple: the element types
};

inline Expr::~Expr() {
  if (args.empty()) return;
  std::vector<ExprPtr> pending = std::move(args);
  while (!pending.empty()) {
    ExprPtr e = std::move(pending.back());
    pending.pop_back();
    if (!e) continue;
    for (ExprPtr& child : e->args)
      pending.push_back(std::move(child));
    e->args.clear();
  }  // each `e` is freed here with no children left
}

// Assignment operators: `=` or a compound form `op=` (applied as target = target op value).
struct AssignOp {
  bool compound = false;
  BinaryOp op = BinaryOp::add;  // meaningful when compound: add sub mul div mod band bor
                                // bxor shl shr
};

struct Stmt {
  enum class Kind : std::uint8_t {
    expr,     // `expr` evaluated for its effect (calls, ++/--)
    assign,   // `target` (Kind::variable or Kind::map) `assign` `value`; for a map whose
              // MapInfo::kind is an aggregation, `value` is the aggregation call
    if_,      // if (`cond`) { `body` } else { `else_body` }; `else if` is an else_body of one if_
    unroll,   // unroll (`count`) { `body` }
    return_,  // return; (ends the action)
    // Loops (check_misc.cc, lower_loops.cc): while (`cond`) { `body` }; for (`target` :
    // `value`..`cond`) { `body` }; for (`target` : `value`) { `body` } over map `value`
    // (a map Expr with no keys; `cond` null): `target` is a (key, value) tuple;
    // break; continue. `count`: the hidden slots (checker).
    while_,
    for_,
    break_,
    continue_,
  };
  Kind kind = Kind::expr;
  Loc loc;
  ExprPtr expr;    // expr
  ExprPtr target;  // assign
  AssignOp assign;
  ExprPtr value;  // assign
  ExprPtr cond;   // if_
  std::vector<Stmt> body;
  std::vector<Stmt> else_body;
  std::int64_t count = 0;  // unroll
};

// One probe as written, e.g. `uprobe:libc:malloc` or `interval:s:1`.
struct AttachPoint {
  Probe probe;  // kind, text (expanded: "u:" -> "uprobe:"), target, interval_ns, line, column
  Loc loc;
  std::string module;        // uprobe/uretprobe: as written ("libc", "/usr/lib/x.so", "./a.out")
  std::string function;      // uprobe/uretprobe: symbol or glob; empty for an address
  std::uint64_t offset = 0;  // +OFFSET (function != empty) or the 0xADDR (address)
  bool has_offset = false;   // "+OFFSET" was written
  bool is_address = false;   // "MOD:0xADDR"
  bool is_glob = false;      // function contains * ? or [
  // usdt:PATH:[PROVIDER:]NAME: a uprobe whose probe.target is PATH:usdt:[PROVIDER:]NAME
  // (the Resolver's form, include/hotprobe/probe.h); argN decode the note's arguments.
  bool usdt = false;
  // uprobe:MODULE@FILE:LINE[:COLUMN]: "@FILE:LINE[:COLUMN]"; the parse takes the line's
  // address from the type facts (elf::dwarf_line_fact) and makes it MODULE:0xADDR.
  std::string source_line;
};

// A scratch variable of one action.
struct VarInfo {
  std::string name;  // "$x"
  int slot = 0;
  Type type = Type::none;
  std::uint32_t str_size = 0;
  int ctype = -1;                // pointers keep their type (Expr::ctype)
  Loc first;                     // first assignment
  std::vector<TupleElem> elems;  // Type::tuple: element k is in the hidden slot slot + 1 + k
};

// PROBE[, PROBE...] [/PREDICATE/] { STATEMENTS }
struct Action {
  Loc loc;  // of the first probe
  std::vector<AttachPoint> probes;
  ExprPtr predicate;  // null when absent
  std::vector<Stmt> body;
  // [check]
  std::vector<VarInfo> vars;  // index == slot
  int num_slots = 0;
};

struct MapInfo {
  std::string name;  // "@x"
  int id = 0;        // index in Program::maps
  // Fixed by the first assignment; none: never assigned (only read, deleted, printed...),
  // which the checker reports.
  std::optional<ValueKind> kind;
  std::vector<Type> key_types;           // arity = key_types.size(); 0: a scalar map
  bool keyed = false;                    // key_types are known (the map was accessed)
  std::vector<std::uint32_t> key_sizes;  // string keys: max size; 0 for integers
  std::vector<int> key_ctypes;           // Type::record keys: the C type; -1 for the others
  std::uint32_t str_size = 0;            // ValueKind::string values: max size
  int ctype = -1;                        // ValueKind::integer values that are pointers keep
                                         // their type (@p[tid] = (struct s *)arg0);
                                         // ValueKind::record: the array or struct type
  std::int64_t lhist_min = 0, lhist_max = 0, lhist_step = 0;  // ValueKind::lhist
  std::vector<TupleElem> elems;                               // ValueKind::tuple
  Loc first;                                                  // first use
};

struct Program {
  std::string filename;  // for messages
  std::string source;    // the whole text (diagnostics quote its lines)
  std::vector<Action> actions;
  std::vector<MapInfo> maps;  // [check]; id == index, in order of first appearance
  TypeTable types;            // the script's struct/union/enum definitions and every type named
  TypeFacts facts;            // DWARF parameters and included headers (script/check_args.h)
  // config = { ... } (docs/design/script-language.md, "config"): the settings honoured.
  bool print_maps_on_exit = true;
  // The command line's positional parameters ($1.., $#) and --unsafe (CompileOptions).
  std::vector<std::string> params;
  bool unsafe = false;
};

// Every probe of `program`, in source order (the shape of Program::probes()).
inline std::vector<Probe> flatten_probes(const Program& program) {
  std::vector<Probe> out;
  for (const Action& a : program.actions) {
    for (const AttachPoint& p : a.probes)
      out.push_back(p.probe);
  }
  return out;
}

// Names for messages and printing.
// The names of the builtins and the functions, in their enums' order: the checker
// resolves names with them ("did you mean" too), messages print them.
inline constexpr std::array<std::string_view, 20> kBuiltinNames = {
    "arg0",  "arg1",    "arg2", "arg3",  "arg4", "arg5", "retval", "tid",   "pid",  "comm",
    "nsecs", "elapsed", "func", "probe", "cpu",  "uid",  "gid",    "ncpus", "rand", "username"};
inline constexpr std::array<std::string_view, 31> kFuncNames = {
    "count",   "sum",         "avg",  "min",      "max",    "stats", "hist", "lhist",
    "delete",  "clear",       "zero", "print",    "printf", "time",  "exit", "str",
    "strncmp", "strcontains", "uptr", "signal",   "system", "cat",   "ntop", "macaddr",
    "ustack",  "usym",        "reg",  "strftime", "join",   "buf",   "len"};
static_assert(kBuiltinNames.size() == static_cast<std::size_t>(Builtin::username) + 1);
static_assert(kFuncNames.size() == static_cast<std::size_t>(Func::len) + 1);

inline std::string_view to_string(Builtin b) {
  return kBuiltinNames[static_cast<std::size_t>(b)];
}
inline std::string_view to_string(Func f) {
  return kFuncNames[static_cast<std::size_t>(f)];
}
// An operator as the script spells it (the lexer reads a binary operator by it).
constexpr std::string_view to_string(BinaryOp op) {
  constexpr std::string_view kNames[] = {"*", "/",  "%",  "+",  "-", "<<", ">>", "<",  "<=",
                                         ">", ">=", "==", "!=", "&", "^",  "|",  "&&", "||"};
  static_assert(std::size(kNames) == kBinaryOps);
  return kNames[static_cast<int>(op)];
}
inline std::string_view to_string(UnaryOp op) {
  static constexpr std::string_view kNames[] = {"-", "!", "~"};
  return kNames[static_cast<int>(op)];
}

}  // namespace hotprobe::script::ast

namespace hotprobe::script {

// Parses `src` into an AST (syntax only). Errors: Errc::invalid_argument whose message is
// every diagnostic rendered (FILE:LINE:COL-END: ERROR: MESSAGE, the line, the ~~~ marks).
Result<ast::Program> parse(std::string_view src, std::string_view filename = "-e");

// Semantic analysis: types, maps, slots, probe rules. Errors as parse().
Result<void> check(ast::Program& program);

}  // namespace hotprobe::script
