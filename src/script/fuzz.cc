#include "script/fuzz.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "script/check.h"
#include "script/parser.h"
#include "script/program.h"

namespace hotprobe::script {

namespace {

// Dies loudly: the fuzzer and the replay test see an abort with the broken condition.
#define HP_FUZZ_CHECK(cond)                                                                     \
  do {                                                                                          \
    if (!(cond)) {                                                                              \
      std::fprintf(stderr, "%s:%d: script fuzz check failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                             \
    }                                                                                           \
  } while (0)

class DiscardSink final : public Sink {
 public:
  void write(std::string_view text) override { bytes_ += text.size(); }
  void request_exit() override {}

 private:
  std::size_t bytes_ = 0;
};

// Every expression the parser built is within kMaxExprDepth and its height is right (a
// work list: this check must not recurse either).
void check_heights(const ast::Program& program) {
  std::vector<const ast::Expr*> todo;
  std::vector<const std::vector<ast::Stmt>*> blocks;
  for (const ast::Action& a : program.actions) {
    if (a.predicate) todo.push_back(a.predicate.get());
    blocks.push_back(&a.body);
  }
  while (!blocks.empty()) {
    const std::vector<ast::Stmt>* b = blocks.back();
    blocks.pop_back();
    for (const ast::Stmt& s : *b) {
      for (const ast::ExprPtr* e : {&s.expr, &s.target, &s.value, &s.cond})
        if (*e) todo.push_back(e->get());
      blocks.push_back(&s.body);
      blocks.push_back(&s.else_body);
    }
  }
  while (!todo.empty()) {
    const ast::Expr* e = todo.back();
    todo.pop_back();
    int h = 0;
    for (const ast::ExprPtr& a : e->args) {
      HP_FUZZ_CHECK(a != nullptr);
      h = std::max(h, a->height);
      todo.push_back(a.get());
    }
    HP_FUZZ_CHECK(e->height == h + 1);
    HP_FUZZ_CHECK(e->height <= kMaxExprDepth);
  }
}

}  // namespace

void fuzz_one(std::string_view source, FuzzStats* stats) {
  FuzzStats local;
  FuzzStats& st = stats ? *stats : local;
  ++st.inputs;
  Diagnostics diags;
  ast::Program program = parse(source, "fuzz", diags);
  check_heights(program);
  if (!diags.empty()) {
    HP_FUZZ_CHECK(!diags.render(program.source, program.filename).empty());
    return;
  }
  ++st.parsed;
  check(program, diags);
  if (!diags.empty()) {
    HP_FUZZ_CHECK(!diags.render(program.source, program.filename).empty());
    return;
  }
  auto compiled = Program::compile(source, CompileOptions{"fuzz", OutputFormat::text});
  if (!compiled) return;  // the evaluator may refuse what it does not support, clearly
  ++st.checked;
  DiscardSink sink;
  Program& p = **compiled;
  p.bind(&sink);
  p.run_begin();
  const std::size_t n = p.probes().size();
  for (std::size_t i = 0; i < n; ++i) {
    const Probe::Kind k = p.probes()[i].kind;
    if (k != Probe::Kind::begin && k != Probe::Kind::end) p.run_interval(i);
  }
  p.run_end();
  (void)p.print_maps();
}

}  // namespace hotprobe::script
