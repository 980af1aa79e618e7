// C types in scripts: integer casts with bpftrace's truncation and sign rules, struct/union/
// enum definitions and their layout, field access through pointers, arrays, bit fields,
// pointer arithmetic, sizeof/offsetof, and fault-safe reads of bad pointers. The reads go
// through the registers of a fake hit pointing at structs of this test program.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "script/ast.h"
#include "script/check.h"
#include "script/eval.h"
#include "script/program.h"

#include "script_harness.h"

namespace hotprobe::script {
namespace {

using harness::errors;
using harness::first_line;
using harness::Script;

// The same layout as kDefs below, compiled by the C++ compiler: the script's layout must
// agree with it.
struct Inner {
  std::int16_t x;
  std::uint8_t y;
};
struct Node {
  std::int32_t id;
  char name[16];
  Inner in;
  std::int64_t vals[3];
  Node* next;
  unsigned flag : 1;
  signed level : 4;
  unsigned rest : 11;
  union {
    std::uint32_t u32;
    std::uint8_t bytes[4];
  } u;
};

constexpr const char* kDefs =
    "struct inner { short x; unsigned char y; };\n"
    "struct node {\n"
    "  int id;\n"
    "  char name[16];\n"
    "  struct inner in;\n"
    "  long vals[3];\n"
    "  struct node *next;\n"
    "  unsigned int flag : 1;\n"
    "  signed int level : 4;\n"
    "  unsigned int rest : 11;\n"
    "  union { uint32 u32; uint8 bytes[4]; } u;\n"
    "};\n"
    "enum color { RED, GREEN = 5, BLUE };\n"
    "typedef struct node node_t;\n";

TEST(ScriptCTypes, CastsTruncateAndExtend) {
  Script s(
      "BEGIN { printf(\"%d %d %d %d %d %d %d\\n\", (uint8)300, (int8)200, (uint16)-1, "
      "(int16)40000, (uint32)-1, (int32)4294967295, (int64)(uint32)-2);\n"
      " printf(\"%u %ld\\n\", (uint32)-1, (uint32)-1); print((uint32)-1); print((int8)200); }");
  ASSERT_TRUE(s.prog);
  s.prog->run_begin();
  // bpftrace 0.17's output for the same script (%d prints 32 bits, as C's printf).
  EXPECT_EQ(s.sink.out, "44 -56 65535 -25536 -1 -1 -2\n4294967295 4294967295\n4294967295\n-56\n");
}

TEST(ScriptCTypes, OrderingIsUnsignedWhenAnOperandIsUnsigned) {
  // bpftrace 0.17 prints "1 1 0 1 0" for this script: signed only when both sides are.
  // Chains of 8 or more operators fold into one node: the same rule there.
  Script s(
      "BEGIN { printf(\"%d %d %d %d %d\\n\", (uint32)-1 > 5, (uint64)-1 > 5, -1 > 5, "
      "(uint64)-1 / 2 > 0, (int8)-1 < (uint8)1);\n"
      " $a = (uint64)-1; printf(\"%d %d\\n\", $a > 1 + 0 + 0 + 0 + 0 + 0 + 0 + 0 + 0, "
      "(((((((($a + 0) + 0) + 0) + 0) + 0) + 0) + 0) > 1) > 0); }");
  ASSERT_TRUE(s.prog);
  s.prog->run_begin();
  EXPECT_EQ(s.sink.out, "1 1 0 1 0\n1 1\n");
}

TEST(ScriptCTypes, LayoutMatchesTheCompiler) {
  std::string src = std::string(kDefs) +
                    "BEGIN { printf(\"%d %d %d %d %d %d %d %d %d\\n\", sizeof(struct node), "
                    "offsetof(struct node, name), offsetof(struct node, in.y), "
                    "offsetof(struct node, vals), offsetof(struct node, next), "
                    "offsetof(struct node, u), sizeof(struct inner), sizeof(node_t *), "
                    "sizeof(uint16)); }";
  Script s(src);
  ASSERT_TRUE(s.prog);
  s.prog->run_begin();
  char want[256];
  std::snprintf(want, sizeof want, "%zu %zu %zu %zu %zu %zu %zu 8 2\n", sizeof(Node),
                offsetof(Node, name), offsetof(Node, in) + offsetof(Inner, y), offsetof(Node, vals),
                offsetof(Node, next), offsetof(Node, u), sizeof(Inner));
  EXPECT_EQ(s.sink.out, want);
}

TEST(ScriptCTypes, FieldsArraysBitsAndPointers) {
  Node second{};
  second.id = 2;
  std::strcpy(second.name, "second");
  Node first{};
  first.id = -7;
  std::memcpy(first.name, "0123456789abcdef", 16);  // no NUL: 16 chars
  first.in = Inner{-3, 250};
  first.vals[0] = 10;
  first.vals[1] = -20;
  first.vals[2] = 30;
  first.next = &second;
  first.flag = 1;
  first.level = -5;
  first.rest = 2047;
  first.u.u32 = 0x11223344;
  std::string src =
      std::string(kDefs) +
      "uprobe:libc:getpid { $n = (struct node *)arg0;\n"
      " printf(\"%d|%s|%d %d|%d %d %d|%s %d|%d %d %d|%x %x|%d %d|%d\\n\", $n->id, $n->name,\n"
      "  $n->in.x, $n->in.y, $n->vals[0], $n->vals[1], (*$n).vals[2], $n->next->name,\n"
      "  $n->next->id, $n->flag, $n->level, $n->rest, $n->u.u32, $n->u.bytes[3],\n"
      "  ((node_t *)arg0)->name[1], $n->name[arg1], BLUE + GREEN);\n"
      " @names[$n->next->name] = count(); }";
  Script s(src);
  ASSERT_TRUE(s.prog);
  s.hit(0, reinterpret_cast<std::uint64_t>(&first), 2);
  EXPECT_EQ(s.sink.out,
            "-7|0123456789abcdef|-3 250|10 -20 30|second 2|1 11 2047|11223344 11|49 50|11\n");
  EXPECT_NE(s.prog->print_maps().find("@names[second]: 1"), std::string::npos)
      << s.prog->print_maps();
}

TEST(ScriptCTypes, MapsKeepAPointersType) {
  Node n{};
  n.id = 41;
  std::string src = std::string(kDefs) +
                    "uprobe:libc:getpid { @p[tid] = (struct node *)arg0; }\n"
                    "uprobe:libc:getppid { printf(\"%d\\n\", @p[tid]->id + 1); }";
  Script s(src);
  ASSERT_TRUE(s.prog);
  s.hit(0, reinterpret_cast<std::uint64_t>(&n));
  s.hit(1);
  EXPECT_EQ(s.sink.out, "42\n");
}

TEST(ScriptCTypes, WalkingAListThroughAVariable) {
  // `struct node *` inside struct node's body (the record still incomplete) and in a
  // cast after it are one type: $n may be reassigned from its own next field.
  Node c{}, b{}, a{};
  a.id = 1, b.id = 2, c.id = 3;
  a.next = &b, b.next = &c;
  std::string src = std::string(kDefs) +
                    "uprobe:libc:getpid { $n = (struct node *)arg0; $s = 0;\n"
                    " unroll (5) { if ($n != 0) { $s = $s * 10 + $n->id; $n = $n->next; } }\n"
                    " print($s); }";
  Script s(src);
  ASSERT_TRUE(s.prog);
  s.hit(0, reinterpret_cast<std::uint64_t>(&a));
  EXPECT_EQ(s.sink.out, "123\n");
}

TEST(ScriptCTypes, PointerArithmeticScalesByThePointee) {
  static const std::uint32_t kWords[] = {100, 200, 300, 400};
  static const std::uint64_t kQuads[] = {7, 8, 9};
  Script s(
      "uprobe:libc:getpid { $p = (uint32 *)arg0; $q = (uint64 *)arg1;\n"
      " printf(\"%d %d %d %d %d\\n\", *($p + 1), $p[3], *($q + 2), *(uint8 *)(arg0 + 4),\n"
      "  ($p + 2) - $p); }");
  ASSERT_TRUE(s.prog);
  s.hit(0, reinterpret_cast<std::uint64_t>(kWords), reinterpret_cast<std::uint64_t>(kQuads));
  // A pointer minus a pointer is the byte distance (bpftrace's integer subtraction).
  EXPECT_EQ(s.sink.out, "200 400 9 200 8\n");
}

TEST(ScriptCTypes, BadPointersReadAsZeroAndAreCounted) {
  // A page with nothing readable: every read of it fails.
  void* page = mmap(nullptr, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(page, MAP_FAILED);
  std::string src = std::string(kDefs) +
                    "uprobe:libc:getpid { $n = (struct node *)arg0;\n"
                    " printf(\"%d [%s] %d %d\\n\", $n->id, $n->name, $n->next->id, "
                    "*(uint64 *)arg1); }";
  Script s(src);
  ASSERT_TRUE(s.prog);
  s.hit(0, reinterpret_cast<std::uint64_t>(page), 8);
  s.hit(0, 0, 0xdead000000000000ull);
  EXPECT_EQ(s.sink.out, "0 [] 0 0\n0 [] 0 0\n");
  // Per hit: id, next, next->id (through the 0 read for next), *(uint64 *)arg1; the name
  // is a string read, not counted (as str()).
  EXPECT_EQ(s.prog->read_faults(), 8u);
  munmap(page, 4096);
}

TEST(ScriptCTypes, ReadsAcrossBlocksAndAtAPagesEnd) {
  // A readable page followed by an unreadable one. The reads of a hit share 256-byte
  // blocks: a value straddling two blocks, values at the page's end, and one crossing into
  // the unreadable page (0, counted) must each read as a plain load would.
  auto* page = static_cast<unsigned char*>(
      mmap(nullptr, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(page, MAP_FAILED);
  ASSERT_EQ(mprotect(page + 4096, 4096, PROT_NONE), 0);
  const std::uint64_t straddling = 0x1122334455667788ull, last = 0x0102030405060708ull;
  std::memcpy(page + 252, &straddling, 8);
  std::memcpy(page + 4088, &last, 8);
  page[10] = 7;
  Script s(
      "uprobe:libc:getpid { printf(\"%lx %lx %d %lx %d %d\\n\", *(uint64 *)(arg0 + 252), "
      "*(uint64 *)(arg0 + 4088), *(uint8 *)(arg0 + 10), *(uint32 *)(arg0 + 4094), "
      "*(uint8 *)(arg0 + 4095), *(uint8 *)(arg0 + 4096)); }");
  ASSERT_TRUE(s.prog);
  s.hit(0, reinterpret_cast<std::uint64_t>(page));
  EXPECT_EQ(s.sink.out, "1122334455667788 102030405060708 7 0 1 0\n");
  EXPECT_EQ(s.prog->read_faults(), 2u);
  munmap(page, 8192);
}

TEST(ScriptCTypes, ParseErrorsNameTheWayOut) {
  EXPECT_EQ(first_line("#include <linux/sched.h>\nBEGIN { }"),
            "stdin:1:1-25: ERROR: #include <linux/sched.h>: headers are read by the hotprobe "
            "command (hotprobe run, hotprobe attach), which passes them on with the script");
  EXPECT_EQ(first_line("struct a { float f; };"),
            "stdin:1:12-17: ERROR: floating-point types are not supported (bpftrace has none "
            "either)");
  EXPECT_EQ(first_line("struct a { int (*fn)(int); };"),
            "stdin:1:16-17: ERROR: function pointers are not supported in declarations: "
            "declare the member as 'void *NAME' (it is read as an address)");
  EXPECT_EQ(first_line("struct a { struct b inner; };"),
            "stdin:1:21-26: ERROR: member 'inner' has incomplete type 'struct b' (define it "
            "first, or make the member a pointer)");
  EXPECT_EQ(first_line("BEGIN { $x = (foo_t *)0; }"),
            "stdin:1:15-20: ERROR: unknown type 'foo_t' (known: int8..int64, uint8..uint64, C's "
            "char/short/int/long (signed, unsigned), int8_t.., u8.., size_t, struct/union/enum, "
            "and typedefs written in the script)");
  EXPECT_EQ(first_line("struct a { int x; } x; BEGIN { }"),
            "stdin:1:21-22: ERROR: expected ';' after the definition (a script declares types, "
            "not variables: write 'struct foo { ... };')");
  EXPECT_EQ(first_line("struct a { int x; } *p; BEGIN { }"),
            "stdin:1:21-22: ERROR: expected ';' after the definition (a script declares types, "
            "not variables: write 'struct foo { ... };')");
  EXPECT_EQ(first_line("struct a; BEGIN { }"), "");
  // As in bpftrace, a definition may end at its closing brace.
  EXPECT_EQ(first_line("struct a { int x; } struct b { struct a in; }\n"
                       "BEGIN { printf(\"%d\\n\", sizeof(struct b)); }"),
            "");
}

TEST(ScriptCTypes, CheckErrorsNameTheWayOut) {
  const std::string defs = "struct s { int a; char n[4]; struct s *p; };\n";
  EXPECT_EQ(first_line("uprobe:libc:f { print(*arg0); }"),
            "stdin:1:23-28: ERROR: Can not dereference type 'int64': it is not a pointer (cast "
            "it to one first, e.g. *(uint64 *)arg0 or ((struct foo *)arg0)->field)");
  // `.` on a pointer to a struct reads through it (current bpftrace); on another
  // pointer it is refused.
  EXPECT_EQ(first_line(defs + "uprobe:libc:f { print(((struct s *)arg0).a); }"), "");
  EXPECT_EQ(first_line(defs + "uprobe:libc:f { print(((uint64 *)arg0).a); }"),
            "stdin:2:23-41: ERROR: Can not access field 'a' on type 'uint64 *'. Try "
            "dereferencing it first, or using '->'");
  EXPECT_EQ(first_line(defs + "uprobe:libc:f { print(((struct s *)arg0)->b); }"),
            "stdin:2:23-44: ERROR: 'struct s' has no field named 'b'");
  EXPECT_EQ(first_line("struct big { long v[129]; };\nuprobe:libc:f { @v = *(struct big *)arg0; }"),
            "stdin:2:22-41: ERROR: 'struct big' (1032 bytes) cannot be used as a value: an array "
            "or struct copied whole has 1 to 1024 bytes; read one of its fields (.name)");
  EXPECT_EQ(first_line("uprobe:libc:f { print(((struct t *)arg0)->a); }"),
            "stdin:1:23-44: ERROR: 'struct t' is incomplete: define it in the script (struct "
            "t { ... };) before reading it");
  EXPECT_EQ(first_line(defs + "uprobe:libc:f { $x = (struct s)arg0; }"),
            "stdin:2:22-36: ERROR: Cannot cast to 'struct s' (cast to a pointer and read "
            "through it: ((struct s *)arg0)->field)");
  EXPECT_EQ(first_line("uprobe:libc:f { $x = (uint8)\"a\"; }"),
            "stdin:1:22-32: ERROR: Cannot cast from 'string' to 'uint8' (only integers and "
            "pointers are cast)");
  EXPECT_EQ(first_line("uprobe:libc:f { $p = *(void *)arg0; }"),
            "stdin:1:22-35: ERROR: cannot read a value of type void: cast the pointer to a "
            "typed one, e.g. *(uint64 *)p");
  EXPECT_EQ(first_line(defs + "uprobe:libc:f { $p = (struct s *)arg0; $p = (uint8 *)arg1; }"),
            "stdin:2:45-58: ERROR: Type mismatch for $p: trying to assign value of type "
            "'uint8 *' when variable already contains a value of type 'struct s *'");
}

TEST(ScriptCTypes, ExponentLiteralsAndInterpreterLine) {
  Script s("#!/usr/bin/env hotprobe\nBEGIN { printf(\"%d %d %d\\n\", 1e6, 5e0, 2E3); }");
  ASSERT_TRUE(s.prog);
  s.prog->run_begin();
  EXPECT_EQ(s.sink.out, "1000000 5 2000\n");
  EXPECT_EQ(first_line("BEGIN { $x = 1e20; }"),
            "stdin:1:14-18: ERROR: integer '1e20' does not fit in 64 bits");
}

TEST(ScriptCTypes, ProbeOfAGlobHitIsTheMatchedProbe) {
  // The hit's address is getpid's own: `probe` and `func` name the function matched, so
  // @[probe] has one key per function, as bpftrace's.
  Script s("uprobe:libc:getpi* { @[probe, func] = count(); }");
  ASSERT_TRUE(s.prog);
  ProbeSpec spec = s.prog->spec(0);
  Regs r{};
  Hit h;
  h.regs = &r;
  h.cookie = spec.cookie;
  h.probe_address = reinterpret_cast<std::uint64_t>(&getpid);
  spec.on_entry(h);
  EXPECT_NE(s.prog->print_maps().find("@[uprobe:libc:getpid, getpid]: 1"), std::string::npos)
      << s.prog->print_maps();
}

}  // namespace
}  // namespace hotprobe::script
