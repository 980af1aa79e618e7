// The parser of the script language: recursive descent over the lexer's tokens, producing
// the AST of script/ast.h (syntax only: types, maps and slots are check()'s work).
//
//   auto prog = script::parse("uprobe:libc:malloc { @[comm] = count(); }", "-e");
//
// The grammar is in docs/design/script-language.md. The first syntax error stops the
// parse (as bpftrace's), after which the error's message is every diagnostic rendered;
// errors in probe texts (unknown probe type, bad interval unit...) are all reported.
#pragma once

#include <string_view>

#include "hotprobe/result.h"
#include "script/ast.h"
#include "script/diag.h"

namespace hotprobe::script {

// How deep a script may nest. Every later pass (check, lowering, the evaluator on a probed
// thread, the AST's destructor) recurses at most once per nesting level and walks the left
// spine of an operator chain (a+b+c+...) in a loop, so these two bounds keep each pass
// within a few KiB of stack whatever the source (docs/design/script-language.md, "Limits").
//
// Nesting levels: each open parenthesis, map-key bracket, call argument list, unary
// operator, ternary branch, right operand of a binary operator, and nested block (if, else
// if, unroll) counts one; a map access with keys counts kMapKeyNestingCost, as a map read
// keeps a whole key (1 KiB) on the evaluator's stack.
inline constexpr int kMaxNesting = 32;
inline constexpr int kMapKeyNestingCost = 8;
// Height of one expression tree, counting the left operands of an operator chain too: a
// flat sum of N terms is N deep.
inline constexpr int kMaxExprDepth = 1024;

// parse() (declared in script/ast.h), reporting into `diags` instead of an Error. Returns
// the program parsed so far (complete when diags is empty).
ast::Program parse(std::string_view src, std::string_view filename, Diagnostics& diags);

}  // namespace hotprobe::script
