// Arrays and structs as values: `$a = $s->arr`, `@m = *$p`, as map values and keys, in
// tuples, print(), == and !=, reading an element or field of the copy, macaddr of a
// 6-byte member; printed as bpftrace prints them, in text and JSON. The reads go through
// the registers of a fake hit pointing at structs of this test program.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <string>

#include "script_harness.h"

namespace hotprobe::script {
namespace {

using harness::first_line;
using harness::Script;

struct A {
  std::int32_t x[4];
};
struct B {
  std::int32_t y[2][2];
};
struct Foo {
  std::int32_t m;
  std::int32_t n;
  char name[8];
};

constexpr const char* kDefs =
    "struct A { int x[4]; }\n"
    "struct B { int y[2][2]; }\n"
    "struct Foo { int m; int n; char name[8]; }\n";

std::uint64_t addr(const void* p) {
  return reinterpret_cast<std::uint64_t>(p);
}

TEST(ScriptValues, ArrayIntoAVariableAndBack) {
  A a{{1, 2, 3, -4}};
  Script s(std::string(kDefs) +
           "uprobe:libc:getpid { $a = ((struct A *)arg0)->x; print($a); printf(\"%d %d\\n\", "
           "$a[0], $a[3]); $i = 2; printf(\"%d\\n\", $a[$i]); }");
  ASSERT_TRUE(s.prog);
  s.hit(0, addr(&a));
  EXPECT_EQ(s.sink.out, "[1,2,3,-4]\n1 -4\n3\n");
}

TEST(ScriptValues, MultiDimensionalArrays) {
  B b{{{5, 6}, {7, 8}}};
  Script s(std::string(kDefs) +
           "uprobe:libc:getpid { $b = ((struct B *)arg0)->y; printf(\"%d\\n\", $b[1][0]);\n"
           " @b = $b; @c[0] = $b; @x[$b] = 1; printf(\"%d\\n\", @c[0][1][1]); }");
  ASSERT_TRUE(s.prog);
  s.hit(0, addr(&b));
  EXPECT_EQ(s.sink.out, "7\n8\n");
  EXPECT_EQ(s.prog->print_maps(),
            "\n\n@b: [[5,6],[7,8]]\n@c[0]: [[5,6],[7,8]]\n@x[[[5,6],[7,8]]]: 1\n");
}

TEST(ScriptValues, StructsAsMapValuesKeysAndTupleElements) {
  Foo f{2, 3, "ab"};
  Script s(std::string(kDefs) +
           "uprobe:libc:getpid { $f = *((struct Foo *)arg0); @v = $f; @k[$f, 1] = 5;\n"
           " @t = (0, $f); $t = ($f, \"s\"); print($t); print($f.n + $t.0.m); }");
  ASSERT_TRUE(s.prog);
  s.hit(0, addr(&f));
  EXPECT_EQ(s.sink.out, "({ .m = 2, .n = 3, .name = ab }, s)\n5\n");
  EXPECT_EQ(s.prog->print_maps(),
            "\n\n@k[{.m=2,.n=3,.name=ab}, 1]: 5\n"
            "@t: (0, { .m = 2, .n = 3, .name = ab })\n"
            "@v: { .m = 2, .n = 3, .name = ab }\n");
}

TEST(ScriptValues, Json) {
  Foo f{2, 3, "ab"};
  A a{{1, 2, 3, 4}};
  Script s(std::string(kDefs) +
               "uprobe:libc:getpid { $f = *((struct Foo *)arg0); print($f); @ = (0, $f);\n"
               " @a = ((struct A *)arg1)->x; }",
           OutputFormat::json);
  ASSERT_TRUE(s.prog);
  s.hit(0, addr(&f), addr(&a));
  EXPECT_EQ(s.sink.out,
            "{\"type\": \"value\", \"data\": { \"m\": 2, \"n\": 3, \"name\": \"ab\" }}\n");
  EXPECT_EQ(s.prog->print_maps(),
            "{\"type\": \"map\", \"data\": {\"@\": [0,{ \"m\": 2, \"n\": 3, \"name\": \"ab\" }]}}\n"
            "{\"type\": \"map\", \"data\": {\"@a\": [1,2,3,4]}}\n");
}

TEST(ScriptValues, CompareArrays) {
  A a{{1, 2, 3, 4}}, same{{1, 2, 3, 4}}, other{{1, 2, 3, 5}};
  Script s(std::string(kDefs) +
           "uprobe:libc:getpid { $a = (struct A *)arg0; $b = (struct A *)arg1;\n"
           " printf(\"%d %d\\n\", $a->x == $b->x, $a->x != $b->x); }");
  ASSERT_TRUE(s.prog);
  s.hit(0, addr(&a), addr(&same));
  s.hit(0, addr(&a), addr(&other));
  EXPECT_EQ(s.sink.out, "1 0\n0 1\n");
}

TEST(ScriptValues, AnUnreadableCopyIsZeros) {
  Script s(std::string(kDefs) + "uprobe:libc:getpid { $a = ((struct A *)arg0)->x; print($a); }");
  ASSERT_TRUE(s.prog);
  s.hit(0, 16);
  EXPECT_EQ(s.sink.out, "[0,0,0,0]\n");
  EXPECT_EQ(s.prog->read_faults(), 1u);
}

TEST(ScriptValues, MacaddrOfASixByteMember) {
  struct Mac {
    const char* ignore;
    unsigned char mac[6];
  } m{nullptr, {5, 4, 3, 2, 1, 2}};
  Script s(
      "struct MyStruct { const char* ignore; char mac[6]; }\n"
      "uprobe:libc:getpid { $s = (struct MyStruct *)arg0; printf(\"P: %s\\n\", macaddr($s->mac)); "
      "}");
  ASSERT_TRUE(s.prog);
  s.hit(0, addr(&m));
  EXPECT_EQ(s.sink.out, "P: 05:04:03:02:01:02\n");
}

TEST(ScriptValues, GrammarOfTheCases) {
  // The last member without `;` (nested too), an index after a map access, sizeof of a
  // tuple laid out as bpftrace lays it out.
  struct {
    std::int32_t m[1];
    std::int32_t n;
  } f{{2}, 3};
  A a{{1, 2, 3, 4}};
  Script s(
      "struct Foo { struct { int m[1] } y; struct { int n; } a }\n"
      "struct A { int x[4] }\n"
      "uprobe:libc:getpid { $f = *((struct Foo *)arg0); print($f); @a[0] = (struct A *)arg1;\n"
      " @x[1] = ((struct A *)arg1)->x; printf(\"%d %d\\n\", @a[0]->x[1], @x[1][2]);\n"
      " print(sizeof(((int32)1, $f))); print(sizeof(((int8)1, (int64)1, (int8)1, (int64)1))); }");
  ASSERT_TRUE(s.prog);
  s.hit(0, addr(&f), addr(&a));
  EXPECT_EQ(s.sink.out, "{ .y = { .m = [2] }, .a = { .n = 3 } }\n2 3\n12\n32\n");
}

TEST(ScriptValues, TuplesReadBackFromMaps) {
  A a{{1, 2, 3, 4}};
  Script s(std::string(kDefs) +
           "uprobe:libc:getpid { @t[1] = (7, \"x\", ((struct A *)arg0)->x); @u[tid] = (8, \"y\");\n"
           " $t = @t[1]; print($t); print(@t[1]); printf(\"%d %s %d %d %s\\n\", @t[1].0, @t[1].1,\n"
           " @t[1].2[3], @u[tid].0, @u[tid].1); $m = @t[2]; print($m); }");
  ASSERT_TRUE(s.prog);
  s.hit(0, addr(&a));
  EXPECT_EQ(s.sink.out, "(7, x, [1,2,3,4])\n(7, x, [1,2,3,4])\n7 x 4 8 y\n(0, , [0,0,0,0])\n");
}

TEST(ScriptValues, TupleKeysWithACopy) {
  A a{{1, 2, 3, 4}};
  Script s(
      std::string(kDefs) +
      "uprobe:libc:getpid { $t = (1, \"hello\", ((struct A *)arg0)->x); @[$t] = (2, \"bye\");\n"
      " @k[(3, \"x\")] = 4; }");
  ASSERT_TRUE(s.prog);
  s.hit(0, addr(&a));
  EXPECT_EQ(s.prog->print_maps(), "\n\n@[1, hello, [1,2,3,4]]: (2, bye)\n@k[3, x]: 4\n");
}

TEST(ScriptValues, PointerIncrementStepsAnElement) {
  // ($c++)->b walks an array of structs, as C's p++ (bpftrace's struct_walk case).
  struct C {
    std::uint32_t a;
    std::uint64_t b;
  } cs[3] = {{1, 10}, {2, 20}, {3, 30}};
  Script s(
      "struct C { uint32_t a; uint64_t b; }\n"
      "uprobe:libc:getpid { $c = (struct C *)arg0; $i = 3;\n"
      " while ($i-- > 0) { @a += $c->a; @b += ($c++)->b; } $c--; print($c->a); }");
  ASSERT_TRUE(s.prog);
  s.hit(0, addr(cs));
  EXPECT_EQ(s.sink.out, "3\n");
  EXPECT_EQ(s.prog->print_maps(), "\n\n@a: 6\n@b: 60\n");
}

TEST(ScriptValues, Errors) {
  EXPECT_EQ(
      first_line(std::string(kDefs) +
                 "uprobe:libc:getpid { $a = ((struct A *)arg0)->x; $a = ((struct B *)arg0)->y; }"),
      "stdin:4:55-76: ERROR: Type mismatch for $a: trying to assign value of type "
      "'int32[2][2]' when variable already contains a value of type 'int32[4]'");
  EXPECT_EQ(first_line(std::string(kDefs) +
                       "uprobe:libc:getpid { $a = (struct A *)arg0; $x = $a->x[4]; }"),
            "stdin:4:56-57: ERROR: the index 4 is out of bounds for array of size 4");
  EXPECT_EQ(first_line("struct D { int x; int y[0]; }\n"
                       "uprobe:libc:getpid { $a = (struct D *)arg0; @y = $a->y[0]; }"),
            "");
  EXPECT_EQ(first_line(std::string(kDefs) +
                       "uprobe:libc:getpid { $a = (struct A *)arg0; if ($a->x < $a->x) {} }"),
            "stdin:4:49-62: ERROR: The < operator can not be used on 'int32[4]' values (only == "
            "and != compare arrays and structs)");
  EXPECT_EQ(
      first_line("struct Big { long v[130]; }\n"
                 "uprobe:libc:getpid { $a = *(struct Big *)arg0; }"),
      "stdin:2:27-46: ERROR: 'struct Big' (1040 bytes) cannot be used as a value: an array or "
      "struct copied whole has 1 to 1024 bytes; read one of its fields (.name)");
}

}  // namespace
}  // namespace hotprobe::script
