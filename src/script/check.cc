#include "script/check.h"

#include <algorithm>
#include <array>
#include <string>
#include <unordered_map>
#include <utility>

#include "script/check_pass.h"
#include "script/parser.h"

namespace hotprobe::script {
namespace checking {

bool is_agg_kind(std::optional<ValueKind> k) {
  return k && is_aggregation(*k);
}

std::optional<ValueKind> agg_kind_of(Func f) {
  switch (f) {
    case Func::count:
      return ValueKind::count;
    case Func::sum:
      return ValueKind::sum;
    case Func::avg:
      return ValueKind::avg;
    case Func::min:
      return ValueKind::min;
    case Func::max:
      return ValueKind::max;
    case Func::stats:
      return ValueKind::stats;
    case Func::hist:
      return ValueKind::hist;
    case Func::lhist:
      return ValueKind::lhist;
    default:
      return std::nullopt;
  }
}

// The type as bpftrace names it in "Type mismatch" messages.
std::string type_name(const Value& v) {
  if (v.agg) return std::string(script::to_string(*v.agg));
  if (v.type == Type::integer) return "int64";
  if (v.type == Type::string) return "string";
  if (v.type == Type::object) return "object";
  if (v.type == Type::tuple) return "tuple";
  if (v.type == Type::record) return "record";
  return "none";
}
std::string tuple_name(const std::vector<ast::TupleElem>& elems) {
  std::string out = "(";
  for (const ast::TupleElem& t : elems) {
    if (out.size() > 1) out += ",";
    out += t.type == Type::string ? "string" : t.type == Type::record ? "record" : "int64";
  }
  return out + ")";
}
// As printf's messages name it.
std::string printf_type_name(const Value& v) {
  if (v.agg) return std::string(script::to_string(*v.agg));
  if (v.type == Type::integer) return "integer";
  if (v.type == Type::string) return "string";
  if (v.type == Type::record) return "array or struct";
  return "none";
}
std::string map_type_name(const ast::MapInfo& m) {
  return m.kind ? std::string(script::to_string(*m.kind)) : "none";
}
std::string key_list(const std::vector<Type>& keys) {
  std::string s = "[";
  for (std::size_t i = 0; i < keys.size(); ++i) {
    if (i) s += ", ";
    static constexpr std::string_view kWords[] = {
        "none", "int64", "string", "none", "ustack", "ustack(perf)", "usym", "tuple", "record"};
    s += kWords[static_cast<int>(keys[i])];
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

void Checker::action(ast::Action& a) {
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

void Checker::statement(Stmt& s) {
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
      condition(*s.cond, "if");
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
    case Stmt::Kind::while_:
    case Stmt::Kind::for_:
    case Stmt::Kind::break_:
    case Stmt::Kind::continue_:
      loop_statement(s);
      break;
  }
}

void Checker::condition(Expr& cond, std::string_view statement) {
  Value c = value(cond);
  if (!c.error && !c.is_int()) {
    error(cond.loc, "Invalid condition in " + std::string(statement) + "(): " + type_name(c) +
                        " (a condition is an integer: 0 is false)");
  }
}

ast::VarInfo* Checker::find_var(const std::string& name) {
  for (ast::VarInfo& v : action_->vars) {
    if (v.name == name) return &v;
  }
  return nullptr;
}

void Checker::undefined_variable(Expr& e) {
  std::vector<std::string_view> names;
  for (const ast::VarInfo& v : action_->vars)
    if (!v.name.starts_with("$$")) names.push_back(v.name);  // loops' hidden slots
  error(e.loc, "Undefined or undeclared variable: " + e.name + did_you_mean(e.name, names));
}

void Checker::annotate(Expr& e, const Value& v) {
  e.type = v.agg ? Type::none : v.type;
  e.str_size = v.type == Type::string || v.type == Type::record ? v.size : 0;
  e.ctype = v.ctype;
  if (v.type == Type::tuple) e.elems = elems_of(v);
}

void Checker::assign_variable(Stmt& s) {
  Expr& target = *s.target;
  if (!s.assign.compound) allow_tuple();
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
                            "= operator needs an integer variable (it holds " +
                            (var->type == Type::tuple ? "a tuple" : "a string") + ")");
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
  if (v.agg) {
    error(s.value->loc, "Type mismatch for " + target.name + ": trying to assign value of type '" +
                            type_name(v) +
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
    if (v.type == Type::tuple) {
      assign_tuple(action_->vars.size() - 1, v, target);
      return;
    }
  } else if (var->type == Type::tuple && v.type == Type::tuple) {
    assign_tuple(static_cast<std::size_t>(var - action_->vars.data()), v, target);
    return;
  } else if (var->type != v.type) {
    error(s.value->loc, "Type mismatch for " + target.name + ": trying to assign value of type '" +
                            type_name(v) + "' when variable already contains a value of type '" +
                            type_name(Value{var->type, std::nullopt, 0, false}) + "'");
  } else if (var->ctype != v.ctype &&
             ((is_pointer(var->ctype) && is_pointer(v.ctype)) || var->type == Type::record)) {
    error(s.value->loc, "Type mismatch for " + target.name + ": trying to assign value of type '" +
                            cname(v.ctype) + "' when variable already contains a value of type '" +
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

// The map of `e` (Kind::map), created on first sight; its keys checked against earlier
// accesses (`whole`: print(@m), clear(@m): no keys to check).
ast::MapInfo& Checker::map_of(Expr& e, bool whole) {
  tuple_keys(e);
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
  std::vector<int> ctypes;
  bool key_error = false;
  for (auto& k : e.args) {
    Value v = key_value(*k);
    if (v.error) {
      key_error = true;
    } else if (v.agg) {
      error(k->loc, "Type mismatch for " + e.name + " key: an aggregation map ('" + type_name(v) +
                        "') cannot be used as a key");
      key_error = true;
    }
    keys.push_back(v.type);
    sizes.push_back(v.size);
    ctypes.push_back(v.type == Type::record ? v.ctype : -1);
  }
  if (whole || key_error) return m;
  if (!m.keyed) {
    m.keyed = true;
    m.key_types = keys;
    m.key_sizes = sizes;
    m.key_ctypes = ctypes;
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
      if (ctypes[i] != m.key_ctypes[i]) {
        error(e.args[i]->loc, "Argument mismatch for " + e.name + ": key " + std::to_string(i) +
                                  " is a '" + cname(ctypes[i]) +
                                  "' where the map was accessed with a '" + cname(m.key_ctypes[i]) +
                                  "'");
      }
      m.key_sizes[i] = std::max(m.key_sizes[i], sizes[i]);
    }
  }
  return m;
}

void Checker::assign_map(Stmt& s) {
  Expr& target = *s.target;
  ast::MapInfo& m0 = map_of(target, false);
  not_iterated(target);
  int id = target.map_id;
  auto map = [&]() -> ast::MapInfo& { return program_.maps[static_cast<std::size_t>(id)]; };
  Expr& rhs = *s.value;
  if (!s.assign.compound && rhs.kind == Expr::Kind::call && resolve_func(rhs) &&
      ast::is_aggregation(rhs.func)) {
    (void)m0;
    if (!aggregation(rhs)) return;
    const ValueKind k = *agg_kind_of(rhs.func);  // an aggregation: rhs.func is one
    if (!map().kind) {
      map().kind = k;
      if (k == ValueKind::lhist) set_lhist(map(), rhs);
    } else if (map().kind != k) {
      map_kind_mismatch(target, map(), std::string(script::to_string(k)));
    } else if (k == ValueKind::lhist) {
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
  if (!s.assign.compound) allow_tuple();
  Value v = value(rhs);
  if (v.error) {
    annotate_map(target);
    return;
  }
  if (v.agg) {
    map_kind_mismatch(target, map(), type_name(v));
    return;
  }
  if (s.assign.compound) {
    if (!map().kind) map().kind = ValueKind::integer;
    if (map().kind != ValueKind::integer) {
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
  if (v.type == Type::tuple) {
    assign_map_tuple(map(), v, target);
    annotate_map(target);
    return;
  }
  ValueKind k = v.type == Type::string   ? ValueKind::string
                : v.type == Type::record ? ValueKind::record
                                         : ValueKind::integer;
  if (!map().kind) {
    map().kind = k;
    if (is_pointer(v.ctype) || k == ValueKind::record) map().ctype = v.ctype;
  }
  if (map().kind != k) {
    map_kind_mismatch(target, map(), type_name(v));
  } else if (map().ctype != v.ctype &&
             ((is_pointer(map().ctype) && is_pointer(v.ctype)) || k == ValueKind::record)) {
    error(s.value->loc, "Type mismatch for " + map().name + ": trying to assign value of type '" +
                            cname(v.ctype) + "' when map already contains a value of type '" +
                            cname(map().ctype) + "'");
  } else if (k == ValueKind::string || k == ValueKind::record) {
    map().str_size = std::max(map().str_size, v.size);
  }
  annotate_map(target);
}

void Checker::annotate_map(Expr& e) {
  const ast::MapInfo& m = program_.maps[static_cast<std::size_t>(e.map_id)];
  e.type = m.kind == ValueKind::integer  ? Type::integer
           : m.kind == ValueKind::string ? Type::string
           : m.kind == ValueKind::record ? Type::record
                                         : Type::none;
  e.str_size = m.kind == ValueKind::string || m.kind == ValueKind::record ? m.str_size : 0;
  if (m.kind == ValueKind::record) e.ctype = m.ctype;
}

void Checker::set_lhist(ast::MapInfo& m, const Expr& call) {
  constant(*call.args[1], m.lhist_min);
  constant(*call.args[2], m.lhist_max);
  constant(*call.args[3], m.lhist_step);
}

// Checks an aggregation call's arguments; false if they are wrong.
bool Checker::aggregation(Expr& call) {
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
      error(call.args[3]->loc, "lhist() step must be >= 1 (" + std::to_string(c[2]) + " provided)");
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

}  // namespace checking

using ast::Loc;
using checking::Checker;

std::vector<FormatSpec> parse_format(std::string_view f, Loc loc, Diagnostics& diags) {
  std::vector<FormatSpec> out;
  FormatSpec cur;
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
    using L = FormatSpec::Length;
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
    if (conv == '\0' || std::string_view("diuxXopsr c").find(conv) == std::string_view::npos ||
        conv == ' ') {
      std::string token(f.substr(start, std::min(i + 1, f.size()) - start));
      diags.error(loc, "printf: Unknown format string token: " + token +
                           " (use %d %u %x %X %o %p %s %c %%, with flags - + 0 # space, a "
                           "width and a length l ll h hh)");
      return out;
    }
    ++i;
    cur.conversion = conv == 'r' ? 's' : conv;  // %r: buf()'s text, a string here
    cur.arg = arg++;
    out.push_back(std::move(cur));
    cur = FormatSpec{};
  }
  if (!cur.text.empty() || out.empty()) out.push_back(std::move(cur));
  return out;
}

void check(ast::Program& program, Diagnostics& diags) {
  program.maps.clear();
  // $1..$N and $# become the literals the command line gave (check_misc.cc).
  checking::resolve_params(program, diags);
  if (!diags.empty()) return;
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
  CompileOptions options;
  options.filename = std::string(filename);
  return parse_and_check(src, options);
}

Result<ast::Program> parse_and_check(std::string_view src, const CompileOptions& options) {
  Diagnostics diags;
  ast::Program program = parse(src, options.filename, diags);
  program.params = options.params;
  program.unsafe = options.unsafe;
  if (diags.empty()) check(program, diags);
  if (!diags.empty()) return diags.to_error(program.source, program.filename);
  return program;
}

}  // namespace hotprobe::script
