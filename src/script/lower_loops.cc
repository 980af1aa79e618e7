// The lower pass for loops and the small builtins (run_misc.h): each becomes one node or
// statement node with its node function; the loops' hidden slots come from the checker.
#include "script/lower.h"
#include "script/run_misc.h"

namespace hotprobe::script::lowering {

Result<const Node*> lower_misc_call(Lowerer& low, const ast::Expr& e, Node* n) {
  std::vector<const Node*> args;
  for (const ast::ExprPtr& a : e.args) {
    auto r = low.expr(*a);
    if (!r) return r.error();
    args.push_back(*r);
  }
  switch (e.func) {
    case Func::strncmp:
      n->a = args[0];
      n->b = args[1];
      n->imm = e.args[2]->value;
      n->i = i_strncmp;
      return n;
    case Func::strcontains:
      n->a = args[0];
      n->b = args[1];
      n->i = i_strcontains;
      return n;
    case Func::uptr:  // an address of the traced program is what every pointer is here
      return args[0];
    case Func::signal:
      n->a = args[0];
      n->i = i_signal;
      return n;
    case Func::ntop:
      n->a = args.size() == 2 ? args[0] : nullptr;
      n->b = args.back();
      n->s = s_ntop;
      return n;
    case Func::macaddr:
      n->a = args[0];
      n->s = s_macaddr;
      return n;
    case Func::len:
      n->map = static_cast<std::uint32_t>(e.args[0]->map_id);
      n->i = i_len;
      return n;
    case Func::system:
    case Func::cat:
      n->keys.assign(args.begin() + 1, args.end());  // the format is args[0]
      n->format = e.format;
      n->i = e.func == Func::system ? i_system : i_cat;
      return n;
    default:
      return Error(Errc::invalid_argument, "line " + std::to_string(e.loc.line) + ": " + e.name +
                                               "() is not supported by the evaluator");
  }
}

Result<void> lower_loop(Lowerer& low, const ast::Stmt& st, SNode& out) {
  out.count = st.count;
  switch (st.kind) {
    case ast::Stmt::Kind::break_:
      out.fn = st_break;
      return {};
    case ast::Stmt::Kind::continue_:
      out.fn = st_continue;
      return {};
    case ast::Stmt::Kind::while_: {
      auto c = low.expr(*st.cond);
      if (!c) return c.error();
      out.cond = *c;
      out.fn = st_while;
      break;
    }
    case ast::Stmt::Kind::for_: {
      if (!st.cond) {  // for ($kv : @m): the map's id in value->map, $kv's slot
        auto m = low.expr(*st.value);
        if (!m) return m.error();
        out.value = *m;
        out.count |= std::int64_t{st.target->slot} << 16;
        // Several key parts: $kv.0 is the record of them (check_misc.cc, key_tuple_type),
        // whose layout st_for_map fills them into; -1 for one key part.
        out.op = st.target->ctype;
        if (st.target->ctype >= 0 && !low.layout(st.target->ctype))
          return Error(Errc::invalid_argument, "a map loop's key tuple has no layout");
        out.fn = st_for_map;
        break;
      }
      auto start = low.expr(*st.value);
      if (!start) return start.error();
      auto end = low.expr(*st.cond);
      if (!end) return end.error();
      out.value = *start;
      out.cond = *end;
      out.count |= std::int64_t{st.target->slot} << 16;
      out.fn = st_for;
      break;
    }
    default:
      return Error(Errc::invalid_argument, "not a loop statement");
  }
  return low.stmts(st.body, out.body);
}

}  // namespace hotprobe::script::lowering
