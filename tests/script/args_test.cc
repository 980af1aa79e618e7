// uprobe `args` and `#include` in the script layer, with a fake DWARF lookup: the type
// facts a script carries (script/check_args.h) turn args.NAME into register reads of the
// right C type, print() of a struct prints bpftrace's { .a = 1 }, and every problem
// (unknown parameter, no DWARF, uretprobe, mixed parameter lists, parameters outside the
// registers, headers beyond the subset) is an error that names the way out.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>

#include "script/ast.h"
#include "script/check.h"
#include "script/check_args.h"
#include "script/eval.h"
#include "script/program.h"

#include "fake_sink.h"

namespace hotprobe::script {
namespace {

// What hp::elf::dwarf_type_facts says of a file "./prog" with
//   struct req { int id; char name[8]; struct req *next; };
//   struct pair { int lo; int hi; long z; };             (16 bytes: rcx and r8)
//   long handle(int a, const char *s, struct req *r, struct pair v, double d, long e, long f);
//   long helper(int a, const char *s, ...same list...);  long other(long x);
// and of "./nodebug", which has no DWARF.
std::string fake_lookup(const std::string& module, const std::string& pattern, int id) {
  const std::string k = std::to_string(id) + ":";
  const std::string head = module + "\t" + pattern + "\t";
  if (module == "./nodebug")
    return "E\t" + head +
           "./nodebug has no DWARF: build with -g, or install its -dbg/-dbgsym package; "
           "hotprobe list -v shows what is there\n";
  auto handle = [&](const std::string& name) {
    return "F\t" + head + name + "\n" + "P\ta\t0\t-1\trdi\ti4\n" + "P\ts\t1\t-1\trsi\tpi1\n" +
           "P\tr\t2\t-1\trdx\tpr" + k + "10;\n" + "P\tv\t3\t4\trcx+r8\tr" + k + "20;\n" +
           "P\td\t-1\t-1\txmm0\tf8\n" + "P\te\t5\t-1\tr9\ti8\n" + "P\tf\t-1\t-1\trsp+8\ti8\n" +
           "R\t" + k + "10\tstruct req\t24\t0\n" + "M\tid\t0\t0\t0\ti4\n" +
           "M\tname\t4\t0\t0\ta8,i1\n" + "M\tnext\t16\t0\t0\tpr" + k + "10;\n" + "R\t" + k +
           "20\tstruct pair\t16\t0\n" + "M\tlo\t0\t0\t0\ti4\n" + "M\thi\t4\t0\t0\ti4\n" +
           "M\tz\t8\t0\t0\ti8\n";
  };
  if (pattern == "handle") return handle("handle");
  if (pattern == "h*") return handle("handle") + handle("helper");
  if (pattern == "*") return handle("handle") + "F\t" + head + "other\nP\tx\t0\t-1\trdi\ti8\n";
  return "E\t" + head + "the debug info of " + module + " has no function '" + pattern + "'\n";
}

std::string with_facts(std::string_view src) {
  return with_type_facts(src, "stdin", &fake_lookup);
}

std::string first_error(std::string_view src) {
  auto r = parse_and_check(with_facts(src), "stdin");
  if (r.ok()) return "";
  const std::string e = r.error().message();
  return e.substr(0, e.find('\n'));
}

struct Req {
  std::int32_t id;
  char name[8];
  Req* next;
};

// Runs the script's first probe with `r` as the registers.
std::string run(std::string_view src, Regs r) {
  auto p = Program::compile(with_facts(src), CompileOptions{});
  EXPECT_TRUE(p.ok()) << (p ? "" : p.error().message());
  if (!p) return "";
  FakeSink sink;
  (*p)->bind(&sink);
  ProbeSpec s = (*p)->spec(0);
  Hit h;
  h.regs = &r;
  h.cookie = s.cookie;
  s.on_entry(h);
  return sink.out;
}

TEST(ScriptArgs, ParametersReadTheirRegistersWithTheirTypes) {
  Req second{7, "second", nullptr};
  Req first{-3, "first", &second};
  Regs r{};
  r.rdi = 0xffffffffu;  // int a = -1: the upper half is not the parameter's
  r.rsi = reinterpret_cast<std::uint64_t>("text");
  r.rdx = reinterpret_cast<std::uint64_t>(&first);
  r.rcx = (static_cast<std::uint64_t>(static_cast<std::uint32_t>(-9)) << 32) | 4u;  // lo 4, hi -9
  r.r8 = 123456789012;
  r.r9 = 77;
  EXPECT_EQ(run("uprobe:./prog:handle { printf(\"%d %d %s %d %s %s %d\\n\", args.a, args.a < 0, "
                "str(args->s), args.r->id, args.r->name, args->r->next->name, args.e); }",
                r),
            "-1 1 text -3 first second 77\n");
  EXPECT_EQ(
      run("uprobe:./prog:handle { printf(\"%d %d %ld\\n\", args.v.lo, args.v.hi, args.v.z); }", r),
      "4 -9 123456789012\n");
  EXPECT_EQ(run("uprobe:./prog:handle { print(*args.r); $n = args.r->next; print(*$n); }", r),
            "{ .id = -3, .name = first, .next = " +
                std::to_string(reinterpret_cast<std::uint64_t>(&second)) +
                " }\n{ .id = 7, .name = second, .next = 0 }\n");
}

// args.x is the register itself, as arg0 is: a pointer parameter is the builtin with no
// conversion node, an int one the cast (int32)arg0 writes.
TEST(ScriptArgs, AParameterIsTheRegisterBuiltin) {
  auto prog =
      parse_and_check(with_facts("uprobe:./prog:handle { @p = args.r; @a = args.a; }"), "stdin");
  ASSERT_TRUE(prog.ok()) << prog.error().message();
  const ast::Expr& p = *prog->actions[0].body[0].value;
  ASSERT_EQ(p.kind, ast::Expr::Kind::cast);
  EXPECT_EQ(prog->types.at(p.cast_type).kind, ast::CType::Kind::pointer);
  EXPECT_EQ(p.args[0]->kind, ast::Expr::Kind::builtin);
  EXPECT_EQ(p.args[0]->builtin, ast::Builtin::arg2);
  const ast::Expr& a = *prog->actions[0].body[1].value;
  ASSERT_EQ(a.kind, ast::Expr::Kind::cast);
  EXPECT_EQ(prog->types.name(a.cast_type), "int32");
  EXPECT_EQ(a.args[0]->builtin, ast::Builtin::arg0);
}

TEST(ScriptArgs, ErrorsNameTheWayOut) {
  EXPECT_EQ(first_error("uprobe:./prog:handle { print(args.nme); }"),
            "stdin:1:30-38: ERROR: Can't find function parameter nme of handle(int32 a, int8 * "
            "s, struct req * r, struct pair v, double d, int64 e, int64 f)");
  EXPECT_EQ(first_error("uprobe:./prog:handle { print(args.r->nme); }"),
            "stdin:1:30-41: ERROR: 'struct req' has no field named 'nme' (did you mean "
            "'name'?)");
  EXPECT_EQ(first_error("uprobe:./nodebug:f { print(args.a); }"),
            "stdin:1:28-32: ERROR: ./nodebug has no DWARF: build with -g, or install its "
            "-dbg/-dbgsym package; hotprobe list -v shows what is there");
  EXPECT_EQ(first_error("uretprobe:./prog:handle { print(args.a); }"),
            "stdin:1:33-37: ERROR: The args builtin can only be used with tracepoint/kfunc/uprobe "
            "probes (uretprobe used here): the registers that held the parameters are reused "
            "by the return; save what you need in the uprobe (@x[tid] = args.NAME)");
  EXPECT_EQ(first_error("BEGIN { print(args.a); }"),
            "stdin:1:15-19: ERROR: The args builtin can only be used with tracepoint/kfunc/uprobe "
            "probes (BEGIN used here)");
  EXPECT_EQ(first_error("uprobe:./prog:handle { print(args.d); }"),
            "stdin:1:30-36: ERROR: parameter 'd' (double) of handle is passed in xmm0, a "
            "floating-point register: hotprobe, as bpftrace, reads no floating-point values");
  EXPECT_EQ(first_error("uprobe:./prog:handle { print(args.v); }"),
            "stdin:1:30-36: ERROR: parameter 'v' is a struct pair passed by value in rcx+r8: "
            "args reads its integer and pointer fields (args.v.FIELD), not the whole struct, "
            "nested structs or bit fields");
  EXPECT_EQ(first_error("uprobe:./prog:handle { print(args); }"),
            "stdin:1:30-34: ERROR: args of handle holds parameter 'd' (double, in xmm0), which "
            "hotprobe cannot copy: the whole of args is the parameters passed in registers or "
            "in 8-byte stack slots; read the others by name (args.NAME)");
  // Compiled without the hotprobe command's facts.
  auto bare = parse_and_check("uprobe:./prog:handle { print(args.a); }", "stdin");
  ASSERT_FALSE(bare.ok());
  EXPECT_NE(bare.error().message().find("no parameters are known for uprobe:./prog:handle: args "
                                        "reads them from DWARF in the hotprobe command"),
            std::string::npos);
}

// bpftrace's rule: the probes of one action must agree on the parameter list.
TEST(ScriptArgs, AGlobOverFunctionsWithDifferentParametersIsAnError) {
  EXPECT_EQ(first_error("uprobe:./prog:h* { print(args.a); }"), "");
  EXPECT_EQ(first_error("uprobe:./prog:* { print(args.a); }"),
            "stdin:1:1-16: ERROR: Probe has attach points with mixed arguments: handle(int32 a, "
            "int8 * s, struct req * r, struct pair v, double d, int64 e, int64 f) and other(int64 "
            "x) (args needs one parameter list: split the probes into actions of their own)");
}

// A struct the script defines keeps its layout under its name; args keep DWARF's.
TEST(ScriptArgs, TheScriptsOwnStructKeepsItsName) {
  Req only{5, "own", nullptr};
  Regs r{};
  r.rdx = reinterpret_cast<std::uint64_t>(&only);
  EXPECT_EQ(run("struct req { long whole; };\n"
                "uprobe:./prog:handle { printf(\"%d %d\\n\", args.r->id, "
                "((struct req *)arg2)->whole == *(int64 *)arg2); }",
                r),
            "5 1\n");
}

std::string write_header(const std::string& name, const std::string& text) {
  const std::string path = testing::TempDir() + name;
  std::ofstream(path) << text;
  return path;
}

TEST(ScriptInclude, HeadersDeclareTypesAndConstants) {
  const std::string h =
      write_header("hp_args_inner.h",
                   "#ifndef INNER_H\n#define INNER_H\n#include <stdint.h>\n#define NAME_LEN 8\n"
                   "#define FLAG (0x10)\nstruct inner { uint16_t x; char name[NAME_LEN]; };\n"
                   "typedef struct inner inner_t;\nenum color { RED, GREEN = FLAG };\n#endif\n");
  const std::string outer =
      write_header("hp_args_outer.h", "#pragma once\n#include \"hp_args_inner.h\"\n");
  auto prog = parse_and_check(
      with_type_facts("#include \"" + outer +
                          "\"\nBEGIN { printf(\"%d %d %d %d\\n\", "
                          "sizeof(inner_t), offsetof(struct inner, name), GREEN, NAME_LEN); }",
                      testing::TempDir() + "script.bt", &fake_lookup),
      "stdin");
  ASSERT_TRUE(prog.ok()) << prog.error().message();
  auto p = Program::compile(
      with_type_facts("#include \"" + outer +
                          "\"\nBEGIN { printf(\"%d %d %d %d\\n\", "
                          "sizeof(inner_t), offsetof(struct inner, name), GREEN, NAME_LEN); }",
                      testing::TempDir() + "script.bt", &fake_lookup));
  ASSERT_TRUE(p.ok()) << p.error().message();
  FakeSink sink;
  (*p)->bind(&sink);
  (*p)->run_begin();
  EXPECT_EQ(sink.out, "10 2 16 8\n");
  ::unlink(h.c_str());
  ::unlink(outer.c_str());
}

TEST(ScriptInclude, WhatIsBeyondTheSubsetIsAnErrorAtTheHeadersLine) {
  const std::string h = write_header("hp_args_bad.h", "struct ok { int a; };\nint f(int x);\n");
  const std::string e = first_error("#include \"" + h + "\"\nBEGIN { }");
  EXPECT_EQ(e, "stdin:1:1-" + std::to_string(12 + h.size()) + ": ERROR: in " + h +
                   ":2:1: 'int': a header hotprobe reads holds struct, union, enum and typedef "
                   "declarations, #define NAME INTEGER and include guards (no functions, "
                   "variables or other preprocessor lines)");
  ::unlink(h.c_str());
  EXPECT_EQ(first_error("#include <hp_no_such_header.h>\nBEGIN { }"),
            "stdin:1:1-31: ERROR: cannot read header <hp_no_such_header.h> (looked in "
            "/usr/local/include, /usr/include/x86_64-linux-gnu, /usr/include): give its path, or "
            "define its types in the script");
  EXPECT_EQ(first_error("#define TWICE(x) ((x) * 2)\nBEGIN { }"),
            "stdin:1:1-27: ERROR: #define TWICE(...): function-like macros are not supported "
            "(hotprobe takes #define NAME INTEGER)");
  EXPECT_EQ(first_error("#if 1\nBEGIN { }"),
            "stdin:1:1-6: ERROR: #if is not supported: hotprobe reads #include, #define NAME "
            "INTEGER, include guards (#ifndef, #endif, #pragma once) and "
            "struct/union/enum/typedef declarations");
  // Without the hotprobe command, which reads the headers.
  auto bare = parse_and_check("#include <linux/sched.h>\nBEGIN { }", "stdin");
  ASSERT_FALSE(bare.ok());
  EXPECT_NE(bare.error().message().find("stdin:1:1-25: ERROR: #include <linux/sched.h>: headers "
                                        "are read by the hotprobe command"),
            std::string::npos);
}

}  // namespace
}  // namespace hotprobe::script
