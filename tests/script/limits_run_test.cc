// The language at bpftrace's limits end to end: the built hotprobe runs
// fixture/limits_target.c, whose clear() gets a struct with a 160-byte array of structs
// and a 32-byte array, and whose pair(x, y) runs for six pairs. The copies over 128 bytes
// go into a $variable, a map value and a map key (and so through the shared maps region
// that hotprobe prints from), buf() of the 32-byte member prints whole, for over a map of
// two keys gives $kv.0 as the tuple of them, and a variable index past an array's end
// prints bpftrace's warning.
#include <gtest/gtest.h>

#include <string>

#include "support/run_command.h"

namespace {

using hp::test::hotprobe;

const std::string kDefs =
    "struct T { uint32_t a; uint32_t b[2]; };\n"
    "struct W { uint32_t a; struct T t; };\n"
    "struct C { uint32_t a; void *b; struct W w[10]; uint64_t f[4]; };\n";
const std::string kClear = std::string("uprobe:") + HP_LIMITS_TARGET + ":clear";
const std::string kPair = std::string("uprobe:") + HP_LIMITS_TARGET + ":pair";

TEST(LimitsRun, WideCopiesBufAndTheOutOfBoundsWarning) {
  const std::string script =
      kDefs + kClear +
      " { $c = (struct C *)arg0; $w = $c->w; @w[0] = $c->w; @[$c->w] = 42;\n"
      " printf(\"%d %d %d %d\\n\", $w[2].a, @w[0][3].t.a, @w[0][4].t.b[1], @[$c->w]);\n"
      " printf(\"%r\\n\", buf($c->f)); $i = 10; @oob = $c->w[$i].a; }";
  auto r = hotprobe({"run", "-e", script, "--", HP_LIMITS_TARGET});
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string hex =
      "\\x0d\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x0e\\x00\\x00\\x00\\x00\\x00\\x00\\x00"
      "\\x0f\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x10\\x00\\x00\\x00\\x00\\x00\\x00\\x00";
  EXPECT_NE(r.out.find("102 3 92 42\n" + hex + "\n"), std::string::npos) << r.out;
  // On stderr, as bpftrace prints its runtime warnings.
  EXPECT_NE(r.err.find(": WARNING: Array access out of bounds. This can lead to unexpected "
                       "results.\n"),
            std::string::npos)
      << r.err;
  EXPECT_EQ(r.out.find("WARNING"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("{.a=109,.t={.a=9,.b=[0,82]}}]]: 42\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("@w[0]: [{ .a = 100, .t = { .a = 0, .b = [0,100] } },"), std::string::npos)
      << r.out;
}

TEST(LimitsRun, ForOverAMapOfTwoKeys) {
  const std::string script =
      kPair +
      " { @m[arg0, arg1] = arg0 * 10 + arg1; }\n"
      "END { $n = 0; for ($kv : @m) { $n += $kv.0.0 * 100 + $kv.0.1 * 10 + $kv.1; }\n"
      " printf(\"%d %d\\n\", $n, len(@m)); clear(@m); }";
  auto r = hotprobe({"run", "-e", script, "--", HP_LIMITS_TARGET});
  ASSERT_EQ(r.code, 0) << r.err;
  // Sum over x < 3, y < 2 of 100x + 10y + (10x + y) = 110 * 6 + 11 * 3 = 693.
  EXPECT_NE(r.out.find("693 6\n"), std::string::npos) << r.out;
}

// printf's %r of a buf() at bpftrace's 64-byte limit: every byte's \xNN text (256
// characters, more than a string argument holds).
TEST(LimitsRun, PrintfShowsA64ByteBufWhole) {
  auto r =
      hotprobe({"run", "-e", "uprobe:libc:write { printf(\"<%r>\\n\", buf(arg1, 64)); exit(); }",
                "--", "/usr/bin/head", "-c", "64", "/dev/zero"});
  ASSERT_EQ(r.code, 0) << r.err;
  std::string zeros;
  for (int i = 0; i < 64; ++i)
    zeros += "\\x00";
  EXPECT_NE(r.out.find("<" + zeros + ">\n"), std::string::npos) << r.out;
}

}  // namespace
