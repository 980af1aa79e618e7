// Tuples: the parse, the checker's errors (bpftrace 0.17's where it has them, with their
// positions) and the evaluator's output, text and json, through Program::compile with a
// fake Sink. Expected texts are bpftrace 0.17's (bpftrace -e / -f json on the same script).
#include <gtest/gtest.h>

#include <string>

#include "script/ast.h"
#include "script/check.h"
#include "script/eval.h"
#include "script/parser.h"
#include "script/program.h"

#include "fake_sink.h"

namespace hotprobe::script {
namespace {

// The output of BEGIN and END, then the maps.
std::string run(std::string_view src, OutputFormat fmt = OutputFormat::text,
                bool with_maps = false) {
  CompileOptions o;
  o.format = fmt;
  auto p = Program::compile(src, o);
  EXPECT_TRUE(p.ok()) << (p ? "" : p.error().message());
  if (!p) return "";
  FakeSink sink;
  (*p)->bind(&sink);
  (*p)->run_begin();
  (*p)->run_end();
  return with_maps ? sink.out + (*p)->print_maps() : sink.out;
}

std::string errors(std::string_view src) {
  auto r = parse_and_check(src, "stdin");
  return r.ok() ? "" : r.error().message();
}

TEST(Tuple, ParsesLiteralAndElementRead) {
  auto r = parse("BEGIN { $t = (1, \"a\", arg0 + 1); print($t.2); print((1)); }", "stdin");
  ASSERT_TRUE(r.ok()) << r.error().message();
  const auto& body = r->actions[0].body;
  ASSERT_EQ(body.size(), 3u);
  const ast::Expr& t = *body[0].value;
  EXPECT_EQ(t.kind, ast::Expr::Kind::tuple);
  EXPECT_EQ(t.args.size(), 3u);
  const ast::Expr& e = *body[1].expr->args[0];
  EXPECT_EQ(e.kind, ast::Expr::Kind::field);
  EXPECT_EQ(e.name, "2");
  // One parenthesized value is not a tuple.
  EXPECT_EQ(body[2].expr->args[0]->kind, ast::Expr::Kind::integer);
}

TEST(Tuple, PrintAndElementsAsBpftrace) {
  EXPECT_EQ(run("BEGIN { $t = (1, \"x\", -3); print($t); printf(\"%d %s\\n\", $t.0, $t.1);"
                " $u = $t; print($u.2); }"),
            "(1, x, -3)\n1 x\n-3\n");
}

TEST(Tuple, AssignmentEvaluatesEveryElementFirst) {
  // A swap through the tuple itself: the old elements are read before any is stored.
  EXPECT_EQ(run("BEGIN { $s = (1, \"a\", 2); $s = ($s.2, \"bb\", $s.0); print($s); }"),
            "(2, bb, 1)\n");
  EXPECT_EQ(run("BEGIN { $s = (1, \"a\"); $s = (3, \"a longer string\"); print($s.1); }"),
            "a longer string\n");
}

TEST(Tuple, ElementOfALiteral) {
  EXPECT_EQ(run("BEGIN { print((7, \"q\").1); }"), "q\n");
}

TEST(Tuple, ElementsAreEvaluatedInAStatement) {
  EXPECT_EQ(run("BEGIN { $i = 0; ($i++, $i++); print($i); }"), "2\n");
}

TEST(Tuple, Json) {
  EXPECT_EQ(run("BEGIN { $t = (1, \"x\\\"\", -3); print($t); }", OutputFormat::json),
            "{\"type\": \"value\", \"data\": [1,\"x\\\"\",-3]}\n");
}

TEST(Tuple, MapValuesPrintedAsBpftrace) {
  const char* kScript =
      "BEGIN { @t = (2, \"yy\"); @k[1, \"a\"] = (3, \"z\"); $v = (-5, \"v\"); @k[0, \"b\"] = $v;"
      " @p[tid] = (1, \"x\"); @p[tid] = (4, \"longer\"); }";
  const std::string text = run(kScript, OutputFormat::text, true);
  EXPECT_NE(text.find("@k[0, b]: (-5, v)\n@k[1, a]: (3, z)\n"), std::string::npos) << text;
  EXPECT_NE(text.find("@t: (2, yy)\n"), std::string::npos) << text;
  EXPECT_NE(text.find("]: (4, longer)\n"), std::string::npos) << text;
  const std::string json = run(kScript, OutputFormat::json, true);
  EXPECT_NE(json.find("{\"type\": \"map\", \"data\": {\"@t\": [2,\"yy\"]}}"), std::string::npos)
      << json;
  EXPECT_NE(json.find("\"1,a\": [3,\"z\"]"), std::string::npos) << json;
}

TEST(Tuple, MapValueErrors) {
  // Read back whole into a $variable; anywhere else a tuple is refused as any tuple is.
  EXPECT_EQ(errors("BEGIN { @t = (2, \"yy\"); $x = @t; }"), "");
  EXPECT_EQ(errors("BEGIN { @t = (2, \"yy\"); $x = @t + 1; }"),
            "stdin:1:30-32: ERROR: A tuple cannot be used here: a tuple is assigned to a "
            "$variable, printed with print(), or read by element ($t.0)\n"
            "BEGIN { @t = (2, \"yy\"); $x = @t + 1; }\n"
            "                             ~~");
  EXPECT_NE(errors("BEGIN { @t = (2, \"yy\"); @t = (1, 2); }")
                .find("Tuple type mismatch: (int64,string) != (int64,int64)."),
            std::string::npos);
  EXPECT_NE(errors("BEGIN { @t = 1; @t = (1, 2); }")
                .find("trying to assign value of type 'tuple' when map already contains "
                      "a value of type 'int64'"),
            std::string::npos);
  // Printed, cleared, deleted from and zeroed as any map.
  EXPECT_EQ(errors("BEGIN { @t[1] = (2, \"y\"); print(@t); delete(@t[1]); clear(@t); zero(@t); }"),
            "");
}

TEST(Tuple, IndexOutOfRange) {
  EXPECT_EQ(errors("BEGIN { $t = (1, 2); print($t.5); }"),
            "stdin:1:28-32: ERROR: Invalid tuple index: 5. Found 2 elements in tuple.\n"
            "BEGIN { $t = (1, 2); print($t.5); }\n"
            "                           ~~~~");
}

TEST(Tuple, TypeMismatch) {
  EXPECT_EQ(errors("BEGIN { $t = (1, 2); $t = (1, \"a\"); }"),
            "stdin:1:22-24: ERROR: Tuple type mismatch: (int64,int64) != (int64,string).\n"
            "BEGIN { $t = (1, 2); $t = (1, \"a\"); }\n"
            "                     ~~");
  EXPECT_NE(errors("BEGIN { $t = (1, 2); $t = (1, 2, 3); }").find("Tuple type mismatch"),
            std::string::npos);
  EXPECT_NE(errors("BEGIN { $t = (1, 2); $t = 3; }").find("Type mismatch for $t"),
            std::string::npos);
  EXPECT_NE(errors("BEGIN { $t = (1, 2); $t += 1; }").find("(it holds a tuple)"),
            std::string::npos);
}

TEST(Tuple, AsAMapKeyItsElementsAreTheKeysParts) {
  // Current bpftrace's keying and printing: @m[(1, "x")] is @m[1, x].
  EXPECT_EQ(errors("BEGIN { @m[(1,2)] = 5; $t = (3, 4); @m[$t] = 6; @m[7, 8] = 9; }"), "");
  EXPECT_NE(errors("BEGIN { @m[(1,2)] = 5; @m[1] = 6; }").find("Argument mismatch for @m"),
            std::string::npos);
  // A tuple read from a map is not flattened: bpftrace 0.17's refusal and way out.
  EXPECT_EQ(errors("BEGIN { @t = (1, 2); @m[@t] = 5; }"),
            "stdin:1:25-27: ERROR: tuple cannot be used as a map key. Try a multi-key "
            "associative array instead (eg `@map[$1, $2] = ...)`.\n"
            "BEGIN { @t = (1, 2); @m[@t] = 5; }\n"
            "                        ~~");
}

TEST(Tuple, RefusedWhereAValueIsAnIntegerOrString) {
  const std::string kWhere = "A tuple cannot be used here";
  for (const char* src :
       {"BEGIN { $t = (1, 2); printf(\"%d\", $t); }", "BEGIN { $t = (1, 2); if ($t) {} }",
        "BEGIN { $x = (1, 2) + 1; }", "BEGIN { $x = 1 ? (1, 2) : (3, 4); }"}) {
    const std::string e = errors(src);
    EXPECT_NE(e.find(kWhere), std::string::npos) << src << "\n" << e;
  }
  EXPECT_NE(errors("BEGIN { $x = 1; print($x.0); }")
                .find("ERROR: Can not access index '0' on expression of type 'int64'"),
            std::string::npos);
}

TEST(Tuple, TooManyElements) {
  std::string src = "BEGIN { $t = (0";
  for (int k = 1; k <= 16; ++k)
    src += ", " + std::to_string(k);
  src += "); }";
  EXPECT_NE(errors(src).find("A tuple has at most 16 elements (17 given)"), std::string::npos);
}

}  // namespace
}  // namespace hotprobe::script
