// `args` as a whole value: the record of the probed function's parameters, copied from
// the registers (and 8-byte stack slots) they are in at the function's entry, laid out as
// bpftrace lays it out (each parameter after the one before), printed as current bpftrace
// prints it ({ .n = 0x7ffd..., .c = 120 }: pointers in hex, also as a map key), usable
// wherever a struct value is (print, map value and key, tuple element, $variable, field
// of a copy). The DWARF facts come from a fake lookup.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <string>

#include "script/check.h"
#include "script/check_args.h"
#include "script/eval.h"
#include "script/program.h"

#include "fake_sink.h"

namespace hotprobe::script {
namespace {

// A file "./prog" with
//   struct pair { int lo; int hi; long z; };                      (16 bytes)
//   void pick(int *n, char c, struct pair v, long s7, long s8);   (n rdi, c rsi, v rdx+rcx,
//                                                                  s7 r8, s8 on the stack)
//   void fl(double d, int k);  void big(struct huge h);           (xmm0; a 200-byte struct)
std::string fake_lookup(const std::string& module, const std::string& pattern, int id) {
  const std::string k = std::to_string(id) + ":";
  const std::string head = module + "\t" + pattern + "\t";
  if (pattern == "pick") {
    return "F\t" + head + "pick\n" + "P\tn\t0\t-1\trdi\tpi4\n" + "P\tc\t1\t-1\trsi\ti1\n" +
           "P\tv\t2\t3\trdx+rcx\tr" + k + "20;\n" + "P\ts7\t4\t-1\tr8\ti8\n" +
           "P\ts8\t-1\t-1\trsp+16\ti8\n" + "R\t" + k + "20\tstruct pair\t16\t0\n" +
           "M\tlo\t0\t0\t0\ti4\n" + "M\thi\t4\t0\t0\ti4\n" + "M\tz\t8\t0\t0\ti8\n";
  }
  if (pattern == "none") return "F\t" + head + "none\n";
  if (pattern == "fl") return "F\t" + head + "fl\nP\td\t-1\t-1\txmm0\tf8\nP\tk\t0\t-1\trdi\ti4\n";
  if (pattern == "big") {
    return "F\t" + head + "big\nP\th\t-1\t-1\trsp+8\tr" + k + "30;\n" + "R\t" + k +
           "30\tstruct huge\t200\t0\nM\tb\t0\t0\t0\ta200,u1\n";
  }
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

std::string hex(const void* p) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%llx",
                static_cast<unsigned long long>(reinterpret_cast<std::uintptr_t>(p)));
  return buf;
}

struct ArgsHit {
  std::unique_ptr<Program> prog;
  FakeSink sink;
  std::int32_t n = 5;
  std::uint64_t stack[3] = {0xdead, 0, 88};  // return address, s7's slot (unused), s8
  explicit ArgsHit(std::string_view src) {
    auto p = Program::compile(with_facts(src), CompileOptions{});
    EXPECT_TRUE(p.ok()) << (p ? "" : p.error().message());
    if (!p) return;
    prog = std::move(*p);
    prog->bind(&sink);
    ProbeSpec s = prog->spec(0);
    Regs r{};
    r.rdi = reinterpret_cast<std::uint64_t>(&n);
    r.rsi = 0xffffff00u | 'x';  // char c = 'x': the upper bytes are not the parameter's
    r.rdx = (static_cast<std::uint64_t>(static_cast<std::uint32_t>(-9)) << 32) | 4u;
    r.rcx = 123456789012;
    r.r8 = 7;
    r.rsp = reinterpret_cast<std::uint64_t>(stack);
    Hit h;
    h.regs = &r;
    h.cookie = s.cookie;
    s.on_entry(h);
  }
};

constexpr const char* kPick =
    ".c = 120, .v = { .lo = 4, .hi = -9, .z = 123456789012 }, .s7 = 7, .s8 = 88 }";

TEST(ScriptArgsRecord, PrintsAsCurrentBpftrace) {
  ArgsHit r("uprobe:./prog:pick { print(args); }");
  EXPECT_EQ(r.sink.out, "{ .n = " + hex(&r.n) + ", " + kPick + "\n");
}

TEST(ScriptArgsRecord, AMapValueAKeyAndATupleElement) {
  ArgsHit r(
      "uprobe:./prog:pick { @v = args; @k[args] = 1; @t = (1, args); $a = (args, \"x\"); "
      "@u[$a] = 2; }");
  ASSERT_TRUE(r.prog);
  const std::string rec = "{ .n = " + hex(&r.n) + ", " + kPick;
  EXPECT_EQ(r.prog->print_maps(), "\n\n@k[" + rec + "]: 1\n@t: (1, " + rec + ")\n@u[" + rec +
                                      ", x]: 2\n@v: " + rec + "\n");
}

TEST(ScriptArgsRecord, FieldsOfTheCopy) {
  ArgsHit r(
      "uprobe:./prog:pick { $a = args; @m = args; printf(\"%c %d %d %d %d\\n\", $a.c, "
      "$a.v.hi, @m.s8, *$a.n, @m.v.z == args.v.z); }");
  EXPECT_EQ(r.sink.out, "x -9 88 5 1\n");
}

// A parameter in an 8-byte stack slot is read by name too (sargN).
TEST(ScriptArgsRecord, AStackParameterByName) {
  ArgsHit r("uprobe:./prog:pick { printf(\"%d\\n\", args.s8 + args.s7); }");
  EXPECT_EQ(r.sink.out, "95\n");
}

TEST(ScriptArgsRecord, WhatCannotBeCopiedNamesTheWayOut) {
  EXPECT_EQ(first_error("uprobe:./prog:fl { print(args); }"),
            "stdin:1:26-30: ERROR: args of fl holds parameter 'd' (double, in xmm0), which "
            "hotprobe cannot copy: the whole of args is the parameters passed in registers or "
            "in 8-byte stack slots; read the others by name (args.NAME)");
  EXPECT_EQ(first_error("uprobe:./prog:big { @ = args; }"),
            "stdin:1:25-29: ERROR: args of big holds parameter 'h' (struct huge, in rsp+8), "
            "which hotprobe cannot copy: the whole of args is the parameters passed in "
            "registers or in 8-byte stack slots; read the others by name (args.NAME)");
  EXPECT_EQ(first_error("uprobe:./prog:none { @ = args; }"),
            "stdin:1:26-30: ERROR: none takes no parameters: its args has nothing to copy (read "
            "registers with argN if the debug information is wrong)");
  EXPECT_EQ(first_error("uretprobe:./prog:pick { @ = args; }"),
            "stdin:1:29-33: ERROR: The args builtin can only be used with tracepoint/kfunc/uprobe "
            "probes (uretprobe used here): the registers that held the parameters are reused "
            "by the return; save what you need in the uprobe (@x[tid] = args.NAME)");
  EXPECT_EQ(first_error("uprobe:./prog:pick { @ = args; @ = 1; }"),
            "stdin:1:32-33: ERROR: Type mismatch for @: trying to assign value of type 'int64' "
            "when map already contains a value of type 'record'");
}

}  // namespace
}  // namespace hotprobe::script
