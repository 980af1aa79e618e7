// The language at bpftrace's limits: for ($kv : @m) over a map of several keys ($kv.0 the
// tuple of the key parts, as bpftrace main defines it) and bpftrace's runtime warning for
// an array index out of bounds. Hits are fake ones whose registers point at structs of
// this test program.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>

#include "script_harness.h"

namespace hotprobe::script {
namespace {

using harness::first_line;
using harness::Script;

std::uint64_t addr(const void* p) {
  return reinterpret_cast<std::uint64_t>(p);
}

TEST(ScriptLangLimits, ForOverAMapOfTwoIntegerKeys) {
  Script s(
      "uprobe:libc:getpid { @m[arg0, arg1] = arg0 + arg1; }\n"
      "uprobe:libc:getppid { for ($kv : @m) {\n"
      " printf(\"key: (%d,%d), val: %d\\n\", $kv.0.0, $kv.0.1, $kv.1); print($kv); } }");
  ASSERT_TRUE(s.prog);
  s.hit(0, 16, 17);
  s.hit(1);
  EXPECT_EQ(s.sink.out, "key: (16,17), val: 33\n((16, 17), 33)\n");
}

TEST(ScriptLangLimits, ForOverMixedKeysKeepsEachPart) {
  Script s(
      "uprobe:libc:getpid { @c[\"ab\", arg0, \"xyz\"] = count(); }\n"
      "uprobe:libc:getppid { $n = 0; for ($kv : @c) { $n += $kv.0.1 * $kv.1;\n"
      " printf(\"%s %s\\n\", $kv.0.0, $kv.0.2); } print($n); }");
  ASSERT_TRUE(s.prog);
  s.hit(0, 5);
  s.hit(0, 5);
  s.hit(1);
  EXPECT_EQ(s.sink.out, "ab xyz\n10\n");
}

TEST(ScriptLangLimits, ForOverSeveralKeysErrors) {
  EXPECT_EQ(first_line("uprobe:libc:getpid { @m[ustack, 1] = count(); for ($kv : @m) { } }"),
            "stdin:1:58-60: ERROR: for ($kv : @m): @m is keyed by [ustack, int64]; hotprobe "
            "iterates maps whose key parts are integers, strings, arrays or structs");
  EXPECT_EQ(
      first_line("uprobe:libc:getpid { @m[str(arg0), str(arg1), 1] = 1; for ($kv : @m) "
                 "{ } }"),
      "stdin:1:66-68: ERROR: for ($kv : @m): @m's key parts ([string, string, int64]) "
      "make a tuple of 136 bytes, more than the 128 a copied value holds: key the map by fewer "
      "or smaller strings");
}

struct A {
  std::int32_t x[4];
};

TEST(ScriptLangLimits, IndexOutOfBoundsWarnsAndReadsOn) {
  A a{{1, 2, 3, 4}};
  Script s(
      "struct A { int x[4]; }\n"
      "uprobe:libc:getpid { $a = (struct A *)arg0; @x = $a->x[arg1]; }");
  ASSERT_TRUE(s.prog);
  s.hit(0, addr(&a), 3);
  EXPECT_EQ(s.sink.out, "");
  s.hit(0, addr(&a), 4);
  EXPECT_EQ(s.sink.out,
            "-e:2:50-61: WARNING: Array access out of bounds. This can lead to unexpected "
            "results.\n"
            "uprobe:libc:getpid { $a = (struct A *)arg0; @x = $a->x[arg1]; }\n"
            "                                                 ~~~~~~~~~~~\n");
}

TEST(ScriptLangLimits, IndexOutOfBoundsOfACopy) {
  A a{{1, 2, 3, 4}};
  Script s(
      "struct A { int x[4]; }\n"
      "uprobe:libc:getpid { $c = ((struct A *)arg0)->x; print($c[arg1]); }",
      OutputFormat::json);
  ASSERT_TRUE(s.prog);
  s.hit(0, addr(&a), 1);
  s.hit(0, addr(&a), static_cast<std::uint64_t>(-1));
  EXPECT_EQ(s.sink.out,
            "{\"type\": \"value\", \"data\": 2}\n"
            "{\"type\": \"runtime_error\", \"msg\": \"Array access out of bounds. This can lead "
            "to unexpected results.\", \"filename\": \"-e\", \"line\": 2, \"col\": 56}\n"
            "{\"type\": \"value\", \"data\": 0}\n");
}

}  // namespace
}  // namespace hotprobe::script
