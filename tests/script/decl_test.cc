// Current bpftrace's forms around C types: `let $x: TYPE = VALUE` declarations,
// container_of(PTR, TYPE, FIELD), buf() of an array read in place, and bit fields read
// as their bits (never sign-extended, as bpftrace masks them).
#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "script_harness.h"

namespace hotprobe::script {
namespace {

using harness::first_line;
using harness::Script;

struct Foo {
  std::int32_t m;
  std::int32_t n;
};
struct Holder {
  Foo* foos[2];
  std::uint8_t raw[4];
  std::int32_t words[2];
};
struct Bits {
  short a : 4, b : 8, c : 3, d : 1;
  int e : 9;
};

constexpr const char* kDefs =
    "struct Foo { int m; int n; }\n"
    "struct Holder { struct Foo *foos[2]; uint8_t raw[4]; int words[2]; }\n"
    "struct Bits { short a : 4, b : 8, c : 3, d : 1; int e : 9; }\n";

std::uint64_t addr(const void* p) {
  return reinterpret_cast<std::uint64_t>(p);
}

TEST(ScriptDecl, LetDeclaresConvertsAndCopies) {
  Foo f0{1, 123}, f1{2, 456};
  Holder h{{&f0, &f1}, {1, 2, 3, 4}, {-1, 7}};
  Script s(std::string(kDefs) +
           "uprobe:libc:getpid { let $h: struct Holder * = (struct Holder *)arg0;\n"
           " let $x: struct Foo *[2] = $h->foos; let $b: uint8 = 300; let $z: int32;\n"
           " let $later: struct Foo; $later = *$x[1];\n"
           " printf(\"%d %d %d %d %d\\n\", $x[0]->n, $x[1]->m, $b, $z, $later.n); }");
  ASSERT_TRUE(s.prog);
  s.hit(0, addr(&h));
  EXPECT_EQ(s.sink.out, "123 2 44 0 456\n");
}

TEST(ScriptDecl, LetErrors) {
  EXPECT_EQ(first_line("BEGIN { let $x: uint8 = \"text\"; }"),
            "stdin:1:25-31: ERROR: Cannot cast from 'string' to 'uint8' (only integers and "
            "pointers are cast)");
  EXPECT_EQ(first_line("BEGIN { let $x: struct Nope[0]; }"),
            "stdin:1:29-30: ERROR: syntax error, unexpected integer, expecting array size from 1 "
            "to 16777215");
}

TEST(ScriptDecl, ContainerOf) {
  Foo f{2, 3};
  Script s(std::string(kDefs) +
           "uprobe:libc:getpid { $n = (int32 *)arg0; $p = container_of($n, typeof(struct Foo), "
           "n); print(*$p); $q = container_of($n, struct Foo, n); printf(\"%d\\n\", $q->m); }");
  ASSERT_TRUE(s.prog);
  s.hit(0, addr(&f.n));
  EXPECT_EQ(s.sink.out, "{ .m = 2, .n = 3 }\n2\n");
  EXPECT_EQ(
      first_line(std::string(kDefs) +
                 "uprobe:libc:getpid { $p = container_of(arg0, struct Foo, nope); }")
          .substr(first_line(std::string(kDefs) +
                             "uprobe:libc:getpid { $p = container_of(arg0, struct Foo, nope); }")
                      .find("ERROR")),
      "ERROR: offsetof: 'struct Foo' has no field named 'nope'");
}

TEST(ScriptDecl, BufOfAnArrayInPlace) {
  Foo f0{};
  Holder h{{&f0, nullptr}, {9, 8, 7, 6}, {5, 0x0a0b}};
  Script s(std::string(kDefs) +
           "uprobe:libc:getpid { $h = (struct Holder *)arg0; printf(\"%r|%r|%r\\n\", "
           "buf($h->raw), buf($h->raw, 2), buf($h.words)); }");
  ASSERT_TRUE(s.prog);
  s.hit(0, addr(&h));
  EXPECT_EQ(s.sink.out,
            "\\x09\\x08\\x07\\x06|\\x09\\x08|\\x05\\x00\\x00\\x00\\x0b\\x0a\\x00\\x00\n");
  EXPECT_EQ(first_line(std::string(kDefs) + "uprobe:libc:getpid { $x = buf(*(struct Foo *)arg0); }")
                .substr(first_line(std::string(kDefs) +
                                   "uprobe:libc:getpid { $x = buf(*(struct Foo *)arg0); }")
                            .find("ERROR")),
            "ERROR: buf() expects a pointer or an array (struct Foo provided)");
}

TEST(ScriptDecl, BitFieldsAreTheirBits) {
  Bits b{};
  b.a = 1;
  b.b = static_cast<short>(217 - 256);  // the bits of 217
  b.c = 5 - 8;
  b.d = -1;
  b.e = 500 - 512;
  Script s(std::string(kDefs) +
           "uprobe:libc:getpid { $b = (struct Bits *)arg0; printf(\"%d %d %d %d %d\\n\", $b->a, "
           "$b->b, $b->c, $b->d, $b->e); print(*$b); }");
  ASSERT_TRUE(s.prog);
  s.hit(0, addr(&b));
  EXPECT_EQ(s.sink.out, "1 217 5 1 500\n{ .a = 1, .b = 217, .c = 5, .d = 1, .e = 500 }\n");
}

}  // namespace
}  // namespace hotprobe::script
