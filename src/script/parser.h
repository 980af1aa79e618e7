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

// parse() (declared in script/ast.h), reporting into `diags` instead of an Error. Returns
// the program parsed so far (complete when diags is empty).
ast::Program parse(std::string_view src, std::string_view filename, Diagnostics& diags);

}  // namespace hotprobe::script
