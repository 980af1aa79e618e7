// uprobe `args` and `#include`: the C types the hotprobe command learns outside the
// script, carried inside the script's text (docs/design/script-language.md, "args: the
// parameters of a probed function").
//
// The command appends "type facts" to the script before it compiles it:
//
//   std::string full = script::with_type_facts(source, filename, &hp::elf::dwarf_type_facts);
//   Program::compile(full, ...);            // here, for errors; then the agent compiles `full`
//
// Everything after the kTypeFactsMarker line is facts, not script: the parameters (name,
// register, C type) of every function a probe whose action reads `args` names, the
// structs and unions those types reach (from the file's DWARF), and the text of every
// header the script includes. The agent compiles the same text and so sees the same
// types without reading DWARF or files (it carries no libdw). Line numbers of the script
// part are unchanged, so messages point where they did.
#pragma once

#include <functional>
#include <string>
#include <string_view>

#include "script/ast.h"
#include "script/diag.h"

namespace hotprobe::script {

// The line (with its newlines) that starts the facts.
inline constexpr std::string_view kTypeFactsMarker = "\n#hotprobe-type-facts\n";

// The facts lines (hp::elf::dwarf_type_facts, elf/dwarf.h) for the functions matching
// `pattern` in the file `module`; record keys prefixed by `id`.
using DwarfLookup =
    std::function<std::string(const std::string& module, const std::string& pattern, int id)>;

// `source` with the facts appended: every header its #include lines name (read from the
// directory of `filename`, the current one, then /usr/local/include and /usr/include for
// <...>), and what `lookup` says of every uprobe whose action reads `args`. `source`
// unchanged when it needs neither.
std::string with_type_facts(std::string_view source, std::string_view filename,
                            const DwarfLookup& lookup);

// bpftrace's -I DIR (more directories for #include, searched after the script's and
// before the system's) and --include FILE (as if the script began with #include <FILE>),
// for the with_type_facts calls that follow; the command sets them once.
void set_include_options(std::vector<std::string> dirs, std::vector<std::string> files);

// The script part of `source`: all of it but the facts.
std::string_view script_part(std::string_view source);

// Reads the facts text (after the marker) into program.facts and program.types: the
// headers before the script is parsed (its #include lines read them), the rest after (a
// struct the script defines keeps the script's layout under its name).
enum class FactsPart : std::uint8_t { headers, types };
void load_type_facts(std::string_view facts, FactsPart part, ast::Program& program);

namespace checking {

// Is `e` the `args` builtin?
inline bool is_args(const ast::Expr& e) {
  return e.kind == ast::Expr::Kind::builtin && e.name == "args";
}

// `e` is args.NAME / args->NAME, or args.S.F of a struct S passed in registers (`e` the
// outer field): rewrites it into the register read that is the parameter, a cast of
// arg0..arg5 (shifted, for a field of a struct in registers), which the checker then
// checks as written that way. False when an error was reported.
bool rewrite_args_field(ast::Program& program, Diagnostics& diags, const ast::Action& action,
                        ast::Expr& e);

// `args` as a whole value (print(args), @m = args, @m[args], (1, args)): the record of the
// probed function's parameters, laid out as bpftrace lays it out (each parameter after the
// one before, no padding). `e` (the builtin) gets one child per register it is copied
// from: a uint64 cast of argN (or sargN, a parameter on the stack) whose `value` is its
// offset in the record; each child fills the record up to the next child's offset (the
// last one to the record's end). Returns the record's TypeTable type, -1 after an error.
int rewrite_args_record(ast::Program& program, Diagnostics& diags, const ast::Action& action,
                        ast::Expr& e);

// print(VALUE) of a struct or union (print(*p), print(args.p->in)): rewrites the call into
// the printf that prints it as bpftrace does ({ .a = 1, .name = text, .v = [1,2] }).
// `type` is the record's TypeTable type. False when an error was reported.
bool rewrite_print_record(ast::Program& program, Diagnostics& diags, ast::Expr& call, int type);

// A deep copy of `e` (with what the checker has set on it so far).
ast::ExprPtr clone(const ast::Expr& e);

}  // namespace checking
}  // namespace hotprobe::script
