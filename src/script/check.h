// The checker of the script language: types, maps, scratch slots and probe rules, with
// bpftrace 0.17's messages. check() (declared in script/ast.h) annotates the AST as
// script/ast.h describes and reports every error it finds (up to Diagnostics::kMaxErrors).
//
// Maps are typed by their first assignment in source order, wherever it is: the checker
// makes one silent pass to learn every map's kind and keys, then a reporting pass.
#pragma once

#include <string_view>
#include <vector>

#include "hotprobe/result.h"
#include "script/ast.h"
#include "script/diag.h"

namespace hotprobe::script {

// check(), reporting into `diags`.
void check(ast::Program& program, Diagnostics& diags);

// Parses a printf format (escapes already decoded) into pieces; problems (unknown
// conversion, a lone '%' at the end) are reported at `loc`, the format literal.
std::vector<FormatSpec> parse_format(std::string_view format, ast::Loc loc, Diagnostics& diags);

// parse() then check(): the whole front end. Errors: every diagnostic, rendered.
Result<ast::Program> parse_and_check(std::string_view src, std::string_view filename = "-e");
// With the options' filename, positional parameters and --unsafe.
Result<ast::Program> parse_and_check(std::string_view src, const CompileOptions& options);

}  // namespace hotprobe::script
