#include "script/parser.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>

#include "script/check_args.h"
#include "script/lexer.h"
#include "script/loops.h"
#include "script/run_misc.h"
#include "script/symbolize.h"

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
  Parser(std::string_view src, Diagnostics& diags, ast::TypeTable& types,
         const ast::TypeFacts& facts)
      : lex_(src, diags), diags_(diags), types_(types), facts_(facts) {}

  void program(ast::Program& out);

  // config's stack_mode (bpftrace, perf, raw or build_id), empty when not set.
  const std::string& stack_mode() const { return stack_mode_; }
  // config's missing_probes (error, warn or ignore), empty when not set.
  const std::string& missing_probes() const { return missing_probes_; }
  // config's show_debug_info.
  bool show_debug_info() const { return show_debug_info_; }

 private:
  bool show_debug_info_ = false;
  std::string stack_mode_;
  std::string missing_probes_;
  [[noreturn]] void fail(const Token& t, std::string_view expecting = {});

  Token expect(Tok kind) {
    if (lex_.peek().kind != kind) fail(lex_.peek(), describe(kind));
    return lex_.next();
  }

  bool accept(Tok kind);

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
  [[noreturn, gnu::noinline, gnu::cold]] void nested_too_deeply(Loc at);
  [[noreturn, gnu::noinline, gnu::cold]] void too_deep(Loc at);

  // Sets e.height from its children; past kMaxExprDepth, a syntax error at `at`.
  void measure(Expr& e, Loc at);

  ast::Action action();

  // Decodes one probe text; errors are reported and the parse goes on.
  ast::AttachPoint attach_point(const Token& t);

  std::vector<Stmt> block();

  Stmt statement();

  static bool assign_op(Tok t, ast::AssignOp& op);

  Stmt if_statement();

  // while (COND) BLOCK, for ($VAR : START..END) BLOCK, break, continue.
  [[gnu::noinline]] Stmt loop_statement();
  // The hidden $variables a loop's action starts with (the per-hit iteration budget and
  // break/continue's flag, both 0): prepended to an action whose body has a loop.
  void loop_preamble(ast::Action& a);
  bool saw_loop_ = false;

  ExprPtr make(Expr::Kind kind, Loc loc);

  ExprPtr expr();

  // The binary operator of `t` and its precedence `level` (0: || ... 9: * / %).
  static bool binary_op(Tok t, int& level, ast::BinaryOp& op);

  // Operators of precedence `min_level` and above, by precedence climbing: a chain of
  // operators is built in a loop (left-associative), and only a right operand that binds
  // tighter recurses, so the parser's stack grows with nesting, not with length.
  ExprPtr binary(int min_level);

  // ++x / --x, out of line (as its error message): unary() recurses once per operator.
  [[gnu::noinline]] ExprPtr prefix_incdec();

  ExprPtr unary();

  // *EXPR: a read of the traced program's memory.
  [[gnu::noinline]] ExprPtr deref();

  // After a '(': a type name follows (a cast). `(name *)` with `name` no type is one
  // never defined: reported here.
  [[gnu::noinline]] bool starts_cast();

  // (TYPE) EXPR, the '(' read: a cast.
  [[gnu::noinline]] ExprPtr cast(const Token& open);

  // sizeof(TYPE), sizeof(EXPR), offsetof(TYPE, FIELD[.FIELD...]); the name read.
  [[gnu::noinline]] ExprPtr size_or_offset(const Token& t);
  [[gnu::noinline]] ExprPtr container_of(const Token& t);  // parse_expr.inc
  ExprPtr parenthesized(const Token& open);
  [[gnu::noinline, gnu::cold]] ExprPtr tuple_rest(const Token& open, ExprPtr first);
  [[gnu::noinline]] Stmt let_statement();  // parse_ctypes.inc

  // .field, ->field, [index] after `e`; out of line, as the rest of postfix() (the
  // recursion through parentheses stays narrow).
  [[gnu::noinline]] ExprPtr member_access(ExprPtr e);

  ExprPtr postfix();

  // `(` already consumed: expressions up to `close`.
  std::vector<ExprPtr> list(Tok close, Loc& end);

  // Out of line, as the rest of primary(): the recursion through parentheses stays narrow.
  [[gnu::noinline]] ExprPtr map_access(Token& t);
  [[gnu::noinline]] ExprPtr call(Token& t);

  ExprPtr primary();

  // ----- C declarations (docs/design/script-language.md, "C types") -----

  [[noreturn, gnu::noinline, gnu::cold]] void c_error(Loc at, std::string message) {
    diags_.error(at, std::move(message));
    throw SyntaxError{};
  }

  // `#include`, `#define`...: a C preprocessor line (parse_ctypes.inc).
  [[gnu::noinline]] void preprocessor_line();
  // The declarations of header `spelled` (#include's "x.h" or <x.h>), written at `at`.
  [[gnu::noinline]] void include(const std::string& spelled, Loc at);
  // A header's text: declarations and preprocessor lines only.
  void header();

  static bool is_base_word(std::string_view w);
  static bool is_qualifier(std::string_view w) {
    return w == "const" || w == "volatile" || w == "restrict" || w == "__restrict";
  }
  // A fixed-size integer's name: bpftrace's (int8..uint64) and C's (int8_t, u8, __u8...).
  // size 0: not one.
  static void fixed_int(std::string_view w, std::uint32_t& size, bool& is_signed);

  // Does `t` start a type name (in a cast, sizeof or offsetof)?
  bool is_type_start(const Token& t) const;

  // A type specifier: struct/union/enum (with or without a body), C's base type words, a
  // fixed-size integer name, or a typedef name.
  int type_spec();

  // `*`s after a type: pointers to it.
  int pointers(int t);

  struct Declarator {
    std::string name;
    Loc loc;
    int type = -1;
    std::uint32_t bit_width = 0;
    bool bits = false;
  };
  // `*`* NAME (`[N]`)* (`: WIDTH`)?
  Declarator declarator(int base, bool allow_bits);

  static std::uint32_t align_up(std::uint32_t v, std::uint32_t a) {
    return a <= 1 ? v : (v + a - 1) / a * a;
  }

  // `{ MEMBER; ... }` of record `rec`, laid out as the x86-64 System V ABI does.
  void record_body(int rec, Loc at);

  // `{ A, B = 2, C }`: each enumerator becomes a name for its value. The type is uint32
  // (int32 if a value is negative), as GCC lays enums out.
  int enum_body();

  // A top-level `struct/union/enum ... ;` or `typedef TYPE NAME;`.
  void declaration();

  // config = { KEY = VALUE; ... }, before the probes, as bpftrace's. Keys are bpftrace's,
  // lowercase or as environment variables (BPFTRACE_MAX_STRLEN).
  void config_block(ast::Program& out);

  // `(TYPE *...)` after the '(': the type of a cast, sizeof or offsetof.
  int type_name() { return pointers(type_spec()); }

  Lexer lex_;
  Diagnostics& diags_;
  ast::TypeTable& types_;
  const ast::TypeFacts& facts_;  // the headers #include reads
  int include_depth_ = 0;
  bool in_predicate_ = false;
  int depth_ = 0;    // parentheses and brackets open
  int nesting_ = 0;  // Nest levels open (kMaxNesting)
};

inline void Parser::program(ast::Program& out) {
  try {
    for (const std::string& spelled : facts_.implicit_includes)  // --include FILE
      include(spelled, Loc{1, 1, 1});
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

inline void Parser::fail(const Token& t, std::string_view expecting) {
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

inline bool Parser::accept(Tok kind) {
  if (lex_.peek().kind != kind) return false;
  lex_.next();
  return true;
}

// The error paths stay out of line: their strings would otherwise widen the frames of
// the recursive functions, and the stack a nesting level costs.
void Parser::nested_too_deeply(Loc at) {
  diags_.error(at, "syntax error, nested too deeply: more than " + std::to_string(kMaxNesting) +
                       " levels of parentheses, map keys, calls, operators and blocks (assign "
                       "inner parts to $variables first)");
  throw SyntaxError{};
}

void Parser::too_deep(Loc at) {
  diags_.error(at, "syntax error, expression too deep: more than " + std::to_string(kMaxExprDepth) +
                       " operands in one chain of operators (split it: $a = first part; then "
                       "$a + the rest)");
  throw SyntaxError{};
}

// Sets e.height from its children; past kMaxExprDepth, a syntax error at `at`.
inline void Parser::measure(Expr& e, Loc at) {
  int h = 0;
  for (const ExprPtr& a : e.args)
    h = std::max(h, a->height);
  e.height = h + 1;
  if (e.height > kMaxExprDepth) too_deep(at);
}

inline ast::Action Parser::action() {
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
  if (lex_.peek().kind == token_of(ast::BinaryOp::div)) {
    lex_.next();
    in_predicate_ = true;
    a.predicate = expr();
    in_predicate_ = false;
    expect(token_of(ast::BinaryOp::div));
  }
  saw_loop_ = false;
  a.body = block();
  if (saw_loop_) loop_preamble(a);
  return a;
}

// Decodes one probe text; errors are reported and the parse goes on.
inline ast::AttachPoint Parser::attach_point(const Token& t) {
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
    // MODULE@FILE:LINE[:COLUMN], bpftrace's source-line form (resolved in parse()).
    const std::size_t slash = ap.module.rfind('/');
    const std::size_t at = ap.module.find('@', slash == std::string::npos ? 0 : slash);
    if (at != std::string::npos && func.find_first_not_of("0123456789") == std::string_view::npos) {
      if (ret) {
        diags_.error(t.loc,
                     "a uretprobe cannot be placed at a source line: it is placed at a "
                     "function's entry (write uretprobe:MODULE:FUNCTION)");
        return ap;
      }
      ap.source_line = ap.module.substr(at) + ":" + std::string(func);
      ap.module.resize(at);
      ap.probe.target = ap.module + ":" + ap.source_line;
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
  if (type == "usdt" || type == "U") {
    // usdt:PATH:[PROVIDER:]NAME, as bpftrace takes it (wildcards in PROVIDER and NAME).
    ap.probe.kind = Probe::Kind::uprobe;
    ap.usdt = true;
    ap.probe.text = "usdt:" + std::string(rest);
    // A quoted PATH (bpftrace's way to write "libstdc++.so.6"): the quotes go.
    std::string unquoted;
    if (rest.size() > 1 && rest[0] == '"') {
      const std::size_t close = rest.find('"', 1);
      if (close != std::string_view::npos) {
        unquoted = std::string(rest.substr(1, close - 1)) + std::string(rest.substr(close + 1));
        rest = unquoted;
        ap.probe.text = "usdt:" + unquoted;
      }
    }
    // usdt:NAME (one field, as bpftrace takes it with a process): every module's NAME. A
    // path alone (usdt:./prog) is a probe without its name, refused below.
    std::string one_field;
    if (colon != std::string_view::npos && !rest.empty() &&
        rest.find_first_of(":/") == std::string_view::npos) {
      one_field = ":" + std::string(rest);
      rest = one_field;
    }
    const std::size_t c1 = rest.find(':');
    const std::size_t c2 = c1 == std::string_view::npos ? c1 : rest.find(':', c1 + 1);
    const bool too_many = c2 != std::string_view::npos && rest.find(':', c2 + 1) != rest.npos;
    if (colon == std::string_view::npos || c1 == std::string_view::npos || too_many) {
      diags_.error(t.loc,
                   "usdt probe type requires 2 or 3 arguments (write usdt:PATH:PROVIDER:NAME or "
                   "usdt:PATH:NAME; list a file's probes with hotprobe list 'usdt:PATH:*')");
      return ap;
    }
    ap.module = std::string(rest.substr(0, c1));
    std::string_view what = rest.substr(c1 + 1);
    // An empty PATH (usdt::PROVIDER:NAME) is every module of the traced process, an empty
    // PROVIDER (usdt:PATH::NAME) any provider, as bpftrace takes them.
    if (what.empty() || what.back() == ':') {
      diags_.error(t.loc, "usdt probe is missing its probe name (write usdt:" + ap.module +
                              ":PROVIDER:NAME, or usdt:" + ap.module + ":* for every probe)");
      return ap;
    }
    ap.probe.target = ap.module + ":usdt:" + std::string(what);
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
  static constexpr std::array<std::string_view, 9> kKnown = {
      "uprobe", "uretprobe", "usdt", "interval", "BEGIN", "END", "u", "ur", "U"};
  static constexpr std::array<std::string_view, 13> kUnsupported = {
      "kprobe", "kretprobe", "tracepoint",    "profile", "software", "hardware", "watchpoint",
      "kfunc",  "kretfunc",  "rawtracepoint", "k",       "kr",       "t"};
  ap.probe.text = std::string(text);
  for (std::string_view u : kUnsupported) {
    if (type == u) {
      diags_.error(t.loc, "probe type '" + std::string(type) +
                              "' is not supported by hotprobe (use uprobe, uretprobe, usdt, "
                              "BEGIN, END or interval)");
      return ap;
    }
  }
  diags_.error(t.loc,
               "unknown probe type '" + std::string(type) + "'" + did_you_mean(type, kKnown));
  return ap;
}

inline std::vector<Stmt> Parser::block() {
  Nest nest(*this, lex_.peek().loc);
  expect(Tok::lbrace);
  std::vector<Stmt> body;
  for (;;) {
    if (accept(Tok::rbrace)) return body;
    if (accept(Tok::semicolon)) continue;  // empty statements
    if (lex_.peek().kind == Tok::eof) fail(lex_.peek(), "}");
    body.push_back(statement());
    Stmt::Kind k = body.back().kind;
    if (k == Stmt::Kind::if_ || k == Stmt::Kind::unroll || k == Stmt::Kind::while_ ||
        k == Stmt::Kind::for_)
      continue;
    if (accept(Tok::semicolon)) continue;
    if (lex_.peek().kind != Tok::rbrace) fail(lex_.peek(), "}");
  }
}

inline Stmt Parser::statement() {
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
  if (t.kind == Tok::ident && t.text == "let") return let_statement();
  if (t.kind == Tok::kw_return) {
    s.kind = Stmt::Kind::return_;
    lex_.next();
    return s;
  }
  if (t.kind == Tok::kw_while || t.kind == Tok::kw_for || t.kind == Tok::kw_break ||
      t.kind == Tok::kw_continue)
    return loop_statement();
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

inline bool Parser::assign_op(Tok t, ast::AssignOp& op) {
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

inline Stmt Parser::if_statement() {
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

// config = { KEY = VALUE; ... }, before the probes, as bpftrace's. Keys are bpftrace's,
// lowercase or as environment variables (BPFTRACE_MAX_STRLEN).
inline void Parser::config_block(ast::Program& out) {
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
    if (k == "stack_mode") {
      if (value.text != "bpftrace" && value.text != "perf" && value.text != "raw" &&
          value.text != "build_id")
        c_error(value.loc,
                "stack_mode is bpftrace, perf, raw or build_id ('" + value.text + "' given)");
      stack_mode_ = value.text;
    } else if (k == "show_debug_info") {
      if (value.kind == Tok::ident && value.text != "true" && value.text != "false")
        c_error(value.loc, "show_debug_info is true, false, 1 or 0");
      show_debug_info_ = truth;
    } else if (k == "missing_probes") {
      if (value.text != "error" && value.text != "warn" && value.text != "ignore")
        c_error(value.loc,
                "Invalid value for missing_probes: valid values are ignore, warn, and "
                "error.");
      missing_probes_ = value.text;
    } else if (k == "print_maps_on_exit") {
      if (value.kind == Tok::ident && value.text != "true" && value.text != "false")
        c_error(value.loc, "print_maps_on_exit is true, false, 1 or 0");
      out.print_maps_on_exit = truth;
    } else if (k == "max_strlen") {
      if (value.kind != Tok::integer || value.value != ast::kDefaultStrSize) {
        c_error(value.loc, "max_strlen: hotprobe's strings are " +
                               std::to_string(ast::kDefaultStrSize) +
                               " bytes (bpftrace's default); other lengths are not "
                               "supported (use str(p, N) for shorter reads)");
      }
    } else if (std::find(std::begin(kNoBpf), std::end(kNoBpf), k) == std::end(kNoBpf)) {
      c_error(key.loc, "config: '" + key.text +
                           "' is not a setting hotprobe takes (it takes print_maps_on_exit, "
                           "stack_mode, show_debug_info, missing_probes, "
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

#include "script/parse_expr.inc"

#include "script/parse_loops.inc"

#include "script/parse_ctypes.inc"

// Source-line probes become address probes (MODULE:0xADDR) with the address the type facts
// give; without one, the error the facts give, or what would help.
void resolve_source_lines(ast::Program& program, Diagnostics& diags) {
  for (ast::Action& a : program.actions) {
    for (ast::AttachPoint& p : a.probes) {
      if (p.source_line.empty()) continue;
      const std::string key = p.module + "\t" + p.source_line;
      if (auto it = program.facts.lines.find(key); it != program.facts.lines.end()) {
        char buf[24];
        std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(it->second));
        p.is_address = true;
        p.offset = it->second;
        p.probe.target = p.module + ":" + buf;
        continue;
      }
      auto e = program.facts.errors.find(key);
      diags.error(p.loc, e != program.facts.errors.end()
                             ? e->second
                             : p.probe.text + ": a source line needs the DWARF line table of " +
                                   p.module +
                                   ", which hotprobe run and attach read (the library takes "
                                   "MODULE:0xADDRESS)");
    }
  }
}

}  // namespace

namespace {

// stack_mode's mode for every ustack that names none: `ustack` and `ustack(N)` become
// `ustack(MODE)` and `ustack(MODE, N)`.
void apply_stack_mode(ast::Program& program, const std::string& mode) {
  for_each_expr(program, [&](ast::Action&, ast::Expr& e) {
    const bool bare = e.kind == ast::Expr::Kind::builtin && e.name == "ustack";
    const bool call = e.kind == ast::Expr::Kind::call && e.name == "ustack" && e.args.size() < 2 &&
                      (e.args.empty() || e.args[0]->kind != ast::Expr::Kind::builtin);
    if (!bare && !call) return;
    auto m = std::make_unique<ast::Expr>();
    m->kind = ast::Expr::Kind::builtin;
    m->name = mode;
    m->loc = e.loc;
    e.kind = ast::Expr::Kind::call;
    e.args.insert(e.args.begin(), std::move(m));
  });
}

// The probes the command found missing under missing_probes = "warn" or "ignore" (lines
// kSkipProbePrefix PROBE after the script) are left out; an action left with none goes.
void skip_missing_probes(ast::Program& program, std::string_view script) {
  std::vector<std::string_view> skip;
  for (std::size_t at = script.find(kSkipProbePrefix); at != std::string_view::npos;
       at = script.find(kSkipProbePrefix, at + 1)) {
    std::string_view line = script.substr(at + kSkipProbePrefix.size());
    skip.push_back(line.substr(0, line.find('\n')));
  }
  if (skip.empty()) return;
  for (ast::Action& a : program.actions) {
    std::erase_if(a.probes, [&](const ast::AttachPoint& p) {
      return std::find(skip.begin(), skip.end(), p.probe.text) != skip.end();
    });
  }
  std::erase_if(program.actions, [](const ast::Action& a) { return a.probes.empty(); });
}

}  // namespace

ScriptSettings script_settings(std::string_view source) {
  Diagnostics diags;
  ast::Program program;
  Parser parser(script_part(source), diags, program.types, program.facts);
  parser.program(program);
  return ScriptSettings{parser.stack_mode(), parser.missing_probes()};
}

std::string env_settings_line(std::string_view key, std::string_view value) {
  return std::string(kEnvSettingPrefix) + std::string(key) + "=" + std::string(value) + "\n";
}

ast::Program parse(std::string_view src, std::string_view filename, Diagnostics& diags) {
  ast::Program program;
  program.filename = std::string(filename);
  program.source = std::string(src);
  const std::string_view script = script_part(program.source);  // the rest: type facts
  const std::string_view facts =
      std::string_view(program.source)
          .substr(std::min(program.source.size(), script.size() + kTypeFactsMarker.size()));
  load_type_facts(facts, FactsPart::headers, program);
  Parser parser(script, diags, program.types, program.facts);
  parser.program(program);
  std::string mode = parser.stack_mode();
  bool places_by_reader = false;  // the command names show_debug_info's places (symbolize.h)
  // The environment's settings, which take precedence (bpftrace's): lines the command
  // added after the script (env_settings_line), the same in the command and the agent.
  for (std::size_t at = script.find(kEnvSettingPrefix); at != std::string_view::npos;
       at = script.find(kEnvSettingPrefix, at + 1)) {
    std::string_view line = script.substr(at + kEnvSettingPrefix.size());
    line = line.substr(0, line.find('\n'));
    if (line.starts_with("stack_mode=")) mode = std::string(line.substr(11));
    if (line == "source_places=reader") places_by_reader = true;
  }
  if (!mode.empty() && mode != "bpftrace") apply_stack_mode(program, mode);
  set_show_debug_info(parser.show_debug_info());  // the printers' (symbolize.h)
  set_places_by_reader(places_by_reader);
  skip_missing_probes(program, script);
  load_type_facts(facts, FactsPart::types, program);  // after the script's own structs
  resolve_source_lines(program, diags);
  return program;
}

Result<ast::Program> parse(std::string_view src, std::string_view filename) {
  Diagnostics diags;
  ast::Program program = parse(src, filename, diags);
  if (!diags.empty()) return diags.to_error(program.source, program.filename);
  return program;
}

}  // namespace hotprobe::script
