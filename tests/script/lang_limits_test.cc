// The language at bpftrace's limits: buf() up to bpftrace's 64 bytes (a value of its
// bytes, printed as \xNN text), arrays and structs over 128 bytes copied whole (as
// $variables, map values and keys, compared, printed, read by field), for ($kv : @m) over
// a map of several keys ($kv.0 the tuple of the key parts, as bpftrace main defines it)
// and bpftrace's runtime warning for an array index out of bounds. Hits are fake ones whose
// registers point at structs of this test program.
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

// bpftrace 0.17's struct_array case: struct W[10] is 160 bytes.
struct T {
  std::uint32_t a;
  std::uint32_t b[2];
};
struct W {
  std::uint32_t a;
  T t;
};
struct C {
  std::uint32_t a;
  void* b;
  W w[10];
};
constexpr const char* kWide =
    "struct T { uint32_t a; uint32_t b[2]; };\n"
    "struct W { uint32_t a; struct T t; };\n"
    "struct C { uint32_t a; void *b; struct W w[10]; };\n";

C wide_fixture() {
  C c{};
  for (std::uint32_t i = 0; i < 10; ++i) {
    c.w[i].a = 100 + i;
    c.w[i].t.a = i;
    c.w[i].t.b[1] = 100 - 2 * i;
  }
  return c;
}

TEST(ScriptLangLimits, WideCopyInAVariableAMapValueAndAKey) {
  const C c = wide_fixture();
  Script s(std::string(kWide) +
           "uprobe:libc:getpid { $c = (struct C *)arg0; $n = 7; $w = $c->w; @w[0] = $c->w;\n"
           " @[$c->w] = 42; $m = 8;\n"
           " printf(\"%d %d %d %d %d %d\\n\", $w[0].a, $w[9].a, @w[0][1].t.a, @w[0][4].t.b[1],"
           " @[$c->w], $n + $m); $i = 9; printf(\"%d\\n\", $w[$i].t.a); }");
  ASSERT_TRUE(s.prog);
  s.hit(0, addr(&c));
  EXPECT_EQ(s.sink.out, "100 109 1 92 42 15\n9\n");
  const std::string maps = s.maps();
  EXPECT_NE(maps.find("@[[{.a=100,.t={.a=0,.b=[0,100]}},{.a=101,"), std::string::npos) << maps;
  EXPECT_NE(maps.find("{.a=109,.t={.a=9,.b=[0,82]}}]]: 42\n"), std::string::npos) << maps;
  EXPECT_NE(maps.find("@w[0]: [{ .a = 100, .t = { .a = 0, .b = [0,100] } },{ .a = 101, "),
            std::string::npos)
      << maps;
  EXPECT_NE(maps.find("{ .a = 109, .t = { .a = 9, .b = [0,82] } }]\n"), std::string::npos) << maps;
}

TEST(ScriptLangLimits, WideCopiesCompareAndPrint) {
  C c = wide_fixture();
  C d = wide_fixture();
  d.w[9].t.b[1] = 1;  // the last bytes differ
  Script s(std::string(kWide) +
           "uprobe:libc:getpid { $x = ((struct C *)arg0)->w; $y = ((struct C *)arg1)->w;\n"
           " printf(\"%d %d\\n\", $x == $y, $x != $y); @t[tid] = $x; print(@t[tid][9].a); }");
  ASSERT_TRUE(s.prog);
  s.hit(0, addr(&c), addr(&c));
  s.hit(0, addr(&c), addr(&d));
  EXPECT_EQ(s.sink.out, "1 0\n109\n0 1\n109\n");
  Script p(std::string(kWide) + "uprobe:libc:getpid { print(((struct C *)arg0)->w); }",
           OutputFormat::json);
  ASSERT_TRUE(p.prog);
  p.hit(0, addr(&c));
  EXPECT_EQ(p.sink.out.rfind("{\"type\": \"value\", \"data\": [{ \"a\": 100, ", 0), 0u)
      << p.sink.out;
  EXPECT_NE(p.sink.out.find("{ \"a\": 109, \"t\": { \"a\": 9, \"b\": [0,82] } }]}\n"),
            std::string::npos)
      << p.sink.out;
}

TEST(ScriptLangLimits, WideCopyErrors) {
  const std::string defs = kWide;
  EXPECT_EQ(first_line(defs + "uprobe:libc:getpid { print((1, ((struct C *)arg0)->w)); }"),
            "stdin:4:32-53: ERROR: A tuple element copied whole has at most 128 bytes (160 "
            "given): put one of its fields in the tuple, or keep it in a variable");
  EXPECT_EQ(
      first_line(defs + "uprobe:libc:getpid { $c = (struct C *)arg0; $w = arg1 ? $c->w : $c->w; }"),
      "stdin:4:50-70: ERROR: A ternary chooses between copies of at most 128 bytes (160 "
      "here): use if/else and assign the copy in each branch");
  EXPECT_EQ(
      first_line(defs + "uprobe:libc:getpid { @m[1] = ((struct C *)arg0)->w; for ($kv : @m) { } }"),
      "stdin:4:64-66: ERROR: for ($kv : @m): @m holds a copy of 160 bytes; hotprobe "
      "iterates maps whose keys and values have at most 128: read @m[key] by its key "
      "instead");
}

// bpftrace 0.17's call.buf case: buf() of a 32-byte array member (uint64_t f[4]).
struct MyStruct {
  const char* a;
  char b[4];
  std::uint8_t c[4];
  std::int32_t d[4];
  std::uint16_t e[4];
  std::uint64_t f[4];
};

TEST(ScriptLangLimits, BufOfAThirtyTwoByteMember) {
  const char nine[] = "\x09\x08\x07\x06";
  MyStruct m{nine, {5, 4, 3, 2}, {1, 2, 3, 4}, {5, 6, 7, 8}, {9, 10, 11, 12}, {13, 14, 15, 16}};
  Script s(
      "struct MyStruct { const char* a; char b[4]; uint8_t c[4]; int d[4]; uint16_t e[4]; "
      "uint64_t f[4] };\n"
      "uprobe:libc:getpid { $s = (struct MyStruct *)arg0; printf(\"P: %r-%r-%r\\n\", "
      "buf($s->a, 4), buf($s->b, 4), buf($s->f)); }");
  ASSERT_TRUE(s.prog);
  s.hit(0, addr(&m));
  EXPECT_EQ(s.sink.out,
            "P: \\x09\\x08\\x07\\x06-\\x05\\x04\\x03\\x02-"
            "\\x0d\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x0e\\x00\\x00\\x00\\x00\\x00\\x00\\x00"
            "\\x0f\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x10\\x00\\x00\\x00\\x00\\x00\\x00\\x00\n");
}

TEST(ScriptLangLimits, BufOfSixtyFourBytesAsAKeyAValueAndPrinted) {
  unsigned char bytes[64];
  for (int i = 0; i < 64; ++i)
    bytes[i] = static_cast<unsigned char>(i < 60 ? 'a' + i % 26 : i - 60);
  Script s(
      "uprobe:libc:getpid { @k[buf(arg0, 64)] = count(); @v = buf(arg0, 64); "
      "$b = buf(\"ok_key\", 8); print($b); @s[buf(\"ok\", 2), 1] = 1; }");
  ASSERT_TRUE(s.prog);
  s.hit(0, addr(bytes));
  EXPECT_EQ(s.sink.out, "ok_key\\x00\\x00\n");
  // A buffer kept in a $variable or a map is printf's %r argument as buf() itself is.
  Script p(
      "uprobe:libc:getpid { $b = buf(arg0, 3); @b = buf(arg0, 2); @t[tid] = buf(arg0, 1);\n"
      " printf(\"%r|%s|%r|%r\\n\", $b, $b, @b, @t[tid]); }");
  ASSERT_TRUE(p.prog);
  const unsigned char abc[] = {'a', 0, 'c'};
  p.hit(0, addr(abc));
  EXPECT_EQ(p.sink.out, "a\\x00c|a\\x00c|a\\x00|a\n");
  const std::string text =
      "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefgh"
      "\\x00\\x01\\x02\\x03";
  EXPECT_EQ(s.maps(), "\n\n@k[" + text + "]: 1\n@s[ok, 1]: 1\n@v: " + text + "\n");
  EXPECT_EQ(first_line("uprobe:libc:getpid { @[buf(arg0, 65)] = count(); }"),
            "stdin:1:34-36: ERROR: buf(): the length is 0 to 64 bytes (65 given; bpftrace's "
            "BPFTRACE_STRLEN): read it in parts");
  EXPECT_EQ(first_line("struct A { int x[4]; }\n"
                       "uprobe:libc:getpid { $r = ((struct A *)arg0)->x; $x = buf($r, 4); }"),
            "stdin:2:59-61: ERROR: buf() expects a pointer, a string or an array read in place "
            "(array or struct provided: take buf() of the member, buf($p->arr))");
}

// config = { stack_mode = raw } keys a map by ustack(raw): the return addresses, printed
// as bpftrace prints a raw stack (each in hex on a line of its own).
TEST(ScriptLangLimits, RawStackAsAMapKey) {
  Script s(
      "config = { stack_mode = raw }\nuprobe:libc:getpid { @c[ustack] = 1; @d[ustack(raw, 2), 7] = "
      "2; }");
  ASSERT_TRUE(s.prog);
  s.hit(0);  // the fake hit's registers: pc 0, no frame pointer (one frame, 0)
  const std::string maps = s.maps();
  EXPECT_NE(maps.find("@c[\n0\n]: 1\n"), std::string::npos) << maps;
  EXPECT_NE(maps.find("@d[\n0\n, 7]: 2\n"), std::string::npos) << maps;
  EXPECT_EQ(first_line("uprobe:libc:getpid { @c[ustack(build_id)] = 1; }"),
            "stdin:1:32-40: ERROR: ustack(build_id) is printed as a value here (printf(\"%s\", "
            "ustack(build_id))), not as a map key: key the map by ustack, ustack(perf) or "
            "ustack(raw)");
}

}  // namespace
}  // namespace hotprobe::script
