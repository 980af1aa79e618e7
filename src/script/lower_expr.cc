#include <algorithm>
#include <cstring>

#include "script/builtins.h"
#include "script/diag.h"
#include "script/lower.h"
#include "script/output.h"
#include "script/run_misc.h"
#include "script/run_stack.h"
#include "script/run_usdt.h"

namespace hotprobe::script::lowering {

void use_literal_operand(Node* n) {
  static constexpr std::pair<IntFn, IntFn> kForms[] = {
      {i_add, i_add_k}, {i_sub, i_sub_k}, {i_mul, i_mul_k},   {i_div, i_div_k},   {i_ult, i_ult_k},
      {i_ule, i_ule_k}, {i_ugt, i_ugt_k}, {i_uge, i_uge_k},   {i_mod, i_mod_k},   {i_shl, i_shl_k},
      {i_shr, i_shr_k}, {i_lt, i_lt_k},   {i_le, i_le_k},     {i_gt, i_gt_k},     {i_ge, i_ge_k},
      {i_eq, i_eq_k},   {i_ne, i_ne_k},   {i_band, i_band_k}, {i_bxor, i_bxor_k}, {i_bor, i_bor_k}};
  for (const auto& [both, literal] : kForms) {
    if (n->i == both) {
      n->i = literal;
      n->imm = n->b->imm;
      return;
    }
  }
}

Result<Node*> Lowerer::map_access(const Expr& e) {
  if (e.map_id < 0 || static_cast<std::size_t>(e.map_id) >= rt_.maps->size())
    return unsupported(e, "a map the checker did not resolve");
  Node* n = make();
  n->map = static_cast<std::uint32_t>(e.map_id);
  const MapDesc& d = rt_.maps->desc(n->map);
  if (!e.args.empty() && e.args.size() != d.key_is_string.size())
    return unsupported(e, "a map used with a different number of keys");
  for (std::size_t k = 0; k < e.args.size(); ++k) {
    const Type t = e.args[k]->type;
    auto key = t == Type::ustack || t == Type::ustack_perf || t == Type::usym
                   ? key_part(*e.args[k], d, k + 1 == e.args.size())
                   : expr(*e.args[k]);
    if (!key) return key.error();
    n->keys.push_back(*key);
    n->key_is_string.push_back(d.key_is_string[k]);
  }
  n->key_words = d.key_words();
  // imm: 0 no key, 1 one integer key (also in `a`), 2 anything else (the general loop).
  n->imm = n->keys.empty()                                                  ? 0
           : (n->keys.size() == 1 && !n->key_is_string[0] && n->keys[0]->i) ? 1
                                                                            : 2;
  if (n->imm == 1) n->a = n->keys[0];
  return n;
}

Result<const Node*> Lowerer::expr(const Expr& e) {
  using K = Expr::Kind;
  switch (e.kind) {
    case K::integer: {
      Node* n = make();
      n->i = i_const;
      n->imm = e.value;
      return n;
    }
    case K::string: {
      Node* n = make();
      n->s = s_const;
      n->text = e.text;
      return n;
    }
    case K::variable: {
      if (e.slot < 0 || e.slot >= kMaxSlots)
        return unsupported(e, "more than 32 $variables in one action");
      Node* n = make();
      n->imm = e.slot;
      if (e.type == Type::tuple) {  // its elements' slots follow its own
        if (e.slot + static_cast<int>(e.elems.size()) >= kMaxSlots)
          return unsupported(e, "more than 32 $variables in one action");
        for (std::size_t k = 0; k < e.elems.size(); ++k) {
          Node* el = make();
          el->imm = e.slot + 1 + static_cast<std::int64_t>(k);
          if (e.elems[k].type == Type::record) {
            el->s = s_var_bytes;
            el->bytes = e.elems[k].str_size;
          } else if (e.elems[k].type == Type::string) {
            el->s = s_var;
          } else {
            el->i = i_var;
          }
          n->keys.push_back(el);
          n->layouts.push_back(e.elems[k].type == Type::record ? layout(e.elems[k].ctype)
                                                               : nullptr);
        }
        n->i = i_tuple;
      } else if (e.type == Type::record) {
        // A wide copy's slot is moved past the action's own slots (lower.cc, wide_slots).
        n->s = e.str_size > kStrBytes ? s_var_bytes_wide : s_var_bytes;
        n->bytes = e.str_size;
      } else if (e.type == Type::string) {
        n->s = s_var;
      } else {
        n->i = i_var;
      }
      return n;
    }
    case K::builtin: {
      if (e.name == "args" && !e.args.empty()) return args_record(e);
      Node* n = make();
      if (e.usdt_arg >= 0) {
        lower_usdt_arg(n, e.usdt_arg);
        return n;
      }
      if (lower_extra_builtin(e, n)) return n;
      n->i = builtin_def(e.builtin).i;
      n->s = builtin_def(e.builtin).s;
      return n;
    }
    case K::map: {
      auto m = map_access(e);
      if (!m) return m.error();
      Node* n = *m;
      const MapDesc& d = rt_.maps->desc(n->map);
      if (d.kind == ValueKind::tuple) return map_tuple(n, d);
      if (d.kind == ValueKind::record) {
        n->bytes = e.str_size;
        if (e.str_size > kStrBytes)
          n->s = d.per_thread ? s_tid_read_wide : s_map_read_wide;
        else
          n->s = d.per_thread ? s_tid_read_bytes : s_map_read_bytes;
      } else if (d.kind == ValueKind::string) {
        n->s = d.per_thread ? s_tid_read : s_map_read;
      } else if (d.kind == ValueKind::integer) {
        n->i = d.per_thread ? i_tid_read : i_map_read;
      } else {
        n->i = i_agg_read;
      }
      return n;
    }
    case K::unary: {
      auto a = expr(*e.args[0]);
      if (!a) return a.error();
      Node* n = make();
      n->a = *a;
      n->i = e.unary == ast::UnaryOp::neg ? i_neg : e.unary == ast::UnaryOp::lnot ? i_lnot : i_bnot;
      return n;
    }
    case K::binary:
      return binary(e);
    case K::ternary: {
      auto a = expr(*e.args[0]);
      if (!a) return a.error();
      auto b = expr(*e.args[1]);
      if (!b) return b.error();
      auto c = expr(*e.args[2]);
      if (!c) return c.error();
      Node* n = make();
      n->a = *a;
      n->b = *b;
      n->c = *c;
      if (e.type == Type::record && n->b->bytes > kStrBytes)
        return unsupported(e, "a ternary choosing between copies over 128 bytes");
      if (e.type == Type::string || e.type == Type::record) {
        n->s = s_ternary;
      } else {
        n->i = i_ternary;
      }
      return n;
    }
    case K::incdec: {
      const Expr& t = *e.args[0];
      Node* n = make();
      const std::int64_t step = e.value > 1 ? e.value : 1;  // a pointer's element size
      n->imm = e.increment ? step : -step;
      n->b = e.prefix ? n : nullptr;  // non-null marks prefix
      if (t.kind == K::variable) {
        auto v = expr(t);
        if (!v) return v.error();
        n->a = *v;
        n->i = i_incdec_var;
      } else {
        auto m = map_access(t);
        if (!m) return m.error();
        if (rt_.maps->desc((*m)->map).kind != ValueKind::integer)
          return unsupported(e, "++/-- on a map that does not hold an integer");
        n->a = *m;
        n->i = rt_.maps->desc((*m)->map).per_thread ? i_incdec_tid : i_incdec_map;
      }
      return n;
    }
    case K::call:
      return call(e);
    case K::cast: {
      auto a = expr(*e.args[0]);
      if (!a) return a.error();
      const ast::CType& c = prog_.types.at(e.cast_type);
      if (c.kind != ast::CType::Kind::integer || c.size == 8) return *a;  // same bits
      Node* n = make();
      n->a = *a;
      switch (static_cast<int>(c.size) * (c.is_signed ? -1 : 1)) {
        case 1:
          n->i = i_cast<std::uint8_t>;
          break;
        case -1:
          n->i = i_cast<std::int8_t>;
          break;
        case 2:
          n->i = i_cast<std::uint16_t>;
          break;
        case -2:
          n->i = i_cast<std::int16_t>;
          break;
        case 4:
          n->i = i_cast<std::uint32_t>;
          break;
        default:
          n->i = i_cast<std::int32_t>;
          break;
      }
      return n;
    }
    case K::deref:
    case K::field:
    case K::index:
      return memory(e);
    case K::sizeof_:
    case K::offsetof_:
      return unsupported(e, "sizeof/offsetof the checker did not fold");
    case K::tuple: {
      if (e.type == Type::record) return packed_tuple(e);
      Node* n = make();
      for (const ast::ExprPtr& a : e.args) {
        auto el = expr(*a);
        if (!el) return el.error();
        if ((*el)->bytes > kStrBytes) return unsupported(*a, "a copy over 128 bytes in a tuple");
        n->keys.push_back(*el);
        n->layouts.push_back(a->type == Type::record ? layout(a->ctype) : nullptr);
      }
      n->i = i_tuple;
      return n;
    }
  }
  return unsupported(e, "this expression");
}

// A map holding tuples read by key (`map`, its access node): a tuple node whose elements
// each read their words of the value (m_tuple_*, t_tuple_* for a per-thread map).
const Node* Lowerer::map_tuple(Node* map, const MapDesc& d) {
  Node* t = make();
  std::uint32_t w = 0;
  for (std::size_t k = 0; k < d.value_is_string.size(); ++k) {
    Node* el = make();
    el->a = map;
    el->imm = w;
    const ValueLayout* l = k < d.elem_layouts.size() ? d.elem_layouts[k].get() : nullptr;
    if (l) {
      el->bytes = l->size;
      el->s = d.per_thread ? s_tid_tuple_bytes : s_map_tuple_bytes;
    } else if (d.value_is_string[k]) {
      el->s = d.per_thread ? s_tid_tuple_str : s_map_tuple_str;
    } else {
      el->i = d.per_thread ? i_tid_tuple_int : i_map_tuple_int;
    }
    w += d.value_is_string[k] ? kStrWords : 1;
    t->keys.push_back(el);
    t->layouts.push_back(l);
  }
  t->i = i_tuple;
  return t;
}

// A bit field's unit (key_words bytes), first bit, width and signedness.
// A bit field reads as its bits, zero-extended whatever its type's sign (bpftrace masks
// them and never extends the sign: `short b : 8` holding 217 reads 217).
static void bit_field(Node* n, const ast::TypeTable& T, const ast::Field& bits) {
  n->key_words = T.size_of(bits.type);
  n->bit_offset = static_cast<std::uint8_t>(bits.bit_offset);
  n->bit_width = static_cast<std::uint8_t>(bits.bit_width);
  n->is_signed = false;
}

// `to` + index `ix` (not a literal) times `elem`; the scaled index alone when `to` is null.
Result<const Node*> Lowerer::add_index(const Expr& ix, std::int64_t elem, const Node* to) {
  auto i = expr(ix);
  if (!i) return i.error();
  Node* scaled = make();
  scaled->a = *i;
  scaled->imm = elem;
  scaled->i = i_mul_k;
  if (!to) return scaled;
  Node* sum = make();
  sum->a = to;
  sum->b = scaled;
  sum->i = i_add;
  return sum;
}

// bpftrace's runtime warning for a variable index past the end of an array (the array
// `e` indexes, in memory or in a copy): the index goes through i_index_oob, which writes
// the warning rendered here and lets the access go on, as bpftrace's does. `indexed` is
// what add_index made of the index (`summed`: the sum of a base and the scaled index).
static void guard_index(Runtime& rt, const ast::Program& prog, const Expr& e, const Node* indexed,
                        bool summed) {
  const int at = e.args[0]->ctype;
  if (at < 0) return;
  const ast::CType& arr = prog.types.at(at);
  if (arr.kind != ast::CType::Kind::array || arr.count == 0) return;
  // Every node is rt.nodes' own, mutable: the const is the node functions' view.
  Node* scaled = const_cast<Node*>(summed ? indexed->b : indexed);
  rt.nodes.push_back(std::make_unique<Node>());
  Node* check = rt.nodes.back().get();
  check->a = scaled->a;
  check->imm = static_cast<std::int64_t>(arr.count) - 1;
  check->i = i_index_oob;
  static constexpr std::string_view kMessage =
      "Array access out of bounds. This can lead to unexpected results.";
  if (rt.format == OutputFormat::json) {
    check->text = "{\"type\": \"runtime_error\", \"msg\": \"" + std::string(kMessage) +
                  "\", \"filename\": \"";
    json_escape(check->text, prog.filename);
    check->text += "\", \"line\": " + std::to_string(e.loc.line) +
                   ", \"col\": " + std::to_string(e.loc.column) + "}\n";
  } else {
    check->text = render(Diagnostic{e.loc, std::string(kMessage)}, prog.source, prog.filename);
    const std::size_t level = check->text.find(": ERROR: ");
    if (level != std::string::npos) check->text.replace(level, 9, ": WARNING: ");
  }
  scaled->a = check;
}

// `args` as a whole (check_args.h, rewrite_args_record): each part (a register or stack
// slot) copied to its offset, up to the next part's offset or the record's end.
Result<const Node*> Lowerer::args_record(const Expr& e) {
  const std::uint32_t size = e.ctype >= 0 ? prog_.types.size_of(e.ctype) : 0;
  if (e.type != Type::record || size == 0 || size > kStrBytes)
    return unsupported(e, "args the checker did not type");
  Node* n = make();
  n->s = s_pack;
  n->bytes = size;
  for (std::size_t k = 0; k < e.args.size(); ++k) {
    auto v = expr(*e.args[k]);
    if (!v) return v.error();
    const std::int64_t at = e.args[k]->value;
    const std::int64_t end = k + 1 < e.args.size() ? e.args[k + 1]->value : size;
    if (at < 0 || end <= at || end > size) return unsupported(e, "args parts out of order");
    Node* part = make();
    part->a = *v;
    part->imm = at;
    part->key_words = static_cast<std::uint32_t>(std::min<std::int64_t>(end - at, 8));
    n->keys.push_back(part);
  }
  return n;
}

// A named tuple or a tuple in a tuple (check_tuple.cc): each element copied to its
// field's offset.
Result<const Node*> Lowerer::packed_tuple(const Expr& e) {
  const ast::TypeTable& T = prog_.types;
  const std::uint32_t size = e.ctype >= 0 ? T.size_of(e.ctype) : 0;
  if (e.ctype < 0 || T.at(e.ctype).kind != ast::CType::Kind::record || size > kStrBytes)
    return unsupported(e, "a tuple the checker did not type");
  const ast::Record& rec = T.records[static_cast<std::size_t>(T.at(e.ctype).record)];
  if (rec.fields.size() != e.args.size()) return unsupported(e, "a tuple the checker did not type");
  Node* n = make();
  n->s = s_pack;
  n->bytes = size;
  for (std::size_t k = 0; k < e.args.size(); ++k) {
    auto v = expr(*e.args[k]);
    if (!v) return v.error();
    const ast::Field& f = rec.fields[k];
    Node* part = make();
    part->a = *v;
    part->imm = f.offset;
    part->key_words = std::min<std::uint32_t>(T.size_of(f.type), 8);
    part->bytes = std::min<std::uint32_t>(T.size_of(f.type), size - f.offset);
    n->keys.push_back(part);
  }
  return n;
}

// *p, p->f, s.f, p[i], a[i]: an address (a node and a constant offset), then by the
// expression's type: the address itself (an object), a string (a char array), or a load.
Result<const Node*> Lowerer::memory(const Expr& e) {
  const ast::TypeTable& T = prog_.types;
  auto base = expr(*e.args[0]);
  if (!base) return base.error();
  if (e.kind == Expr::Kind::field && e.args[0]->type == Type::tuple) {  // @t[k].N
    if (e.value < 0 || static_cast<std::size_t>(e.value) >= (*base)->keys.size())
      return unsupported(e, "a tuple element the checker did not resolve");
    return (*base)->keys[static_cast<std::size_t>(e.value)];
  }
  if (e.args[0]->type == Type::record || (*base)->s == s_rec_slice ||
      (*base)->s == s_rec_slice_wide)
    return part_of_copy(e, *base);
  const Node* addr = *base;
  std::int64_t offset = 0;
  const ast::Field* bits = nullptr;
  if (e.kind == Expr::Kind::field) {
    int rec = e.args[0]->ctype;
    if (rec < 0) return unsupported(e, "a field of an untyped value");
    if (e.arrow) rec = T.at(rec).inner;
    std::uint32_t off = 0;
    const ast::Field* f = T.field(T.at(rec).record, e.name, off);
    if (!f) return unsupported(e, "an unknown field");
    offset = off;
    if (f->bit_width) bits = f;
  } else if (e.kind == Expr::Kind::index) {
    const int bt = e.args[0]->ctype;
    if (bt < 0) return unsupported(e, "indexing an untyped value");
    const std::int64_t elem = T.size_of(T.at(bt).inner);
    const Expr& ix = *e.args[1];
    if (ix.kind == Expr::Kind::integer) {
      offset = s64(u(ix.value) * u(elem));
    } else {
      auto sum = add_index(ix, elem, addr);
      if (!sum) return sum.error();
      guard_index(rt_, prog_, e, *sum, true);
      addr = *sum;
    }
  }
  // A constant offset on an address that is itself base + constant: one addition.
  if (addr->i == i_add_k) {
    offset = s64(u(offset) + u(addr->imm));
    addr = addr->a;
  }
  Node* n = make();
  n->a = addr;
  n->imm = offset;
  if (e.type == Type::object) {
    n->i = i_add_k;
    return n;
  }
  if (e.type == Type::record) {
    n->bytes = e.str_size;
    n->s = e.str_size > kStrBytes ? s_bytes_wide : s_bytes;
    return n;
  }
  const ast::CType& c = T.at(e.ctype);
  if (e.type == Type::string) {
    n->map = std::min<std::uint32_t>(c.count + 1, kStrReadBytes);
    n->s = s_chars;
    return n;
  }
  if (bits) {
    bit_field(n, T, *bits);
    n->i = i_load_bits;
    return n;
  }
  const bool sign = c.kind == ast::CType::Kind::integer && c.is_signed;
  switch (c.size) {
    case 1:
      n->i = sign ? i_load<std::int8_t> : i_load<std::uint8_t>;
      break;
    case 2:
      n->i = sign ? i_load<std::int16_t> : i_load<std::uint16_t>;
      break;
    case 4:
      n->i = sign ? i_load<std::int32_t> : i_load<std::uint32_t>;
      break;
    default:
      n->i = i_load<std::uint64_t>;
      break;
  }
  return n;
}

// A field or element of a copy: the copy's node (or the copy a part is of), the part's
// constant offset in imm and a variable index's offset in b; then the part itself
// (s_rec_slice: an array or struct, or a char array as a string) or an integer in it.
Result<const Node*> Lowerer::part_of_copy(const Expr& e, const Node* base) {
  const ast::TypeTable& T = prog_.types;
  const bool slice = base->s == s_rec_slice || base->s == s_rec_slice_wide;
  Node* n = make();
  n->a = slice ? base->a : base;
  const bool wide = n->a->bytes > kStrBytes;  // the copy the part is read from
  std::int64_t offset = slice ? base->imm : 0;
  const Node* dynamic = slice ? base->b : nullptr;
  const ast::Field* bits = nullptr;
  if (e.kind == Expr::Kind::field) {
    std::uint32_t off = 0;
    const ast::Field* f = T.field(T.at(e.args[0]->ctype).record, e.name, off);
    if (!f) return unsupported(e, "an unknown field");
    offset += off;
    if (f->bit_width) bits = f;
  } else if (e.kind == Expr::Kind::index) {
    const std::int64_t elem = T.size_of(T.at(e.args[0]->ctype).inner);
    const Expr& ix = *e.args[1];
    if (ix.kind == Expr::Kind::integer) {
      offset = s64(u(offset) + u(ix.value) * u(elem));
    } else {
      auto sum = add_index(ix, elem, dynamic);
      if (!sum) return sum.error();
      guard_index(rt_, prog_, e, *sum, dynamic != nullptr);
      dynamic = *sum;
    }
  } else {
    return unsupported(e, "dereferencing a copied array or struct");
  }
  n->imm = offset;
  n->b = dynamic;
  if (e.type == Type::object || e.type == Type::record || e.type == Type::string) {
    n->bytes = T.size_of(e.ctype);
    if (e.type == Type::string)
      n->s = wide ? s_rec_chars_wide : s_rec_chars;
    else
      n->s = wide || n->bytes > kStrBytes ? s_rec_slice_wide : s_rec_slice;
    return n;
  }
  if (bits) {
    bit_field(n, T, *bits);
  } else {
    const ast::CType& c = T.at(e.ctype);
    n->key_words = c.size;
    n->is_signed = c.kind == ast::CType::Kind::integer && c.is_signed;
  }
  n->i = wide ? i_rec_load_wide : i_rec_load;
  return n;
}

// A chain a+b+c+... is a left-deep tree as tall as it is long (up to kMaxExprDepth): its
// left spine is lowered in a loop, and a long integer chain becomes one i_fold node, so
// neither lowering nor a hit's evaluation recurses once per operand.
Result<const Node*> Lowerer::binary(const Expr& e) {
  std::vector<const Expr*> spine;
  const Expr* base = &e;
  while (base->kind == Expr::Kind::binary) {
    spine.push_back(base);
    base = base->args[0].get();
  }
  std::reverse(spine.begin(), spine.end());  // bottom (first operator) first
  auto left = expr(*base);
  if (!left) return left.error();
  const Node* acc = *left;
  std::size_t k = 0;
  // The first operator may compare strings; every later one has an integer on its left.
  if (spine.size() >= kFoldChain && spine[0]->args[0]->type == Type::string) {
    auto b = expr(*spine[0]->args[1]);
    if (!b) return b.error();
    auto n = binary_node(*spine[0], acc, *b);
    if (!n) return n.error();
    acc = *n;
    k = 1;
  }
  if (spine.size() - k >= kFoldChain) {
    Node* fold = make();
    fold->keys.push_back(acc);
    for (; k < spine.size(); ++k) {
      auto b = expr(*spine[k]->args[1]);
      if (!b) return b.error();
      if (spine[k]->args[1]->type == Type::string)
        return unsupported(*spine[k], "this operator on strings");
      fold->keys.push_back(scale(*spine[k], *b));
      fold->ops.push_back(static_cast<std::uint8_t>(static_cast<unsigned>(spine[k]->binary) |
                                                    (unsigned_compare(*spine[k]) ? 0x80u : 0u)));
    }
    fold->i = i_fold;
    return fold;
  }
  for (; k < spine.size(); ++k) {
    auto b = expr(*spine[k]->args[1]);
    if (!b) return b.error();
    auto n = binary_node(*spine[k], acc, scale(*spine[k], *b));
    if (!n) return n.error();
    acc = *n;
  }
  return acc;
}

Result<const Node*> Lowerer::binary_node(const Expr& e, const Node* a, const Node* b) {
  Node* n = make();
  n->a = a;
  n->b = b;
  const bool records = e.args[0]->type == Type::record;
  const bool strings = e.args[0]->type == Type::string || records;
  switch (e.binary) {
    case BinaryOp::mul:
      n->i = i_mul;
      break;
    case BinaryOp::div:
      n->i = i_div;
      break;
    case BinaryOp::mod:
      n->i = i_mod;
      break;
    case BinaryOp::add:
      n->i = i_add;
      break;
    case BinaryOp::sub:
      n->i = i_sub;
      break;
    case BinaryOp::shl:
      n->i = i_shl;
      break;
    case BinaryOp::shr:
      n->i = i_shr;
      break;
    case BinaryOp::lt:
      n->i = unsigned_compare(e) ? i_ult : i_lt;
      break;
    case BinaryOp::le:
      n->i = unsigned_compare(e) ? i_ule : i_le;
      break;
    case BinaryOp::gt:
      n->i = unsigned_compare(e) ? i_ugt : i_gt;
      break;
    case BinaryOp::ge:
      n->i = unsigned_compare(e) ? i_uge : i_ge;
      break;
    case BinaryOp::eq:
      n->i = records ? (a->bytes > kStrBytes ? i_req_wide : i_req) : strings ? i_seq : i_eq;
      break;
    case BinaryOp::ne:
      n->i = records ? (a->bytes > kStrBytes ? i_rne_wide : i_rne) : strings ? i_sne : i_ne;
      break;
    case BinaryOp::band:
      n->i = i_band;
      break;
    case BinaryOp::bxor:
      n->i = i_bxor;
      break;
    case BinaryOp::bor:
      n->i = i_bor;
      break;
    case BinaryOp::land:
      n->i = i_land;
      break;
    case BinaryOp::lor:
      n->i = i_lor;
      break;
  }
  if (strings && e.binary != BinaryOp::eq && e.binary != BinaryOp::ne)
    return unsupported(e, "this operator on strings");
  if (!strings && n->b->i == i_const) use_literal_operand(n);
  return n;
}

Result<const Node*> Lowerer::call(const Expr& e) {
  Node* n = make();
  switch (e.func) {
    case Func::del: {
      auto m = map_access(*e.args[0]);
      if (!m) return m.error();
      n->a = *m;
      n->i = rt_.maps->desc((*m)->map).per_thread ? i_delete_tid : i_delete;
      return n;
    }
    case Func::clear:
    case Func::zero: {
      auto m = map_access(*e.args[0]);
      if (!m) return m.error();
      n->a = *m;
      n->i = e.func == Func::clear ? i_clear : i_zero;
      return n;
    }
    case Func::print: {
      const Expr& a0 = *e.args[0];
      if (a0.kind == Expr::Kind::map && a0.args.empty()) {
        auto m = map_access(a0);
        if (!m) return m.error();
        n->a = *m;
        if (e.args.size() > 1) {
          auto t = expr(*e.args[1]);
          if (!t) return t.error();
          n->b = *t;
        }
        if (e.args.size() > 2) {
          auto d = expr(*e.args[2]);
          if (!d) return d.error();
          n->c = *d;
        }
        n->i = i_print_map;
        return n;
      }
      auto v = expr(a0);
      if (!v) return v.error();
      n->a = *v;
      n->i = a0.type == Type::tuple ? i_print_tuple : i_print_value;
      if (a0.type == Type::record && n->a->bytes > kStrBytes) n->i = i_print_wide;
      if (a0.type == Type::record) n->layouts.push_back(layout(a0.ctype));
      return n;
    }
    case Func::printf: {
      for (std::size_t k = 1; k < e.args.size(); ++k) {
        auto a = expr(*e.args[k]);
        if (!a) return a.error();
        if ((*a)->bytes > kStrBytes) return unsupported(e, "a copy over 128 bytes in printf");
        // %r of buf(): its bytes, with the buffer's layout (format_one writes the text,
        // up to 64 bytes of \xNN: more than a string argument holds).
        if (prog_.types.is_buffer(e.args[k]->ctype)) {
          n->layouts.resize(n->keys.size());  // the arguments before it: none
          n->layouts.push_back(layout(e.args[k]->ctype));
        }
        n->keys.push_back(*a);
      }
      n->format = e.format;  // arguments are taken in order
      n->i = i_printf;
      return n;
    }
    case Func::time:
      n->text = e.args.empty() ? "%H:%M:%S\n" : e.args[0]->text;
      n->i = i_time;
      return n;
    case Func::exit:
      n->i = i_exit;
      return n;
    case Func::str: {
      auto a = expr(*e.args[0]);
      if (!a) return a.error();
      n->a = *a;
      if (e.args.size() > 1) {
        auto l = expr(*e.args[1]);
        if (!l) return l.error();
        n->b = *l;
      }
      n->s = n->a->s ? s_str_of_str : s_str;  // a string argument has no integer form
      return n;
    }
    case Func::ustack:
      if (e.type == Type::record && prog_.types.is_raw_stack(e.ctype)) {  // ustack(raw) key
        const std::uint32_t size = prog_.types.size_of(e.ctype);
        n->imm = size / 8 - 1;  // frames
        n->key_words = size / 8;
        n->bytes = size;
        n->s = s_ustack_raw;
        return n;
      }
      [[fallthrough]];
    case Func::usym:
      if (e.type == Type::string) return lower_stack_value(*this, e, n);  // run_stack.h
      [[fallthrough]];
    case Func::reg:
    case Func::strftime:
    case Func::join:
    case Func::buf:
      return builtin_call(e);
    case Func::len:  // len(ustack): the frames of a stack value (run_stack.h)
      if (e.args.size() == 1 && !(e.args[0]->kind == Expr::Kind::map && e.args[0]->args.empty())) {
        auto a = expr(*e.args[0]);
        if (!a) return a.error();
        n->a = *a;
        n->i = nodes::i_stack_len;
        return n;
      }
      [[fallthrough]];
    default:
      if (is_misc_func(e.func)) return lower_misc_call(*this, e, n);  // lower_loops.cc
      return unsupported(e, "an aggregation outside a map assignment");
  }
}

}  // namespace hotprobe::script::lowering
