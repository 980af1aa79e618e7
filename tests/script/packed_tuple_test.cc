// Named tuples (a=1, b="x") and tuples inside tuples, as current bpftrace has them: each
// is a copy of its elements laid out as C lays out a struct of them, printed
// { .a = 1, .b = x } and (1, x) (in JSON {"a": 1} and [1,"x"]), usable wherever a struct
// value is (variables, map values and keys, tuple elements, fields read back).
#include <gtest/gtest.h>

#include <string>

#include "script_harness.h"

namespace hotprobe::script {
namespace {

using harness::first_line;
using harness::Script;

TEST(ScriptPackedTuple, NamedAndNestedPrintAsCurrentBpftrace) {
  Script s(
      "BEGIN { $r = (a=1, b=\"hello\", c=(2, (x=100, y=\"z\"))); print($r); "
      "printf(\"%d %s %d\\n\", $r.a, $r.b, $r.c.1.x); $t = (1, (2, \"in\"), \"out\"); print($t); "
      "@[$r] = (\"bye\", (m=3, n=(4, 5))); @v = $r.c; }");
  ASSERT_TRUE(s.prog);
  s.hit(0);
  EXPECT_EQ(s.sink.out,
            "{ .a = 1, .b = hello, .c = (2, { .x = 100, .y = z }) }\n1 hello 100\n"
            "(1, (2, in), out)\n");
  EXPECT_EQ(s.maps(),
            "\n\n@[{ .a = 1, .b = hello, .c = (2, { .x = 100, .y = z }) }]: "
            "(bye, { .m = 3, .n = (4, 5) })\n@v: (2, { .x = 100, .y = z })\n");
}

TEST(ScriptPackedTuple, Json) {
  Script s("BEGIN { print((a=1, b=(2, \"x\"))); }", OutputFormat::json);
  ASSERT_TRUE(s.prog);
  s.hit(0);
  EXPECT_EQ(s.sink.out, "{\"type\": \"value\", \"data\": { \"a\": 1, \"b\": [2,\"x\"] }}\n");
}

TEST(ScriptPackedTuple, Errors) {
  EXPECT_EQ(first_line("BEGIN { $t = (a=1, 2); }"),
            "stdin:1:21-22: ERROR: syntax error, unexpected ), expecting NAME = VALUE (a named "
            "tuple names every element)");
  EXPECT_EQ(first_line("BEGIN { $t = (1, (a=\"" + std::string(130, 'x') + "\")); }"),
            "stdin:1:18-154: ERROR: A named tuple has 131 bytes, more than the 128 a copied value "
            "holds: make its strings or elements fewer or smaller");
}

}  // namespace
}  // namespace hotprobe::script
