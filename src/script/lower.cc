#include "script/eval.h"

#include <algorithm>
#include <memory>
#include <vector>

#include "script/builtins.h"
#include "script/lower.h"
#include "script/run_clock.h"
#include "script/run_misc.h"
#include "script/run_thread.h"

namespace hotprobe::script {
namespace lowering {

namespace {

// Which plain maps are keyed by `tid` alone in every access of the program (MapDesc::
// per_thread): such a map is partitioned by thread by construction. An access without keys
// (print/clear/zero of the whole map) does not count against it.
class TidKeyScan {
 public:
  explicit TidKeyScan(const ast::Program& p) : only_tid_(p.maps.size(), true) {
    for (const ast::Action& a : p.actions) {
      if (a.predicate) expr(*a.predicate);
      stmts(a.body);
    }
  }
  bool only_tid(std::size_t map) const { return only_tid_[map]; }

 private:
  // With a work list, not a recursion: a chain a+b+c+... is as tall as it is long.
  void expr(const Expr& root) {
    std::vector<const Expr*> todo{&root};
    while (!todo.empty()) {
      const Expr& e = *todo.back();
      todo.pop_back();
      if (e.kind == Expr::Kind::map && e.map_id >= 0 &&
          static_cast<std::size_t>(e.map_id) < only_tid_.size() && !e.args.empty()) {
        const Expr& k = *e.args[0];
        if (e.args.size() != 1 || k.kind != Expr::Kind::builtin || k.builtin != Builtin::tid)
          only_tid_[e.map_id] = false;
      }
      for (const ast::ExprPtr& a : e.args)
        if (a) todo.push_back(a.get());
    }
  }
  void stmts(const std::vector<ast::Stmt>& body) {
    for (const ast::Stmt& st : body) {
      for (const ast::ExprPtr* e : {&st.expr, &st.target, &st.value, &st.cond})
        if (*e) expr(**e);
      stmts(st.body);
      stmts(st.else_body);
    }
  }
  std::vector<bool> only_tid_;
};

KeyPart key_part_of(ast::Type t) {
  switch (t) {
    case Type::string:
      return KeyPart::string;
    case Type::ustack:
      return KeyPart::ustack;
    case Type::ustack_perf:
      return KeyPart::ustack_perf;
    case Type::usym:
      return KeyPart::usym;
    case Type::record:
      return KeyPart::record;
    default:
      return KeyPart::integer;
  }
}

}  // namespace

std::shared_ptr<const ValueLayout> Lowerer::runtime_layout(Runtime& rt, const ast::TypeTable& types,
                                                           int ctype) {
  auto [it, inserted] = rt.layouts.try_emplace(ctype);
  if (inserted) it->second = make_layout(types, ctype);
  return it->second;
}

// A ustack or usym key part of map `d` (the checker typed the part); `last`: the key's
// last part.
Result<const Node*> Lowerer::key_part(const Expr& e, const MapDesc& d, bool last) {
  if (e.type == Type::usym) return expr(*e.args[0]);  // the address; printed as a symbol
  Node* n = make();
  n->key_words = 1 + d.stack_frames;  // build_key: a ustack part (a node with no i, no s)
  n->imm = std::min(e.str_size, d.stack_frames);
  // Not the key's last part: hashed and compared whole, so its tail is zeroed.
  n->is_signed = !last || d.stack_tail() == kNoStackTail;
  return n;
}

// Calls this file lowers: reg("name"), strftime, join, buf.
Result<const Node*> Lowerer::builtin_call(const Expr& e) {
  if (e.func == Func::strftime || e.func == Func::join || e.func == Func::buf) {
    auto a = expr(e.func == Func::strftime ? *e.args[1] : *e.args[0]);  // the time, the pointer
    if (!a) return a.error();
    Node* n = make();
    n->a = *a;
    if (e.func == Func::strftime) {
      n->text = e.args[0]->text;
      n->s = s_strftime;
    } else if (e.func == Func::join) {
      n->text = e.args.size() > 1 ? e.args[1]->text : " ";
      n->i = i_join;
    } else {  // buf(): a buffer record (ast::TypeTable::buffer), run_records.cc
      n->imm = e.args[1]->value;
      n->bytes = static_cast<std::uint32_t>(1 + n->imm);
      n->s = n->a->s ? s_buf_str : s_buf_bytes;
    }
    return n;
  }
  if (e.func != Func::reg) return unsupported(e, "ustack and usym outside a map key");
  const RegName* r = find_reg(e.args[0]->text);
  if (!r) return unsupported(e, "an unknown register");
  Node* n = make();
  n->i = i_reg;
  n->imm = static_cast<std::int64_t>(r->offset);
  return n;
}

Result<void> Lowerer::assign(const ast::Stmt& st, SNode& out) {
  const Expr& t = *st.target;
  const Expr& v = *st.value;
  if (t.kind == Expr::Kind::variable) {
    auto tn = expr(t);
    if (!tn) return tn.error();
    auto vn = expr(v);
    if (!vn) return vn.error();
    out.target = *tn;
    out.value = *vn;
    if (st.assign.compound) {
      out.op = static_cast<std::int64_t>(st.assign.op);
      out.fn = st_var_compound;
    } else if (t.type == Type::tuple) {
      out.fn = st_var_tuple;
    } else {
      out.fn = (*tn)->s ? st_var_str : st_var_int;
    }
    return {};
  }
  auto m = map_access(t);
  if (!m) return m.error();
  out.target = *m;
  const MapDesc& d = rt_.maps->desc((*m)->map);
  if (is_aggregation(d.kind)) {
    if (v.kind != Expr::Kind::call || !ast::is_aggregation(v.func))
      return unsupported(v, "assigning a non-aggregation to an aggregation map");
    if (v.func != Func::count) {
      auto a = expr(*v.args[0]);
      if (!a) return a.error();
      out.value = *a;
    }
    switch (v.func) {
      case Func::count:
        out.fn = st_count;
        break;
      case Func::sum:
        out.fn = st_sum;
        break;
      case Func::avg:
      case Func::stats:
        out.fn = st_avg;
        break;
      case Func::min:
        out.fn = st_minmax<true>;
        break;
      case Func::max:
        out.fn = st_minmax<false>;
        break;
      case Func::hist:
        out.fn = st_hist;
        break;
      case Func::lhist: {
        // The bucket parameters live in the statement: imm (min) on a wrapper node,
        // count (max), op (step), map (bucket count).
        Node* w = make();
        w->a = out.value;
        w->i = i_value_of_call;
        w->imm = d.lhist_min;
        w->key_words = 1;
        w->map = d.lhist_buckets();
        out.value = w;
        out.count = d.lhist_max;
        out.op = d.lhist_step;
        out.fn = st_lhist;
        break;
      }
      default:
        return unsupported(v, "this aggregation");
    }
    return {};
  }
  auto vn = expr(v);
  if (!vn) return vn.error();
  out.value = *vn;
  if (st.assign.compound) {
    if (d.kind != ValueKind::integer) return unsupported(v, "a compound assignment to a string");
    out.op = static_cast<std::int64_t>(st.assign.op);
    out.fn = d.per_thread ? st_tid_compound : st_map_compound;
  } else if (d.kind == ValueKind::tuple) {
    out.fn = d.per_thread ? st_tid_tuple : st_map_tuple;
  } else if (d.kind == ValueKind::record && d.value_words() > kStrWords) {
    out.fn = d.per_thread ? st_tid_wide : st_map_wide;  // a copy over kStrBytes
  } else if (d.per_thread) {
    out.fn = d.kind == ValueKind::string || d.kind == ValueKind::record ? st_tid_str : st_tid_int;
  } else {
    out.fn = d.kind == ValueKind::string || d.kind == ValueKind::record ? st_map_str : st_map_int;
  }
  return {};
}

Result<void> Lowerer::stmts(const std::vector<ast::Stmt>& in, std::vector<SNode>& out) {
  for (const ast::Stmt& st : in) {
    SNode s;
    switch (st.kind) {
      case ast::Stmt::Kind::expr: {
        auto e = expr(*st.expr);
        if (!e) return e.error();
        s.target = *e;
        s.fn =
            (st.expr->kind == Expr::Kind::call && st.expr->func == Func::exit) ? st_exit : st_expr;
        if ((*e)->s && (*e)->bytes > kStrBytes) s.fn = st_expr_wide;
        break;
      }
      case ast::Stmt::Kind::assign: {
        auto r = assign(st, s);
        if (!r) return r.error();
        break;
      }
      case ast::Stmt::Kind::if_: {
        auto c = expr(*st.cond);
        if (!c) return c.error();
        s.cond = *c;
        if (auto r = stmts(st.body, s.body); !r) return r.error();
        if (auto r = stmts(st.else_body, s.else_body); !r) return r.error();
        s.fn = st_if;
        break;
      }
      case ast::Stmt::Kind::unroll:
        if (auto r = stmts(st.body, s.body); !r) return r.error();
        s.count = st.count;
        s.fn = st_unroll;
        break;
      case ast::Stmt::Kind::return_:
        s.fn = st_return;
        break;
      case ast::Stmt::Kind::while_:
      case ast::Stmt::Kind::for_:
      case ast::Stmt::Kind::break_:
      case ast::Stmt::Kind::continue_:
        if (auto r = lower_loop(*this, st, s); !r) return r.error();  // lower_loops.cc
        break;
    }
    out.push_back(std::move(s));
  }
  return {};
}

// A $variable holding a copy over kStrBytes takes record_span(size) / kStrBytes string
// slots in a row, after the action's own slots (the checker gives every variable one):
// its nodes (s_var_bytes_wide, reads and the assignment's target alike) made since
// `first_node` get that first slot.
Result<void> wide_slots(const ast::Action& a, Runtime& rt, std::size_t first_node,
                        ActionCode& code) {
  std::vector<int> moved(static_cast<std::size_t>(std::max(a.num_slots, 0)), -1);
  int next = a.num_slots;
  for (const ast::VarInfo& v : a.vars) {
    if (v.type != Type::record || v.str_size <= kStrBytes || v.slot < 0 || v.slot >= a.num_slots)
      continue;
    moved[static_cast<std::size_t>(v.slot)] = next;
    next += static_cast<int>(record_span(v.str_size) / kStrBytes);
  }
  if (next > kMaxSlots) {
    return Error(Errc::invalid_argument,
                 "an action's $variables and copies over " + std::to_string(kStrBytes) +
                     " bytes need " + std::to_string(next) + " slots of " +
                     std::to_string(kStrBytes) + " bytes, more than " + std::to_string(kMaxSlots) +
                     ": keep fewer wide copies in variables (read their fields instead)");
  }
  code.num_slots = next;
  for (std::size_t k = first_node; k < rt.nodes.size(); ++k) {
    Node& n = *rt.nodes[k];
    if (n.s != s_var_bytes_wide) continue;
    if (n.imm < 0 || static_cast<std::size_t>(n.imm) >= moved.size() ||
        moved[static_cast<std::size_t>(n.imm)] < 0)
      return Error(Errc::invalid_argument, "a wide copy in a $variable the checker did not type");
    n.imm = moved[static_cast<std::size_t>(n.imm)];
  }
  return {};
}

}  // namespace lowering

Result<std::unique_ptr<Runtime>> lower(const ast::Program& program, OutputFormat format) {
  using namespace lowering;
  clock::calibrate_once();
  thread::init_once();
  misc_init_once(program.source.find("username") != std::string::npos);  // run_misc.cc
  auto rt = std::make_unique<Runtime>();
  rt->format = format;
  rt->print_maps_on_exit = program.print_maps_on_exit;
  rt->start_ns = clock::now();
  std::vector<MapDesc> descs;
  const TidKeyScan tid_keys(program);
  for (const ast::MapInfo& m : program.maps) {
    MapDesc d;
    d.name = m.name;
    d.kind = m.kind.value_or(ValueKind::integer);
    if (d.kind == ValueKind::record)
      d.value_layout = Lowerer::runtime_layout(*rt, program.types, m.ctype);
    for (const ast::TupleElem& t : m.elems) {
      d.value_is_string.push_back(t.type == Type::string || t.type == Type::record);
      d.elem_layouts.push_back(
          t.type == Type::record ? Lowerer::runtime_layout(*rt, program.types, t.ctype) : nullptr);
    }
    for (std::size_t k = 0; k < m.key_types.size(); ++k) {
      const ast::Type t = m.key_types[k];
      d.key_is_string.push_back(t == Type::string || t == Type::record);
      d.key_parts.push_back(key_part_of(t));
      d.key_layouts.push_back(t == Type::record && k < m.key_ctypes.size()
                                  ? Lowerer::runtime_layout(*rt, program.types, m.key_ctypes[k])
                                  : nullptr);
      if (t == Type::ustack || t == Type::ustack_perf)
        d.stack_frames = std::max(d.stack_frames, std::min(m.key_sizes[k], kMaxStackFrames));
    }
    if (d.key_words() > kMaxKeyWords) {
      return Error(Errc::invalid_argument,
                   "map " + m.name + "'s key has " + std::to_string(d.key_words() * 8) +
                       " bytes, more than " + std::to_string(kMaxKeyWords * 8) +
                       ": key it by fewer or smaller arrays and structs");
    }
    d.per_thread = !is_aggregation(d.kind) && d.key_is_string.size() == 1 && !d.key_is_string[0] &&
                   tid_keys.only_tid(static_cast<std::size_t>(m.id));
    if (d.key_is_string.size() > kMaxKeyParts) {
      return Error(Errc::invalid_argument,
                   "map " + m.name + " has more than 8 keys; use fewer key parts");
    }
    d.lhist_min = m.lhist_min;
    d.lhist_max = m.lhist_max;
    d.lhist_step = m.lhist_step > 0 ? m.lhist_step : 1;
    descs.push_back(std::move(d));
  }
  rt->maps = std::make_unique<MapSet>(std::move(descs));
  Lowerer low(*rt, program);
  for (const ast::Action& a : program.actions) {
    auto code = std::make_unique<ActionCode>();
    if (a.num_slots > kMaxSlots)
      return Error(Errc::invalid_argument, "an action uses more than 32 $variables; use fewer");
    code->num_slots = a.num_slots;
    const std::size_t first_node = rt->nodes.size();
    if (a.predicate) {
      auto p = low.expr(*a.predicate);
      if (!p) return p.error();
      code->predicate = *p;
    }
    if (auto r = low.stmts(a.body, code->body); !r) return r.error();
    if (auto r = wide_slots(a, *rt, first_node, *code); !r) return r.error();
    for (const ast::AttachPoint& ap : a.probes) {
      auto ctx = std::make_unique<ProbeCtx>();
      ctx->rt = rt.get();
      ctx->index = rt->probes.size();
      ctx->probe = ap.probe;
      ctx->action = code.get();
      ctx->func = ap.function;
      ctx->glob = ap.is_glob;
      ctx->prefix =
          std::string(ap.probe.kind == Probe::Kind::uretprobe ? "uretprobe:" : "uprobe:") +
          ap.module + ":";
      rt->probe_list.push_back(ap.probe);
      rt->probes.push_back(std::move(ctx));
    }
    rt->actions.push_back(std::move(code));
  }
  return rt;
}

}  // namespace hotprobe::script
