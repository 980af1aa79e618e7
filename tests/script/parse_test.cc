// The parser: every construct into the expected AST shape, precedence, probes, comments,
// escapes, and the rendered syntax errors.
#include <gtest/gtest.h>

#include <string>

#include "script/ast.h"
#include "script/check.h"
#include "script/parser.h"

namespace hotprobe::script {
namespace {

using ast::Expr;
using ast::Stmt;

// An S-expression of an expression: (+ 1 (* 2 3)), (@m $k), (call count), (post++ $x).
std::string sx(const Expr& e) {
  auto list = [&](std::string head) {
    std::string s = "(" + head;
    for (const auto& a : e.args)
      s += " " + sx(*a);
    return s + ")";
  };
  switch (e.kind) {
    case Expr::Kind::integer:
      return std::to_string(e.value);
    case Expr::Kind::string:
      return "\"" + e.text + "\"";
    case Expr::Kind::builtin:
      return e.name;
    case Expr::Kind::variable:
      return e.name;
    case Expr::Kind::map:
      return e.args.empty() ? e.name : list(e.name);
    case Expr::Kind::unary:
      return list(std::string(ast::to_string(e.unary)));
    case Expr::Kind::binary:
      return list(std::string(ast::to_string(e.binary)));
    case Expr::Kind::ternary:
      return list("?:");
    case Expr::Kind::call:
      return list("call " + e.name);
    case Expr::Kind::incdec:
      return list(std::string(e.prefix ? "pre" : "post") + (e.increment ? "++" : "--"));
    case Expr::Kind::cast:
      return list("cast");
    case Expr::Kind::deref:
      return list("*");
    case Expr::Kind::field:
      return list(std::string(e.arrow ? "->" : ".") + e.name);
    case Expr::Kind::index:
      return list("[]");
    case Expr::Kind::sizeof_:
      return list("sizeof");
    case Expr::Kind::offsetof_:
      return list("offsetof " + e.name);
    case Expr::Kind::tuple:
      return list("tuple");
  }
  return "?";
}

std::string sx(const Stmt& s);
std::string sx(const std::vector<Stmt>& body) {
  std::string out = "{";
  for (const Stmt& s : body)
    out += " " + sx(s);
  return out + " }";
}
std::string sx(const Stmt& s) {
  switch (s.kind) {
    case Stmt::Kind::expr:
      return sx(*s.expr);
    case Stmt::Kind::assign:
      return sx(*s.target) + " " +
             (s.assign.compound ? std::string(ast::to_string(s.assign.op)) : "") + "= " +
             sx(*s.value);
    case Stmt::Kind::if_:
      return "if " + sx(*s.cond) + " " + sx(s.body) +
             (s.else_body.empty() ? "" : " else " + sx(s.else_body));
    case Stmt::Kind::unroll:
      return "unroll " + std::to_string(s.count) + " " + sx(s.body);
    case Stmt::Kind::return_:
      return "return";
    case Stmt::Kind::while_:
      return "while " + sx(*s.cond) + " " + sx(s.body);
    case Stmt::Kind::for_:
      return "for " + sx(*s.target) + " " + sx(*s.value) + ".." + sx(*s.cond) + " " + sx(s.body);
    case Stmt::Kind::break_:
      return "break";
    case Stmt::Kind::continue_:
      return "continue";
  }
  return "?";
}

ast::Program parse_ok(std::string_view src) {
  auto r = parse(src, "stdin");
  EXPECT_TRUE(r.ok()) << r.error().message();
  if (!r.ok()) return {};
  return std::move(r).value();
}

// The body of the only action of `src`.
std::string body(std::string_view src) {
  ast::Program p = parse_ok(src);
  if (p.actions.size() != 1) return "<" + std::to_string(p.actions.size()) + " actions>";
  return sx(p.actions[0].body);
}

// The expression of `BEGIN { @x = EXPR }`.
std::string expr(const std::string& e) {
  ast::Program p = parse_ok("BEGIN { @x = " + e + " }");
  if (p.actions.size() != 1 || p.actions[0].body.size() != 1) return "<bad>";
  return sx(*p.actions[0].body[0].value);
}

std::string parse_error(std::string_view src) {
  auto r = parse(src, "stdin");
  return r.ok() ? "<parsed>" : r.error().message();
}

TEST(ScriptParse, UprobeForms) {
  ast::Program p = parse_ok(
      "uprobe:/usr/lib/x86_64-linux-gnu/libc.so.6:malloc,\n"
      "  u:libc:free, ur:./a.out:main, uretprobe:libm:cos,\n"
      "  uprobe:libc:malloc+4, u:libc:malloc+0x10, u:libc:0x1234, u:libfoo:handle_*\n"
      "{ }");
  ASSERT_EQ(p.actions.size(), 1u);
  const auto& ps = p.actions[0].probes;
  ASSERT_EQ(ps.size(), 8u);
  EXPECT_EQ(ps[0].probe.kind, Probe::Kind::uprobe);
  EXPECT_EQ(ps[0].probe.text, "uprobe:/usr/lib/x86_64-linux-gnu/libc.so.6:malloc");
  EXPECT_EQ(ps[0].probe.target, "/usr/lib/x86_64-linux-gnu/libc.so.6:malloc");
  EXPECT_EQ(ps[0].module, "/usr/lib/x86_64-linux-gnu/libc.so.6");
  EXPECT_EQ(ps[0].function, "malloc");
  EXPECT_EQ(ps[0].probe.line, 1);
  EXPECT_EQ(ps[0].probe.column, 1);
  EXPECT_EQ(ps[0].loc.length, 49);

  EXPECT_EQ(ps[1].probe.kind, Probe::Kind::uprobe);
  EXPECT_EQ(ps[1].probe.text, "uprobe:libc:free");
  EXPECT_EQ(ps[1].probe.target, "libc:free");
  EXPECT_EQ(ps[1].probe.line, 2);
  EXPECT_EQ(ps[1].probe.column, 3);

  EXPECT_EQ(ps[2].probe.kind, Probe::Kind::uretprobe);
  EXPECT_EQ(ps[2].probe.text, "uretprobe:./a.out:main");
  EXPECT_EQ(ps[2].probe.target, "./a.out:main");
  EXPECT_EQ(ps[3].probe.kind, Probe::Kind::uretprobe);
  EXPECT_EQ(ps[3].probe.column, 33);

  EXPECT_TRUE(ps[4].has_offset);
  EXPECT_EQ(ps[4].offset, 4u);
  EXPECT_EQ(ps[4].function, "malloc");
  EXPECT_EQ(ps[4].probe.target, "libc:malloc+4");
  EXPECT_EQ(ps[5].offset, 16u);
  EXPECT_EQ(ps[5].probe.target, "libc:malloc+0x10");

  EXPECT_TRUE(ps[6].is_address);
  EXPECT_EQ(ps[6].offset, 0x1234u);
  EXPECT_EQ(ps[6].function, "");
  EXPECT_EQ(ps[6].probe.target, "libc:0x1234");

  EXPECT_TRUE(ps[7].is_glob);
  EXPECT_EQ(ps[7].probe.target, "libfoo:handle_*");

  auto flat = ast::flatten_probes(p);
  ASSERT_EQ(flat.size(), 8u);
  EXPECT_EQ(flat[2].target, "./a.out:main");
}

TEST(ScriptParse, BeginEndInterval) {
  ast::Program p = parse_ok(
      "BEGIN { } END { } interval:s:2 { } interval:ms:100 { } i:us:5 { } interval:hz:99 { }");
  ASSERT_EQ(p.actions.size(), 6u);
  EXPECT_EQ(p.actions[0].probes[0].probe.kind, Probe::Kind::begin);
  EXPECT_EQ(p.actions[0].probes[0].probe.text, "BEGIN");
  EXPECT_EQ(p.actions[1].probes[0].probe.kind, Probe::Kind::end);
  EXPECT_EQ(p.actions[1].probes[0].probe.column, 11);
  EXPECT_EQ(p.actions[2].probes[0].probe.kind, Probe::Kind::interval);
  EXPECT_EQ(p.actions[2].probes[0].probe.interval_ns, 2'000'000'000u);
  EXPECT_EQ(p.actions[2].probes[0].probe.text, "interval:s:2");
  EXPECT_EQ(p.actions[3].probes[0].probe.interval_ns, 100'000'000u);
  EXPECT_EQ(p.actions[4].probes[0].probe.interval_ns, 5'000u);
  EXPECT_EQ(p.actions[4].probes[0].probe.text, "interval:us:5");
  EXPECT_EQ(p.actions[5].probes[0].probe.interval_ns, 1'000'000'000u / 99);
}

TEST(ScriptParse, Predicate) {
  ast::Program p = parse_ok("u:libc:malloc /arg0 > 100 && pid == 5/ { @ = count(); }");
  ASSERT_EQ(p.actions.size(), 1u);
  ASSERT_TRUE(p.actions[0].predicate);
  EXPECT_EQ(sx(*p.actions[0].predicate), "(&& (> arg0 100) (== pid 5))");
  // A division inside a predicate; the last '/' closes it.
  p = parse_ok("u:libc:malloc /arg0 / 2 > 1/ { }");
  EXPECT_EQ(sx(*p.actions[0].predicate), "(> (/ arg0 2) 1)");
  p = parse_ok("BEGIN/1/{}");
  EXPECT_EQ(sx(*p.actions[0].predicate), "1");
  p = parse_ok("u:libc:malloc { }");
  EXPECT_FALSE(p.actions[0].predicate);
}

TEST(ScriptParse, Statements) {
  EXPECT_EQ(body("BEGIN { @x = 1; $y = 2; @m[1, \"a\"] = 3 }"),
            "{ @x = 1 $y = 2 (@m 1 \"a\") = 3 }");
  EXPECT_EQ(body("BEGIN { @a += 1; @b -= 2; $c *= 3; $d /= 4; @e %= 5; @f &= 6; @g |= 7; "
                 "@h ^= 8; @i <<= 9; @j >>= 10; }"),
            "{ @a += 1 @b -= 2 $c *= 3 $d /= 4 @e %= 5 @f &= 6 @g |= 7 @h ^= 8 @i <<= 9 "
            "@j >>= 10 }");
  EXPECT_EQ(body("BEGIN { @x++; @y[1]--; ++$z; --@w; }"),
            "{ (post++ @x) (post-- (@y 1)) (pre++ $z) (pre-- @w) }");
  EXPECT_EQ(body("BEGIN { if (1) { @a = 1 } else if (2) { @b = 2 } else { @c = 3 } @d = 4 }"),
            "{ if 1 { @a = 1 } else { if 2 { @b = 2 } else { @c = 3 } } @d = 4 }");
  EXPECT_EQ(body("BEGIN { if (1) { exit(); } }"), "{ if 1 { (call exit) } }");
  EXPECT_EQ(body("BEGIN { unroll(3) { @x++ } return; }"), "{ unroll 3 { (post++ @x) } return }");
  EXPECT_EQ(body("BEGIN { ;; @x = 1;; }"), "{ @x = 1 }");
  EXPECT_EQ(body("BEGIN { }"), "{ }");
  EXPECT_EQ(body("BEGIN { @[comm] = count(); @ = hist(1) }"),
            "{ (@ comm) = (call count) @ = (call hist 1) }");
  EXPECT_EQ(body("BEGIN { printf(\"%d %s\\n\", 1, \"a\"); delete(@m[1]); clear(@m); "
                 "print(@m, 10); time(\"%H\"); str(arg0, 8) }"),
            "{ (call printf \"%d %s\n\" 1 \"a\") (call delete (@m 1)) (call clear @m) "
            "(call print @m 10) (call time \"%H\") (call str arg0 8) }");
}

TEST(ScriptParse, Precedence) {
  EXPECT_EQ(expr("1 + 2 * 3"), "(+ 1 (* 2 3))");
  EXPECT_EQ(expr("(1 + 2) * 3"), "(* (+ 1 2) 3)");
  EXPECT_EQ(expr("1 - 2 - 3"), "(- (- 1 2) 3)");
  EXPECT_EQ(expr("8 / 4 % 3"), "(% (/ 8 4) 3)");
  EXPECT_EQ(expr("1 << 2 + 3"), "(<< 1 (+ 2 3))");
  EXPECT_EQ(expr("1 < 2 == 3 >= 4"), "(== (< 1 2) (>= 3 4))");
  EXPECT_EQ(expr("1 < 2 << 3"), "(< 1 (<< 2 3))");
  EXPECT_EQ(expr("1 & 2 == 2"), "(& 1 (== 2 2))");
  EXPECT_EQ(expr("1 | 2 ^ 3 & 4"), "(| 1 (^ 2 (& 3 4)))");
  EXPECT_EQ(expr("1 || 2 && 3 | 4"), "(|| 1 (&& 2 (| 3 4)))");
  EXPECT_EQ(expr("1 && 2 || 3 && 4"), "(|| (&& 1 2) (&& 3 4))");
  EXPECT_EQ(expr("-1 * ~2 + !3"), "(+ (* (- 1) (~ 2)) (! 3))");
  EXPECT_EQ(expr("- -1"), "(- (- 1))");
  EXPECT_EQ(expr("1 ? 2 : 3 ? 4 : 5"), "(?: 1 2 (?: 3 4 5))");
  EXPECT_EQ(expr("1 + 2 > 3 ? \"a\" : \"b\""), "(?: (> (+ 1 2) 3) \"a\" \"b\")");
  EXPECT_EQ(expr("$x++ + 1"), "(+ (post++ $x) 1)");
  EXPECT_EQ(expr("@start[tid] - nsecs"), "(- (@start tid) nsecs)");
  EXPECT_EQ(expr("f(1, g(2), 3 + 4)"), "(call f 1 (call g 2) (+ 3 4))");
}

TEST(ScriptParse, Literals) {
  EXPECT_EQ(expr("0x10"), "16");
  EXPECT_EQ(expr("1_000_000"), "1000000");
  EXPECT_EQ(expr("0xffffffffffffffff"), "-1");
  EXPECT_EQ(expr("18446744073709551615"), "-1");
  ast::Program p = parse_ok("BEGIN { @s = \"a\\n\\t\\\\\\\"\\101\\x42\\0\" }");
  ASSERT_EQ(p.actions.size(), 1u);
  EXPECT_EQ(p.actions[0].body[0].value->text, std::string("a\n\t\\\"AB\0", 8));
  // bpftrace: up to three octal digits, then the rest is text.
  p = parse_ok("BEGIN { @s = \"\\0101\" }");
  EXPECT_EQ(p.actions[0].body[0].value->text, "\b1");
}

TEST(ScriptParse, CommentsAndLocations) {
  ast::Program p = parse_ok(
      "// a line comment\n"
      "/* a block\n   comment */ BEGIN // trailing\n"
      "{\n"
      "  @x = /* inline */ 1 + count;\n"
      "}\n");
  ASSERT_EQ(p.actions.size(), 1u);
  EXPECT_EQ(p.actions[0].probes[0].probe.line, 3);
  EXPECT_EQ(p.actions[0].probes[0].probe.column, 15);
  const Stmt& s = p.actions[0].body[0];
  EXPECT_EQ(s.loc.line, 5);
  EXPECT_EQ(s.loc.column, 3);
  EXPECT_EQ(s.target->loc.length, 2);
  const Expr& v = *s.value;
  EXPECT_EQ(sx(v), "(+ 1 count)");
  EXPECT_EQ(v.loc.line, 5);
  EXPECT_EQ(v.loc.column, 21);
  EXPECT_EQ(v.loc.length, 9);
  EXPECT_EQ(v.args[1]->loc.column, 25);
  EXPECT_EQ(v.args[1]->loc.length, 5);
}

TEST(ScriptParse, MultiProbeBlocksAndPrograms) {
  ast::Program p = parse_ok(
      "u:libc:malloc, u:libc:calloc /pid == 1/ { @[probe] = count(); }\n"
      "END { print(@); clear(@) }");
  ASSERT_EQ(p.actions.size(), 2u);
  EXPECT_EQ(p.actions[0].probes.size(), 2u);
  EXPECT_EQ(p.actions[0].probes[1].probe.target, "libc:calloc");
  EXPECT_EQ(p.actions[0].probes[1].probe.column, 16);
  EXPECT_EQ(p.actions[1].probes[0].probe.line, 2);
  EXPECT_EQ(ast::flatten_probes(p).size(), 3u);
}

TEST(ScriptParse, SyntaxErrors) {
  EXPECT_EQ(parse_error("BEGIN { @x = 1 "),
            "stdin:1:16-16: ERROR: syntax error, unexpected end of file, expecting }\n"
            "BEGIN { @x = 1 \n"
            "               ");
  EXPECT_EQ(parse_error("BEGIN { @x = 1 @y = 2 }"),
            "stdin:1:16-18: ERROR: syntax error, unexpected map, expecting }\n"
            "BEGIN { @x = 1 @y = 2 }\n"
            "               ~~");
  EXPECT_EQ(parse_error("BEGIN { @x = ; }"),
            "stdin:1:14-15: ERROR: syntax error, unexpected ;\n"
            "BEGIN { @x = ; }\n"
            "             ~");
  EXPECT_EQ(parse_error("BEGIN { if @x { } }"),
            "stdin:1:12-14: ERROR: syntax error, unexpected map, expecting (\n"
            "BEGIN { if @x { } }\n"
            "           ~~");
  EXPECT_EQ(parse_error("BEGIN { @x = 1 } }"),
            "stdin:1:18-19: ERROR: syntax error, unexpected }, expecting probe\n"
            "BEGIN { @x = 1 } }\n"
            "                 ~");
  EXPECT_EQ(parse_error("BEGIN { 1 + 2 = 3 }"),
            "stdin:1:15-16: ERROR: syntax error, unexpected =\n"
            "BEGIN { 1 + 2 = 3 }\n"
            "              ~");
}

TEST(ScriptParse, LexicalErrors) {
  EXPECT_EQ(parse_error("BEGIN { @x = \"abc }"),
            "stdin:1:14-20: ERROR: unterminated string\n"
            "BEGIN { @x = \"abc }\n"
            "             ~~~~~~");
  EXPECT_EQ(parse_error("BEGIN { /* x "),
            "stdin:1:9-14: ERROR: end of file during comment\n"
            "BEGIN { /* x \n"
            "        ~~~~~\n"
            "stdin:1:14-14: ERROR: syntax error, unexpected end of file, expecting }\n"
            "BEGIN { /* x \n"
            "             ");
  EXPECT_EQ(parse_error("BEGIN {\n  printf(\"a\\qb\");\n}"),
            "stdin:2:12-14: ERROR: invalid escape character '\\q' (use \\n \\t \\\\ \\\" \\NNN "
            "(octal) or \\xHH)\n"
            "  printf(\"a\\qb\");\n"
            "           ~~");
  EXPECT_EQ(parse_error("BEGIN { @x = 12ab }"),
            "stdin:1:14-18: ERROR: invalid integer '12ab'\n"
            "BEGIN { @x = 12ab }\n"
            "             ~~~~");
  EXPECT_EQ(parse_error("BEGIN { @x = 99999999999999999999 }").substr(0, 59),
            "stdin:1:14-34: ERROR: integer '99999999999999999999' does n");
  EXPECT_EQ(parse_error("BEGIN { @x = 1 # }"),
            "stdin:1:16-17: ERROR: invalid character '#'\n"
            "BEGIN { @x = 1 # }\n"
            "               ~");
  // Tabs stay under the text.
  EXPECT_EQ(parse_error("BEGIN {\n\t@x = ;\n}"),
            "stdin:2:7-8: ERROR: syntax error, unexpected ;\n"
            "\t@x = ;\n"
            "\t     ~");
}

TEST(ScriptParse, ProbeErrors) {
  EXPECT_EQ(parse_error("uprob:libc:malloc { }"),
            "stdin:1:1-18: ERROR: unknown probe type 'uprob' (did you mean 'uprobe'?)\n"
            "uprob:libc:malloc { }\n"
            "~~~~~~~~~~~~~~~~~");
  EXPECT_EQ(parse_error("interval:x:1 { }"),
            "stdin:1:1-13: ERROR: x is not an accepted unit of time (use s, ms, us or hz)\n"
            "interval:x:1 { }\n"
            "~~~~~~~~~~~~");
  EXPECT_EQ(parse_error("interval:s { }"),
            "stdin:1:1-11: ERROR: interval probe type requires 2 arguments (write interval:s:N, "
            "interval:ms:N, interval:us:N or interval:hz:N)\n"
            "interval:s { }\n"
            "~~~~~~~~~~");
  EXPECT_EQ(parse_error("uretprobe:libc:malloc+4 { }"),
            "stdin:1:1-24: ERROR: Offset not allowed: a uretprobe is placed at a function's "
            "entry\n"
            "uretprobe:libc:malloc+4 { }\n"
            "~~~~~~~~~~~~~~~~~~~~~~~");
  EXPECT_EQ(parse_error("uprobe:libc { }"),
            "stdin:1:1-12: ERROR: uprobe probe type requires 2 arguments (write "
            "uprobe:MODULE:FUNCTION)\n"
            "uprobe:libc { }\n"
            "~~~~~~~~~~~");
  EXPECT_NE(parse_error("uprobe::malloc { }").find("missing its module"), std::string::npos);
  EXPECT_NE(parse_error("uprobe:libc: { }").find("missing its function"), std::string::npos);
  EXPECT_NE(parse_error("kprobe:do_sys_open { }").find("'kprobe' is not supported"),
            std::string::npos);
  EXPECT_NE(parse_error("interval:s:0 { }").find("not a positive integer"), std::string::npos);
  EXPECT_NE(parse_error("u:libc:malloc+zz { }").find("invalid offset"), std::string::npos);
  // Every bad probe is reported, not only the first.
  std::string two = parse_error("uprob:libc:f { } interval:x:1 { }");
  EXPECT_NE(two.find("1:1-13"), std::string::npos) << two;
  EXPECT_NE(two.find("1:18-30"), std::string::npos) << two;
}

}  // namespace
}  // namespace hotprobe::script

namespace hotprobe::script {
namespace {

TEST(ScriptParse, NestingLimitIsASyntaxErrorAtTheToken) {
  // The block is level 1, the assigned expression level 2: 30 parentheses fit. Inside the
  // 31st, the expression would be level 33: reported at its first token (column 45).
  EXPECT_EQ(expr(std::string(30, '(') + "1" + std::string(30, ')')), "1");
  const std::string e =
      parse_error("BEGIN { @x = " + std::string(31, '(') + "1" + std::string(31, ')') + " }");
  EXPECT_EQ(e.substr(0, e.find('\n')),
            "stdin:1:45-46: ERROR: syntax error, nested too deeply: more than 32 levels of "
            "parentheses, map keys, calls, operators and blocks (assign inner parts to "
            "$variables first)");
  // Blocks count too.
  std::string blocks = "BEGIN { ";
  for (int i = 0; i < 40; ++i)
    blocks += "if (1) { ";
  EXPECT_NE(parse_error(blocks).find("nested too deeply"), std::string::npos);
  // A map access with keys counts 8 levels.
  EXPECT_EQ(expr("@a[@a[@a[1]]]"), "(@a (@a (@a 1)))");
  EXPECT_NE(parse_error("BEGIN { @x = @a[@a[@a[@a[1]]]] }").find("nested too deeply"),
            std::string::npos);
}

TEST(ScriptParse, ChainsAreBuiltInALoopAndMeasured) {
  std::string sum = "1";
  for (int i = 2; i <= 1024; ++i)
    sum += "+" + std::to_string(i);
  ast::Program p = parse_ok("BEGIN { @x = " + sum + " }");
  ASSERT_EQ(p.actions.size(), 1u);
  EXPECT_EQ(p.actions[0].body[0].value->height, 1024);
  const std::string e = parse_error("BEGIN { @x = " + sum + "+1 }");
  EXPECT_NE(e.find("ERROR: syntax error, expression too deep: more than 1024 operands"),
            std::string::npos)
      << e.substr(0, 200);
  // Precedence climbing keeps bpftrace's precedence and left associativity.
  EXPECT_EQ(expr("1 - 2 - 3 * 4 / 5 << 1 | 2 ^ 3 & 4 == 5 < 6 || 7 && 8"),
            "(|| (| (<< (- (- 1 2) (/ (* 3 4) 5)) 1) (^ 2 (& 3 (== 4 (< 5 6))))) (&& 7 8))");
}

TEST(ScriptParse, CTypesCastsAndMemberAccess) {
  ast::Program p = parse_ok(
      "struct s { int a; struct s *next; char name[8]; unsigned int bits : 3; };\n"
      "typedef struct s s_t;\n"
      "enum e { A, B = 4 };\n"
      "uprobe:libc:f { $p = (struct s *)arg0; @ = (uint32)$p->next->a + *(uint64 *)arg1 + "
      "$p->name[2] + (*$p).a + sizeof(s_t) + offsetof(struct s, next) - (s_t *)0; }");
  ASSERT_EQ(p.actions.size(), 1u);
  const Stmt& s = p.actions[0].body[1];
  EXPECT_EQ(sx(*s.value),
            "(- (+ (+ (+ (+ (+ (cast (->a (->next $p))) (* (cast arg1))) ([] (->name $p) 2)) "
            "(.a (* $p))) (sizeof)) (offsetof next)) (cast 0))");
  const ast::TypeTable& T = p.types;
  ASSERT_EQ(T.records.size(), 1u);
  const ast::Record& r = T.records[0];
  EXPECT_EQ(r.name, "struct s");
  EXPECT_EQ(r.size, 32u);
  EXPECT_EQ(r.align, 8u);
  ASSERT_EQ(r.fields.size(), 4u);
  EXPECT_EQ(r.fields[1].offset, 8u);
  EXPECT_EQ(T.name(r.fields[1].type), "struct s *");
  EXPECT_EQ(T.name(r.fields[2].type), "int8[8]");
  EXPECT_EQ(r.fields[3].offset, 24u);
  EXPECT_EQ(r.fields[3].bit_width, 3u);
  EXPECT_EQ(T.enumerators.at("B"), 4);
  EXPECT_EQ(T.name(T.typedefs.at("s_t")), "struct s");
  EXPECT_EQ(T.name(s.value->args[1]->cast_type), "struct s *");
}

TEST(ScriptParse, ExponentLiteral) {
  ast::Program p = parse_ok("BEGIN { @ = 1e6 + 3E2; }");
  EXPECT_EQ(sx(*p.actions[0].body[0].value), "(+ 1000000 300)");
}

TEST(ScriptParse, LowercaseBeginEndAndShortIntervals) {
  ast::Program p = parse_ok("begin { } end { } i:5s { } interval:100ms { } i:us:10 { }");
  ASSERT_EQ(p.actions.size(), 5u);
  EXPECT_EQ(p.actions[0].probes[0].probe.kind, Probe::Kind::begin);
  EXPECT_EQ(p.actions[1].probes[0].probe.kind, Probe::Kind::end);
  EXPECT_EQ(p.actions[2].probes[0].probe.interval_ns, 5'000'000'000u);
  EXPECT_EQ(p.actions[2].probes[0].probe.text, "interval:5s");
  EXPECT_EQ(p.actions[3].probes[0].probe.interval_ns, 100'000'000u);
  EXPECT_EQ(p.actions[4].probes[0].probe.interval_ns, 10'000u);
  auto bad = parse("i:5parsecs { }", "stdin");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message().find("parsecs is not an accepted unit of time"),
            std::string::npos)
      << bad.error().message();
}

}  // namespace
}  // namespace hotprobe::script
