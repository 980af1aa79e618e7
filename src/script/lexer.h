// The lexer of the script language: tokens on demand, with lookahead, and a raw mode for
// probe texts ("uprobe:/usr/lib/libc.so.6:malloc" is one token: paths hold '/', '.', '-').
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <string_view>

#include "script/ast.h"
#include "script/diag.h"

namespace hotprobe::script {

enum class Tok : std::uint8_t {
  eof,
  error,    // the lexer already reported it
  integer,  // value
  string,   // text: escapes decoded
  ident,    // text
  var,      // text: "$x"; also the positional parameters "$1".."$N" and "$#"
  map,      // text: "@x" or "@"
  probe,    // raw probe text (Lexer::probe_text only)
  kw_if,
  kw_else,
  kw_unroll,
  kw_return,
  kw_while,
  kw_for,
  kw_break,
  kw_continue,
  lparen,
  rparen,
  lbrace,
  rbrace,
  lbracket,
  rbracket,
  comma,
  semicolon,
  question,
  colon,
  assign,  // =
  plus_assign,
  minus_assign,
  star_assign,
  slash_assign,
  percent_assign,
  amp_assign,
  pipe_assign,
  caret_assign,
  shl_assign,
  shr_assign,
  // A binary operator's token: binary + its ast::BinaryOp (token_of, binary_op_of), spelled
  // as ast::to_string spells the operator. '-' and '*' are also prefix operators, '*' a
  // pointer's mark, '/' a predicate's delimiter.
  binary,
  binary_last = binary + ast::kBinaryOps - 1,
  bang,
  tilde,
  inc,     // ++
  dec,     // --
  dot,     // .
  arrow,   // ->
  dotdot,  // .. (for's range)
};

constexpr Tok token_of(ast::BinaryOp op) {
  return static_cast<Tok>(static_cast<std::size_t>(Tok::binary) + static_cast<std::size_t>(op));
}
// The binary operator whose token `t` is, if it is one.
constexpr std::optional<ast::BinaryOp> binary_op_of(Tok t) {
  if (t < Tok::binary || t > Tok::binary_last) return std::nullopt;
  return static_cast<ast::BinaryOp>(static_cast<std::size_t>(t) -
                                    static_cast<std::size_t>(Tok::binary));
}

// How a token kind is named in "syntax error, unexpected X, expecting Y" (bpftrace's names).
std::string_view describe(Tok t);

struct Token {
  Tok kind = Tok::eof;
  ast::Loc loc;
  std::string text;
  std::int64_t value = 0;
};

class Lexer {
 public:
  // A first line starting with "#!" (a script file's interpreter line) is skipped.
  Lexer(std::string_view src, Diagnostics& diags) : src_(src), diags_(diags) {
    if (src_.starts_with("#!")) {
      while (pos_ < src_.size() && src_[pos_] != '\n')
        advance();
    }
  }

  const Token& peek(std::size_t k = 0);
  Token next();
  // Skips blanks and comments; true when only they remain. Only with no token buffered.
  bool at_end();
  // The raw text of one probe, up to a blank, ',', '{', or a '/' outside the module part.
  // Only with no token buffered (the parser calls it where a probe must start).
  Token probe_text();
  // The identifier that starts the rest of the text (after blanks and comments), or "";
  // only with no token buffered. "#" when the rest starts with '#'.
  std::string_view peek_word();
  // The first character after that identifier and the blanks that follow it ('\0' at the
  // end); only with no token buffered.
  char char_after_word();
  // The rest of the current line, raw, with a trailing // comment dropped (a C
  // preprocessor line: script/parse_ctypes.inc). Only with no token buffered.
  Token rest_of_line();

 private:
  Token lex();
  void skip_blanks();
  char at(std::size_t k = 0) const { return pos_ + k < src_.size() ? src_[pos_ + k] : '\0'; }
  void advance(std::size_t n = 1);
  ast::Loc loc_from(std::size_t start, int line, int column) const;
  Token lex_number(std::size_t start, int line, int column);
  Token lex_string(std::size_t start, int line, int column);

  std::string_view src_;
  Diagnostics& diags_;
  std::size_t pos_ = 0;
  int line_ = 1;
  int column_ = 1;
  std::deque<Token> buffer_;
};

}  // namespace hotprobe::script
