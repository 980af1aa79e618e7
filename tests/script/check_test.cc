// The checker: for each error class, the message, its line and column and the rendered
// caret line; the annotations the back end relies on; and bpftrace one-liners that must
// check clean.
#include <gtest/gtest.h>

#include <string>

#include "script/ast.h"
#include "script/check.h"

namespace hotprobe::script {
namespace {

using ast::Expr;
using ast::Type;

// The rendered errors of parse + check, or "" when the script is valid.
std::string errors(std::string_view src) {
  auto r = parse_and_check(src, "stdin");
  return r.ok() ? "" : r.error().message();
}

ast::Program checked(std::string_view src) {
  auto r = parse_and_check(src, "stdin");
  EXPECT_TRUE(r.ok()) << r.error().message();
  if (!r.ok()) return {};
  return std::move(r).value();
}

// Expects exactly one error with this first line, and returns the whole rendered text.
std::string one_error(std::string_view src, const std::string& first_line) {
  std::string e = errors(src);
  EXPECT_EQ(e.substr(0, e.find('\n')), first_line) << e;
  EXPECT_EQ(std::count(e.begin(), e.end(), '\n'), 2) << e;
  return e;
}

TEST(ScriptCheck, ValidOneLiners) {
  const char* kValid[] = {
      "uprobe:libc:malloc { @bytes[arg0] = count(); }",
      "u:libc:malloc { @[comm] = count(); @sz = hist(arg0); }",
      "uprobe:libc:read { @start[tid] = nsecs; }\n"
      "uretprobe:libc:read /@start[tid]/ { @lat = hist(nsecs - @start[tid]); "
      "delete(@start[tid]); }",
      "u:libc:malloc { @l = lhist(arg0, 0, 1000, 100); @s = stats(arg0); @a = avg(arg0); "
      "@mn = min(arg0); @mx = max(arg0); @su = sum(arg0); }",
      "u:libc:open { printf(\"%s %d\\n\", str(arg0), pid); }",
      "u:libc:open { printf(\"%-10s %5d %08x %lu %llu %ld %p %c %u %% %x\\n\", str(arg0, 32), "
      "tid, arg1, arg2, arg3, 1, arg4, 65, uid, cpu); }",
      "u:libc:malloc { @c = count(); } interval:s:1 { print(@c); clear(@c); }",
      "interval:ms:100 { time(\"%H:%M:%S\\n\"); print(@x); zero(@x); } u:libc:free { @x = "
      "count() }",
      "u:libc:malloc { if (arg0 > 1024) { @big++; } else if (arg0 > 64) { @mid++; } else { "
      "@small++; } }",
      "u:libc:malloc { $k = arg0 > 4096 ? \"large\" : \"small\"; @[$k] = count(); }",
      "u:libc:malloc /comm == \"bash\" && pid != 1/ { @[func, probe] = sum(arg0); }",
      "ur:libc:malloc { @ret = retval; @sum += retval; @n++; printf(\"%d\\n\", @ret); }",
      "BEGIN { printf(\"start\\n\"); @t = elapsed; $x = 1; $x += 2; $x++; print($x); } END { "
      "print(@t); exit(); }",
      "BEGIN { @s = \"abc\"; @s = comm; if (@s == \"x\") { exit() } }",
      "BEGIN { unroll(3) { @i++; } $a = -1; $b = ~$a; $c = !$b; @v = $a << 2 | $c; }",
      "BEGIN { @m[1, \"a\"] = 1; @m[2, \"b\"] = 2; delete(@m[1, \"a\"]); print(@m, 5); }",
      "END { print(@late); } u:libc:free { @late = count(); }",
      "BEGIN { time(); print(\"hello\"); print(1 + 2); return; }",
      "u:libc:f+4, u:libc:0x10, ur:libc:g { @[probe] = count() }",
  };
  for (const char* src : kValid)
    EXPECT_EQ(errors(src), "") << src;
}

TEST(ScriptCheck, Annotations) {
  ast::Program p = checked(
      "u:libc:malloc { $a = arg0; $s = comm; @c[comm, $a] = count(); @l = lhist($a, 0, 100, "
      "10); @str = \"hi\"; printf(\"%s=%-5d\\n\", $s, $a); }\n"
      "END { $z = 1; print(@c); }");
  ASSERT_EQ(p.maps.size(), 3u);
  EXPECT_EQ(p.maps[0].name, "@c");
  EXPECT_EQ(p.maps[0].id, 0);
  EXPECT_EQ(p.maps[0].kind, ValueKind::count);
  ASSERT_EQ(p.maps[0].key_types.size(), 2u);
  EXPECT_EQ(p.maps[0].key_types[0], Type::string);
  EXPECT_EQ(p.maps[0].key_sizes[0], ast::kCommSize);
  EXPECT_EQ(p.maps[0].key_types[1], Type::integer);
  EXPECT_EQ(p.maps[1].kind, ValueKind::lhist);
  EXPECT_EQ(p.maps[1].lhist_min, 0);
  EXPECT_EQ(p.maps[1].lhist_max, 100);
  EXPECT_EQ(p.maps[1].lhist_step, 10);
  EXPECT_TRUE(p.maps[1].key_types.empty());
  EXPECT_EQ(p.maps[2].kind, ValueKind::string);
  EXPECT_EQ(p.maps[2].str_size, 3u);

  const ast::Action& a = p.actions[0];
  ASSERT_EQ(a.num_slots, 2);
  EXPECT_EQ(a.vars[0].name, "$a");
  EXPECT_EQ(a.vars[0].type, Type::integer);
  EXPECT_EQ(a.vars[1].name, "$s");
  EXPECT_EQ(a.vars[1].slot, 1);
  EXPECT_EQ(a.vars[1].type, Type::string);
  EXPECT_EQ(a.body[0].target->slot, 0);
  EXPECT_EQ(a.body[0].value->builtin, ast::Builtin::arg0);
  EXPECT_EQ(a.body[0].value->type, Type::integer);
  EXPECT_EQ(a.body[1].value->type, Type::string);
  EXPECT_EQ(a.body[1].value->str_size, ast::kCommSize);
  EXPECT_EQ(a.body[2].target->map_id, 0);
  EXPECT_EQ(a.body[2].target->args[1]->slot, 0);
  EXPECT_EQ(a.body[2].value->func, ast::Func::count);
  EXPECT_EQ(a.body[3].value->func, ast::Func::lhist);

  const Expr& pf = *a.body[5].expr;
  EXPECT_EQ(pf.func, ast::Func::printf);
  ASSERT_EQ(pf.format.size(), 3u);
  EXPECT_EQ(pf.format[0].text, "");
  EXPECT_EQ(pf.format[0].conversion, 's');
  EXPECT_EQ(pf.format[0].arg, 1);
  EXPECT_EQ(pf.format[1].text, "=");
  EXPECT_EQ(pf.format[1].conversion, 'd');
  EXPECT_TRUE(pf.format[1].left);
  EXPECT_EQ(pf.format[1].width, 5);
  EXPECT_EQ(pf.format[1].arg, 2);
  EXPECT_EQ(pf.format[2].text, "\n");
  EXPECT_EQ(pf.format[2].conversion, 0);

  // Slots are per action.
  EXPECT_EQ(p.actions[1].num_slots, 1);
  EXPECT_EQ(p.actions[1].body[1].expr->args[0]->map_id, 0);
}

TEST(ScriptCheck, FormatParsing) {
  Diagnostics d;
  auto f = parse_format("%08x|%+.3d|%lu %llu %hhd %% %5s%c", ast::Loc{1, 1, 1}, d);
  ASSERT_TRUE(d.empty());
  ASSERT_EQ(f.size(), 7u);
  EXPECT_TRUE(f[0].zero);
  EXPECT_EQ(f[0].width, 8);
  EXPECT_EQ(f[0].conversion, 'x');
  EXPECT_EQ(f[1].text, "|");
  EXPECT_TRUE(f[1].plus);
  EXPECT_EQ(f[1].precision, 3);
  EXPECT_EQ(f[2].length, FormatSpec::Length::l);
  EXPECT_EQ(f[3].length, FormatSpec::Length::ll);
  EXPECT_EQ(f[4].length, FormatSpec::Length::hh);
  EXPECT_EQ(f[5].text, " % ");
  EXPECT_EQ(f[5].width, 5);
  EXPECT_EQ(f[5].conversion, 's');
  // The last conversion ends the format: no empty trailing piece.
  EXPECT_EQ(f[6].text, "");
  EXPECT_EQ(f[6].conversion, 'c');
  EXPECT_EQ(f[6].arg, 7);
  f = parse_format("%c", ast::Loc{1, 1, 1}, d);
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].conversion, 'c');
  parse_format("abc %q", ast::Loc{1, 1, 1}, d);
  ASSERT_EQ(d.size(), 1u);
  EXPECT_NE(d.all()[0].message.find("Unknown format string token: %q"), std::string::npos);
}

TEST(ScriptCheck, UnknownNames) {
  EXPECT_EQ(one_error("BEGIN { @x = cont(); }",
                      "stdin:1:14-20: ERROR: unknown function 'cont' (did you mean 'count'?)"),
            "stdin:1:14-20: ERROR: unknown function 'cont' (did you mean 'count'?)\n"
            "BEGIN { @x = cont(); }\n"
            "             ~~~~~~");
  one_error("u:libc:f { @x = ti; }",
            "stdin:1:17-19: ERROR: unknown identifier 'ti' (did you mean 'tid'?)");
  one_error("u:libc:f { @x = nsec; }",
            "stdin:1:17-21: ERROR: unknown identifier 'nsec' (did you mean 'nsecs'?)");
  one_error("BEGIN { @x = foobar; }", "stdin:1:14-20: ERROR: unknown identifier 'foobar'");
  one_error("BEGIN { prnt(1); }",
            "stdin:1:9-16: ERROR: unknown function 'prnt' (did you mean 'print'?)");
  one_error("BEGIN { exit; }",
            "stdin:1:9-13: ERROR: unknown identifier 'exit' (did you mean 'exit()'?)");
}

TEST(ScriptCheck, FunctionArguments) {
  EXPECT_EQ(one_error("BEGIN { @x = hist() }",
                      "stdin:1:14-20: ERROR: hist() requires one argument (0 provided)"),
            "stdin:1:14-20: ERROR: hist() requires one argument (0 provided)\n"
            "BEGIN { @x = hist() }\n"
            "             ~~~~~~");
  one_error("BEGIN { @x = count(1) }",
            "stdin:1:14-22: ERROR: count() requires no arguments (1 provided)");
  one_error("BEGIN { @x = sum(\"a\") }",
            "stdin:1:18-21: ERROR: sum() expects an integer argument (string provided)");
  one_error("BEGIN { @x = lhist(1, 2, 3) }",
            "stdin:1:14-28: ERROR: lhist() requires 4 arguments (3 provided)");
  one_error("BEGIN { $a = 1; @x = lhist(1, $a, 10, 1) }",
            "stdin:1:31-33: ERROR: lhist() expects an integer literal for its min, max and step "
            "(arguments 2 to 4)");
  one_error("BEGIN { @x = lhist(1, 0, 10, 0) }",
            "stdin:1:30-31: ERROR: lhist() step must be >= 1 (0 provided)");
  one_error("BEGIN { @x = lhist(1, 10, 10, 1) }",
            "stdin:1:14-33: ERROR: lhist() max must be greater than min (min 10, max 10)");
  one_error("BEGIN { exit(1) }", "stdin:1:9-16: ERROR: exit() requires no arguments (1 provided)");
  one_error("BEGIN { delete(1) }", "stdin:1:9-18: ERROR: delete() expects a map to be provided");
  one_error("BEGIN { @m[1] = 1; clear(@m[1]) }",
            "stdin:1:26-31: ERROR: clear() expects a whole map: write clear(@m)");
  one_error("BEGIN { str() }",
            "stdin:1:9-14: ERROR: str() requires one or two arguments (0 provided)");
  one_error("BEGIN { @x = printf(\"a\") }",
            "stdin:1:14-25: ERROR: printf() returns no value: it cannot be used in an expression");
}

TEST(ScriptCheck, Printf) {
  EXPECT_EQ(one_error("BEGIN { printf(\"%s\\n\", 1) }",
                      "stdin:1:9-26: ERROR: printf: %s specifier expects a value of type string "
                      "(integer supplied)"),
            "stdin:1:9-26: ERROR: printf: %s specifier expects a value of type string (integer "
            "supplied)\n"
            "BEGIN { printf(\"%s\\n\", 1) }\n"
            "        ~~~~~~~~~~~~~~~~~");
  one_error("BEGIN { printf(\"%d\\n\", comm) }",
            "stdin:1:9-29: ERROR: printf: %d specifier expects a value of type integer "
            "(string supplied)");
  one_error("BEGIN { @x = count(); printf(\"%d\\n\", @x); }",
            "stdin:1:23-41: ERROR: printf: %d specifier expects a value of type integer "
            "(count supplied)");
  one_error("BEGIN { printf(\"%d %d\\n\", 1) }",
            "stdin:1:9-29: ERROR: printf: Not enough arguments for format string (1 supplied, 2 "
            "expected)");
  one_error("BEGIN { printf(\"%d\\n\", 1, 2) }",
            "stdin:1:9-29: ERROR: printf: Too many arguments for format string (2 supplied, 1 "
            "expected)");
  one_error("BEGIN { printf(1) }",
            "stdin:1:9-18: ERROR: printf() expects a string literal (integer provided)");
  one_error("BEGIN { printf(\"%y\", 1) }",
            "stdin:1:16-20: ERROR: printf: Unknown format string token: %y (use %d %u %x %X %o "
            "%p %s %c %%, with flags - + 0 # space, a width and a length l ll h hh)");
}

TEST(ScriptCheck, Maps) {
  EXPECT_EQ(one_error("BEGIN { @x = count(); @x = 1; }",
                      "stdin:1:23-25: ERROR: Type mismatch for @x: trying to assign value of "
                      "type 'int64' when map already contains a value of type 'count'"),
            "stdin:1:23-25: ERROR: Type mismatch for @x: trying to assign value of type 'int64' "
            "when map already contains a value of type 'count'\n"
            "BEGIN { @x = count(); @x = 1; }\n"
            "                      ~~");
  one_error("BEGIN { @x = hist(1); @x = sum(2); }",
            "stdin:1:23-25: ERROR: Type mismatch for @x: trying to assign value of type 'sum' "
            "when map already contains a value of type 'hist'");
  one_error("BEGIN { @x = 1; @x = \"a\"; }",
            "stdin:1:17-19: ERROR: Type mismatch for @x: trying to assign value of type 'string' "
            "when map already contains a value of type 'int64'");
  EXPECT_EQ(one_error("BEGIN { @x[1] = 1; @x[1, 2] = 3; }",
                      "stdin:1:20-28: ERROR: Argument mismatch for @x: trying to access with 2 "
                      "arguments when it was previously accessed with 1"),
            "stdin:1:20-28: ERROR: Argument mismatch for @x: trying to access with 2 arguments "
            "when it was previously accessed with 1\n"
            "BEGIN { @x[1] = 1; @x[1, 2] = 3; }\n"
            "                   ~~~~~~~~");
  one_error("BEGIN { @x[1] = 1; @x[\"a\"] = 3; }",
            "stdin:1:20-27: ERROR: Argument mismatch for @x: trying to access with arguments: "
            "[string] when map expects arguments: [int64]");
  one_error("BEGIN { @x = 1; @y = @x[2]; }",
            "stdin:1:22-27: ERROR: Argument mismatch for @x: trying to access with 1 arguments "
            "when it was previously accessed with 0");
  one_error("BEGIN { print(@nope); }",
            "stdin:1:15-20: ERROR: Undefined map: @nope (it is never assigned)");
  one_error("BEGIN { @count = count(); print(@cuont); }",
            "stdin:1:33-39: ERROR: Undefined map: @cuont (it is never assigned) (did you mean "
            "'@count'?)");
  one_error("BEGIN { @x = lhist(1, 0, 10, 1); @x = lhist(2, 0, 20, 1); }",
            "stdin:1:39-57: ERROR: lhist() arguments for @x differ from its first use (min, max "
            "and step are fixed per map)");
  one_error("BEGIN { @x = count(); @x++; }",
            "stdin:1:23-27: ERROR: The ++ operator can not be used on @x (it holds 'count', not "
            "int64)");
  one_error("BEGIN { @s = \"a\"; @s += 1; }",
            "stdin:1:19-21: ERROR: Type mismatch for @s: the += operator needs an int64 map (it "
            "holds 'string')");
}

TEST(ScriptCheck, AggregationPlacement) {
  EXPECT_EQ(one_error("BEGIN { count() }",
                      "stdin:1:9-16: ERROR: count() should be directly assigned to a map"),
            "stdin:1:9-16: ERROR: count() should be directly assigned to a map\n"
            "BEGIN { count() }\n"
            "        ~~~~~~~");
  one_error("BEGIN { $x = count() }",
            "stdin:1:14-21: ERROR: count() should be directly assigned to a map");
  one_error("BEGIN { @x = hist(1) + 1 }",
            "stdin:1:14-21: ERROR: hist() should be directly assigned to a map");
  one_error("BEGIN { @x += count() }",
            "stdin:1:15-22: ERROR: count() should be directly assigned to a map");
  one_error("BEGIN { @x = count(); if (@x > 1) { exit() } }",
            "stdin:1:27-33: ERROR: Type mismatch for '>': comparing 'count' with 'int64'");
}

TEST(ScriptCheck, Operators) {
  EXPECT_EQ(one_error("BEGIN { @x = \"a\" + 1 }",
                      "stdin:1:14-21: ERROR: Type mismatch for '+': comparing 'string' with "
                      "'int64'"),
            "stdin:1:14-21: ERROR: Type mismatch for '+': comparing 'string' with 'int64'\n"
            "BEGIN { @x = \"a\" + 1 }\n"
            "             ~~~~~~~");
  one_error("BEGIN { @x = \"a\" - \"b\" }",
            "stdin:1:14-23: ERROR: The - operator can not be used on expressions of types "
            "string, string (only == and != compare strings)");
  one_error("BEGIN { @x = \"a\" < \"b\" }",
            "stdin:1:14-23: ERROR: The < operator can not be used on expressions of types "
            "string, string (only == and != compare strings)");
  one_error("BEGIN { @x = -comm }",
            "stdin:1:14-19: ERROR: The - operator can not be used on expressions of type string");
  one_error("BEGIN { @x = 1 ? 2 : \"a\" }",
            "stdin:1:14-25: ERROR: Ternary operator branches must have the same type: 'int64' "
            "and 'string'");
  one_error("BEGIN { if (comm) { exit() } }",
            "stdin:1:13-17: ERROR: Invalid condition in if(): string (a condition is an "
            "integer: 0 is false)");
  one_error("BEGIN /comm/ { exit() }",
            "stdin:1:8-12: ERROR: Invalid type for predicate: string (a predicate is an "
            "integer: 0 is false)");
  EXPECT_EQ(errors("BEGIN { @x = \"a\" == \"b\"; @y = comm != \"x\"; }"), "");
}

TEST(ScriptCheck, BuiltinsPerProbe) {
  EXPECT_EQ(one_error("BEGIN { @x = arg0 }",
                      "stdin:1:14-18: ERROR: The arg0 builtin can only be used with 'uprobes' "
                      "probes (not 'BEGIN')"),
            "stdin:1:14-18: ERROR: The arg0 builtin can only be used with 'uprobes' probes (not "
            "'BEGIN')\n"
            "BEGIN { @x = arg0 }\n"
            "             ~~~~");
  one_error("ur:libc:malloc { @x = arg1 }",
            "stdin:1:23-27: ERROR: The arg1 builtin can only be used with 'uprobes' probes (not "
            "'uretprobe')");
  one_error("interval:s:1 { @x = arg2 }",
            "stdin:1:21-25: ERROR: The arg2 builtin can only be used with 'uprobes' probes (not "
            "'interval')");
  one_error("END { @x = retval }",
            "stdin:1:12-18: ERROR: The retval builtin can only be used with 'uretprobe' probes "
            "(not 'END')");
  one_error("u:libc:malloc { @x = retval }",
            "stdin:1:22-28: ERROR: The retval builtin can only be used with 'uretprobe' probes "
            "(not 'uprobe')");
  one_error("u:libc:malloc, BEGIN { @x[func] = count() }",
            "stdin:1:27-31: ERROR: The func builtin can only be used with 'uprobe' and "
            "'uretprobe' probes (not 'BEGIN')");
  // In the predicate too.
  one_error("END /arg0/ { exit() }",
            "stdin:1:6-10: ERROR: The arg0 builtin can only be used with 'uprobes' probes (not "
            "'END')");
}

TEST(ScriptCheck, Variables) {
  EXPECT_EQ(one_error("BEGIN { $x++; exit() }",
                      "stdin:1:9-11: ERROR: Undefined or undeclared variable: $x"),
            "stdin:1:9-11: ERROR: Undefined or undeclared variable: $x\n"
            "BEGIN { $x++; exit() }\n"
            "        ~~");
  one_error("BEGIN { $x = 1; } END { print($x) }",
            "stdin:1:31-33: ERROR: Undefined or undeclared variable: $x");
  one_error("BEGIN { @y = $x; $x = 1; }",
            "stdin:1:14-16: ERROR: Undefined or undeclared variable: $x");
  one_error("BEGIN { $count = 1; @y = $cuont; }",
            "stdin:1:26-32: ERROR: Undefined or undeclared variable: $cuont (did you mean "
            "'$count'?)");
  one_error("BEGIN { $x = 1; $x = \"a\" }",
            "stdin:1:22-25: ERROR: Type mismatch for $x: trying to assign value of type 'string' "
            "when variable already contains a value of type 'int64'");
  one_error("BEGIN { $s = \"a\"; $s += 1 }",
            "stdin:1:19-21: ERROR: Type mismatch for $s: the += operator needs an integer "
            "variable (it holds a string)");
}

TEST(ScriptCheck, Unroll) {
  one_error("BEGIN { unroll(101) { } }", "stdin:1:16-19: ERROR: unroll maximum value is 100");
  one_error("BEGIN { unroll(0) { } }", "stdin:1:16-17: ERROR: unroll minimum value is 1");
}

TEST(ScriptCheck, ReportsEveryError) {
  std::string e = errors(
      "BEGIN {\n"
      "  @a = cont();\n"
      "  @b = arg0;\n"
      "  printf(\"%s\", 1);\n"
      "}\n");
  EXPECT_EQ(e,
            "stdin:2:8-14: ERROR: unknown function 'cont' (did you mean 'count'?)\n"
            "  @a = cont();\n"
            "       ~~~~~~\n"
            "stdin:3:8-12: ERROR: The arg0 builtin can only be used with 'uprobes' probes (not "
            "'BEGIN')\n"
            "  @b = arg0;\n"
            "       ~~~~\n"
            "stdin:4:3-18: ERROR: printf: %s specifier expects a value of type string (integer "
            "supplied)\n"
            "  printf(\"%s\", 1);\n"
            "  ~~~~~~~~~~~~~~~");
  // A bound on how many are shown.
  std::string many = "BEGIN {";
  for (int i = 0; i < 30; ++i)
    many += " @x" + std::to_string(i) + " = cont();";
  many += " }";
  e = errors(many);
  EXPECT_NE(e.find("10 more error(s) not shown"), std::string::npos) << e;
}

TEST(ScriptCheck, CheckAloneReturnsRenderedErrors) {
  auto p = parse("BEGIN { @x = cont(); }", "trace.bt");
  ASSERT_TRUE(p.ok());
  auto r = check(*p);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), Errc::invalid_argument);
  EXPECT_EQ(r.error().message(),
            "trace.bt:1:14-20: ERROR: unknown function 'cont' (did you mean 'count'?)\n"
            "BEGIN { @x = cont(); }\n"
            "             ~~~~~~");
}

}  // namespace
}  // namespace hotprobe::script

namespace hotprobe::script {
namespace {

TEST(ScriptCheck, PrintfValuesAtMost32) {
  std::string fmt, args;
  for (int i = 0; i < 32; ++i) {
    fmt += "%d";
    args += ", 1";
  }
  checked("BEGIN { printf(\"" + fmt + "\"" + args + "); }");
  one_error("BEGIN { printf(\"" + fmt + "%d\"" + args + ", 1); }",
            "stdin:1:9-184"
            ": ERROR: printf() can only take up to 32 arguments after its format (33 "
            "provided): split it into several printf() calls");
}

TEST(ScriptCheck, NestedUnrollIterationsAreBounded) {
  checked("BEGIN { unroll(10) { unroll(100) { @x++; } } }");
  one_error("BEGIN { unroll(10) { unroll(100) { unroll(11) { @x++; } } } }",
            "stdin:1:43-45: ERROR: unroll nested too deeply: 11000 iterations in all, at most "
            "10000");
}

TEST(ScriptCheck, ThousandTermChainIsTyped) {
  std::string sum = "arg0";
  for (int i = 1; i < 1000; ++i)
    sum += " + arg0";
  ast::Program p = checked("uprobe:libc:malloc { @x = " + sum + "; }");
  // Every node of the left spine is annotated, not only the top.
  const ast::Expr* e = p.actions[0].body[0].value.get();
  int spine = 0;
  for (; e->kind == ast::Expr::Kind::binary; e = e->args[0].get(), ++spine)
    EXPECT_EQ(e->type, ast::Type::integer);
  EXPECT_EQ(spine, 999);
  // A string compared at the bottom of a chain, integers above it.
  checked("BEGIN { @y = (comm == \"x\") + 1 + 2 + 3 + 4 + 5 + 6 + 7 + 8 + 9 + 10; }");
  one_error("BEGIN { @y = 1 + 2 + 3 + 4 + 5 + 6 + 7 + 8 + 9 + comm; }",
            "stdin:1:14-54: ERROR: Type mismatch for '+': comparing 'int64' with 'string'");
}

}  // namespace
}  // namespace hotprobe::script
