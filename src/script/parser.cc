#include "script/parser.h"

#include <algorithm>
#include <array>
#include <charconv>
#include <string>
#include <utility>

#include "script/lexer.h"

namespace hotprobe::script {

namespace {

using ast::Expr;
using ast::ExprPtr;
using ast::Loc;
using ast::Stmt;

// Thrown (inside this file only) after a syntax error is reported: the parse stops there.
struct SyntaxError {};

// The location from the start of `a` to the end of `b` (to the end of a's line if b is on
// a later line).
Loc span(Loc a, Loc b) {
  if (a.line != b.line || b.column + b.length < a.column) return a;
  return Loc{a.line, a.column, b.column + b.length - a.column};
}

bool has_glob(std::string_view s) {
  return s.find_first_of("*?[") != std::string_view::npos;
}

// "123" or "0x1f"; false if not a whole number.
bool parse_uint(std::string_view s, std::uint64_t& out) {
  int base = 10;
  if (s.size() > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
    base = 16;
    s.remove_prefix(2);
  }
  if (s.empty()) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out, base);
  return ec == std::errc() && p == s.data() + s.size();
}

class Parser {
 public:
  Parser(std::string_view src, Diagnostics& diags) : lex_(src, diags), diags_(diags) {}

  void program(ast::Program& out) {
    try {
      while (!lex_.at_end())
        out.actions.push_back(action());
    } catch (const SyntaxError&) {
    }
  }

 private:
  [[noreturn]] void fail(const Token& t, std::string_view expecting = {}) {
    if (t.kind != Tok::error) {
      std::string msg = "syntax error, unexpected ";
      msg += describe(t.kind);
      if (!expecting.empty()) {
        msg += ", expecting ";
        msg += expecting;
      }
      diags_.error(t.loc, std::move(msg));
    }
    throw SyntaxError{};
  }

  Token expect(Tok kind) {
    if (lex_.peek().kind != kind) fail(lex_.peek(), describe(kind));
    return lex_.next();
  }

  bool accept(Tok kind) {
    if (lex_.peek().kind != kind) return false;
    lex_.next();
    return true;
  }

  // One more nesting level (parser.h: kMaxNesting) for the guard's lifetime. Past the
  // limit, a syntax error at `at`: the parse stops before its own recursion gets deep.
  class Nest {
   public:
    Nest(Parser& p, Loc at, int cost = 1) : p_(p), cost_(cost) {
      p_.nesting_ += cost_;
      if (p_.nesting_ > kMaxNesting) p_.nested_too_deeply(at);
    }
    ~Nest() { p_.nesting_ -= cost_; }
    Nest(const Nest&) = delete;
    Nest& operator=(const Nest&) = delete;

   private:
    Parser& p_;
    int cost_;
  };

  // The error paths stay out of line: their strings would otherwise widen the frames of
  // the recursive functions, and the stack a nesting level costs.
  [[noreturn, gnu::noinline, gnu::cold]] void nested_too_deeply(Loc at) {
    diags_.error(at, "syntax error, nested too deeply: more than " + std::to_string(kMaxNesting) +
                         " levels of parentheses, map keys, calls, operators and blocks (assign "
                         "inner parts to $variables first)");
    throw SyntaxError{};
  }
  [[noreturn, gnu::noinline, gnu::cold]] void too_deep(Loc at) {
    diags_.error(at, "syntax error, expression too deep: more than " +
                         std::to_string(kMaxExprDepth) +
                         " operands in one chain of operators (split it: $a = first part; then "
                         "$a + the rest)");
    throw SyntaxError{};
  }

  // Sets e.height from its children; past kMaxExprDepth, a syntax error at `at`.
  void measure(Expr& e, Loc at) {
    int h = 0;
    for (const ExprPtr& a : e.args)
      h = std::max(h, a->height);
    e.height = h + 1;
    if (e.height > kMaxExprDepth) too_deep(at);
  }

  ast::Action action() {
    ast::Action a;
    for (;;) {
      Token t = lex_.probe_text();
      if (t.text.empty()) {
        Token bad = lex_.next();
        fail(bad, "probe");
      }
      a.probes.push_back(attach_point(t));
      if (!accept(Tok::comma)) break;
    }
    a.loc = a.probes.front().loc;
    if (lex_.peek().kind == Tok::slash) {
      lex_.next();
      in_predicate_ = true;
      a.predicate = expr();
      in_predicate_ = false;
      expect(Tok::slash);
    }
    a.body = block();
    return a;
  }

  // Decodes one probe text; errors are reported and the parse goes on.
  ast::AttachPoint attach_point(const Token& t) {
    ast::AttachPoint ap;
    ap.loc = t.loc;
    ap.probe.line = t.loc.line;
    ap.probe.column = t.loc.column;
    std::string_view text = t.text;
    if (text == "BEGIN" || text == "END") {
      ap.probe.kind = text == "BEGIN" ? Probe::Kind::begin : Probe::Kind::end;
      ap.probe.text = std::string(text);
      return ap;
    }
    std::size_t colon = text.find(':');
    std::string_view type = text.substr(0, colon);
    std::string_view rest = colon == std::string_view::npos ? "" : text.substr(colon + 1);
    if (type == "uprobe" || type == "u" || type == "uretprobe" || type == "ur") {
      bool ret = type == "uretprobe" || type == "ur";
      ap.probe.kind = ret ? Probe::Kind::uretprobe : Probe::Kind::uprobe;
      std::string_view full = ret ? "uretprobe" : "uprobe";
      std::size_t last = rest.rfind(':');
      if (colon == std::string_view::npos || last == std::string_view::npos) {
        diags_.error(t.loc, std::string(full) + " probe type requires 2 arguments (write " +
                                std::string(full) + ":MODULE:FUNCTION)");
        return ap;
      }
      ap.module = std::string(rest.substr(0, last));
      std::string_view func = rest.substr(last + 1);
      ap.probe.text = std::string(full) + ":" + std::string(rest);
      if (ap.module.empty()) {
        diags_.error(t.loc, std::string(full) +
                                " probe is missing its module (write a path such as "
                                "/usr/lib/x86_64-linux-gnu/libc.so.6, ./a.out, or a name such "
                                "as libc)");
        return ap;
      }
      if (func.empty()) {
        diags_.error(t.loc, std::string(full) + " probe is missing its function (write " +
                                std::string(full) + ":" + ap.module + ":FUNCTION)");
        return ap;
      }
      std::uint64_t n = 0;
      if (func.size() > 2 && func[0] == '0' && (func[1] == 'x' || func[1] == 'X')) {
        if (!parse_uint(func, n)) {
          diags_.error(t.loc, "invalid address '" + std::string(func) + "'");
          return ap;
        }
        ap.is_address = true;
        ap.offset = n;
      } else {
        std::size_t plus = func.find('+');
        std::string_view name = func.substr(0, plus);
        ap.function = std::string(name);
        ap.is_glob = has_glob(name);
        if (plus != std::string_view::npos) {
          std::string_view off = func.substr(plus + 1);
          if (name.empty() || !parse_uint(off, n)) {
            diags_.error(t.loc, "invalid offset '" + std::string(func) +
                                    "' (write FUNCTION+OFFSET, OFFSET decimal or 0x hex)");
            return ap;
          }
          if (ret) {
            diags_.error(t.loc, "Offset not allowed: a uretprobe is placed at a function's entry");
            return ap;
          }
          if (ap.is_glob) {
            diags_.error(t.loc, "Offset not allowed with a wildcard function name");
            return ap;
          }
          ap.has_offset = true;
          ap.offset = n;
        }
      }
      ap.probe.target = ap.module + ":" + std::string(func);
      return ap;
    }
    if (type == "interval" || type == "i") {
      ap.probe.kind = Probe::Kind::interval;
      ap.probe.text = "interval:" + std::string(rest);
      std::size_t c2 = rest.find(':');
      if (colon == std::string_view::npos || c2 == std::string_view::npos) {
        diags_.error(t.loc,
                     "interval probe type requires 2 arguments (write interval:s:N, "
                     "interval:ms:N, interval:us:N or interval:hz:N)");
        return ap;
      }
      std::string_view unit = rest.substr(0, c2);
      std::string_view count = rest.substr(c2 + 1);
      std::uint64_t n = 0;
      if (!parse_uint(count, n) || n == 0) {
        diags_.error(t.loc, "interval: '" + std::string(count) +
                                "' is not a positive integer (write interval:" + std::string(unit) +
                                ":N)");
        return ap;
      }
      std::uint64_t scale = 0;
      if (unit == "s") scale = 1'000'000'000;
      if (unit == "ms") scale = 1'000'000;
      if (unit == "us") scale = 1'000;
      if (unit == "hz") {
        ap.probe.interval_ns = 1'000'000'000 / n;
        if (ap.probe.interval_ns == 0) {
          diags_.error(t.loc, "interval: " + std::to_string(n) + " hz is too fast (at most 1e9)");
        }
        return ap;
      }
      if (scale == 0) {
        diags_.error(t.loc,
                     std::string(unit) + " is not an accepted unit of time (use s, ms, us or hz)");
        return ap;
      }
      if (n > UINT64_MAX / scale) {
        diags_.error(t.loc, "interval: " + std::string(count) + std::string(unit) + " is too long");
        return ap;
      }
      ap.probe.interval_ns = n * scale;
      return ap;
    }
    static constexpr std::array<std::string_view, 7> kKnown = {
        "uprobe", "uretprobe", "interval", "BEGIN", "END", "u", "ur"};
    static constexpr std::array<std::string_view, 14> kUnsupported = {
        "kprobe",     "kretprobe", "tracepoint", "usdt",          "profile", "software", "hardware",
        "watchpoint", "kfunc",     "kretfunc",   "rawtracepoint", "k",       "kr",       "t"};
    ap.probe.text = std::string(text);
    for (std::string_view u : kUnsupported) {
      if (type == u) {
        diags_.error(t.loc, "probe type '" + std::string(type) +
                                "' is not supported by hotprobe (use uprobe, uretprobe, BEGIN, "
                                "END or interval)");
        return ap;
      }
    }
    diags_.error(t.loc,
                 "unknown probe type '" + std::string(type) + "'" + did_you_mean(type, kKnown));
    return ap;
  }

  std::vector<Stmt> block() {
    Nest nest(*this, lex_.peek().loc);
    expect(Tok::lbrace);
    std::vector<Stmt> body;
    for (;;) {
      if (accept(Tok::rbrace)) return body;
      if (accept(Tok::semicolon)) continue;  // empty statements
      if (lex_.peek().kind == Tok::eof) fail(lex_.peek(), "}");
      body.push_back(statement());
      Stmt::Kind k = body.back().kind;
      if (k == Stmt::Kind::if_ || k == Stmt::Kind::unroll) continue;
      if (accept(Tok::semicolon)) continue;
      if (lex_.peek().kind != Tok::rbrace) fail(lex_.peek(), "}");
    }
  }

  Stmt statement() {
    const Token& t = lex_.peek();
    Stmt s;
    s.loc = t.loc;
    if (t.kind == Tok::kw_if) return if_statement();
    if (t.kind == Tok::kw_unroll) {
      lex_.next();
      s.kind = Stmt::Kind::unroll;
      expect(Tok::lparen);
      Token n = expect(Tok::integer);
      s.count = n.value;
      s.cond = std::make_unique<Expr>();
      s.cond->kind = Expr::Kind::integer;
      s.cond->loc = n.loc;
      s.cond->value = n.value;
      expect(Tok::rparen);
      s.body = block();
      return s;
    }
    if (t.kind == Tok::kw_return) {
      s.kind = Stmt::Kind::return_;
      lex_.next();
      return s;
    }
    ExprPtr e = expr();
    ast::AssignOp op;
    if (assign_op(lex_.peek().kind, op)) {
      Token eq = lex_.next();
      if (e->kind != Expr::Kind::variable && e->kind != Expr::Kind::map) fail(eq);
      s.kind = Stmt::Kind::assign;
      s.assign = op;
      s.target = std::move(e);
      s.value = expr();
      s.loc = span(s.target->loc, s.value->loc);
      return s;
    }
    s.kind = Stmt::Kind::expr;
    s.loc = e->loc;
    s.expr = std::move(e);
    return s;
  }

  static bool assign_op(Tok t, ast::AssignOp& op) {
    using B = ast::BinaryOp;
    op.compound = true;
    switch (t) {
      case Tok::assign:
        op.compound = false;
        return true;
      case Tok::plus_assign:
        op.op = B::add;
        return true;
      case Tok::minus_assign:
        op.op = B::sub;
        return true;
      case Tok::star_assign:
        op.op = B::mul;
        return true;
      case Tok::slash_assign:
        op.op = B::div;
        return true;
      case Tok::percent_assign:
        op.op = B::mod;
        return true;
      case Tok::amp_assign:
        op.op = B::band;
        return true;
      case Tok::pipe_assign:
        op.op = B::bor;
        return true;
      case Tok::caret_assign:
        op.op = B::bxor;
        return true;
      case Tok::shl_assign:
        op.op = B::shl;
        return true;
      case Tok::shr_assign:
        op.op = B::shr;
        return true;
      default:
        return false;
    }
  }

  Stmt if_statement() {
    Stmt s;
    s.kind = Stmt::Kind::if_;
    s.loc = lex_.next().loc;  // 'if'
    expect(Tok::lparen);
    s.cond = expr();
    expect(Tok::rparen);
    s.body = block();
    if (accept(Tok::kw_else)) {
      if (lex_.peek().kind == Tok::kw_if) {
        Nest nest(*this, lex_.peek().loc);
        s.else_body.push_back(if_statement());
      } else {
        s.else_body = block();
      }
    }
    return s;
  }

  ExprPtr make(Expr::Kind kind, Loc loc) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->loc = loc;
    return e;
  }

  ExprPtr expr() {
    Nest nest(*this, lex_.peek().loc);
    ExprPtr cond = binary(0);
    if (lex_.peek().kind != Tok::question) return cond;
    Loc q = lex_.next().loc;
    ExprPtr yes = expr();
    expect(Tok::colon);
    ExprPtr no = expr();
    ExprPtr e = make(Expr::Kind::ternary, span(cond->loc, no->loc));
    e->args.push_back(std::move(cond));
    e->args.push_back(std::move(yes));
    e->args.push_back(std::move(no));
    measure(*e, q);
    return e;
  }

  // The binary operator of `t` and its precedence `level` (0: || ... 9: * / %).
  static bool binary_op(Tok t, int& level, ast::BinaryOp& op) {
    using B = ast::BinaryOp;
    struct Entry {
      Tok tok;
      int level;
      B op;
    };
    static constexpr Entry kTable[] = {
        {Tok::lor, 0, B::lor},    {Tok::land, 1, B::land}, {Tok::pipe, 2, B::bor},
        {Tok::caret, 3, B::bxor}, {Tok::amp, 4, B::band},  {Tok::eq, 5, B::eq},
        {Tok::ne, 5, B::ne},      {Tok::lt, 6, B::lt},     {Tok::le, 6, B::le},
        {Tok::gt, 6, B::gt},      {Tok::ge, 6, B::ge},     {Tok::shl, 7, B::shl},
        {Tok::shr, 7, B::shr},    {Tok::plus, 8, B::add},  {Tok::minus, 8, B::sub},
        {Tok::star, 9, B::mul},   {Tok::slash, 9, B::div}, {Tok::percent, 9, B::mod},
    };
    for (const Entry& e : kTable) {
      if (e.tok == t) {
        op = e.op;
        level = e.level;
        return true;
      }
    }
    return false;
  }

  // Operators of precedence `min_level` and above, by precedence climbing: a chain of
  // operators is built in a loop (left-associative), and only a right operand that binds
  // tighter recurses, so the parser's stack grows with nesting, not with length.
  ExprPtr binary(int min_level) {
    ExprPtr left = unary();
    ast::BinaryOp op;
    int level = 0;
    while (binary_op(lex_.peek().kind, level, op) && level >= min_level) {
      // In a predicate, the '/' before the action's '{' closes the predicate.
      if (op == ast::BinaryOp::div && in_predicate_ && depth_ == 0 &&
          (lex_.peek(1).kind == Tok::lbrace || lex_.peek(1).kind == Tok::eof)) {
        break;
      }
      Loc at = lex_.next().loc;
      ExprPtr right;
      {
        Nest nest(*this, at);
        right = binary(level + 1);
      }
      ExprPtr e = make(Expr::Kind::binary, span(left->loc, right->loc));
      e->binary = op;
      e->args.push_back(std::move(left));
      e->args.push_back(std::move(right));
      measure(*e, at);
      left = std::move(e);
    }
    return left;
  }

  // ++x / --x, out of line (as its error message): unary() recurses once per operator.
  [[gnu::noinline]] ExprPtr prefix_incdec() {
    Token o = lex_.next();
    ExprPtr target = postfix();
    if (target->kind != Expr::Kind::variable && target->kind != Expr::Kind::map) {
      diags_.error(span(o.loc, target->loc), std::string("syntax error, ") +
                                                 std::string(describe(o.kind)) +
                                                 " needs a variable or a map");
      throw SyntaxError{};
    }
    ExprPtr e = make(Expr::Kind::incdec, span(o.loc, target->loc));
    e->increment = o.kind == Tok::inc;
    e->prefix = true;
    e->args.push_back(std::move(target));
    measure(*e, o.loc);
    return e;
  }

  ExprPtr unary() {
    const Token& t = lex_.peek();
    ast::UnaryOp op;
    switch (t.kind) {
      case Tok::minus:
        op = ast::UnaryOp::neg;
        break;
      case Tok::bang:
        op = ast::UnaryOp::lnot;
        break;
      case Tok::tilde:
        op = ast::UnaryOp::bnot;
        break;
      case Tok::inc:
      case Tok::dec:
        return prefix_incdec();
      default:
        return postfix();
    }
    Token o = lex_.next();
    ExprPtr operand;
    {
      Nest nest(*this, o.loc);
      operand = unary();
    }
    ExprPtr e = make(Expr::Kind::unary, span(o.loc, operand->loc));
    e->unary = op;
    e->args.push_back(std::move(operand));
    measure(*e, o.loc);
    return e;
  }

  ExprPtr postfix() {
    ExprPtr e = primary();
    if ((e->kind == Expr::Kind::variable || e->kind == Expr::Kind::map) &&
        (lex_.peek().kind == Tok::inc || lex_.peek().kind == Tok::dec)) {
      Token o = lex_.next();
      ExprPtr p = make(Expr::Kind::incdec, span(e->loc, o.loc));
      p->increment = o.kind == Tok::inc;
      p->prefix = false;
      p->args.push_back(std::move(e));
      measure(*p, o.loc);
      return p;
    }
    return e;
  }

  // `(` already consumed: expressions up to `close`.
  std::vector<ExprPtr> list(Tok close, Loc& end) {
    std::vector<ExprPtr> out;
    ++depth_;
    if (lex_.peek().kind != close) {
      for (;;) {
        out.push_back(expr());
        if (!accept(Tok::comma)) break;
      }
    }
    --depth_;
    if (lex_.peek().kind != close) {
      fail(lex_.peek(), std::string(describe(close)) + (out.empty() ? "" : " or ,"));
    }
    end = lex_.next().loc;
    return out;
  }

  // Out of line, as the rest of primary(): the recursion through parentheses stays narrow.
  [[gnu::noinline]] ExprPtr map_access(Token& t) {
    ExprPtr e = make(Expr::Kind::map, t.loc);
    e->name = std::move(t.text);
    if (accept(Tok::lbracket)) {
      // A map read keeps its whole key on the evaluator's stack: a heavier level.
      Nest nest(*this, t.loc, kMapKeyNestingCost);
      Loc end;
      e->args = list(Tok::rbracket, end);
      if (e->args.empty()) fail(Token{Tok::rbracket, end, "]", 0}, "expression");
      e->loc = span(t.loc, end);
      measure(*e, t.loc);
    }
    return e;
  }
  [[gnu::noinline]] ExprPtr call(Token& t) {
    ExprPtr e = make(Expr::Kind::call, t.loc);
    e->name = std::move(t.text);
    Loc end;
    e->args = list(Tok::rparen, end);
    e->loc = span(t.loc, end);
    measure(*e, t.loc);
    return e;
  }

  ExprPtr primary() {
    Token t = lex_.next();
    switch (t.kind) {
      case Tok::integer: {
        ExprPtr e = make(Expr::Kind::integer, t.loc);
        e->value = t.value;
        return e;
      }
      case Tok::string: {
        ExprPtr e = make(Expr::Kind::string, t.loc);
        e->text = std::move(t.text);
        return e;
      }
      case Tok::var: {
        ExprPtr e = make(Expr::Kind::variable, t.loc);
        e->name = std::move(t.text);
        return e;
      }
      case Tok::map:
        return map_access(t);
      case Tok::ident: {
        if (accept(Tok::lparen)) return call(t);
        ExprPtr e = make(Expr::Kind::builtin, t.loc);
        e->name = std::move(t.text);
        return e;
      }
      case Tok::lparen: {
        ++depth_;
        ExprPtr e = expr();
        --depth_;
        Token close = expect(Tok::rparen);
        e->loc = span(t.loc, close.loc);
        return e;
      }
      default:
        fail(t);
    }
  }

  Lexer lex_;
  Diagnostics& diags_;
  bool in_predicate_ = false;
  int depth_ = 0;    // parentheses and brackets open
  int nesting_ = 0;  // Nest levels open (kMaxNesting)
};

}  // namespace

ast::Program parse(std::string_view src, std::string_view filename, Diagnostics& diags) {
  ast::Program program;
  program.filename = std::string(filename);
  program.source = std::string(src);
  Parser parser(program.source, diags);
  parser.program(program);
  return program;
}

Result<ast::Program> parse(std::string_view src, std::string_view filename) {
  Diagnostics diags;
  ast::Program program = parse(src, filename, diags);
  if (!diags.empty()) return diags.to_error(program.source, program.filename);
  return program;
}

}  // namespace hotprobe::script
