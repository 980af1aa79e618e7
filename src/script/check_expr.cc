// The check pass: expressions (check_pass.h).
#include <algorithm>
#include <string>
#include <utility>

#include "script/check_args.h"
#include "script/check_pass.h"
#include "script/maps.h"
#include "script/parser.h"
#include "script/run_usdt.h"

namespace hotprobe::script::checking {

// A value in an expression (operand, argument, assigned value, condition).
Value Checker::value(Expr& e) {
  const bool tuple_ok = std::exchange(tuple_ok_, false);
  Value v = expr(e, Context::value);
  if (!v.error && v.type == Type::tuple && !tuple_ok) {
    error(e.loc,
          "A tuple cannot be used here: a tuple is assigned to a $variable, printed "
          "with print(), or read by element ($t.0)");
    return Value::bad();
  }
  if (!v.error && v.type == Type::none && !v.agg) return no_value(e);
  if (!v.error && v.type == Type::object) return object_value(e, v);
  return v;
}

// An object used as a value: a char array (any array of 1-byte integers) reads as a
// string, as bpftrace reads it; a struct, a union or another array is copied whole (a
// Type::record of at most kMaxRecBytes bytes; over kStrBytes only where a wide copy can
// go: a $variable, a map's value or key, ==, print(), a field or element of it).
Value Checker::object_value(Expr& e, const Value& v) {
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
  const std::uint32_t size = T.size_of(v.ctype);
  if (size == 0 || size > kMaxRecBytes) {
    error(e.loc,
          "'" + T.name(v.ctype) + "' (" + std::to_string(size) +
              " bytes) cannot be used as a value: an array or struct copied whole has 1 to " +
              std::to_string(kMaxRecBytes) + " bytes; read one of its " +
              (c.kind == ast::CType::Kind::array ? "elements ([i])" : "fields (.name)"));
    return Value::bad();
  }
  e.type = Type::record;
  e.str_size = size;
  e.ctype = v.ctype;
  return Value{Type::record, std::nullopt, size, false, v.ctype};
}

// What reading memory of type `t` yields: an integer (typed), or an object.
Value Checker::memory_value(Expr& e, int t) {
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

// `args` as a whole: the record of the parameters (check_args.h), copied from the
// registers (and stack slots) the rewrite names.
Value Checker::args_value(Expr& e) {
  if (!action_) return Value::bad();
  const int t = rewrite_args_record(program_, diags_, *action_, e);
  if (t < 0) return Value::bad();
  for (ast::ExprPtr& part : e.args) {
    if (expr(*part, Context::value).error) return Value::bad();
  }
  return Value::object(t);
}

// The pointee of pointer value `p` (else an error naming the way out).
int Checker::pointee(Expr& e, const Value& p, std::string_view what) {
  const ast::TypeTable& T = program_.types;
  if (p.ctype >= 0 && T.at(p.ctype).kind == ast::CType::Kind::pointer) return T.at(p.ctype).inner;
  error(e.loc, "Can not " + std::string(what) + " type '" + cname(p.ctype) +
                   "': it is not a pointer (cast it to one first, e.g. *(uint64 *)arg0 or "
                   "((struct foo *)arg0)->field)");
  return -1;
}

Value Checker::cast(Expr& e) {
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

Value Checker::deref(Expr& e) {
  Value p = value(*e.args[0]);
  if (p.error) return p;
  const int t = pointee(e, p, "dereference");
  if (t < 0) return Value::bad();
  return memory_value(e, t);
}

Value Checker::field(Expr& e) {
  if (!e.name.empty() && e.name[0] >= '0' && e.name[0] <= '9') return tuple_index(e);
  // args.NAME (and args.S.FIELD of a struct S in registers) becomes a register read.
  const Expr& b = *e.args[0];
  if (is_args(b) || (b.kind == Expr::Kind::field && is_args(*b.args[0]))) {
    if (!rewrite_args_field(program_, diags_, *action_, e)) return Value::bad();
    if (e.kind != Expr::Kind::field) return expr_inner(e, Context::value);
  }
  Value base = expr(*e.args[0], Context::value);
  if (base.error) return base;
  if (base.type == Type::record) base.type = Type::object;  // a copy: read in place
  const ast::TypeTable& T = program_.types;
  int rec_type = -1;
  // `.` on a pointer to a struct or union reads through it, as `->` does (current
  // bpftrace's runtime cases rely on it; 0.17 refuses it).
  if (!e.arrow && base.is_int() && base.ctype >= 0 &&
      T.at(base.ctype).kind == ast::CType::Kind::pointer) {
    const int to = T.at(base.ctype).inner;
    if (to >= 0 && T.at(to).kind == ast::CType::Kind::record) e.arrow = true;
  }
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

Value Checker::index(Expr& e) {
  Value base = expr(*e.args[0], Context::value);
  Value i = value(*e.args[1]);
  if (base.error || i.error) return Value::bad();
  if (base.type == Type::record) base.type = Type::object;  // a copy: read in place
  if (!i.is_int()) {
    error(e.args[1]->loc, "The array index must be an integer (" + type_name(i) + " provided)");
    return Value::bad();
  }
  const ast::TypeTable& T = program_.types;
  if (base.type == Type::object && T.at(base.ctype).kind == ast::CType::Kind::array) {
    const Expr& ix = *e.args[1];
    const std::uint32_t n = T.at(base.ctype).count;
    // A flexible or zero-length array (`int y[0]`, `int y[]`) has no bound to check.
    if (ix.kind == Expr::Kind::integer && n > 0 &&
        (ix.value < 0 || static_cast<std::uint64_t>(ix.value) >= n)) {
      error(ix.loc, "the index " + std::to_string(ix.value) +
                        " is out of bounds for array of size " + std::to_string(n));
      return Value::bad();
    }
    return memory_value(e, T.at(base.ctype).inner);
  }
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

// A tuple's size as bpftrace lays it out: its elements in order, each aligned as C
// aligns it (an integer literal is an int64, a string its bytes), the whole padded to
// the largest alignment.
std::int64_t Checker::tuple_size(const std::vector<ast::TupleElem>& elems) const {
  const ast::TypeTable& T = program_.types;
  std::uint64_t size = 0, align = 1;
  for (const ast::TupleElem& t : elems) {
    std::uint64_t n = 8, a = 8;
    if (t.type == Type::string) {
      n = t.str_size, a = 1;
    } else if (t.ctype >= 0 && (t.type == Type::record || !is_pointer(t.ctype))) {
      n = T.size_of(t.ctype), a = T.align_of(t.ctype);
    }
    a = std::max<std::uint64_t>(a, 1);
    size = (size + a - 1) / a * a + n;
    align = std::max(align, a);
  }
  return static_cast<std::int64_t>((size + align - 1) / align * align);
}

// sizeof and offsetof fold to an integer literal.
Value Checker::size_or_offset(Expr& e) {
  const ast::TypeTable& T = program_.types;
  std::int64_t result = 0;
  if (e.kind == Expr::Kind::sizeof_) {
    int t = e.cast_type;
    if (t < 0) {
      Value v = expr(*e.args[0], Context::value);
      if (v.error) return v;
      if (v.type == Type::string) {
        result = v.size;
      } else if (v.type == Type::tuple) {
        result = tuple_size(elems_of(v));
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

Value Checker::no_value(Expr& e) {
  error(e.loc, std::string(ast::to_string(e.func)) +
                   "() returns no value: it cannot be used in an expression");
  return Value::bad();
}

Value Checker::expr(Expr& e, Context ctx) {
  Value v = expr_inner(e, ctx);
  annotate(e, v);
  return v;
}

Value Checker::variable(Expr& e) {
  ast::VarInfo* var = find_var(e.name);
  if (!var) {
    undefined_variable(e);
    return Value::bad();
  }
  e.slot = var->slot;
  if (var->type == Type::tuple) return tuple_of(var->elems);
  return Value{var->type, std::nullopt, var->str_size, false, var->ctype};
}

Value Checker::unary(Expr& e) {
  Value v = value(*e.args[0]);
  if (v.error) return v;
  if (!v.is_int()) {
    error(e.loc, "The " + std::string(ast::to_string(e.unary)) +
                     " operator can not be used on expressions of type " + type_name(v));
    return Value::bad();
  }
  return Value::integer();
}

Value Checker::ternary(Expr& e) {
  Value c = value(*e.args[0]);
  Value a = value(*e.args[1]);
  Value b = value(*e.args[2]);
  if (!c.error && !c.is_int()) {
    error(e.args[0]->loc, "Invalid condition in ternary: " + type_name(c));
  }
  if (a.error || b.error) return Value::bad();
  if (a.agg || b.agg || a.type != b.type) {
    error(e.loc, "Ternary operator branches must have the same type: '" + type_name(a) + "' and '" +
                     type_name(b) + "'");
    return Value::bad();
  }
  if (c.error) return Value::bad();
  if (a.type == Type::record && std::max(a.size, b.size) > kStrBytes) {
    error(e.loc, "A ternary chooses between copies of at most " + std::to_string(kStrBytes) +
                     " bytes (" + std::to_string(std::max(a.size, b.size)) +
                     " here): use if/else and assign the copy in each branch");
    return Value::bad();
  }
  return Value{a.type, std::nullopt, std::max(a.size, b.size), false,
               a.ctype == b.ctype ? a.ctype : -1};
}

Value Checker::incdec(Expr& e) {
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
      error(e.loc, "The " + op + " operator can not be used on " + t.name + " (it holds " +
                       (var->type == Type::tuple ? "a tuple" : "a string") + ")");
      return Value::bad();
    }
    if (is_pointer(var->ctype)) {
      // A pointer steps one element, as C's p++ (Expr::value: the pointee's size).
      const int to = program_.types.at(var->ctype).inner;
      if (program_.types.at(to).kind != ast::CType::Kind::void_ && program_.types.is_complete(to))
        e.value = program_.types.size_of(to);
      t.ctype = var->ctype;
      return Value::typed(var->ctype);
    }
    return Value::integer();
  }
  ast::MapInfo& m = map_of(t, false);
  not_iterated(t);
  if (!m.kind) m.kind = ValueKind::integer;
  annotate_map(t);
  if (m.kind != ValueKind::integer) {
    error(e.loc, "The " + op + " operator can not be used on " + m.name + " (it holds '" +
                     map_type_name(m) + "', not int64)");
    return Value::bad();
  }
  return Value::integer();
}

// Each kind's work is out of line: the recursion through expr_inner() (once per nesting
// level) keeps a narrow frame (parser.h: the stack every pass may use).
Value Checker::expr_inner(Expr& e, Context ctx) {
  switch (e.kind) {
    case Expr::Kind::integer:
      return Value::integer();
    case Expr::Kind::string:
      return Value::string(static_cast<std::uint32_t>(e.text.size() + 1));
    case Expr::Kind::builtin:
      if (is_args(e)) return args_value(e);
      if (auto u = action_ ? check_usdt_arg(e, *action_, diags_) : UsdtArgCheck::not_usdt;
          u != UsdtArgCheck::not_usdt)
        return u == UsdtArgCheck::ok ? Value::integer() : Value::bad();
      return builtin(e);
    case Expr::Kind::variable:
      return variable(e);
    case Expr::Kind::map:
      return map_value(e);
    case Expr::Kind::unary:
      return unary(e);
    case Expr::Kind::binary:
      return binary(e);
    case Expr::Kind::ternary:
      return ternary(e);
    case Expr::Kind::call:
      if (e.name == "print" && e.args.size() == 1 &&
          (e.args[0]->kind == Expr::Kind::deref || e.args[0]->kind == Expr::Kind::field ||
           e.args[0]->kind == Expr::Kind::index)) {
        // print(VALUE) of a struct or union (print(*p)) prints as bpftrace prints it: a
        // copy of at most kStrBytes bytes as any struct value, a larger one through the
        // printf of its fields (check_args.h). Out of line: the recursion through here
        // keeps a narrow frame.
        auto print_value = [ this, &e, ctx ]() __attribute__((noinline, cold)) {
          Value v = expr(*e.args[0], Context::value);
          if (v.error) return v;
          if (v.type == Type::object &&
              program_.types.at(v.ctype).kind == ast::CType::Kind::record &&
              program_.types.size_of(v.ctype) > kStrBytes &&
              !rewrite_print_record(program_, diags_, e, v.ctype))
            return Value::bad();
          return call(e, ctx);
        };
        return print_value();
      }
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
    case Expr::Kind::tuple:
      return tuple(e);
  }
  return Value::bad();
}

Value Checker::map_read(Expr& e, bool whole) {
  ast::MapInfo& m = map_of(e, whole);
  if (!m.kind) {
    if (!silent_undefined_) {
      std::vector<std::string_view> names;
      for (const ast::MapInfo& other : program_.maps) {
        if (other.kind) names.push_back(other.name);
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
  if (m.kind == ValueKind::string) return Value::string(std::max(m.str_size, 1u));
  if (m.kind == ValueKind::tuple) return tuple_of(m.elems);
  if (m.kind == ValueKind::record)
    return Value{Type::record, std::nullopt, m.str_size, false, m.ctype};
  return Value::typed(m.ctype);
}

// A chain a+b+c+... is a left-deep tree as tall as it is long: its left spine is walked
// in a loop, so the checker's stack grows with nesting only (parser.h: kMaxNesting).
Value Checker::binary(Expr& e) {
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

bool Checker::is_unsigned(int ctype) const {
  if (ctype < 0) return false;
  const ast::CType& c = program_.types.at(ctype);
  return c.kind == ast::CType::Kind::pointer ||
         (c.kind == ast::CType::Kind::integer && !c.is_signed);
}

Value Checker::binary_operands(Expr& e, const Value& a, const Value& b) {
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
  if (a.agg || b.agg || a.type != b.type) {
    error(e.loc, "Type mismatch for '" + op + "': comparing '" + type_name(a) + "' with '" +
                     type_name(b) + "'");
    return Value::bad();
  }
  if (a.type == Type::record && (e.binary == ast::BinaryOp::eq || e.binary == ast::BinaryOp::ne)) {
    if (a.ctype != b.ctype) {
      error(e.loc, "Type mismatch for '" + op + "': comparing '" + cname(a.ctype) + "' with '" +
                       cname(b.ctype) + "' (arrays and structs compare with their own type)");
      return Value::bad();
    }
    return Value::integer();
  }
  if (a.type == Type::record) {
    error(e.loc, "The " + op + " operator can not be used on '" + cname(a.ctype) +
                     "' values (only == and != compare arrays and structs)");
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

}  // namespace hotprobe::script::checking
