// The check pass: tuples (check_pass.h). A tuple is a literal `(a, b, ...)` or a $variable
// holding one; its elements are integers or strings. A tuple variable's element k lives
// in the hidden slot VarInfo::slot + 1 + k, so `$t.k` becomes a read of that slot here
// and the back end sees only the literal, the assignment and print().
#include <algorithm>
#include <string>
#include <utility>

#include "script/check_args.h"
#include "script/check_pass.h"
#include "script/maps.h"

namespace hotprobe::script::checking {

namespace {

Value element_value(const ast::TupleElem& t) {
  return Value{t.type, std::nullopt, t.str_size, false, t.ctype};
}

}  // namespace

Value Checker::tuple(Expr& e) {
  if (!e.text.empty()) return packed_tuple(e);  // (a=1, b=x)
  if (e.args.size() > ast::kMaxTupleElems) {
    error(e.loc, "A tuple has at most " + std::to_string(ast::kMaxTupleElems) + " elements (" +
                     std::to_string(e.args.size()) + " given): split it in two");
    return Value::bad();
  }
  std::vector<ast::TupleElem> elems;
  bool bad = false;
  for (ast::ExprPtr& a : e.args) {
    Value v = a->kind == Expr::Kind::tuple ? packed_tuple(*a) : value(*a);
    if (v.error) {
      bad = true;
      continue;
    }
    if (!v.is_int() && !v.is_str() && v.type != Type::record) {
      error(a->loc, "A tuple element is an integer, a string, an array or a struct, not '" +
                        type_name(v) + "'");
      bad = true;
      continue;
    }
    if (v.type == Type::record && v.size > kStrBytes) {
      error(a->loc, "A tuple element copied whole has at most " + std::to_string(kStrBytes) +
                        " bytes (" + std::to_string(v.size) +
                        " given): put one of its fields in the tuple, or keep it in a variable");
      bad = true;
      continue;
    }
    elems.push_back(ast::TupleElem{v.type, v.size, v.ctype});
  }
  return bad ? Value::bad() : tuple_of(std::move(elems));
}

// A named tuple (a=1, b=x) or a tuple inside a tuple: a record the checker makes (a copy
// of at most kStrBytes bytes, as a struct value), its elements laid out as C lays out a
// struct of them (an integer literal an int64, a string its bytes), printed as current
// bpftrace prints it: { .a = 1, .b = x }, (1, x).
Value Checker::packed_tuple(Expr& e) {
  ast::TypeTable& T = program_.types;
  ast::Record rec;
  rec.complete = true;
  rec.current_form = true;
  rec.tuple = e.text.empty();
  rec.name = rec.tuple ? "tuple" : "record";
  std::size_t name_at = 0;
  bool bad = e.args.size() > ast::kMaxTupleElems;
  if (bad) {
    error(e.loc, "A tuple has at most " + std::to_string(ast::kMaxTupleElems) + " elements (" +
                     std::to_string(e.args.size()) + " given): split it in two");
  }
  for (std::size_t k = 0; !bad && k < e.args.size(); ++k) {
    Expr& a = *e.args[k];
    std::string name = std::to_string(k);  // a tuple's: read as $t.N
    if (!rec.tuple) {
      const std::size_t nl = e.text.find('\n', name_at);
      name = e.text.substr(name_at, nl - name_at);
      name_at = nl + 1;
    }
    const Value v = a.kind == Expr::Kind::tuple ? packed_tuple(a) : value(a);
    if (v.error) {
      bad = true;
      break;
    }
    int type = -1;
    if (v.is_int()) {
      type = v.ctype >= 0 ? v.ctype : T.integer(8, true);
    } else if (v.is_str()) {
      type = T.array(T.integer(1, true), std::max<std::uint32_t>(v.size, 1));
    } else if (v.type == Type::record) {
      type = v.ctype;
    } else {
      error(a.loc, "A tuple element is an integer, a string, an array, a struct or a tuple, not '" +
                       type_name(v) + "'");
      bad = true;
      break;
    }
    const std::uint32_t align = std::max<std::uint32_t>(T.align_of(type), 1);
    const std::uint32_t at = (rec.size + align - 1) / align * align;
    rec.fields.push_back(ast::Field{name, type, at, 0, 0});
    rec.size = at + T.size_of(type);
    rec.align = std::max(rec.align, align);
  }
  if (bad) return Value::bad();
  rec.size = (rec.size + rec.align - 1) / rec.align * rec.align;
  if (rec.size > kStrBytes) {
    error(e.loc, std::string(rec.tuple ? "A tuple inside a tuple" : "A named tuple") + " has " +
                     std::to_string(rec.size) + " bytes, more than the " +
                     std::to_string(kStrBytes) +
                     " a copied value holds: make its strings or elements fewer or smaller");
    return Value::bad();
  }
  const std::uint32_t size = rec.size;
  const int type = T.made_record(std::move(rec));
  e.type = Type::record;
  e.ctype = type;
  e.str_size = size;
  return Value{Type::record, std::nullopt, size, false, type};
}

Value Checker::tuple_index(Expr& e) {
  const std::string index = e.name;
  allow_tuple();
  Value base = value(*e.args[0]);
  if (base.error) return base;
  const ast::TypeTable& T = program_.types;
  if (base.type == Type::record && T.at(base.ctype).kind == ast::CType::Kind::record &&
      T.records[static_cast<std::size_t>(T.at(base.ctype).record)].tuple) {
    // A tuple inside a tuple, copied: its element N is its field "N" (packed_tuple).
    std::uint32_t off = 0;
    const ast::Field* f = T.field(T.at(base.ctype).record, index, off);
    if (!f) {
      error(e.loc,
            "Invalid tuple index: " + index + ". Found " +
                std::to_string(
                    T.records[static_cast<std::size_t>(T.at(base.ctype).record)].fields.size()) +
                " elements in tuple.");
      return Value::bad();
    }
    return memory_value(e, f->type);
  }
  if (base.type != Type::tuple) {
    error(e.loc, "Can not access index '" + index + "' on expression of type '" + type_name(base) +
                     "' (only a tuple's elements are read by number)");
    return Value::bad();
  }
  std::size_t k = 0;
  for (char c : index) {
    if (c < '0' || c > '9' || k > ast::kMaxTupleElems) {
      k = ast::kMaxTupleElems + 1;
      break;
    }
    k = k * 10 + static_cast<std::size_t>(c - '0');
  }
  if (k >= elems_of(base).size()) {
    error(e.loc, "Invalid tuple index: " + index + ". Found " +
                     std::to_string(elems_of(base).size()) + " elements in tuple.");
    return Value::bad();
  }
  Expr& b = *e.args[0];
  if (b.kind == Expr::Kind::variable) {
    const ast::VarInfo& elem = action_->vars[static_cast<std::size_t>(b.slot) + 1 + k];
    e.kind = Expr::Kind::variable;
    e.name = elem.name;
    e.slot = elem.slot;
    e.args.clear();
    return Value{elem.type, std::nullopt, elem.str_size, false, elem.ctype};
  }
  if (b.kind == Expr::Kind::map) {  // @t[k].N: element N of the map's value (Expr::value)
    e.value = static_cast<std::int64_t>(k);
    return element_value(elems_of(base)[k]);
  }
  // A literal: the element itself (the checked tuple's other elements are dropped).
  ast::ExprPtr elem = std::move(b.args[k]);
  const Loc at = e.loc;
  e = std::move(*elem);
  e.loc = at;
  return element_value(elems_of(base)[k]);
}

void Checker::assign_tuple(std::size_t var_index, const Value& v, Expr& target) {
  const bool fresh = action_->vars[var_index].elems.empty();
  if (fresh) {
    const std::string name = action_->vars[var_index].name;
    action_->vars[var_index].elems = elems_of(v);
    for (std::size_t k = 0; k < elems_of(v).size(); ++k) {
      const int slot = hidden_slot("$$tuple " + name + "." + std::to_string(k));
      ast::VarInfo& h = action_->vars[static_cast<std::size_t>(slot)];
      h.type = elems_of(v)[k].type;
      h.str_size = elems_of(v)[k].str_size;
      h.ctype = elems_of(v)[k].ctype;
    }
  }
  ast::VarInfo& var = action_->vars[var_index];
  bool same = var.elems.size() == elems_of(v).size();
  for (std::size_t k = 0; same && k < elems_of(v).size(); ++k)
    same = var.elems[k].type == elems_of(v)[k].type;
  if (!same) {
    error(target.loc,
          "Tuple type mismatch: " + tuple_name(var.elems) + " != " + tuple_name(elems_of(v)) + ".");
  } else if (!fresh) {
    for (std::size_t k = 0; k < elems_of(v).size(); ++k) {
      ast::TupleElem& t = var.elems[k];
      t.str_size = std::max(t.str_size, elems_of(v)[k].str_size);
      if (t.ctype != elems_of(v)[k].ctype) t.ctype = -1;
      ast::VarInfo& h = action_->vars[static_cast<std::size_t>(var.slot) + 1 + k];
      h.str_size = t.str_size;
      h.ctype = t.ctype;
    }
  }
  target.slot = var.slot;
  target.type = Type::tuple;
  target.elems = var.elems;
}

// A map holding tuples read by key is a tuple, as a tuple variable is: assigned to a
// $variable, printed, or read by element (`@t[k].0`).
// A tuple as a map key is its elements as the key's parts (`@m[(1, "x")]` is `@m[1, "x"]`,
// `@m[$t]` the elements of $t), as current bpftrace keys and prints it.
// The number of elements of the tuple record `$t.N` names (a for loop's $kv.0 over a map
// of several key parts, ast::Record::tuple), or 0 when `k` is not such an element.
std::size_t Checker::tuple_record_elems(const Expr& k) {
  if (k.kind != Expr::Kind::field || k.args.empty() || !k.args[0] ||
      k.args[0]->kind != Expr::Kind::variable || k.name.empty() ||
      k.name.find_first_not_of("0123456789") != std::string::npos)
    return 0;
  const ast::VarInfo* v = find_var(k.args[0]->name);
  const std::size_t j = std::stoul(k.name);
  if (!v || v->type != Type::tuple || j >= v->elems.size()) return 0;
  const ast::TupleElem& el = v->elems[j];
  if (el.type != Type::record || el.ctype < 0) return 0;
  const ast::CType& t = program_.types.at(el.ctype);
  if (t.kind != ast::CType::Kind::record || t.record < 0) return 0;
  const ast::Record& r = program_.types.records[static_cast<std::size_t>(t.record)];
  return r.tuple ? r.fields.size() : 0;
}

void Checker::tuple_keys(Expr& map) {
  bool any = false;
  for (const ast::ExprPtr& k : map.args) {
    const ast::VarInfo* v = k->kind == Expr::Kind::variable ? find_var(k->name) : nullptr;
    any = any || k->kind == Expr::Kind::tuple || (v && v->type == Type::tuple) ||
          tuple_record_elems(*k) > 1;
  }
  if (!any) return;
  std::vector<ast::ExprPtr> keys;
  for (ast::ExprPtr& k : map.args) {
    const ast::VarInfo* v = k->kind == Expr::Kind::variable ? find_var(k->name) : nullptr;
    if (const std::size_t n = tuple_record_elems(*k); n > 1) {
      // $kv.0, the key tuple of a map of several parts: its elements are the keys.
      for (std::size_t j = 0; j < n; ++j) {
        auto x = std::make_unique<Expr>();
        x->kind = Expr::Kind::field;
        x->loc = k->loc;
        x->name = std::to_string(j);
        x->args.push_back(checking::clone(*k));
        keys.push_back(std::move(x));
      }
    } else if (k->kind == Expr::Kind::tuple) {
      for (ast::ExprPtr& a : k->args)
        keys.push_back(std::move(a));
    } else if (v && v->type == Type::tuple) {
      for (std::size_t j = 0; j < v->elems.size(); ++j) {
        auto x = std::make_unique<Expr>();
        x->kind = Expr::Kind::variable;
        x->loc = k->loc;
        x->name = action_->vars[static_cast<std::size_t>(v->slot) + 1 + j].name;
        keys.push_back(std::move(x));
      }
    } else {
      keys.push_back(std::move(k));
    }
  }
  map.args = std::move(keys);
}

Value Checker::map_value(Expr& e) {
  return map_read(e, false);
}

void Checker::assign_map_tuple(ast::MapInfo& m, const Value& v, Expr& target) {
  if (!m.kind) {
    m.kind = ValueKind::tuple;
    m.elems = elems_of(v);
    return;
  }
  if (m.kind != ValueKind::tuple) {
    map_kind_mismatch(target, m, type_name(v));
    return;
  }
  bool same = m.elems.size() == elems_of(v).size();
  for (std::size_t k = 0; same && k < elems_of(v).size(); ++k)
    same = m.elems[k].type == elems_of(v)[k].type;
  if (!same) {
    error(target.loc,
          "Tuple type mismatch: " + tuple_name(m.elems) + " != " + tuple_name(elems_of(v)) + ".");
    return;
  }
  for (std::size_t k = 0; k < elems_of(v).size(); ++k)
    m.elems[k].str_size = std::max(m.elems[k].str_size, elems_of(v)[k].str_size);
}

}  // namespace hotprobe::script::checking
