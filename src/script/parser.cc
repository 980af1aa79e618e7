#include "script/parser.h"

#include <algorithm>
#include <array>
#include <cctype>
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
  Parser(std::string_view src, Diagnostics& diags, ast::TypeTable& types)
      : lex_(src, diags), diags_(diags), types_(types) {}

  void program(ast::Program& out) {
    try {
      while (!lex_.at_end()) {
        std::string_view w = lex_.peek_word();
        if (w == "struct" || w == "union" || w == "enum" || w == "typedef") {
          declaration();
        } else if (w == "#") {
          preprocessor_line();
        } else if (w == "config" && out.actions.empty()) {
          config_block(out);
        } else {
          out.actions.push_back(action());
        }
      }
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
    if (text == "BEGIN" || text == "END" || text == "begin" || text == "end") {
      ap.probe.kind = text == "BEGIN" || text == "begin" ? Probe::Kind::begin : Probe::Kind::end;
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
      // The short form: interval:5s, i:100ms, i:10us (the unit after the count), read as
      // interval:UNIT:N.
      std::string joined;
      if (colon != std::string_view::npos && c2 == std::string_view::npos) {
        const std::size_t digits = rest.find_first_not_of("0123456789");
        if (digits != 0 && digits != std::string_view::npos) {
          joined = std::string(rest.substr(digits)) + ":" + std::string(rest.substr(0, digits));
          rest = joined;
          c2 = rest.find(':');
        }
      }
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
      case Tok::star:
        return deref();
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

  // *EXPR: a read of the traced program's memory.
  [[gnu::noinline]] ExprPtr deref() {
    Token o = lex_.next();
    ExprPtr operand;
    {
      Nest nest(*this, o.loc);
      operand = unary();
    }
    ExprPtr e = make(Expr::Kind::deref, span(o.loc, operand->loc));
    e->args.push_back(std::move(operand));
    measure(*e, o.loc);
    return e;
  }

  // After a '(': a type name follows (a cast). `(name *)` with `name` no type is one
  // never defined: reported here.
  [[gnu::noinline]] bool starts_cast() {
    if (is_type_start(lex_.peek())) return true;
    if (lex_.peek().kind == Tok::ident && lex_.peek(1).kind == Tok::star &&
        (lex_.peek(2).kind == Tok::rparen || lex_.peek(2).kind == Tok::star)) {
      type_spec();
    }
    return false;
  }

  // (TYPE) EXPR, the '(' read: a cast.
  [[gnu::noinline]] ExprPtr cast(const Token& open) {
    const int type = type_name();
    expect(Tok::rparen);
    ExprPtr operand;
    {
      Nest nest(*this, open.loc);
      operand = unary();
    }
    ExprPtr e = make(Expr::Kind::cast, span(open.loc, operand->loc));
    e->cast_type = type;
    e->args.push_back(std::move(operand));
    measure(*e, open.loc);
    return e;
  }

  // sizeof(TYPE), sizeof(EXPR), offsetof(TYPE, FIELD[.FIELD...]); the name read.
  [[gnu::noinline]] ExprPtr size_or_offset(const Token& t) {
    const bool is_sizeof = t.text == "sizeof";
    expect(Tok::lparen);
    ExprPtr e = make(is_sizeof ? Expr::Kind::sizeof_ : Expr::Kind::offsetof_, t.loc);
    if (is_type_start(lex_.peek())) {
      e->cast_type = type_name();
    } else if (is_sizeof) {
      ++depth_;
      e->args.push_back(expr());
      --depth_;
    } else {
      fail(lex_.peek(), "type name");
    }
    if (!is_sizeof) {
      expect(Tok::comma);
      e->name = expect(Tok::ident).text;
      while (accept(Tok::dot))
        e->name += "." + expect(Tok::ident).text;
    }
    Token close = expect(Tok::rparen);
    e->loc = span(t.loc, close.loc);
    measure(*e, t.loc);
    return e;
  }

  // .field, ->field, [index] after `e`; out of line, as the rest of postfix() (the
  // recursion through parentheses stays narrow).
  [[gnu::noinline]] ExprPtr member_access(ExprPtr e) {
    // .field, ->field, [index]
    for (;;) {
      const Tok k = lex_.peek().kind;
      if (k == Tok::dot || k == Tok::arrow) {
        Token o = lex_.next();
        Token name = expect(Tok::ident);
        ExprPtr f = make(Expr::Kind::field, span(e->loc, name.loc));
        f->arrow = k == Tok::arrow;
        f->name = name.text;
        f->args.push_back(std::move(e));
        measure(*f, o.loc);
        e = std::move(f);
      } else if (k == Tok::lbracket && e->kind != Expr::Kind::map) {
        Token o = lex_.next();
        ExprPtr i;
        {
          Nest nest(*this, o.loc);
          ++depth_;
          i = expr();
          --depth_;
        }
        Token close = expect(Tok::rbracket);
        ExprPtr x = make(Expr::Kind::index, span(e->loc, close.loc));
        x->args.push_back(std::move(e));
        x->args.push_back(std::move(i));
        measure(*x, o.loc);
        e = std::move(x);
      } else {
        break;
      }
    }
    return e;
  }

  ExprPtr postfix() {
    ExprPtr e = primary();
    const Tok k = lex_.peek().kind;
    if (k == Tok::dot || k == Tok::arrow || (k == Tok::lbracket && e->kind != Expr::Kind::map))
      e = member_access(std::move(e));
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
        if ((t.text == "sizeof" || t.text == "offsetof") && lex_.peek().kind == Tok::lparen)
          return size_or_offset(t);
        if (accept(Tok::lparen)) return call(t);
        ExprPtr e = make(Expr::Kind::builtin, t.loc);
        e->name = std::move(t.text);
        return e;
      }
      case Tok::lparen: {
        if (starts_cast()) return cast(t);
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

  // ----- C declarations (docs/design/script-language.md, "C types") -----

  [[noreturn, gnu::noinline, gnu::cold]] void c_error(Loc at, std::string message) {
    diags_.error(at, std::move(message));
    throw SyntaxError{};
  }

  // `#include`, `#define`...: a C preprocessor line. hotprobe reads no headers.
  [[noreturn, gnu::noinline, gnu::cold]] void preprocessor_line() {
    Token t = lex_.probe_text();
    c_error(t.loc, "preprocessor lines ('" + t.text +
                       "') are not supported: hotprobe reads no C headers; define the structs "
                       "the script uses in the script itself (struct foo { int a; };)");
  }

  static bool is_base_word(std::string_view w) {
    static constexpr std::string_view kWords[] = {"signed", "unsigned", "char",  "short",
                                                  "int",    "long",     "void",  "bool",
                                                  "_Bool",  "float",    "double"};
    return std::find(std::begin(kWords), std::end(kWords), w) != std::end(kWords);
  }
  static bool is_qualifier(std::string_view w) {
    return w == "const" || w == "volatile" || w == "restrict" || w == "__restrict";
  }
  // A fixed-size integer's name: bpftrace's (int8..uint64) and C's (int8_t, u8, __u8...).
  // size 0: not one.
  static void fixed_int(std::string_view w, std::uint32_t& size, bool& is_signed) {
    struct Name {
      std::string_view name;
      std::uint32_t size;
      bool is_signed;
    };
    static constexpr Name kNames[] = {
        {"int8", 1, true},      {"int16", 2, true},      {"int32", 4, true},
        {"int64", 8, true},     {"uint8", 1, false},     {"uint16", 2, false},
        {"uint32", 4, false},   {"uint64", 8, false},    {"int8_t", 1, true},
        {"int16_t", 2, true},   {"int32_t", 4, true},    {"int64_t", 8, true},
        {"uint8_t", 1, false},  {"uint16_t", 2, false},  {"uint32_t", 4, false},
        {"uint64_t", 8, false}, {"u8", 1, false},        {"u16", 2, false},
        {"u32", 4, false},      {"u64", 8, false},       {"s8", 1, true},
        {"s16", 2, true},       {"s32", 4, true},        {"s64", 8, true},
        {"__u8", 1, false},     {"__u16", 2, false},     {"__u32", 4, false},
        {"__u64", 8, false},    {"__s8", 1, true},       {"__s16", 2, true},
        {"__s32", 4, true},     {"__s64", 8, true},      {"size_t", 8, false},
        {"ssize_t", 8, true},   {"uintptr_t", 8, false}, {"intptr_t", 8, true},
        {"off_t", 8, true},     {"pid_t", 4, true},      {"uid_t", 4, false},
        {"gid_t", 4, false},
    };
    size = 0;
    for (const Name& n : kNames) {
      if (n.name == w) {
        size = n.size;
        is_signed = n.is_signed;
        return;
      }
    }
  }

  // Does `t` start a type name (in a cast, sizeof or offsetof)?
  bool is_type_start(const Token& t) const {
    if (t.kind != Tok::ident) return false;
    const std::string_view w = t.text;
    if (w == "struct" || w == "union" || w == "enum" || is_base_word(w) || is_qualifier(w))
      return true;
    std::uint32_t size = 0;
    bool sign = false;
    fixed_int(w, size, sign);
    return size != 0 || types_.typedefs.count(t.text) != 0;
  }

  // A type specifier: struct/union/enum (with or without a body), C's base type words, a
  // fixed-size integer name, or a typedef name.
  int type_spec() {
    while (lex_.peek().kind == Tok::ident && is_qualifier(lex_.peek().text))
      lex_.next();
    const Token& first = lex_.peek();
    if (first.kind != Tok::ident) fail(first, "type name");
    Token t = lex_.next();
    if (t.text == "struct" || t.text == "union") {
      const bool is_union = t.text == "union";
      std::string tag;
      if (lex_.peek().kind == Tok::ident) tag = t.text + " " + lex_.next().text;
      if (lex_.peek().kind == Tok::lbrace) {
        if (tag.empty()) {
          tag = t.text + " (anonymous)";
          types_.records.push_back(ast::Record{tag, is_union, false, {}, 0, 1});
          const int rec = static_cast<int>(types_.records.size() - 1);
          record_body(rec, t.loc);
          return types_.record_type(rec);
        }
        const int rec = types_.record(tag, is_union);
        if (types_.records[static_cast<std::size_t>(rec)].complete)
          c_error(t.loc, "redefinition of '" + tag + "'");
        record_body(rec, t.loc);
        return types_.record_type(rec);
      }
      if (tag.empty()) fail(lex_.peek(), "struct name or {");
      auto it = types_.struct_tags.find(tag);
      if (it != types_.struct_tags.end() &&
          types_.records[static_cast<std::size_t>(it->second)].is_union != is_union) {
        c_error(t.loc, "'" + tag + "' names a " +
                           (is_union ? std::string("struct") : std::string("union")) +
                           " already: use that keyword");
      }
      return types_.record_type(types_.record(tag, is_union));
    }
    if (t.text == "enum") {
      std::string tag;
      if (lex_.peek().kind == Tok::ident) tag = "enum " + lex_.next().text;
      if (lex_.peek().kind == Tok::lbrace) {
        const int type = enum_body();
        if (!tag.empty()) types_.enum_tags[tag] = type;
        return type;
      }
      auto it = types_.enum_tags.find(tag);
      if (tag.empty() || it == types_.enum_tags.end())
        c_error(t.loc, "unknown enum" + (tag.empty() ? std::string() : " '" + tag + "'") +
                           ": define it before its use (enum name { A, B = 2 };)");
      return it->second;
    }
    if (is_base_word(t.text)) {
      int longs = 0, shorts = 0, chars = 0, ints = 0, voids = 0, bools = 0;
      bool sign = true, sign_written = false;
      Loc at = t.loc;
      for (Token w = std::move(t);;) {
        const std::string& x = w.text;
        if (x == "float" || x == "double")
          c_error(w.loc, "floating-point types are not supported (bpftrace has none either)");
        if (x == "signed" || x == "unsigned") {
          sign = x == "signed";
          sign_written = true;
        }
        longs += x == "long";
        shorts += x == "short";
        chars += x == "char";
        ints += x == "int";
        voids += x == "void";
        bools += x == "bool" || x == "_Bool";
        at = span(at, w.loc);
        const Token& nx = lex_.peek();
        if (nx.kind != Tok::ident || !(is_base_word(nx.text) || is_qualifier(nx.text))) break;
        w = lex_.next();
        if (is_qualifier(w.text)) {
          if (lex_.peek().kind != Tok::ident || !is_base_word(lex_.peek().text)) break;
          w = lex_.next();
        }
      }
      if (voids) {
        if (longs + shorts + chars + ints + bools || sign_written)
          c_error(at, "invalid type: void with other type words");
        return types_.void_type();
      }
      if (bools) return types_.integer(1, false);
      if (chars) return types_.integer(1, sign);
      if (shorts) return types_.integer(2, sign);
      if (longs) return types_.integer(8, sign);
      return types_.integer(4, sign);
    }
    std::uint32_t size = 0;
    bool sign = false;
    fixed_int(t.text, size, sign);
    if (size) return types_.integer(size, sign);
    auto td = types_.typedefs.find(t.text);
    if (td != types_.typedefs.end()) return td->second;
    c_error(t.loc, "unknown type '" + t.text +
                       "' (known: int8..int64, uint8..uint64, C's char/short/int/long "
                       "(signed, unsigned), int8_t.., u8.., size_t, struct/union/enum, and "
                       "typedefs written in the script)");
  }

  // `*`s after a type: pointers to it.
  int pointers(int t) {
    while (accept(Tok::star)) {
      t = types_.pointer(t);
      while (lex_.peek().kind == Tok::ident && is_qualifier(lex_.peek().text))
        lex_.next();
    }
    return t;
  }

  struct Declarator {
    std::string name;
    Loc loc;
    int type = -1;
    std::uint32_t bit_width = 0;
    bool bits = false;
  };
  // `*`* NAME (`[N]`)* (`: WIDTH`)?
  Declarator declarator(int base, bool allow_bits) {
    Declarator d;
    int t = pointers(base);
    if (lex_.peek().kind == Tok::lparen)
      c_error(lex_.peek().loc,
              "function pointers are not supported in declarations: declare the member as "
              "'void *NAME' (it is read as an address)");
    if (allow_bits && t == base && lex_.peek().kind == Tok::colon) {
      d.loc = lex_.peek().loc;  // an unnamed bit field: padding
    } else {
      Token name = expect(Tok::ident);
      d.name = name.text;
      d.loc = name.loc;
    }
    std::vector<std::uint32_t> dims;
    while (accept(Tok::lbracket)) {
      if (accept(Tok::rbracket)) {
        dims.push_back(0);  // a flexible array member
        continue;
      }
      Token n = expect(Tok::integer);
      if (n.value < 0 || n.value > (1 << 24))
        c_error(n.loc, "array size " + n.text + " is out of range (0 to 16777216)");
      dims.push_back(static_cast<std::uint32_t>(n.value));
      expect(Tok::rbracket);
    }
    for (auto it = dims.rbegin(); it != dims.rend(); ++it)
      t = types_.array(t, *it);
    if (d.name.empty() && lex_.peek().kind != Tok::colon) fail(lex_.peek(), ":");
    if (accept(Tok::colon)) {
      Token w = expect(Tok::integer);
      const ast::CType& c = types_.at(t);
      if (!allow_bits || c.kind != ast::CType::Kind::integer)
        c_error(w.loc, "a bit field needs an integer member of a struct or union");
      if (w.value < 0 || static_cast<std::uint64_t>(w.value) > c.size * 8u)
        c_error(w.loc, "bit field width " + w.text + " is out of range (0 to " +
                           std::to_string(c.size * 8) + " for " + types_.name(t) + ")");
      d.bits = true;
      d.bit_width = static_cast<std::uint32_t>(w.value);
    }
    d.type = t;
    return d;
  }

  static std::uint32_t align_up(std::uint32_t v, std::uint32_t a) {
    return a <= 1 ? v : (v + a - 1) / a * a;
  }

  // `{ MEMBER; ... }` of record `rec`, laid out as the x86-64 System V ABI does.
  void record_body(int rec, Loc at) {
    Nest nest(*this, at);
    expect(Tok::lbrace);
    std::vector<ast::Field> fields;
    const bool is_union = types_.records[static_cast<std::size_t>(rec)].is_union;
    std::uint64_t bitpos = 0;  // struct: bits used so far
    std::uint32_t size = 0, align = 1;
    auto place = [&](ast::Field f, Loc where) {
      if (!types_.is_complete(f.type))
        c_error(where, "member '" + f.name + "' has incomplete type '" + types_.name(f.type) +
                           "' (define it first, or make the member a pointer)");
      const std::uint32_t fsize = types_.size_of(f.type);
      const std::uint32_t falign = types_.align_of(f.type);
      align = std::max(align, falign);
      if (is_union) {
        f.offset = 0;
        size = std::max(size, fsize);
      } else if (f.bit_width) {
        const std::uint64_t unit = fsize * 8ull;
        if (bitpos / unit != (bitpos + f.bit_width - 1) / unit)
          bitpos = (bitpos + unit - 1) / unit * unit;
        f.offset = static_cast<std::uint32_t>(bitpos / unit * fsize);
        f.bit_offset = static_cast<std::uint32_t>(bitpos - f.offset * 8ull);
        bitpos += f.bit_width;
      } else {
        const std::uint32_t off = align_up(static_cast<std::uint32_t>((bitpos + 7) / 8), falign);
        f.offset = off;
        bitpos = (static_cast<std::uint64_t>(off) + fsize) * 8;
      }
      for (const ast::Field& g : fields)
        if (!f.name.empty() && g.name == f.name)
          c_error(where, "duplicate member '" + f.name + "'");
      fields.push_back(std::move(f));
    };
    while (!accept(Tok::rbrace)) {
      if (lex_.peek().kind == Tok::eof) fail(lex_.peek(), "}");
      Loc where = lex_.peek().loc;
      const int base = type_spec();
      if (accept(Tok::semicolon)) {
        const ast::CType& c = types_.at(base);
        if (c.kind != ast::CType::Kind::record ||
            types_.records[static_cast<std::size_t>(c.record)].name.find("(anonymous)") ==
                std::string::npos)
          c_error(where, "a member declaration needs a name");
        place(ast::Field{"", base, 0, 0, 0}, where);
        continue;
      }
      for (;;) {
        Declarator d = declarator(base, true);
        if (d.bits && d.bit_width == 0) {
          if (!is_union) {
            const std::uint64_t unit = types_.size_of(d.type) * 8ull;
            bitpos = (bitpos + unit - 1) / unit * unit;
          }
        } else {
          place(ast::Field{d.name, d.type, 0, 0, d.bit_width}, d.loc);
        }
        if (!accept(Tok::comma)) break;
      }
      expect(Tok::semicolon);
    }
    if (!is_union) size = static_cast<std::uint32_t>((bitpos + 7) / 8);
    ast::Record& r = types_.records[static_cast<std::size_t>(rec)];
    r.fields = std::move(fields);
    r.align = align;
    r.size = align_up(size, align);
    r.complete = true;
  }

  // `{ A, B = 2, C }`: each enumerator becomes a name for its value. The type is uint32
  // (int32 if a value is negative), as GCC lays enums out.
  int enum_body() {
    expect(Tok::lbrace);
    std::int64_t next = 0;
    bool negative = false;
    while (!accept(Tok::rbrace)) {
      Token name = expect(Tok::ident);
      std::int64_t v = next;
      if (accept(Tok::assign)) {
        const bool neg = accept(Tok::minus);
        const Token& t = lex_.peek();
        if (t.kind == Tok::integer) {
          v = lex_.next().value;
        } else if (t.kind == Tok::ident && types_.enumerators.count(t.text)) {
          v = types_.enumerators[lex_.next().text];
        } else {
          c_error(t.loc,
                  "an enumerator's value is an integer or an earlier enumerator (no other "
                  "expression is read here)");
        }
        if (neg) v = -v;
      }
      if (types_.enumerators.count(name.text))
        c_error(name.loc, "redefinition of enumerator '" + name.text + "'");
      types_.enumerators[name.text] = v;
      negative = negative || v < 0;
      next = v + 1;
      if (!accept(Tok::comma)) {
        expect(Tok::rbrace);
        break;
      }
    }
    return types_.integer(4, negative);
  }

  // A top-level `struct/union/enum ... ;` or `typedef TYPE NAME;`.
  void declaration() {
    Nest nest(*this, lex_.peek().loc);
    if (lex_.peek().kind == Tok::ident && lex_.peek().text == "typedef") {
      lex_.next();
      const int base = type_spec();
      Declarator d = declarator(base, false);
      if (types_.typedefs.count(d.name)) c_error(d.loc, "redefinition of typedef '" + d.name + "'");
      types_.typedefs[d.name] = d.type;
      expect(Tok::semicolon);
      return;
    }
    type_spec();
    if (lex_.peek().kind != Tok::semicolon)
      c_error(lex_.peek().loc,
              "expected ';' after the definition (a script declares types, not "
              "variables: write 'struct foo { ... };')");
    lex_.next();
  }

  // config = { KEY = VALUE; ... }, before the probes, as bpftrace's. Keys are bpftrace's,
  // lowercase or as environment variables (BPFTRACE_MAX_STRLEN).
  void config_block(ast::Program& out) {
    lex_.next();  // config
    expect(Tok::assign);
    expect(Tok::lbrace);
    while (!accept(Tok::rbrace)) {
      if (accept(Tok::semicolon)) continue;
      Token key = expect(Tok::ident);
      expect(Tok::assign);
      Token value = lex_.next();
      if (value.kind != Tok::integer && value.kind != Tok::ident && value.kind != Tok::string)
        fail(value, "integer, true, false or a name");
      std::string k = key.text;
      for (char& c : k)
        c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      if (k.starts_with("bpftrace_")) k = k.substr(9);
      const bool truth = value.kind == Tok::integer ? value.value != 0 : value.text == "true";
      // Settings of the kernel's BPF resources: hotprobe loads no BPF program, so they
      // have nothing to size; accepted so that a bpftrace script runs as written.
      static constexpr std::string_view kNoBpf[] = {"log_size",       "perf_rb_pages",
                                                    "max_bpf_progs",  "max_probes",
                                                    "on_stack_limit", "max_type_res_iterations"};
      if (k == "print_maps_on_exit") {
        if (value.kind == Tok::ident && value.text != "true" && value.text != "false")
          c_error(value.loc, "print_maps_on_exit is true, false, 1 or 0");
        out.print_maps_on_exit = truth;
      } else if (k == "max_strlen") {
        if (value.kind != Tok::integer || value.value != ast::kDefaultStrSize)
          c_error(value.loc, "max_strlen: hotprobe's strings are " +
                                 std::to_string(ast::kDefaultStrSize) +
                                 " bytes (bpftrace's default); other lengths are not "
                                 "supported (use str(p, N) for shorter reads)");
      } else if (std::find(std::begin(kNoBpf), std::end(kNoBpf), k) == std::end(kNoBpf)) {
        c_error(key.loc, "config: '" + key.text +
                             "' is not a setting hotprobe takes (it takes print_maps_on_exit, "
                             "max_strlen = 64, and accepts bpftrace's BPF sizing settings "
                             "log_size, perf_rb_pages, max_bpf_progs, max_probes, "
                             "on_stack_limit, max_type_res_iterations, which have no effect)");
      }
      if (!accept(Tok::semicolon)) {
        expect(Tok::rbrace);
        break;
      }
    }
  }

  // `(TYPE *...)` after the '(': the type of a cast, sizeof or offsetof.
  int type_name() { return pointers(type_spec()); }

  Lexer lex_;
  Diagnostics& diags_;
  ast::TypeTable& types_;
  bool in_predicate_ = false;
  int depth_ = 0;    // parentheses and brackets open
  int nesting_ = 0;  // Nest levels open (kMaxNesting)
};

}  // namespace

ast::Program parse(std::string_view src, std::string_view filename, Diagnostics& diags) {
  ast::Program program;
  program.filename = std::string(filename);
  program.source = std::string(src);
  Parser parser(program.source, diags, program.types);
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
