// The lower pass (docs/design/script-runtime.md, "Lowering"): a checked AST becomes trees of
// Nodes and SNodes (eval.h), each with the node function (run_nodes.h) chosen for its kind.
// Expressions are lowered in lower_expr.cc, statements and the program in lower.cc.
// Internal to the script layer; eval.h's lower() is the entry point.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "script/eval.h"
#include "script/run_nodes.h"

namespace hotprobe::script::lowering {

using namespace nodes;
using ast::BinaryOp;
using ast::Builtin;
using ast::Expr;
using ast::Func;
using ast::Type;

class Lowerer {
 public:
  Lowerer(Runtime& rt, const ast::Program& prog) : rt_(rt), prog_(prog) {}

  Result<const Node*> expr(const Expr& e);
  Result<void> stmts(const std::vector<ast::Stmt>& in, std::vector<SNode>& out);

 private:
  Node* make() {
    rt_.nodes.push_back(std::make_unique<Node>());
    return rt_.nodes.back().get();
  }
  Result<Node*> map_access(const Expr& e);
  Result<const Node*> key_part(const Expr& e, const MapDesc& d, bool last);  // lower.cc
  Result<const Node*> builtin_call(const Expr& e);                           // reg() (lower.cc)
  Result<const Node*> call(const Expr& e);
  Result<const Node*> binary(const Expr& e);
  Result<const Node*> binary_node(const Expr& e, const Node* a, const Node* b);
  Result<const Node*> memory(const Expr& e);
  Result<const Node*> args_record(const Expr& e);
  Result<const Node*> packed_tuple(const Expr& e);
  Result<const Node*> add_index(const Expr& ix, std::int64_t elem, const Node* to);
  const Node* map_tuple(Node* map, const MapDesc& d);
  // A field or element of an array or struct copied whole (lower_expr.cc): `base` is the
  // copy's node, or a part of one (s_rec_slice).
  Result<const Node*> part_of_copy(const Expr& e, const Node* base);

 public:
  // The layout of an array or struct type, made once per type (rt_.layouts owns it).
  const ValueLayout* layout(int ctype) { return runtime_layout(rt_, prog_.types, ctype).get(); }
  static std::shared_ptr<const ValueLayout> runtime_layout(Runtime& rt, const ast::TypeTable& types,
                                                           int ctype);

 private:
  static bool unsigned_compare(const Expr& op) {
    return op.value == 1 && (op.binary == BinaryOp::lt || op.binary == BinaryOp::le ||
                             op.binary == BinaryOp::gt || op.binary == BinaryOp::ge);
  }
  // p + n, p - n: n scaled by the pointee's size (checker: Expr::value).
  const Node* scale(const Expr& op, const Node* b) {
    if (op.value <= 1 || (op.binary != BinaryOp::add && op.binary != BinaryOp::sub)) return b;
    if (b->i == i_const) {
      Node* k = make();
      k->i = i_const;
      k->imm = s64(u(b->imm) * u(op.value));
      return k;
    }
    Node* n = make();
    n->a = b;
    n->imm = op.value;
    n->i = i_mul_k;
    return n;
  }
  Result<void> assign(const ast::Stmt& s, SNode& out);
  static Error unsupported(const Expr& e, std::string_view what) {
    return Error(Errc::invalid_argument,
                 "line " + std::to_string(e.loc.line) + ": " + std::string(what) +
                     " is not supported by the evaluator; rewrite the script without it");
  }

  Runtime& rt_;
  const ast::Program& prog_;
};

// A binary node whose right operand is a literal: its `_k` form, the literal in imm.
void use_literal_operand(Node* n);

}  // namespace hotprobe::script::lowering
