#include "script/lexer.h"

#include <algorithm>
#include <cctype>
#include <limits>
#include <string>

namespace hotprobe::script {

std::string_view describe(Tok t) {
  if (const auto op = binary_op_of(t)) return ast::to_string(*op);
  switch (t) {
    case Tok::eof:
      return "end of file";
    case Tok::error:
      return "invalid token";
    case Tok::integer:
      return "integer";
    case Tok::string:
      return "string";
    case Tok::ident:
      return "identifier";
    case Tok::var:
      return "variable";
    case Tok::map:
      return "map";
    case Tok::probe:
      return "probe";
    case Tok::kw_if:
      return "if";
    case Tok::kw_else:
      return "else";
    case Tok::kw_unroll:
      return "unroll";
    case Tok::kw_return:
      return "return";
    case Tok::kw_while:
      return "while";
    case Tok::kw_for:
      return "for";
    case Tok::kw_break:
      return "break";
    case Tok::kw_continue:
      return "continue";
    case Tok::lparen:
      return "(";
    case Tok::rparen:
      return ")";
    case Tok::lbrace:
      return "{";
    case Tok::rbrace:
      return "}";
    case Tok::lbracket:
      return "[";
    case Tok::rbracket:
      return "]";
    case Tok::comma:
      return ",";
    case Tok::semicolon:
      return ";";
    case Tok::question:
      return "?";
    case Tok::colon:
      return ":";
    case Tok::assign:
      return "=";
    case Tok::plus_assign:
      return "+=";
    case Tok::minus_assign:
      return "-=";
    case Tok::star_assign:
      return "*=";
    case Tok::slash_assign:
      return "/=";
    case Tok::percent_assign:
      return "%=";
    case Tok::amp_assign:
      return "&=";
    case Tok::pipe_assign:
      return "|=";
    case Tok::caret_assign:
      return "^=";
    case Tok::shl_assign:
      return "<<=";
    case Tok::shr_assign:
      return ">>=";
    case Tok::binary:
    case Tok::binary_last:
      break;  // named above
    case Tok::bang:
      return "!";
    case Tok::tilde:
      return "~";
    case Tok::inc:
      return "++";
    case Tok::dec:
      return "--";
    case Tok::dot:
      return ".";
    case Tok::arrow:
      return "->";
    case Tok::dotdot:
      return "..";
  }
  return "?";
}

const Token& Lexer::peek(std::size_t k) {
  while (buffer_.size() <= k)
    buffer_.push_back(lex());
  return buffer_[k];
}

Token Lexer::next() {
  if (buffer_.empty()) return lex();
  Token t = std::move(buffer_.front());
  buffer_.pop_front();
  return t;
}

bool Lexer::at_end() {
  if (!buffer_.empty()) return buffer_.front().kind == Tok::eof;
  skip_blanks();
  return pos_ >= src_.size();
}

void Lexer::advance(std::size_t n) {
  for (std::size_t i = 0; i < n && pos_ < src_.size(); ++i) {
    if (src_[pos_] == '\n') {
      ++line_;
      column_ = 1;
    } else {
      ++column_;
    }
    ++pos_;
  }
}

ast::Loc Lexer::loc_from(std::size_t start, int line, int column) const {
  // A token that spans lines is marked to the end of its first line.
  std::size_t end = pos_;
  std::size_t nl = src_.find('\n', start);
  if (nl != std::string_view::npos && nl < end) end = nl;
  return ast::Loc{line, column, static_cast<int>(end - start)};
}

void Lexer::skip_blanks() {
  for (;;) {
    char c = at();
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v') {
      advance();
    } else if (c == '/' && at(1) == '/') {
      while (pos_ < src_.size() && at() != '\n')
        advance();
    } else if (c == '/' && at(1) == '*') {
      std::size_t start = pos_;
      int line = line_, column = column_;
      advance(2);
      while (pos_ < src_.size() && !(at() == '*' && at(1) == '/'))
        advance();
      if (pos_ >= src_.size()) {
        diags_.error(loc_from(start, line, column), "end of file during comment");
        return;
      }
      advance(2);
    } else {
      return;
    }
  }
}

Token Lexer::probe_text() {
  skip_blanks();
  std::size_t start = pos_;
  int line = line_, column = column_;
  int colons = 0;
  for (;;) {
    char c = at();
    if (c == '\0' || c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == ',' || c == '{' ||
        c == '}' || c == ';') {
      break;
    }
    if (c == '/' && colons != 1) break;  // a predicate; only the module part holds paths
    if (c == '/' && (at(1) == '/' || at(1) == '*')) break;
    if (c == ':') ++colons;
    advance();
  }
  Token t;
  t.kind = Tok::probe;
  t.loc = loc_from(start, line, column);
  t.text = std::string(src_.substr(start, pos_ - start));
  return t;
}

Token Lexer::rest_of_line() {
  while (at() == ' ' || at() == '\t')
    advance();
  const std::size_t start = pos_;
  const int line = line_, column = column_;
  while (pos_ < src_.size() && at() != '\n' && !(at() == '/' && (at(1) == '/' || at(1) == '*')))
    advance();
  std::size_t end = pos_;
  while (end > start && (src_[end - 1] == ' ' || src_[end - 1] == '\t' || src_[end - 1] == '\r'))
    --end;
  Token t;
  t.kind = Tok::probe;
  t.loc = loc_from(start, line, column);
  t.text = std::string(src_.substr(start, end - start));
  return t;
}

std::string_view Lexer::peek_word() {
  skip_blanks();
  if (at() == '#') return src_.substr(pos_, 1);
  std::size_t n = 0;
  while (pos_ + n < src_.size() &&
         (std::isalnum(static_cast<unsigned char>(src_[pos_ + n])) || src_[pos_ + n] == '_'))
    ++n;
  return src_.substr(pos_, n);
}

char Lexer::char_after_word() {
  const std::size_t n = peek_word().size();
  std::size_t k = pos_ + n;
  while (k < src_.size() && std::isspace(static_cast<unsigned char>(src_[k])))
    ++k;
  return k < src_.size() ? src_[k] : '\0';
}

namespace {

bool ident_start(char c) {
  return std::isalpha(static_cast<unsigned char>(c)) || c == '_';
}
bool ident_char(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
}

}  // namespace

Token Lexer::lex_number(std::size_t start, int line, int column) {
  int base = 10;
  if (at() == '0' && (at(1) == 'x' || at(1) == 'X')) {
    base = 16;
    advance(2);
  }
  unsigned __int128 value = 0;
  bool digits = false, overflow = false;
  for (;;) {
    char c = at();
    int d = -1;
    if (c >= '0' && c <= '9') d = c - '0';
    if (base == 16 && c >= 'a' && c <= 'f') d = c - 'a' + 10;
    if (base == 16 && c >= 'A' && c <= 'F') d = c - 'A' + 10;
    if (c == '_' && digits) {
      advance();
      continue;
    }
    if (d < 0) break;
    digits = true;
    value = value * static_cast<unsigned>(base) + static_cast<unsigned>(d);
    if (value > std::numeric_limits<std::uint64_t>::max()) overflow = true;
    advance();
  }
  // "1e6", "5e3": an integer written with an exponent (bpftrace reads it as 1000000).
  if (base == 10 && digits && (at() == 'e' || at() == 'E') && at(1) >= '0' && at(1) <= '9') {
    advance();
    unsigned exp = 0;
    while (at() >= '0' && at() <= '9') {
      exp = std::min(exp * 10 + static_cast<unsigned>(at() - '0'), 100u);
      advance();
    }
    for (unsigned k = 0; k < exp && !overflow; ++k) {
      value *= 10;
      if (value > std::numeric_limits<std::uint64_t>::max()) overflow = true;
    }
  }
  // A number glued to letters ("12ab", "0x") is one bad token.
  bool bad = !digits;
  while (ident_char(at())) {
    bad = true;
    advance();
  }
  Token t;
  t.kind = Tok::integer;
  t.loc = loc_from(start, line, column);
  t.text = std::string(src_.substr(start, pos_ - start));
  if (bad) {
    diags_.error(t.loc, "invalid integer '" + t.text + "'");
    t.kind = Tok::error;
  } else if (overflow) {
    diags_.error(t.loc, "integer '" + t.text + "' does not fit in 64 bits");
    t.kind = Tok::error;
  } else {
    t.value = static_cast<std::int64_t>(static_cast<std::uint64_t>(value));
  }
  return t;
}

Token Lexer::lex_string(std::size_t start, int line, int column) {
  advance();  // the opening quote
  std::string text;
  bool ok = true;
  for (;;) {
    char c = at();
    if (c == '\0' && pos_ >= src_.size()) break;
    if (c == '\n') break;
    if (c == '"') {
      advance();
      Token t;
      t.kind = ok ? Tok::string : Tok::error;
      t.loc = loc_from(start, line, column);
      t.text = std::move(text);
      return t;
    }
    if (c != '\\') {
      text += c;
      advance();
      continue;
    }
    char e = at(1);
    std::size_t esc_start = pos_;
    int esc_col = column_;
    if (e == 'n' || e == 't' || e == 'r' || e == '\\' || e == '"' || e == '\'' || e == 'a' ||
        e == 'b' || e == 'f' || e == 'v') {
      static constexpr std::string_view kFrom = "ntr\\\"'abfv";
      static constexpr std::string_view kTo = "\n\t\r\\\"'\a\b\f\v";
      text += kTo[kFrom.find(e)];
      advance(2);
    } else if (e >= '0' && e <= '7') {
      advance();
      int v = 0;
      for (int i = 0; i < 3 && at() >= '0' && at() <= '7'; ++i) {
        v = v * 8 + (at() - '0');
        advance();
      }
      if (v > 255) {
        diags_.error(ast::Loc{line, esc_col, static_cast<int>(pos_ - esc_start)},
                     "octal escape sequence out of range ('\\" +
                         std::string(src_.substr(esc_start + 1, pos_ - esc_start - 1)) + "')");
        ok = false;
      }
      text += static_cast<char>(v);
    } else if (e == 'x' && std::isxdigit(static_cast<unsigned char>(at(2)))) {
      advance(2);
      int v = 0;
      for (int i = 0; i < 2 && std::isxdigit(static_cast<unsigned char>(at())); ++i) {
        char h = at();
        v = v * 16 + (h <= '9' ? h - '0' : (h | 0x20) - 'a' + 10);
        advance();
      }
      text += static_cast<char>(v);
    } else {
      advance(e == '\0' || e == '\n' ? 1 : 2);
      diags_.error(ast::Loc{line, esc_col, 2},
                   std::string("invalid escape character '\\") + (e == '\n' ? ' ' : e) +
                       "' (use \\n \\t \\\\ \\\" \\NNN (octal) or \\xHH)");
      ok = false;
    }
  }
  Token t;
  t.kind = Tok::error;
  t.loc = loc_from(start, line, column);
  diags_.error(t.loc, "unterminated string");
  return t;
}

Token Lexer::lex() {
  skip_blanks();
  std::size_t start = pos_;
  int line = line_, column = column_;
  Token t;
  if (pos_ >= src_.size()) {
    t.kind = Tok::eof;
    t.loc = ast::Loc{line, column, 0};
    return t;
  }
  char c = at();
  if (c >= '0' && c <= '9') return lex_number(start, line, column);
  if (c == '"') return lex_string(start, line, column);
  // $1..$N and $#: the positional parameters (the checker reads them).
  const bool positional = c == '$' && ((at(1) >= '0' && at(1) <= '9') || at(1) == '#');
  if (ident_start(c) || positional ||
      ((c == '$' || c == '@') && (ident_start(at(1)) || c == '@'))) {
    advance();
    if (positional && at() == '#') {
      advance();
    } else {
      while (ident_char(at()))
        advance();
    }
    t.text = std::string(src_.substr(start, pos_ - start));
    t.loc = loc_from(start, line, column);
    if (c == '$') {
      t.kind = Tok::var;
    } else if (c == '@') {
      t.kind = Tok::map;
    } else if (t.text == "if") {
      t.kind = Tok::kw_if;
    } else if (t.text == "else") {
      t.kind = Tok::kw_else;
    } else if (t.text == "unroll") {
      t.kind = Tok::kw_unroll;
    } else if (t.text == "return") {
      t.kind = Tok::kw_return;
    } else if (t.text == "while") {
      t.kind = Tok::kw_while;
    } else if (t.text == "for") {
      t.kind = Tok::kw_for;
    } else if (t.text == "break") {
      t.kind = Tok::kw_break;
    } else if (t.text == "continue") {
      t.kind = Tok::kw_continue;
    } else {
      t.kind = Tok::ident;
    }
    return t;
  }
  struct Op {
    std::string_view text;
    Tok kind;
  };
  // With the binary operators (spelled as ast::to_string spells them), every operator
  // token; the longest one the text starts with is the token.
  static constexpr Op kOps[] = {
      {"<<=", Tok::shl_assign},
      {">>=", Tok::shr_assign},
      {"+=", Tok::plus_assign},
      {"-=", Tok::minus_assign},
      {"*=", Tok::star_assign},
      {"/=", Tok::slash_assign},
      {"%=", Tok::percent_assign},
      {"&=", Tok::amp_assign},
      {"|=", Tok::pipe_assign},
      {"^=", Tok::caret_assign},
      {"++", Tok::inc},
      {"--", Tok::dec},
      {"->", Tok::arrow},
      {"..", Tok::dotdot},
      {"(", Tok::lparen},
      {")", Tok::rparen},
      {"{", Tok::lbrace},
      {"}", Tok::rbrace},
      {"[", Tok::lbracket},
      {"]", Tok::rbracket},
      {",", Tok::comma},
      {";", Tok::semicolon},
      {"?", Tok::question},
      {":", Tok::colon},
      {"=", Tok::assign},
      {"!", Tok::bang},
      {"~", Tok::tilde},
      {".", Tok::dot},
  };
  const std::string_view rest = src_.substr(pos_);
  Op longest{"", Tok::error};
  auto consider = [&](std::string_view text, Tok kind) {
    if (text.size() > longest.text.size() && rest.starts_with(text)) longest = {text, kind};
  };
  for (const Op& op : kOps)
    consider(op.text, op.kind);
  for (std::size_t k = 0; k < ast::kBinaryOps; ++k) {
    const auto op = static_cast<ast::BinaryOp>(k);
    consider(ast::to_string(op), token_of(op));
  }
  if (!longest.text.empty()) {
    advance(longest.text.size());
    t.kind = longest.kind;
    t.loc = loc_from(start, line, column);
    t.text = std::string(longest.text);
    return t;
  }
  // A byte no token starts with.
  std::size_t n = 1;
  if (static_cast<unsigned char>(c) >= 0x80) {
    while (pos_ + n < src_.size() && (static_cast<unsigned char>(src_[pos_ + n]) & 0xc0) == 0x80) {
      ++n;
    }
  }
  advance(n);
  t.kind = Tok::error;
  t.loc = loc_from(start, line, column);
  t.text = std::string(src_.substr(start, n));
  diags_.error(t.loc, "invalid character '" + t.text + "'");
  return t;
}

}  // namespace hotprobe::script
