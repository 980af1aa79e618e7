#include "script/check.h"

#include <algorithm>
#include <array>
#include <string>
#include <unordered_map>
#include <utility>

#include "script/parser.h"

namespace hotprobe::script {

namespace {

using ast::Builtin;
using ast::Expr;
using ast::Func;
using ast::Loc;
using ast::MapKind;
using ast::Stmt;
using ast::Type;

constexpr std::array<std::string_view, 17> kBuiltinNames = {
    "arg0", "arg1",  "arg2",    "arg3", "arg4",  "arg5", "retval", "tid", "pid",
    "comm", "nsecs", "elapsed", "func", "probe", "cpu",  "uid",    "gid"};
constexpr std::array<std::string_view, 16> kFuncNames = {
    "count",  "sum",   "avg",  "min",   "max",    "stats", "hist", "lhist",
    "delete", "clear", "zero", "print", "printf", "time",  "exit", "str"};

// What an expression yields, as the checker sees it: a value type, or a read of an
// aggregation map (usable only as print/clear/zero/delete's argument), or an error
// already reported (no more messages about it).
struct Value {
  Type type = Type::none;
  MapKind agg = MapKind::none;  // an aggregation map read
  std::uint32_t size = 0;       // strings
  bool error = false;
  int ctype = -1;  // the C type (TypeTable) of an integer or object value; -1: int64

  static Value integer() { return Value{Type::integer, MapKind::none, 0, false}; }
  static Value string(std::uint32_t n) { return Value{Type::string, MapKind::none, n, false}; }
  static Value bad() { return Value{Type::none, MapKind::none, 0, true}; }
  bool is_int() const { return type == Type::integer && agg == MapKind::none; }
  static Value typed(int ctype) { return Value{Type::integer, MapKind::none, 0, false, ctype}; }
  static Value object(int ctype) { return Value{Type::object, MapKind::none, 0, false, ctype}; }
  bool is_str() const { return type == Type::string && agg == MapKind::none; }
};

bool is_agg_kind(MapKind k) {
  return k != MapKind::none && k != MapKind::integer && k != MapKind::string;
}

MapKind agg_kind_of(Func f) {
  switch (f) {
    case Func::count:
      return MapKind::count;
    case Func::sum:
      return MapKind::sum;
    case Func::avg:
      return MapKind::avg;
    case Func::min:
      return MapKind::min;
    case Func::max:
      return MapKind::max;
    case Func::stats:
      return MapKind::stats;
    case Func::hist:
      return MapKind::hist;
    case Func::lhist:
      return MapKind::lhist;
    default:
      return MapKind::none;
  }
}

// The type as bpftrace names it in "Type mismatch" messages.
std::string type_name(const Value& v) {
  if (v.agg != MapKind::none) return std::string(ast::to_string(v.agg));
  if (v.type == Type::integer) return "int64";
  if (v.type == Type::string) return "string";
  if (v.type == Type::object) return "object";
  return "none";
}
// As printf's messages name it.
std::string printf_type_name(const Value& v) {
  if (v.agg != MapKind::none) return std::string(ast::to_string(v.agg));
  if (v.type == Type::integer) return "integer";
  if (v.type == Type::string) return "string";
  return "none";
}
std::string map_type_name(const ast::MapInfo& m) {
  if (m.kind == MapKind::integer) return "int64";
  return std::string(ast::to_string(m.kind));
}
std::string key_list(const std::vector<Type>& keys) {
  std::string s = "[";
  for (std::size_t i = 0; i < keys.size(); ++i) {
    if (i) s += ", ";
    s += keys[i] == Type::integer ? "int64" : keys[i] == Type::string ? "string" : "none";
  }
  return s + "]";
}

std::string_view probe_kind_name(Probe::Kind k) {
  switch (k) {
    case Probe::Kind::begin:
      return "BEGIN";
    case Probe::Kind::end:
      return "END";
    case Probe::Kind::uprobe:
      return "uprobe";
    case Probe::Kind::uretprobe:
      return "uretprobe";
    case Probe::Kind::interval:
      return "interval";
  }
  return "?";
}

// An integer literal, possibly negated: lhist's bounds.
bool constant(const Expr& e, std::int64_t& out) {
  if (e.kind == Expr::Kind::integer) {
    out = e.value;
    return true;
  }
  if (e.kind == Expr::Kind::unary && e.unary == ast::UnaryOp::neg &&
      e.args[0]->kind == Expr::Kind::integer) {
    out = -e.args[0]->value;
    return true;
  }
  return false;
}

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

  void action(ast::Action& a) {
    action_ = &a;
    a.vars.clear();
    a.num_slots = 0;
    if (a.predicate) {
      Value v = value(*a.predicate);
      if (!v.error && !v.is_int()) {
        error(a.predicate->loc, "Invalid type for predicate: " + type_name(v) +
                                    " (a predicate is an integer: 0 is false)");
      }
    }
    statements(a.body);
  }

  void statements(std::vector<Stmt>& body) {
    for (Stmt& s : body)
      statement(s);
  }

  void statement(Stmt& s) {
    switch (s.kind) {
      case Stmt::Kind::expr: {
        Value v = expr(*s.expr, Context::statement);
        (void)v;
        break;
      }
      case Stmt::Kind::assign:
        if (s.target->kind == Expr::Kind::variable) {
          assign_variable(s);
        } else {
          assign_map(s);
        }
        break;
      case Stmt::Kind::if_: {
        Value c = value(*s.cond);
        if (!c.error && !c.is_int()) {
          error(s.cond->loc, "Invalid condition in if(): " + type_name(c) +
                                 " (a condition is an integer: 0 is false)");
        }
        statements(s.body);
        statements(s.else_body);
        break;
      }
      case Stmt::Kind::unroll: {
        if (s.count < 1) error(s.cond->loc, "unroll minimum value is 1");
        if (s.count > 100) error(s.cond->loc, "unroll maximum value is 100");
        // Nested unrolls multiply: a hit must stay short whatever the script.
        const std::int64_t outer = unroll_product_;
        if (s.count >= 1 && s.count <= 100) unroll_product_ *= s.count;
        if (unroll_product_ > kMaxUnrolled && outer <= kMaxUnrolled) {
          error(s.cond->loc, "unroll nested too deeply: " + std::to_string(unroll_product_) +
                                 " iterations in all, at most " + std::to_string(kMaxUnrolled));
        }
        statements(s.body);
        unroll_product_ = outer;
        break;
      }
      case Stmt::Kind::return_:
        break;
    }
  }

  ast::VarInfo* find_var(const std::string& name) {
    for (ast::VarInfo& v : action_->vars) {
      if (v.name == name) return &v;
    }
    return nullptr;
  }

  void undefined_variable(Expr& e) {
    std::vector<std::string_view> names;
    for (const ast::VarInfo& v : action_->vars)
      names.push_back(v.name);
    error(e.loc, "Undefined or undeclared variable: " + e.name + did_you_mean(e.name, names));
  }

  void annotate(Expr& e, const Value& v) {
    e.type = v.agg != MapKind::none ? Type::none : v.type;
    e.str_size = v.type == Type::string ? v.size : 0;
    e.ctype = v.ctype;
  }

  void assign_variable(Stmt& s) {
    Expr& target = *s.target;
    Value v = value(*s.value);
    ast::VarInfo* var = find_var(target.name);
    if (s.assign.compound) {
      if (!var) {
        undefined_variable(target);
        return;
      }
      target.slot = var->slot;
      target.type = var->type;
      target.str_size = var->str_size;
      if (var->type != Type::integer) {
        error(target.loc, "Type mismatch for " + target.name + ": the " +
                              std::string(ast::to_string(s.assign.op)) +
                              "= operator needs an integer variable (it holds a string)");
      } else if (!v.error && !v.is_int()) {
        error(s.value->loc, "Type mismatch for " + target.name + ": trying to " +
                                std::string(ast::to_string(s.assign.op)) + "= a value of type '" +
                                type_name(v) + "' to an int64 variable");
      }
      return;
    }
    if (v.error) {
      if (var) target.slot = var->slot;
      return;
    }
    if (v.agg != MapKind::none) {
      error(s.value->loc, "Type mismatch for " + target.name +
                              ": trying to assign value of type '" + type_name(v) +
                              "' (an aggregation map is only printed, cleared or deleted from)");
      return;
    }
    if (!var) {
      ast::VarInfo info;
      info.name = target.name;
      info.slot = action_->num_slots++;
      info.type = v.type;
      info.str_size = v.size;
      info.ctype = v.ctype;
      info.first = target.loc;
      action_->vars.push_back(std::move(info));
      var = &action_->vars.back();
    } else if (var->type != v.type) {
      error(s.value->loc, "Type mismatch for " + target.name +
                              ": trying to assign value of type '" + type_name(v) +
                              "' when variable already contains a value of type '" +
                              type_name(Value{var->type, MapKind::none, 0, false}) + "'");
    } else if (var->ctype != v.ctype && is_pointer(var->ctype) && is_pointer(v.ctype)) {
      error(s.value->loc, "Type mismatch for " + target.name +
                              ": trying to assign value of type '" + cname(v.ctype) +
                              "' when variable already contains a value of type '" +
                              cname(var->ctype) + "'");
    } else {
      var->str_size = std::max(var->str_size, v.size);
      if (var->ctype != v.ctype && !is_pointer(var->ctype)) var->ctype = -1;
    }
    target.slot = var->slot;
    target.type = var->type;
    target.str_size = var->str_size;
    target.ctype = var->ctype;
  }

  bool is_pointer(int ctype) const {
    return ctype >= 0 && program_.types.at(ctype).kind == ast::CType::Kind::pointer;
  }

  // The map of `e` (Kind::map), created on first sight; its keys checked against earlier
  // accesses (`whole`: print(@m), clear(@m): no keys to check).
  ast::MapInfo& map_of(Expr& e, bool whole) {
    auto [it, inserted] = map_ids_.try_emplace(e.name, static_cast<int>(program_.maps.size()));
    if (inserted) {
      ast::MapInfo info;
      info.name = e.name;
      info.id = it->second;
      info.first = e.loc;
      program_.maps.push_back(std::move(info));
    }
    e.map_id = it->second;
    ast::MapInfo& m = program_.maps[static_cast<std::size_t>(e.map_id)];
    std::vector<Type> keys;
    std::vector<std::uint32_t> sizes;
    bool key_error = false;
    for (auto& k : e.args) {
      Value v = value(*k);
      if (v.error) {
        key_error = true;
      } else if (v.agg != MapKind::none) {
        error(k->loc, "Type mismatch for " + e.name + " key: an aggregation map ('" + type_name(v) +
                          "') cannot be used as a key");
        key_error = true;
      }
      keys.push_back(v.type);
      sizes.push_back(v.size);
    }
    if (whole || key_error) return m;
    if (!m.keyed) {
      m.keyed = true;
      m.key_types = keys;
      m.key_sizes = sizes;
    } else if (keys.size() != m.key_types.size()) {
      error(e.loc, "Argument mismatch for " + e.name + ": trying to access with " +
                       std::to_string(keys.size()) +
                       " arguments when it was previously accessed with " +
                       std::to_string(m.key_types.size()));
    } else if (keys != m.key_types) {
      error(e.loc, "Argument mismatch for " + e.name + ": trying to access with arguments: " +
                       key_list(keys) + " when map expects arguments: " + key_list(m.key_types));
    } else {
      for (std::size_t i = 0; i < sizes.size(); ++i) {
        m.key_sizes[i] = std::max(m.key_sizes[i], sizes[i]);
      }
    }
    return m;
  }

  void map_kind_mismatch(const Expr& target, const ast::MapInfo& m, const std::string& what) {
    error(target.loc, "Type mismatch for " + m.name + ": trying to assign value of type '" + what +
                          "' when map already contains a value of type '" + map_type_name(m) + "'");
  }

  void assign_map(Stmt& s) {
    Expr& target = *s.target;
    ast::MapInfo& m0 = map_of(target, false);
    int id = target.map_id;
    auto map = [&]() -> ast::MapInfo& { return program_.maps[static_cast<std::size_t>(id)]; };
    Expr& rhs = *s.value;
    if (!s.assign.compound && rhs.kind == Expr::Kind::call && resolve_func(rhs) &&
        ast::is_aggregation(rhs.func)) {
      (void)m0;
      if (!aggregation(rhs)) return;
      MapKind k = agg_kind_of(rhs.func);
      if (map().kind == MapKind::none) {
        map().kind = k;
        if (k == MapKind::lhist) set_lhist(map(), rhs);
      } else if (map().kind != k) {
        map_kind_mismatch(target, map(), std::string(ast::to_string(k)));
      } else if (k == MapKind::lhist) {
        std::int64_t lo = 0, hi = 0, step = 0;
        constant(*rhs.args[1], lo);
        constant(*rhs.args[2], hi);
        constant(*rhs.args[3], step);
        if (lo != map().lhist_min || hi != map().lhist_max || step != map().lhist_step) {
          error(rhs.loc, "lhist() arguments for " + map().name +
                             " differ from its first use (min, max and step are fixed per map)");
        }
      }
      annotate_map(target);
      return;
    }
    Value v = value(rhs);
    if (v.error) {
      annotate_map(target);
      return;
    }
    if (v.agg != MapKind::none) {
      map_kind_mismatch(target, map(), type_name(v));
      return;
    }
    if (s.assign.compound) {
      if (map().kind == MapKind::none) map().kind = MapKind::integer;
      if (map().kind != MapKind::integer) {
        error(target.loc, "Type mismatch for " + map().name + ": the " +
                              std::string(ast::to_string(s.assign.op)) +
                              "= operator needs an int64 map (it holds '" + map_type_name(map()) +
                              "')");
      } else if (!v.is_int()) {
        map_kind_mismatch(target, map(), type_name(v));
      }
      annotate_map(target);
      return;
    }
    MapKind k = v.type == Type::string ? MapKind::string : MapKind::integer;
    if (map().kind == MapKind::none) {
      map().kind = k;
      if (is_pointer(v.ctype)) map().ctype = v.ctype;
    }
    if (map().kind != k) {
      map_kind_mismatch(target, map(), type_name(v));
    } else if (map().ctype != v.ctype && is_pointer(map().ctype) && is_pointer(v.ctype)) {
      error(s.value->loc, "Type mismatch for " + map().name + ": trying to assign value of type '" +
                              cname(v.ctype) + "' when map already contains a value of type '" +
                              cname(map().ctype) + "'");
    } else if (k == MapKind::string) {
      map().str_size = std::max(map().str_size, v.size);
    }
    annotate_map(target);
  }

  void annotate_map(Expr& e) {
    const ast::MapInfo& m = program_.maps[static_cast<std::size_t>(e.map_id)];
    e.type = m.kind == MapKind::integer  ? Type::integer
             : m.kind == MapKind::string ? Type::string
                                         : Type::none;
    e.str_size = m.kind == MapKind::string ? m.str_size : 0;
  }

  void set_lhist(ast::MapInfo& m, const Expr& call) {
    constant(*call.args[1], m.lhist_min);
    constant(*call.args[2], m.lhist_max);
    constant(*call.args[3], m.lhist_step);
  }

  // Checks an aggregation call's arguments; false if they are wrong.
  bool aggregation(Expr& call) {
    call.type = Type::none;
    std::string name(ast::to_string(call.func));
    std::size_t n = call.args.size();
    std::vector<Value> args;
    for (auto& a : call.args)
      args.push_back(value(*a));
    if (call.func == Func::count) {
      if (n != 0) {
        error(call.loc, "count() requires no arguments (" + std::to_string(n) + " provided)");
        return false;
      }
      return true;
    }
    if (call.func == Func::lhist) {
      if (n != 4) {
        error(call.loc, "lhist() requires 4 arguments (" + std::to_string(n) + " provided)");
        return false;
      }
    } else if (n != 1) {
      error(call.loc, name + "() requires one argument (" + std::to_string(n) + " provided)");
      return false;
    }
    bool ok = true;
    if (!args[0].error && !args[0].is_int()) {
      error(call.args[0]->loc,
            name + "() expects an integer argument (" + printf_type_name(args[0]) + " provided)");
      ok = false;
    }
    if (call.func == Func::lhist) {
      std::int64_t c[3] = {};
      for (int i = 1; i < 4; ++i) {
        if (!constant(*call.args[static_cast<std::size_t>(i)], c[i - 1])) {
          error(call.args[static_cast<std::size_t>(i)]->loc,
                "lhist() expects an integer literal for its min, max and step (arguments 2 to 4)");
          ok = false;
        }
      }
      if (ok && c[2] < 1) {
        error(call.args[3]->loc,
              "lhist() step must be >= 1 (" + std::to_string(c[2]) + " provided)");
        ok = false;
      }
      if (ok && c[1] <= c[0]) {
        error(call.loc, "lhist() max must be greater than min (min " + std::to_string(c[0]) +
                            ", max " + std::to_string(c[1]) + ")");
        ok = false;
      }
      if (ok && c[0] < 0) {
        error(call.args[1]->loc,
              "lhist() min must be non-negative (" + std::to_string(c[0]) + " provided)");
        ok = false;
      }
      if (ok && (c[1] - c[0]) / c[2] > 1000) {
        error(call.loc, "lhist() has too many buckets: (max - min) / step is at most 1000");
        ok = false;
      }
    }
    return ok;
  }

  // A value in an expression (operand, argument, assigned value, condition).
  Value value(Expr& e) {
    Value v = expr(e, Context::value);
    if (!v.error && v.type == Type::none && v.agg == MapKind::none) return no_value(e);
    if (!v.error && v.type == Type::object) return object_value(e, v);
    return v;
  }
  // An object used as a value: a char array (any array of 1-byte integers) reads as a
  // string, as bpftrace reads it; a struct or another array cannot be a value.
  [[gnu::noinline]] Value object_value(Expr& e, const Value& v) {
    const ast::TypeTable& T = program_.types;
    const ast::CType& c = T.at(v.ctype);
    if (c.kind == ast::CType::Kind::array && T.at(c.inner).kind == ast::CType::Kind::integer &&
        T.at(c.inner).size == 1) {
      Value s = Value::string(std::min<std::uint32_t>(c.count + 1, ast::kDefaultStrSize));
      e.type = Type::string;
      e.str_size = s.size;
      e.ctype = v.ctype;  // the lowering reads c.count bytes
      return s;
    }
    error(e.loc, "'" + T.name(v.ctype) + "' cannot be used as a value: read one of its " +
                     (c.kind == ast::CType::Kind::array ? "elements ([i])" : "fields (.name)"));
    return Value::bad();
  }

  std::string cname(int ctype) const {
    return ctype < 0 ? std::string("int64") : program_.types.name(ctype);
  }

  // What reading memory of type `t` yields: an integer (typed), or an object.
  [[gnu::noinline]] Value memory_value(Expr& e, int t) {
    const ast::TypeTable& T = program_.types;
    const ast::CType& c = T.at(t);
    switch (c.kind) {
      case ast::CType::Kind::void_:
        error(e.loc,
              "cannot read a value of type void: cast the pointer to a typed one, e.g. "
              "*(uint64 *)p");
        return Value::bad();
      case ast::CType::Kind::integer:
      case ast::CType::Kind::pointer:
        return Value::typed(t);
      case ast::CType::Kind::array:
      case ast::CType::Kind::record:
        if (!T.is_complete(t)) {
          error(e.loc, "'" + T.name(t) + "' is incomplete: define it in the script (" + T.name(t) +
                           " { ... };) before reading it");
          return Value::bad();
        }
        return Value::object(t);
    }
    return Value::bad();
  }

  // The pointee of pointer value `p` (else an error naming the way out).
  int pointee(Expr& e, const Value& p, std::string_view what) {
    const ast::TypeTable& T = program_.types;
    if (p.ctype >= 0 && T.at(p.ctype).kind == ast::CType::Kind::pointer) return T.at(p.ctype).inner;
    error(e.loc, "Can not " + std::string(what) + " type '" + cname(p.ctype) +
                     "': it is not a pointer (cast it to one first, e.g. *(uint64 *)arg0 or "
                     "((struct foo *)arg0)->field)");
    return -1;
  }

  [[gnu::noinline]] Value cast(Expr& e) {
    Value v = value(*e.args[0]);
    if (v.error) return v;
    const ast::TypeTable& T = program_.types;
    const ast::CType& c = T.at(e.cast_type);
    if (!v.is_int()) {
      error(e.loc, "Cannot cast from '" + type_name(v) + "' to '" + T.name(e.cast_type) +
                       "' (only integers and pointers are cast)");
      return Value::bad();
    }
    if (c.kind == ast::CType::Kind::integer || c.kind == ast::CType::Kind::pointer)
      return Value::typed(e.cast_type);
    error(e.loc, "Cannot cast to '" + T.name(e.cast_type) + "'" +
                     (c.kind == ast::CType::Kind::record
                          ? " (cast to a pointer and read through it: ((" + T.name(e.cast_type) +
                                " *)arg0)->field)"
                          : std::string(" (cast to an integer or a pointer type)")));
    return Value::bad();
  }

  [[gnu::noinline]] Value deref(Expr& e) {
    Value p = value(*e.args[0]);
    if (p.error) return p;
    const int t = pointee(e, p, "dereference");
    if (t < 0) return Value::bad();
    return memory_value(e, t);
  }

  [[gnu::noinline]] Value field(Expr& e) {
    Value base = expr(*e.args[0], Context::value);
    if (base.error) return base;
    const ast::TypeTable& T = program_.types;
    int rec_type = -1;
    if (e.arrow) {
      if (base.type == Type::object) {
        error(e.loc, "Can not access field '" + e.name + "' on type '" + cname(base.ctype) +
                         "' with '->': it is not a pointer (use '.')");
        return Value::bad();
      }
      if (!base.is_int()) {
        error(e.loc, "Can not access field '" + e.name + "' on a " + type_name(base));
        return Value::bad();
      }
      rec_type = pointee(e, base, "access field '" + e.name + "' on");
      if (rec_type < 0) return Value::bad();
      if (!T.is_complete(rec_type)) return memory_value(e, rec_type);
    } else {
      if (base.type != Type::object) {
        const bool ptr = base.ctype >= 0 && T.at(base.ctype).kind == ast::CType::Kind::pointer;
        error(e.loc, "Can not access field '" + e.name + "' on type '" +
                         (base.is_int() ? cname(base.ctype) : type_name(base)) + "'" +
                         (ptr ? ". Try dereferencing it first, or using '->'" : ""));
        return Value::bad();
      }
      rec_type = base.ctype;
    }
    const ast::CType& rc = T.at(rec_type);
    if (rc.kind != ast::CType::Kind::record) {
      error(e.loc, "Can not access field '" + e.name + "' on type '" + T.name(rec_type) +
                       "': it is not a struct or union");
      return Value::bad();
    }
    std::uint32_t off = 0;
    const ast::Field* f = T.field(rc.record, e.name, off);
    if (!f) {
      std::vector<std::string_view> names;
      for (const ast::Field& g : T.records[static_cast<std::size_t>(rc.record)].fields)
        names.push_back(g.name);
      error(e.loc, "'" + T.name(rec_type) + "' has no field named '" + e.name + "'" +
                       did_you_mean(e.name, names));
      return Value::bad();
    }
    return memory_value(e, f->type);
  }

  [[gnu::noinline]] Value index(Expr& e) {
    Value base = expr(*e.args[0], Context::value);
    Value i = value(*e.args[1]);
    if (base.error || i.error) return Value::bad();
    if (!i.is_int()) {
      error(e.args[1]->loc, "The array index must be an integer (" + type_name(i) + " provided)");
      return Value::bad();
    }
    const ast::TypeTable& T = program_.types;
    if (base.type == Type::object && T.at(base.ctype).kind == ast::CType::Kind::array)
      return memory_value(e, T.at(base.ctype).inner);
    if (base.type == Type::object || !base.is_int()) {
      error(e.loc, "The [] operator can not be used on type '" +
                       (base.type == Type::object ? cname(base.ctype) : type_name(base)) +
                       "' (index an array or a pointer)");
      return Value::bad();
    }
    const int t = pointee(e, base, "index");
    if (t < 0) return Value::bad();
    return memory_value(e, t);
  }

  // sizeof and offsetof fold to an integer literal.
  [[gnu::noinline]] Value size_or_offset(Expr& e) {
    const ast::TypeTable& T = program_.types;
    std::int64_t result = 0;
    if (e.kind == Expr::Kind::sizeof_) {
      int t = e.cast_type;
      if (t < 0) {
        Value v = expr(*e.args[0], Context::value);
        if (v.error) return v;
        if (v.type == Type::string) {
          result = v.size;
        } else if (v.ctype >= 0) {
          t = v.ctype;
        } else {
          result = 8;
        }
      }
      if (t >= 0) {
        if (!T.is_complete(t) && T.at(t).kind != ast::CType::Kind::void_) {
          error(e.loc, "sizeof of incomplete type '" + T.name(t) + "' (define it first)");
          return Value::bad();
        }
        result = T.size_of(t);
      }
    } else {
      int t = e.cast_type;
      std::size_t start = 0;
      for (;;) {
        const std::size_t dot = e.name.find('.', start);
        const std::string part = e.name.substr(start, dot - start);
        if (T.at(t).kind != ast::CType::Kind::record || !T.is_complete(t)) {
          error(e.loc, "offsetof: '" + T.name(t) + "' is not a defined struct or union");
          return Value::bad();
        }
        std::uint32_t off = 0;
        const ast::Field* f = T.field(T.at(t).record, part, off);
        if (!f) {
          error(e.loc, "offsetof: '" + T.name(t) + "' has no field named '" + part + "'");
          return Value::bad();
        }
        result += off;
        t = f->type;
        if (dot == std::string::npos) break;
        start = dot + 1;
      }
    }
    e.kind = Expr::Kind::integer;
    e.value = result;
    e.args.clear();
    return Value::integer();
  }

  [[gnu::noinline, gnu::cold]] Value no_value(Expr& e) {
    error(e.loc, std::string(ast::to_string(e.func)) +
                     "() returns no value: it cannot be used in an expression");
    return Value::bad();
  }

  enum class Context { statement, value };

  Value expr(Expr& e, Context ctx) {
    Value v = expr_inner(e, ctx);
    annotate(e, v);
    return v;
  }

  bool resolve_func(Expr& call) {
    for (std::size_t i = 0; i < kFuncNames.size(); ++i) {
      if (call.name == kFuncNames[i]) {
        call.func = static_cast<Func>(i);
        return true;
      }
    }
    return false;
  }

  Value builtin(Expr& e) {
    std::size_t i = 0;
    while (i < kBuiltinNames.size() && e.name != kBuiltinNames[i])
      ++i;
    if (i == kBuiltinNames.size()) {
      auto en = program_.types.enumerators.find(e.name);
      if (en != program_.types.enumerators.end()) {
        e.kind = Expr::Kind::integer;
        e.value = en->second;
        return Value::integer();
      }
      // A function name written without its parentheses.
      for (std::string_view f : kFuncNames) {
        if (e.name == f) {
          error(e.loc, "unknown identifier '" + e.name + "' (did you mean '" + e.name + "()'?)");
          return Value::bad();
        }
      }
      error(e.loc, "unknown identifier '" + e.name + "'" + did_you_mean(e.name, kBuiltinNames));
      return Value::bad();
    }
    e.builtin = static_cast<Builtin>(i);
    auto bad_probe = [&](auto allowed) -> const ast::AttachPoint* {
      for (const ast::AttachPoint& p : action_->probes) {
        if (!allowed(p.probe.kind)) return &p;
      }
      return nullptr;
    };
    const ast::AttachPoint* bad = nullptr;
    switch (e.builtin) {
      case Builtin::arg0:
      case Builtin::arg1:
      case Builtin::arg2:
      case Builtin::arg3:
      case Builtin::arg4:
      case Builtin::arg5:
        bad = bad_probe([](Probe::Kind k) { return k == Probe::Kind::uprobe; });
        if (bad) {
          error(e.loc, "The " + e.name + " builtin can only be used with 'uprobes' probes (not '" +
                           std::string(probe_kind_name(bad->probe.kind)) + "')");
          return Value::bad();
        }
        return Value::integer();
      case Builtin::retval:
        bad = bad_probe([](Probe::Kind k) { return k == Probe::Kind::uretprobe; });
        if (bad) {
          error(e.loc, "The retval builtin can only be used with 'uretprobe' probes (not '" +
                           std::string(probe_kind_name(bad->probe.kind)) + "')");
          return Value::bad();
        }
        return Value::integer();
      case Builtin::func:
        bad = bad_probe(
            [](Probe::Kind k) { return k == Probe::Kind::uprobe || k == Probe::Kind::uretprobe; });
        if (bad) {
          error(e.loc,
                "The func builtin can only be used with 'uprobe' and 'uretprobe' probes "
                "(not '" +
                    std::string(probe_kind_name(bad->probe.kind)) + "')");
          return Value::bad();
        }
        return Value::string(ast::kDefaultStrSize);
      case Builtin::comm:
        return Value::string(ast::kCommSize);
      case Builtin::probe:
        return Value::string(ast::kDefaultStrSize);
      default:
        return Value::integer();
    }
  }

  [[gnu::noinline]] Value variable(Expr& e) {
    ast::VarInfo* var = find_var(e.name);
    if (!var) {
      undefined_variable(e);
      return Value::bad();
    }
    e.slot = var->slot;
    return Value{var->type, MapKind::none, var->str_size, false, var->ctype};
  }

  [[gnu::noinline]] Value unary(Expr& e) {
    Value v = value(*e.args[0]);
    if (v.error) return v;
    if (!v.is_int()) {
      error(e.loc, "The " + std::string(ast::to_string(e.unary)) +
                       " operator can not be used on expressions of type " + type_name(v));
      return Value::bad();
    }
    return Value::integer();
  }

  [[gnu::noinline]] Value ternary(Expr& e) {
    Value c = value(*e.args[0]);
    Value a = value(*e.args[1]);
    Value b = value(*e.args[2]);
    if (!c.error && !c.is_int()) {
      error(e.args[0]->loc, "Invalid condition in ternary: " + type_name(c));
    }
    if (a.error || b.error) return Value::bad();
    if (a.agg != MapKind::none || b.agg != MapKind::none || a.type != b.type) {
      error(e.loc, "Ternary operator branches must have the same type: '" + type_name(a) +
                       "' and '" + type_name(b) + "'");
      return Value::bad();
    }
    if (c.error) return Value::bad();
    return Value{a.type, MapKind::none, std::max(a.size, b.size), false,
                 a.ctype == b.ctype ? a.ctype : -1};
  }

  [[gnu::noinline]] Value incdec(Expr& e) {
    Expr& t = *e.args[0];
    std::string op = e.increment ? "++" : "--";
    if (t.kind == Expr::Kind::variable) {
      ast::VarInfo* var = find_var(t.name);
      if (!var) {
        undefined_variable(t);
        return Value::bad();
      }
      t.slot = var->slot;
      t.type = var->type;
      if (var->type != Type::integer) {
        error(e.loc,
              "The " + op + " operator can not be used on " + t.name + " (it holds a string)");
        return Value::bad();
      }
      return Value::integer();
    }
    ast::MapInfo& m = map_of(t, false);
    if (m.kind == MapKind::none) m.kind = MapKind::integer;
    annotate_map(t);
    if (m.kind != MapKind::integer) {
      error(e.loc, "The " + op + " operator can not be used on " + m.name + " (it holds '" +
                       map_type_name(m) + "', not int64)");
      return Value::bad();
    }
    return Value::integer();
  }

  // Each kind's work is out of line: the recursion through expr_inner() (once per nesting
  // level) keeps a narrow frame (parser.h: the stack every pass may use).
  Value expr_inner(Expr& e, Context ctx) {
    switch (e.kind) {
      case Expr::Kind::integer:
        return Value::integer();
      case Expr::Kind::string:
        return Value::string(static_cast<std::uint32_t>(e.text.size() + 1));
      case Expr::Kind::builtin:
        return builtin(e);
      case Expr::Kind::variable:
        return variable(e);
      case Expr::Kind::map:
        return map_read(e, false);
      case Expr::Kind::unary:
        return unary(e);
      case Expr::Kind::binary:
        return binary(e);
      case Expr::Kind::ternary:
        return ternary(e);
      case Expr::Kind::call:
        return call(e, ctx);
      case Expr::Kind::incdec:
        return incdec(e);
      case Expr::Kind::cast:
        return cast(e);
      case Expr::Kind::deref:
        return deref(e);
      case Expr::Kind::field:
        return field(e);
      case Expr::Kind::index:
        return index(e);
      case Expr::Kind::sizeof_:
      case Expr::Kind::offsetof_:
        return size_or_offset(e);
    }
    return Value::bad();
  }

  Value map_read(Expr& e, bool whole) {
    ast::MapInfo& m = map_of(e, whole);
    if (m.kind == MapKind::none) {
      if (!silent_undefined_) {
        std::vector<std::string_view> names;
        for (const ast::MapInfo& other : program_.maps) {
          if (other.kind != MapKind::none) names.push_back(other.name);
        }
        error(e.loc,
              "Undefined map: " + e.name + " (it is never assigned)" + did_you_mean(e.name, names));
      }
      return Value::bad();
    }
    if (!whole && m.keyed && !m.key_types.empty() && e.args.empty()) {
      error(e.loc, "Argument mismatch for " + m.name +
                       ": trying to access with 0 arguments when it was previously accessed "
                       "with " +
                       std::to_string(m.key_types.size()));
      return Value::bad();
    }
    if (is_agg_kind(m.kind)) return Value{Type::none, m.kind, 0, false};
    if (m.kind == MapKind::string) return Value::string(std::max(m.str_size, 1u));
    return Value::typed(m.ctype);
  }

  // A chain a+b+c+... is a left-deep tree as tall as it is long: its left spine is walked
  // in a loop, so the checker's stack grows with nesting only (parser.h: kMaxNesting).
  Value binary(Expr& e) {
    std::vector<Expr*> spine;
    Expr* base = &e;
    while (base->kind == Expr::Kind::binary) {
      spine.push_back(base);
      base = base->args[0].get();
    }
    Value left = value(*base);
    for (auto it = spine.rbegin(); it != spine.rend(); ++it) {
      Expr& n = **it;
      Value right = value(*n.args[1]);
      left = binary_operands(n, left, right);
      if (&n != &e) annotate(n, left);  // `e` itself is annotated by expr()
    }
    return left;
  }

  bool is_unsigned(int ctype) const {
    if (ctype < 0) return false;
    const ast::CType& c = program_.types.at(ctype);
    return c.kind == ast::CType::Kind::pointer ||
           (c.kind == ast::CType::Kind::integer && !c.is_signed);
  }

  [[gnu::noinline]] Value binary_operands(Expr& e, const Value& a, const Value& b) {
    e.value = 0;
    if (a.error || b.error) return Value::bad();
    const bool ordering = e.binary == ast::BinaryOp::lt || e.binary == ast::BinaryOp::le ||
                          e.binary == ast::BinaryOp::gt || e.binary == ast::BinaryOp::ge;
    if (ordering && a.is_int() && b.is_int() && (is_unsigned(a.ctype) || is_unsigned(b.ctype)))
      e.value = 1;
    if (a.is_int() && b.is_int() &&
        (e.binary == ast::BinaryOp::add || e.binary == ast::BinaryOp::sub)) {
      if (is_pointer(a.ctype) && !is_pointer(b.ctype)) {
        // p + n: n elements on, as C counts (bpftrace's pointer arithmetic).
        const int t = program_.types.at(a.ctype).inner;
        const ast::CType& c = program_.types.at(t);
        e.value = c.kind == ast::CType::Kind::void_ || !program_.types.is_complete(t)
                      ? 1
                      : program_.types.size_of(t);
        return Value::typed(a.ctype);
      }
      if (is_pointer(b.ctype) && !is_pointer(a.ctype) && e.binary == ast::BinaryOp::add) {
        error(e.loc, "pointer arithmetic: write the pointer first (p + n, not n + p)");
        return Value::bad();
      }
    }
    std::string op(ast::to_string(e.binary));
    if (a.agg != MapKind::none || b.agg != MapKind::none || a.type != b.type) {
      error(e.loc, "Type mismatch for '" + op + "': comparing '" + type_name(a) + "' with '" +
                       type_name(b) + "'");
      return Value::bad();
    }
    if (a.type == Type::string && e.binary != ast::BinaryOp::eq && e.binary != ast::BinaryOp::ne) {
      error(e.loc, "The " + op +
                       " operator can not be used on expressions of types string, string (only "
                       "== and != compare strings)");
      return Value::bad();
    }
    // Arithmetic with an unsigned operand is unsigned (bpftrace: signed only when both
    // operands are), so a later ordering compares unsigned too.
    using B = ast::BinaryOp;
    const bool arithmetic = e.binary == B::add || e.binary == B::sub || e.binary == B::mul ||
                            e.binary == B::div || e.binary == B::mod || e.binary == B::band ||
                            e.binary == B::bor || e.binary == B::bxor || e.binary == B::shl ||
                            e.binary == B::shr;
    if (arithmetic && a.is_int() && (is_unsigned(a.ctype) || is_unsigned(b.ctype)))
      return Value::typed(program_.types.integer(8, false));
    return Value::integer();
  }

  // The argument of print/clear/zero/delete: a map (whole, or one element for delete).
  bool map_argument(Expr& call, bool with_keys) {
    std::string name(ast::to_string(call.func));
    if (call.args.size() != 1 && !(call.func == Func::print && call.args.size() <= 3)) {
      error(call.loc,
            name + "() requires one argument (" + std::to_string(call.args.size()) + " provided)");
      return false;
    }
    Expr& m = *call.args[0];
    if (m.kind != Expr::Kind::map) {
      error(call.loc, name + "() expects a map to be provided");
      return false;
    }
    if (!with_keys && !m.args.empty()) {
      error(m.loc, name + "() expects a whole map: write " + name + "(" + m.name + ")");
      return false;
    }
    Value v = map_read(m, !with_keys);
    annotate(m, v);
    if (with_keys && !v.error) {
      const ast::MapInfo& info = program_.maps[static_cast<std::size_t>(m.map_id)];
      if (info.key_types.size() != m.args.size()) {
        // map_read already reported an arity mismatch when keys were given.
        if (m.args.empty()) {
          error(m.loc, "delete() of " + m.name + " needs its keys: delete(" + m.name + "[...])");
        }
        return false;
      }
    }
    return !v.error;
  }

  Value call(Expr& e, Context ctx) {
    if (!resolve_func(e)) {
      for (std::string_view b : kBuiltinNames) {
        if (e.name == b) {
          error(e.loc, "'" + e.name + "' is a builtin, not a function: write " + e.name);
          return Value::bad();
        }
      }
      error(e.loc, "unknown function '" + e.name + "'" + did_you_mean(e.name, kFuncNames));
      for (auto& a : e.args)
        expr(*a, Context::value);
      return Value::bad();
    }
    std::string name(ast::to_string(e.func));
    std::size_t n = e.args.size();
    if (ast::is_aggregation(e.func)) {
      error(e.loc, name + "() should be directly assigned to a map");
      return Value::bad();
    }
    auto no_value = [&]() {
      if (ctx == Context::value) return Value{Type::none, MapKind::none, 0, false};
      return Value{};
    };
    switch (e.func) {
      case Func::del:
        map_argument(e, true);
        return no_value();
      case Func::clear:
      case Func::zero:
        map_argument(e, false);
        return no_value();
      case Func::print: {
        if (n == 0) {
          error(e.loc, "print() requires at least one argument (0 provided)");
          return Value::bad();
        }
        if (e.args[0]->kind == Expr::Kind::map && e.args[0]->args.empty()) {
          if (map_argument(e, false)) {
            for (std::size_t i = 1; i < n; ++i) {
              std::int64_t c = 0;
              if (!constant(*e.args[i], c) || c < 0) {
                error(e.args[i]->loc,
                      "print(): the top and div arguments are non-negative "
                      "integer literals");
              }
              annotate(*e.args[i], Value::integer());
            }
          }
          return no_value();
        }
        if (n != 1) {
          error(e.loc, "print() of a value takes one argument (" + std::to_string(n) +
                           " provided); top and div are for maps");
          return Value::bad();
        }
        Value v = value(*e.args[0]);
        if (!v.error && v.agg != MapKind::none) {
          error(e.args[0]->loc,
                "print() of one element of an aggregation map is not "
                "supported: print the whole map, print(" +
                    e.args[0]->name + ")");
        }
        return no_value();
      }
      case Func::printf:
        return printf_call(e, ctx);
      case Func::time:
        if (n > 1 || (n == 1 && e.args[0]->kind != Expr::Kind::string)) {
          error(e.loc, "time() takes no argument or one string literal (a strftime format)");
          return Value::bad();
        }
        if (n == 1)
          annotate(*e.args[0],
                   Value::string(static_cast<std::uint32_t>(e.args[0]->text.size() + 1)));
        return no_value();
      case Func::exit:
        if (n != 0) {
          error(e.loc, "exit() requires no arguments (" + std::to_string(n) + " provided)");
          return Value::bad();
        }
        return no_value();
      case Func::str: {
        if (n < 1 || n > 2) {
          error(e.loc, "str() requires one or two arguments (" + std::to_string(n) + " provided)");
          return Value::bad();
        }
        Value p = value(*e.args[0]);
        bool ok = !p.error;
        if (ok && !p.is_int() && !p.is_str()) {
          error(e.args[0]->loc,
                "str() expects an integer pointer or a string as its first "
                "argument (" +
                    printf_type_name(p) + " provided)");
          ok = false;
        }
        std::uint32_t size = p.is_str() ? p.size : ast::kDefaultStrSize;
        if (n == 2) {
          Value len = value(*e.args[1]);
          if (!len.error && !len.is_int()) {
            error(e.args[1]->loc,
                  "str() expects an integer length (" + printf_type_name(len) + " provided)");
            ok = false;
          }
          std::int64_t c = 0;
          if (constant(*e.args[1], c) && c >= 0 && c < ast::kDefaultStrSize) {
            size = static_cast<std::uint32_t>(c) + 1;
          }
        }
        if (!ok) return Value::bad();
        return Value::string(size);
      }
      default:
        break;
    }
    return Value::bad();
  }

  Value printf_call(Expr& e, Context ctx) {
    std::size_t n = e.args.size();
    if (n == 0) {
      error(e.loc, "printf() requires at least one argument (0 provided)");
      return Value::bad();
    }
    if (n - 1 > ast::kMaxPrintfArgs) {
      error(e.loc, "printf() can only take up to " + std::to_string(ast::kMaxPrintfArgs) +
                       " arguments after its format (" + std::to_string(n - 1) +
                       " provided): split it into several printf() calls");
      return Value::bad();
    }
    std::vector<Value> args;
    for (auto& a : e.args)
      args.push_back(value(*a));
    if (e.args[0]->kind != Expr::Kind::string) {
      if (!args[0].error) {
        error(e.loc,
              "printf() expects a string literal (" + printf_type_name(args[0]) + " provided)");
      }
      return Value::bad();
    }
    std::size_t before = diags_.size();
    e.format = parse_format(e.args[0]->text, e.args[0]->loc, diags_);
    if (diags_.size() != before) return Value::bad();
    std::size_t conversions = 0;
    for (const ast::FormatPiece& p : e.format) {
      if (p.conversion != 0) ++conversions;
    }
    if (n - 1 < conversions) {
      error(e.loc, "printf: Not enough arguments for format string (" + std::to_string(n - 1) +
                       " supplied, " + std::to_string(conversions) + " expected)");
      return Value::bad();
    }
    if (n - 1 > conversions) {
      error(e.loc, "printf: Too many arguments for format string (" + std::to_string(n - 1) +
                       " supplied, " + std::to_string(conversions) + " expected)");
      return Value::bad();
    }
    for (ast::FormatPiece& p : e.format) {
      if (p.conversion == 0) continue;
      const Value& v = args[static_cast<std::size_t>(p.arg)];
      if (v.error) continue;
      bool want_string = p.conversion == 's';
      if (want_string ? !v.is_str() : !v.is_int()) {
        error(e.loc,
              std::string("printf: %") + p.conversion + " specifier expects a value of type " +
                  (want_string ? "string" : "integer") + " (" + printf_type_name(v) + " supplied)");
      }
    }
    if (ctx == Context::value) return Value{Type::none, MapKind::none, 0, false};
    return Value{};
  }

 public:
  bool silent_undefined_ = false;

 private:
  ast::Program& program_;
  Diagnostics& diags_;
  ast::Action* action_ = nullptr;
  std::unordered_map<std::string, int> map_ids_;
  static constexpr std::int64_t kMaxUnrolled = 10000;  // iterations of nested unrolls
  std::int64_t unroll_product_ = 1;
};

}  // namespace

std::vector<ast::FormatPiece> parse_format(std::string_view f, Loc loc, Diagnostics& diags) {
  std::vector<ast::FormatPiece> out;
  ast::FormatPiece cur;
  int arg = 1;
  for (std::size_t i = 0; i < f.size();) {
    if (f[i] != '%') {
      cur.text += f[i++];
      continue;
    }
    std::size_t start = i++;
    if (i < f.size() && f[i] == '%') {
      cur.text += '%';
      ++i;
      continue;
    }
    for (; i < f.size(); ++i) {
      char c = f[i];
      if (c == '-') {
        cur.left = true;
      } else if (c == '+') {
        cur.plus = true;
      } else if (c == ' ') {
        cur.space = true;
      } else if (c == '#') {
        cur.alt = true;
      } else if (c == '0') {
        cur.zero = true;
      } else {
        break;
      }
    }
    auto number = [&]() {
      int v = -1;
      while (i < f.size() && f[i] >= '0' && f[i] <= '9') {
        v = (v < 0 ? 0 : v) * 10 + (f[i] - '0');
        if (v > 1000) v = 1000;
        ++i;
      }
      return v;
    };
    cur.width = number();
    if (i < f.size() && f[i] == '.') {
      ++i;
      cur.precision = std::max(number(), 0);
    }
    using L = ast::FormatPiece::Length;
    if (f.substr(i).starts_with("hh")) {
      cur.length = L::hh, i += 2;
    } else if (f.substr(i).starts_with("ll")) {
      cur.length = L::ll, i += 2;
    } else if (i < f.size() && std::string_view("hljzt").find(f[i]) != std::string_view::npos) {
      static constexpr L kL[] = {L::h, L::l, L::j, L::z, L::t};
      cur.length = kL[std::string_view("hljzt").find(f[i])];
      ++i;
    }
    char conv = i < f.size() ? f[i] : '\0';
    if (conv == '\0' || std::string_view("diuxXops c").find(conv) == std::string_view::npos ||
        conv == ' ') {
      std::string token(f.substr(start, std::min(i + 1, f.size()) - start));
      diags.error(loc, "printf: Unknown format string token: " + token +
                           " (use %d %u %x %X %o %p %s %c %%, with flags - + 0 # space, a "
                           "width and a length l ll h hh)");
      return out;
    }
    ++i;
    cur.conversion = conv;
    cur.arg = arg++;
    out.push_back(std::move(cur));
    cur = ast::FormatPiece{};
  }
  if (!cur.text.empty() || out.empty()) out.push_back(std::move(cur));
  return out;
}

void check(ast::Program& program, Diagnostics& diags) {
  program.maps.clear();
  // Pass 1, silent: every map's kind and keys from its first assignment, wherever it is.
  {
    Diagnostics discard;
    Checker learn(program, discard);
    learn.silent_undefined_ = true;
    learn.run();
  }
  // Pass 2: the same walk, reporting, with every map's kind and keys known (the walk is
  // the same, so ids stay in order of first appearance).
  Checker checker(program, diags);
  checker.run();
}

Result<void> check(ast::Program& program) {
  Diagnostics diags;
  check(program, diags);
  if (!diags.empty()) return diags.to_error(program.source, program.filename);
  return {};
}

Result<ast::Program> parse_and_check(std::string_view src, std::string_view filename) {
  Diagnostics diags;
  ast::Program program = parse(src, filename, diags);
  if (diags.empty()) check(program, diags);
  if (!diags.empty()) return diags.to_error(program.source, program.filename);
  return program;
}

}  // namespace hotprobe::script
