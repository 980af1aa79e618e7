// The check pass (docs/design/script-language.md, "Type rules"): the Checker walks the
// parsed AST, types every expression, resolves maps, variables and C types, and reports
// what is wrong. Statements and maps are checked in check.cc, expressions in
// check_expr.cc, calls and builtins in check_calls.cc. Internal to the script layer;
// check.h is the entry point.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "script/ast.h"
#include "script/builtins.h"
#include "script/diag.h"

namespace hotprobe::script::checking {

using ast::Builtin;
using ast::Expr;
using ast::Func;
using ast::Loc;
using ast::Stmt;
using ast::Type;

using ast::kBuiltinNames;
using ast::kFuncNames;

// What an expression yields, as the checker sees it: a value type, or a read of an
// aggregation map (usable only as print/clear/zero/delete's argument), or an error
// already reported (no more messages about it).
struct Value {
  Type type = Type::none;
  std::optional<ValueKind> agg;  // an aggregation map read
  // Strings: the maximum size. Type::tuple: the index of its element types in the
  // checker's table (Checker::elems_of); a Value stays 16 bytes, returned in registers.
  std::uint32_t size = 0;
  bool error = false;
  int ctype = -1;  // the C type (TypeTable) of an integer or object value; -1: int64

  static Value integer() { return Value{Type::integer, std::nullopt, 0, false}; }
  static Value string(std::uint32_t n) { return Value{Type::string, std::nullopt, n, false}; }
  static Value bad() { return Value{Type::none, std::nullopt, 0, true}; }
  bool is_int() const { return type == Type::integer && !agg; }
  static Value typed(int ctype) { return Value{Type::integer, std::nullopt, 0, false, ctype}; }
  static Value object(int ctype) { return Value{Type::object, std::nullopt, 0, false, ctype}; }
  bool is_str() const { return type == Type::string && !agg; }
};

bool is_agg_kind(std::optional<ValueKind> k);
// The kind of the map an aggregation function `f` fills; none for any other function.
std::optional<ValueKind> agg_kind_of(Func f);
// The type as bpftrace names it in "Type mismatch" messages.
std::string type_name(const Value& v);
// A tuple type as bpftrace names it: (int64,string).
std::string tuple_name(const std::vector<ast::TupleElem>& elems);
// As printf's messages name it.
std::string printf_type_name(const Value& v);
std::string map_type_name(const ast::MapInfo& m);
std::string key_list(const std::vector<Type>& keys);
std::string_view probe_kind_name(Probe::Kind k);
// An integer literal, possibly negated: lhist's bounds.
bool constant(const Expr& e, std::int64_t& out);
// $1..$N and $# become literals of Program::params (check_misc.cc).
void resolve_params(ast::Program& program, Diagnostics& diags);

class Checker {
 public:
  Checker(ast::Program& program, Diagnostics& diags) : program_(program), diags_(diags) {
    for (const ast::MapInfo& m : program_.maps)
      map_ids_.emplace(m.name, m.id);
  }

  void run() {
    for (ast::Action& a : program_.actions)
      action(a);
  }

 private:
  void error(Loc loc, std::string message) { diags_.error(loc, std::move(message)); }

  void action(ast::Action& a);

  void statements(std::vector<Stmt>& body) {
    for (Stmt& s : body)
      statement(s);
  }

  void statement(Stmt& s);

  ast::VarInfo* find_var(const std::string& name);

  void undefined_variable(Expr& e);

  void annotate(Expr& e, const Value& v);

  void assign_variable(Stmt& s);

  bool is_pointer(int ctype) const {
    return ctype >= 0 && program_.types.at(ctype).kind == ast::CType::Kind::pointer;
  }

  // The map of `e` (Kind::map), created on first sight; its keys checked against earlier
  // accesses (`whole`: print(@m), clear(@m): no keys to check).
  ast::MapInfo& map_of(Expr& e, bool whole);

  void map_kind_mismatch(const Expr& target, const ast::MapInfo& m, const std::string& what) {
    error(target.loc, "Type mismatch for " + m.name + ": trying to assign value of type '" + what +
                          "' when map already contains a value of type '" + map_type_name(m) + "'");
  }

  void assign_map(Stmt& s);

  void annotate_map(Expr& e);

  void set_lhist(ast::MapInfo& m, const Expr& call);

  // Checks an aggregation call's arguments; false if they are wrong.
  bool aggregation(Expr& call);

  // A value in an expression (operand, argument, assigned value, condition).
  Value value(Expr& e);
  // An object used as a value: a char array (any array of 1-byte integers) reads as a
  // string, as bpftrace reads it; a struct or another array cannot be a value.
  [[gnu::noinline]] Value object_value(Expr& e, const Value& v);

  std::string cname(int ctype) const {
    return ctype < 0 ? std::string("int64") : program_.types.name(ctype);
  }

  // What reading memory of type `t` yields: an integer (typed), or an object.
  [[gnu::noinline]] Value memory_value(Expr& e, int t);

  // `args` as a whole (check_args.h: rewrite_args_record).
  [[gnu::noinline]] Value args_value(Expr& e);

  // The pointee of pointer value `p` (else an error naming the way out).
  int pointee(Expr& e, const Value& p, std::string_view what);

  [[gnu::noinline]] Value cast(Expr& e);

  [[gnu::noinline]] Value deref(Expr& e);

  [[gnu::noinline]] Value field(Expr& e);

  // Tuples (check_tuple.cc): a literal, `$t.N`, and the element slots of a tuple variable.
  [[gnu::noinline]] Value tuple(Expr& e);
  [[gnu::noinline]] Value tuple_index(Expr& e);
  [[gnu::noinline]] Value packed_tuple(Expr& e);
  Value tuple_of(std::vector<ast::TupleElem> elems) {
    tuple_types_.push_back(std::move(elems));
    return Value{Type::tuple, std::nullopt, static_cast<std::uint32_t>(tuple_types_.size() - 1),
                 false};
  }
  // Valid until the next tuple_of().
  const std::vector<ast::TupleElem>& elems_of(const Value& v) const { return tuple_types_[v.size]; }
  void assign_tuple(std::size_t var_index, const Value& v, Expr& target);
  void assign_map_tuple(ast::MapInfo& m, const Value& v, Expr& target);
  void tuple_keys(Expr& map);
  std::size_t tuple_record_elems(const Expr& k);
  // The next value() may be a tuple (an assignment to a variable, print(), `.N`).
  void allow_tuple() { tuple_ok_ = true; }

  [[gnu::noinline]] Value index(Expr& e);

  std::int64_t tuple_size(const std::vector<ast::TupleElem>& elems) const;
  // sizeof and offsetof fold to an integer literal.
  [[gnu::noinline]] Value size_or_offset(Expr& e);

  [[gnu::noinline, gnu::cold]] Value no_value(Expr& e);

  enum class Context { statement, value };

  Value expr(Expr& e, Context ctx);

  bool resolve_func(Expr& call);

  Value builtin(Expr& e);

  [[gnu::noinline]] Value variable(Expr& e);

  [[gnu::noinline]] Value unary(Expr& e);

  [[gnu::noinline]] Value ternary(Expr& e);

  [[gnu::noinline]] Value incdec(Expr& e);

  // Each kind's work is out of line: the recursion through expr_inner() (once per nesting
  // level) keeps a narrow frame (parser.h: the stack every pass may use).
  Value expr_inner(Expr& e, Context ctx);

  Value map_read(Expr& e, bool whole);
  // A map read in an expression: as map_read, a tuple value refused (check_tuple.cc).
  Value map_value(Expr& e);

  // A chain a+b+c+... is a left-deep tree as tall as it is long: its left spine is walked
  // in a loop, so the checker's stack grows with nesting only (parser.h: kMaxNesting).
  Value binary(Expr& e);

  bool is_unsigned(int ctype) const;

  [[gnu::noinline]] Value binary_operands(Expr& e, const Value& a, const Value& b);

  // The argument of print/clear/zero/delete: a map (whole, or one element for delete).
  bool map_argument(Expr& call, bool with_keys);

  Value call(Expr& e, Context ctx);
  // A map key: ustack and usym are typed here (check_calls.cc), the rest by value().
  Value key_value(Expr& k);
  Value ustack_key(Expr& e);
  Value usym_key(Expr& e);
  bool needs_registers(const Expr& e, std::string_view what);
  bool integer_argument(Expr& a, std::string_view expects);

  Value printf_call(Expr& e, Context ctx);

  // Loops and the small builtins (check_misc.cc).
  void loop_statement(Stmt& s);
  void map_loop(Stmt& s, std::int64_t slots);
  // An assignment, ++/--, delete, clear or zero of map `target` (map_id set): refused in
  // a for loop over that map.
  void not_iterated(const Expr& target);
  std::vector<int> iterated_;  // the maps of the for loops around the statement
  // if's and while's condition: an integer.
  void condition(Expr& cond, std::string_view statement);
  Value misc_call(Expr& e, Context ctx);
  bool unsafe_allowed(const Expr& e);
  bool only_uprobes(const Expr& e);
  int hidden_slot(const std::string& name);
  int loop_depth_ = 0;

 public:
  bool silent_undefined_ = false;

 private:
  ast::Program& program_;
  bool tuple_ok_ = false;
  std::vector<std::vector<ast::TupleElem>> tuple_types_;  // Value::size of a Type::tuple
  Diagnostics& diags_;
  ast::Action* action_ = nullptr;
  std::unordered_map<std::string, int> map_ids_;
  static constexpr std::int64_t kMaxUnrolled = 10000;  // iterations of nested unrolls
  std::int64_t unroll_product_ = 1;
};

}  // namespace hotprobe::script::checking
